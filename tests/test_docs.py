"""The docs: every option of every ``archviz`` subcommand is on a page, the pages name no option
that does not exist, the README stays a short front door, and every page is in the site's
navigation. ``make docs`` builds the site itself strictly (CI runs it after ``make test``);
these checks need no docs generator installed."""

import argparse
import importlib.util
import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def load_gen():
    spec = importlib.util.spec_from_file_location("archviz_docs_gen", DOCS / "gen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = load_gen()


def hand_written_pages():
    return sorted(DOCS.glob("*.md"))


@pytest.fixture(scope="module")
def cli_pages(tmp_path_factory):
    out = tmp_path_factory.mktemp("generated")
    gen.write_cli(out)
    return out / "cli"


def every_option():
    """(command words, option string, help) of every subcommand, nested ones included."""
    for name, _help, parser in gen.command_parsers():
        for words, sub in gen.walk(parser, [name]):
            for action in sub._actions:
                if action.help == argparse.SUPPRESS:  # internal (e.g. passes --render-child)
                    continue
                for option in action.option_strings:
                    if option not in ("-h", "--help"):
                        yield words, option, sub._get_formatter()._expand_help(action) if action.help else ""


def test_every_option_of_every_command_is_on_its_page(cli_pages):
    options = list(every_option())
    commands = {words[0] for words, _o, _h in options}
    assert {"passes", "sweep", "serve", "upscale", "presets", "bench", "doctor", "models", "dataset",
            "train-controlnet"} <= commands
    assert any(words == ["models", "download"] for words, _o, _h in options)  # nested subcommands are walked
    assert len(options) > 150
    missing = []
    for words, option, help_text in options:
        page = (cli_pages / f"{words[0]}.md").read_text(encoding="utf-8")
        # the option in the table of its own (sub)command's section, with its help text
        section = page.split(f"## archviz {' '.join(words)}\n", 1)[-1] if len(words) > 1 else page
        if f"`{option}" not in section and f", {option}" not in section:
            missing.append(f"archviz {' '.join(words)} {option}")
        elif help_text and gen.md_escape(help_text) not in section:
            missing.append(f"archviz {' '.join(words)} {option}: its help text")
    assert missing == []
    index = (cli_pages / "index.md").read_text(encoding="utf-8")
    assert all(f"({name}.md)" in index for name in commands)


def named_options(text):
    """(command, option) for every ``archviz CMD ... --option`` written in ``text``."""
    text = re.sub(r"\\\n\s*", " ", text)  # continued shell lines
    for match in re.finditer(r"archviz ([a-z-]+)((?: [^\n`#|]*)?)", text):
        command, rest = match.groups()
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
            yield command, option


def known_options():
    return {name: {o for _words, sub in gen.walk(parser, [name]) for a in sub._actions for o in a.option_strings}
            for name, _help, parser in gen.command_parsers()}


def test_the_pages_name_no_option_a_command_does_not_have():
    """Every ``archviz CMD ... --option`` written on a hand-written page or in the README is an
    option of that command (or of one of its subcommands): the prose cannot drift either."""
    known = known_options()
    seen, wrong = 0, []
    for path in [*hand_written_pages(), ROOT / "README.md"]:
        for command, option in named_options(path.read_text(encoding="utf-8")):
            if command in known:
                seen += 1
                if option not in known[command]:
                    wrong.append(f"{path.name}: archviz {command} ... {option}")
    assert seen > 100 and wrong == []


def test_the_reader_finds_an_option_that_is_not_there():
    text = ("Run `archviz sweep house.blend --styles modern \\\n    --no-such-option 3` and\n"
            "archviz upscale out/a.png --scale 2 # --not-this-one\n")
    named = list(named_options(text))
    assert named == [("sweep", "--styles"), ("sweep", "--no-such-option"), ("upscale", "--scale")]
    known = known_options()
    assert [o for c, o in named if o not in known[c]] == ["--no-such-option"]


def test_readme_is_a_short_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for needed in ("## Install into Blender", "make demo", "make test", "make test-blenders", "make docs",
                   "archviz models download", "archviz sweep", "Set up Backend"):
        assert needed in text, needed
    # the headless script tests/blenders/drive.py runs as written
    start = text.index("<!-- headless-script -->")
    assert text[start:].split("\n", 1)[1].startswith("```python\n")
    links = [m for m in re.findall(r"\]\(([^)#\s]+)\)", text) if "://" not in m]
    assert "docs/passes_example.png" in links and "docs/getting-started.md" in links
    assert [link for link in links if not (ROOT / link).exists()] == []
    pages = {p.name for p in hand_written_pages()} - {"index.md"}
    assert {os.path.basename(link) for link in links if link.endswith(".md")} == pages  # the map names every page


def nav_files(nav):
    for entry in nav:
        if isinstance(entry, str):
            yield entry
        else:
            for value in entry.values():
                yield from (nav_files(value) if isinstance(value, list) else [value])


def test_every_page_is_in_the_navigation(tmp_path):
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["strict"] is True and config["docs_dir"] == "docs"
    listed = list(nav_files(config["nav"]))
    assert len(listed) == len(set(listed))
    hand = {p.name for p in hand_written_pages()}
    assert {f for f in listed if not f.startswith("generated/")} == hand
    gen.write_cli(tmp_path)
    gen.write_families(tmp_path)
    (tmp_path / "api.md").touch()
    (tmp_path / "doctor.md").touch()
    made = {"generated/" + p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.md")}
    assert {f for f in listed if f.startswith("generated/")} == made


def test_one_family_page_per_architecture_from_the_records():
    from archviz_controlnet.backend.engine.families.registry import ENGINES
    from archviz_controlnet.core import families as F

    pages = gen.family_pages()
    assert set(pages) == set(F.ARCHES) == set(ENGINES)
    for arch, text in pages.items():
        for family in F.FAMILY_LIST:
            assert (f"| `{family.name}` |" in text) == (family.arch == arch)
        assert f"backend/engine/families/{ENGINES[arch].module}.py" in text
    assert "| `24gb` | 20 |" in pages["flux"]  # its memory profiles, from backend/engine/memory.py
    assert "`black-forest-labs/FLUX.1-dev`" in pages["flux"]  # its hub ids, from backend/models/registry.py


def test_the_api_page_is_rendered_from_the_app_itself():
    schema = gen.openapi_schema()
    page = gen.api_page(schema)
    for route in ("/v1/health", "/v1/presets", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/images/{n}"):
        assert route in schema["paths"] and f"`{route}`" in page
    assert "## DELETE /v1/jobs/{job_id}" in page and "### Job" in page


def test_the_doctor_page_shows_each_finding_with_its_fix():
    from archviz_controlnet.core import doctor

    page = gen.doctor_page()
    fixes = set()
    for _title, facts in gen.doctor_situations():
        findings, _can = doctor.diagnose(facts)
        assert findings, _title  # each situation shows at least one finding
        for f in findings:
            fixes.add(f.fix.replace(doctor.PACKAGE_DIR, "ADDON_DIR"))
            assert f.problem.replace(doctor.PACKAGE_DIR, "ADDON_DIR") in page
    assert all(f"  fix: {fix}" in page for fix in fixes) and len(fixes) >= 5
