"""core.presets: built-in style presets, user overrides, errors naming file and key."""

import os
import subprocess
import sys

import pytest

from archviz_controlnet.core import presets as P

REQUIRED = {"modern", "industrial", "scandinavian", "japandi", "brutalist-concrete", "mediterranean",
            "warm-evening-interior", "overcast-exterior", "night-exterior"}


def test_builtin_presets_are_complete():
    found = P.load_presets(include_user=False)
    assert len(found) >= 10
    assert REQUIRED <= set(found)
    assert {"watercolor-sketch", "pencil-sketch"} & set(found)
    for p in found.values():
        assert p.prompt and p.negative, p.name
        assert p.cfg and 1 <= p.cfg <= 15 and p.steps and p.scheduler, p.name
        assert p.controls["depth"].scale is not None and p.controls["lines"].scale is not None, p.name
        sdxl = p.for_family(True)
        assert 0.3 <= sdxl.control("depth").scale <= 0.7, p.name  # SDXL ControlNets want lower scales
    assert found["modern"].control("depth").scale == 0.9 and found["modern"].control("lines").scale == 0.6


def test_depth_range_and_line_style_in_presets(tmp_path):
    (tmp_path / "drawn.toml").write_text('prompt = "x"\n[controls.depth]\nrange = "sequence"\n'
                                         '[controls.lines]\nline_style = "softedge"\n')
    p = P.load_presets([tmp_path], include_user=False)["drawn"]
    assert p.control("depth").range == "sequence" and p.control("mlsd").line_style == "softedge"
    assert p.to_dict()["controls"]["depth"] == {"range": "sequence"}
    for mode in ("view", "sequence", "scene", "manual"):
        (tmp_path / "drawn.toml").write_text(f'prompt = "x"\n[controls.depth]\nrange = "{mode}"\n')
        assert P.load_presets([tmp_path], include_user=False)["drawn"].control("depth").range == mode


def test_line_types_fall_back_to_lines():
    p = P.load_presets(include_user=False)["japandi"]
    assert p.control("canny") == p.control("lines") == p.control("mlsd")
    assert p.control("canny").end == 0.9
    assert p.control("depth") != p.control("lines")


def test_user_folder_adds_and_overrides(tmp_path, monkeypatch):
    (tmp_path / "modern.toml").write_text('prompt = "my modern"\ncfg = 4.0\n')
    (tmp_path / "office.toml").write_text('prompt = "open plan office"\n[controls.depth]\nscale = 0.5\n')
    monkeypatch.setenv("ARCHVIZ_PRESET_DIR", str(tmp_path))
    found = P.load_presets()
    assert found["modern"].prompt == "my modern" and found["modern"].cfg == 4.0
    assert found["modern"].source == str(tmp_path / "modern.toml")
    assert found["office"].control("depth").scale == 0.5
    assert "industrial" in found


