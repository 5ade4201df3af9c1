"""One place per model family: every family in core/families.py reaches every list that is
derived from it, every arch has its backend row, and no other module keeps a hand-made
tuple of family or arch names again."""

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

from archviz_controlnet.core import edit as E
from archviz_controlnet.core import families as F
from archviz_controlnet.core import jobs as J
from archviz_controlnet.core import passes as P
from archviz_controlnet.core import presets as PR

ROOT = Path(__file__).resolve().parents[1]
ALL_NAMES = list(F.FAMILIES) + list(F.ALIASES)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_family_and_alias_is_accepted_by_the_job_validator(name):
    spec = J.ModelSpec(family=name.upper())  # the validator lowercases, then maps aliases
    spec.validate()
    record = F.lookup(name)
    assert spec.family == record.name and spec.arch == record.arch == J.FAMILY_ARCH[record.name]
    assert spec.is_tiny == record.tiny
    assert spec.is_sdxl == (record.arch == "sdxl")


def test_an_unknown_family_names_the_value_and_every_family():
    with pytest.raises(J.JobError) as err:
        J.ModelSpec(family="sd3").validate()
    assert "'sd3'" in str(err.value) and all(name in str(err.value) for name in F.FAMILIES)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_family_gets_its_side_multiple_long_side_units_and_line_styles(name):
    arch = F.ARCHES[F.lookup(name).arch]
    assert P.size_multiple(name) == arch.side_multiple in (8, 16)
    assert P.default_long_side(name) == arch.long_side and arch.long_side % arch.side_multiple == 0
    types = J.control_types_for(name)
    assert set(types) <= set(J.CONTROL_TYPES) and "depth" in types and "lines" in types
    assert set(J.control_types_for(name, union=True)) >= set(types)
    family = F.lookup(name).name
    if arch.controls:
        for ctype in J.LINE_TYPES:
            assert P.line_style_for(ctype, family) == arch.line_styles[ctype] in P.LINE_STYLES
    else:
        assert family in E.EDIT_FAMILIES and arch.name in E.EDIT_ARCHES and family not in P.MODEL_LINE_STYLES


def test_a_model_folder_named_after_a_family_gets_its_sizes():
    assert P.size_multiple("/models/FLUX.1-dev") == 16 and P.default_long_side("/models/FLUX.1-dev") == 1024
    assert P.default_long_side("Qwen/Qwen-Image") == 1328 and P.default_long_side("Qwen/Qwen-Image-Edit") == 1024
    assert P.size_multiple("/models/my-finetune") == 8 and P.default_long_side("/models/my-finetune") == 512


def test_every_preset_section_is_parsed_and_applied(tmp_path):
    sections = {a.preset_section: a for a in F.ARCHES.values() if a.preset_section}
    assert set(PR.FAMILY_SECTIONS) == set(sections) and set(sections) <= set(PR.TOP_KEYS)
    text = ['prompt = "base prompt"\ncfg = 7.0\n']
    for name, arch in sections.items():
        text.append(f'[{name}]\nprompt = "{name} prompt"\ncfg = 2.0\n')
    path = tmp_path / "every.toml"
    path.write_text("\n".join(text))
    preset = PR.load_preset_file(path)
    for arch in F.ARCHES.values():
        section = F.preset_section(arch.name)
        applied = preset.for_family(section)  # as backend/engine/sweep.py applies it
        if section in sections:
            assert getattr(preset, section)["prompt"] == f"{section} prompt"
            assert applied.prompt == f"{section} prompt" and applied.cfg == 2.0
            assert set(PR.FAMILY_SECTIONS[section]) <= {"cfg", "steps", "scheduler", "controls", "prompt", "negative"}
        else:
            assert applied is preset  # SD 1.5: the preset as it is
    assert preset.to_dict()["flux"]["prompt"] == "flux prompt"
    bad = tmp_path / "bad.toml"
    bad.write_text('prompt = "p"\n[flux]\nnegative = "no"\n')
    with pytest.raises(PR.PresetError, match="flux.negative"):
        PR.load_preset_file(bad)


