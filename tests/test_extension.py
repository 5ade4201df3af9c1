"""The repo root builds into an installable extension with Blender's own `extension build`."""

import os
import subprocess
import sys
import zipfile

import pytest

bpy = pytest.importorskip("bpy")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_extension_builds_with_blender_tooling(tmp_path):
    tool = os.path.join(bpy.utils.system_resource("SCRIPTS"), "addons_core", "bl_pkg", "cli", "blender_ext.py")
    proc = subprocess.run([sys.executable, tool, "build", "--source-dir", ROOT, "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (zip_path,) = tmp_path.glob("archviz_controlnet-*.zip")
    names = set(zipfile.ZipFile(zip_path).namelist())
    assert {"blender_manifest.toml", "LICENSE", "__init__.py", "blender/properties.py", "operators/__init__.py",
            "panels/__init__.py", "blender/capture/render.py", "core/passes.py", "core/class_table.toml"} <= names
    assert not any(n.startswith(("tests/", ".venv/", ".ci/", "bench/", ".git")) or "__pycache__" in n for n in names)
    # The backend the add-on starts runs from the extension's own files: archviz serve reads
    # its --ray options from distributed/ and the tiny families (a preference) from backend/models/tiny/__init__.py.
    assert {"blender/tasks.py", "distributed/options.py", "backend/models/tiny/__init__.py", "backend/cli/serve.py"} <= names
    # Every file the shipped README links to (images, docs) is shipped with it.
    import re

    readme = zipfile.ZipFile(zip_path).read("README.md").decode("utf-8")
    links = {m for m in re.findall(r"\]\(([^)#\s]+)\)", readme) if "://" not in m}
    assert "docs/passes_example.png" in links and links <= names, sorted(links - names)


def test_license_matches_the_manifest():
    import tomllib

    manifest = tomllib.load(open(os.path.join(ROOT, "blender_manifest.toml"), "rb"))
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    text = open(os.path.join(ROOT, "LICENSE"), encoding="utf-8").read()
    assert text.lstrip().startswith("GNU GENERAL PUBLIC LICENSE\n                       Version 3, 29 June 2007")
    assert "any later version" in text and "END OF TERMS AND CONDITIONS" in text


def test_manifest_network_permission_names_every_reason_to_go_online():
    import tomllib

    network = tomllib.load(open(os.path.join(ROOT, "blender_manifest.toml"), "rb"))["permissions"]["network"]
    for reason in ("Hugging Face", "pip", "remote backend"):
        assert reason in network, network
    assert len(network) <= 64 and network[-1].isalnum()  # Blender's rule for permission texts


def test_remote_url_default_is_the_port_archviz_serve_listens_on():
    import argparse
    import urllib.parse

    from archviz_controlnet.blender import properties
    from archviz_controlnet.backend.cli import serve as cli_serve

    parser = argparse.ArgumentParser()
    cli_serve.add_arguments(parser)
    serve_port = parser.parse_args([]).port
    url = properties.ARCHVIZ_AP_preferences.__annotations__["url"].keywords["default"]
    assert urllib.parse.urlsplit(url).port == serve_port == 7860