@pytest.mark.parametrize("text, key", [
    ('prompt = "x"\ncfg = "high"\n', "cfg"),
    ('prompt = "x"\nsteps = 0\n', "steps"),
    ('prompt = "x"\nscheduler = "heun"\n', "scheduler"),
    ('negative = "x"\n', "prompt"),
    ('prompt = ""\n', "prompt"),
    ('prompt = "x"\ncolour = "red"\n', "colour"),
    ('prompt = "x"\n[controls.depth]\nscale = 3.0\n', "controls.depth.scale"),
    ('prompt = "x"\n[controls.depth]\nweight = 1.0\n', "controls.depth.weight"),
    ('prompt = "x"\n[controls.pose]\nscale = 1.0\n', "controls.pose"),
    ('prompt = "x"\n[controls.lines]\nstart = 0.8\nend = 0.2\n', "controls.lines.end"),
    ('prompt = "x"\n[controls.lines]\nmode = "loud"\n', "controls.lines.mode"),
    ('prompt = "x"\n[sdxl]\ncfg = -1\n', "sdxl.cfg"),
    ('prompt = "x"\n[sdxl.controls.depth]\nscale = "a"\n', "sdxl.controls.depth.scale"),
    ('prompt = "x"\ntags = "a"\n', "tags"),
    ('prompt = "x"\ntags = [1, 2]\n', "tags"),
    ('prompt = "x"\ncfg = nan\n', "cfg"),
    ('prompt = "x"\ncfg = inf\n', "cfg"),
    ('prompt = "x"\ncfg = true\n', "cfg"),
    ('prompt = "x"\nsteps = 1.5\n', "steps"),
    ('prompt = "x"\nsteps = 100000\n', "steps"),
    ('prompt = 5\n', "prompt"),
    ('prompt = "x"\nlabel = 5\n', "label"),
    ('prompt = "x"\ncontrols = 3\n', "controls"),
    ('prompt = "x"\nsdxl = "no"\n', "sdxl"),
    ('prompt = "x"\n[sdxl]\nlabel = "y"\n', "sdxl.label"),
    ('prompt = "x"\n[controls]\ndepth = 1\n', "controls.depth"),
    ('prompt = "x"\n[controls.depth]\nrange = "flat"\n', "controls.depth.range"),
    ('prompt = "x"\n[controls.lines]\nrange = "view"\n', "controls.lines.range"),
    ('prompt = "x"\n[controls.lines]\nline_style = "pencil"\n', "controls.lines.line_style"),
    ('prompt = "x"\n[controls.depth]\nline_style = "canny"\n', "controls.depth.line_style"),
])
def test_errors_name_file_and_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(P.PresetError) as err:
        P.load_presets([tmp_path], include_user=False)
    assert err.value.file == str(path)
    assert err.value.key == key
    assert str(path) in str(err.value) and key in str(err.value)


def test_broken_toml_and_tolerant_loading(tmp_path):
    (tmp_path / "broken.toml").write_text('prompt = "unterminated\n')
    (tmp_path / "fine.toml").write_text('prompt = "fine"\n')
    with pytest.raises(P.PresetError) as err:
        P.load_presets([tmp_path], include_user=False)
    assert "broken.toml" in err.value.file and "not valid TOML" in str(err.value)
    found, errors = P.load_presets_tolerant([tmp_path], include_user=False)
    assert list(found) == ["fine"] and len(errors) == 1 and errors[0].file.endswith("broken.toml")


def test_cli_presets_lists_and_checks(tmp_path):
    out = subprocess.run([sys.executable, "-m", "archviz_controlnet.cli", "presets"], capture_output=True,
                         text=True, env={"ARCHVIZ_PRESET_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "japandi" in out.stdout and "brutalist-concrete" in out.stdout
    bad = tmp_path / "oops.toml"
    bad.write_text('prompt = "x"\n[controls.depth]\nscale = 9\n')
    out = subprocess.run([sys.executable, "-m", "archviz_controlnet.cli", "presets", "--check", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert str(bad) in out.stderr and "controls.depth.scale" in out.stderr


def test_files_that_are_not_presets_name_the_file(tmp_path):
    """Hardening (issue 6): non-UTF-8 text, a folder named like a preset, a bad file name;
    each is a PresetError naming the file, and the tolerant loader (the server) keeps the rest."""
    (tmp_path / "latin1.toml").write_bytes('prompt = "caf\xe9"\n'.encode("latin-1"))
    (tmp_path / "folder.toml").mkdir()
    (tmp_path / "Bad Name.toml").write_text('prompt = "x"\n')
    (tmp_path / "fine.toml").write_text('prompt = "fine"\n')
    messages = {"latin1.toml": "not UTF-8 text", "folder.toml": "cannot read", "Bad Name.toml": "must be lowercase"}
    for name, message in messages.items():
        with pytest.raises(P.PresetError) as err:
            P.load_preset_file(tmp_path / name)
        assert err.value.file == str(tmp_path / name) and message in str(err.value), str(err.value)
    found, errors = P.load_presets_tolerant([tmp_path], include_user=False)
    assert list(found) == ["fine"]
    assert sorted(os.path.basename(e.file) for e in errors) == sorted(messages)