def test_every_edit_family_has_its_defaults_and_the_others_none():
    for family in F.FAMILY_LIST:
        if F.ARCHES[family.arch].edit and not family.tiny:
            assert family.edit_defaults["steps"] > 0 and family.edit_defaults["cfg"] > 0
        elif not F.ARCHES[family.arch].edit:
            assert not family.edit_defaults and family.name not in E.EDIT_FAMILIES


def test_the_cli_help_and_the_models_box_list_the_families():
    from archviz_controlnet.blender import cli_sweep

    import argparse

    parser = argparse.ArgumentParser()
    cli_sweep.add_arguments(parser)
    help_text = next(a.help for a in parser._actions if "--model" in a.option_strings)
    for family in F.FAMILY_LIST:
        assert (family.name in help_text.replace(",", " ").split()) == family.menu, family.name
    downloads = [name for name, _label, _what in F.download_items()]
    assert all(F.FAMILIES[n].download and not F.FAMILIES[n].tiny for n in downloads)
    # every real architecture can be downloaded from the Models box
    assert {F.FAMILIES[n].arch for n in downloads} == {F.FAMILIES[n].arch for n in F.names(tiny=False)}


def test_every_menu_family_is_in_the_blender_model_enum():
    import bpy  # noqa: I001 (bpy first: it puts addon_utils on the path)
    import addon_utils

    from archviz_controlnet.blender import properties, runs

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("archviz_controlnet", default_set=True)
    try:
        prefs = properties.preferences()
        items = {i.identifier: i.name for i in prefs.bl_rna.properties["model"].enum_items}
        assert list(items) == [f.name for f in F.FAMILY_LIST if f.menu]
        for family in F.FAMILY_LIST:
            if family.menu:
                prefs.model = family.name
                assert prefs.model == family.name and items[family.name].startswith(family.label)
        assert [f[0] for f in runs.FAMILIES] == [name for name, _label, _what in F.download_items()]
    finally:
        addon_utils.disable("archviz_controlnet", default_set=True)


def test_every_arch_has_its_backend_row_and_module_without_torch_in_the_light_modules():
    code = ("import sys\n"
            "from archviz_controlnet.backend.engine import sweep, memory\n"
            "from archviz_controlnet.backend.models import registry, tiny\n"
            "from archviz_controlnet.backend.engine.families import registry, MODULES\n"
            "assert 'torch' not in sys.modules, 'a light module imported torch'\n")
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    from archviz_controlnet.backend.engine import memory, sweep
    from archviz_controlnet.backend.models import registry as models, tiny
    from archviz_controlnet.backend.engine.families import MODULES, family_for, registry

    assert set(registry.ENGINES) == set(F.ARCHES) == set(MODULES) == set(models.BASE_COMPONENTS)
    for name, arch in F.ARCHES.items():
        engine = registry.ENGINES[name]
        assert engine.resolve in registry.RESOLVE_KINDS and (engine.resolve == "none") == arch.edit
        assert "scheduler" in engine.components and "vae" in engine.components
        assert ("unet" in engine.components) != ("transformer" in engine.components)
        if "transformer" in engine.components:  # loaded class by class
            assert engine.bf16 and set(engine.loaders[1]) == set(engine.components) - {"scheduler"}
            assert name in models.DIT_BASES and name in models.BF16_ARCHES
        if engine.flow:
            assert sweep.FLOW_FAMILIES[name] is engine.flow and arch.side_multiple == 16
            assert arch.preset_section and engine.flow.defaults["steps"] > 0
        assert (name in sweep.REGION_ARCHS) == arch.region
        profiles = memory.profiles_for(name)
        assert profiles == (getattr(memory, engine.memory_profiles) if engine.memory_profiles else ())
        assert memory.choose_profile(name, "cuda", 80 * 2**30).name == (profiles[0].name if profiles else "none")
        folders = (name, *engine.tiny_folders)
        if not engine.tiny_module:
            assert name not in tiny.TINY_MODULES
        else:
            assert all(tiny.TINY_MODULES[f] == engine.tiny_module for f in folders)
            assert importlib.util.find_spec(f"archviz_controlnet.backend.models.tiny.{engine.tiny_module}") is not None
        family = family_for(name)
        assert family.arch == name and importlib.import_module(family.__module__).__name__.endswith(engine.module)
    for family in F.FAMILY_LIST:  # every family's tiny models have a builder
        if family.tiny:
            assert tiny._builder(family.arch if family.name != "tiny-qwen-edit-plus" else "qwen-edit-plus", "base")
    assert models.FAMILY_NAMES == F.names(tiny=False, edit=False)


#: Hand-kept collections of family or arch names outside core/families.py and
#: backend/engine/families/, and why each stays: (file, names) -> reason.
ALLOWED = {
    ("core/doctor.py", frozenset({"sd15", "sdxl"})):
        "the doctor checks the default SD families' downloads only, by choice",
    ("backend/models/registry.py", frozenset({"qwen-edit-2509", "qwen-edit-2511"})): "hub ids of those models",
    ("backend/models/registry.py", frozenset({"qwen", "zimage"})): "hub ids of the union-only nets",
    ("backend/models/registry.py", frozenset({"kontext", "qwen-edit"})): "CATALOG: download names of hub ids",
    ("backend/train/controlnet.py", frozenset({"sd15", "sdxl", "tiny", "tiny-sdxl"})):
        "ControlNet training exists for the UNet families only: their base ids",
    ("bench/runner.py", frozenset({"flux", "sd15", "sdxl", "tiny", "tiny-flux", "tiny-sdxl", "tiny-zimage",
                                   "zimage"})): "bench --config descriptions (CONFIGS)",
    ("bench/runner.py", frozenset({"qwen", "tiny-klein", "tiny-qwen"})): "bench --config descriptions (CONFIGS)",
    ("bench/runner.py", frozenset({"flux", "tiny-zimage", "zimage"})): "bench step counts of the real configs",
    ("bench/runner.py", frozenset({"flux", "klein", "qwen", "zimage"})): "bench sampling descriptions",
    ("bench/runner.py", frozenset({"qwen", "zimage"})): "bench: count_flops has no rule for these yet",
}


def _name_collections(path: Path):
    """(line, names) of every tuple, list, set or dict (keys) literal that holds two or more
    family, alias or arch names."""
    names = set(F.FAMILIES) | set(F.ALIASES) | set(F.ARCHES)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            elts = node.elts
        elif isinstance(node, ast.Dict):
            elts = [k for k in node.keys if k is not None]
        else:
            continue
        hits = {e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)} & names
        if len(hits) >= 2:
            yield node.lineno, frozenset(hits)


def test_no_module_keeps_its_own_list_of_families():
    files = [p for d in ("core", "blender", "operators", "panels", "backend", "bench", "distributed")
             for p in sorted((ROOT / d).rglob("*.py"))] + [ROOT / "cli.py", ROOT / "__init__.py"]
    found, used = [], set()
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel == "core/families.py" or rel.startswith("backend/engine/families/"):
            continue
        for line, hits in _name_collections(path):
            if (rel, hits) in ALLOWED:
                used.add((rel, hits))
            else:
                found.append(f"{rel}:{line}: {sorted(hits)}")
    assert not found, "family names kept by hand (derive them from core/families.py or " \
                      "backend/engine/families/registry.py):\n" + "\n".join(found)
    assert used == set(ALLOWED), f"allow-list entries no longer needed: {set(ALLOWED) - used}"


def test_the_scan_sees_a_hand_kept_list(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text('X = ("flux", "tiny-flux")\nif arch in ["qwen", "zimage"]:\n    pass\nD = {"sdxl": 1, "sd15": 2}\n')
    assert sorted(line for line, _hits in _name_collections(path)) == [1, 2, 4]
