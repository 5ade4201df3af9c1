"""Hardening, round three: preset files a careless colleague (or an attacker) leaves in a
server's preset folder. Deep nesting, a huge file, a prompt past the jobs' limit: each is
one line naming the file in ``archviz presets --check``, and a real ``archviz serve``
keeps answering health, presets and jobs with the bad files listed. Presets are parsed once
per change of the folder, not per request."""

import os
import subprocess
import sys

from archviz_controlnet.core import presets as P
from backend_support import b64, base_env, depth_image, running_server

ARCHVIZ = [sys.executable, "-m", "archviz_controlnet.cli"]


def _bad_presets(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "deep.toml").write_text('prompt = "x"\ntags = ' + "[" * 3000 + "]" * 3000 + "\n")
    (folder / "huge.toml").write_text('prompt = "' + "brick " * (10 * 2**20 // 6) + '"\n')
    (folder / "long.toml").write_text('prompt = "' + "a" * 4001 + '"\n')
    (folder / "many.toml").write_text('prompt = "x"\ncfg = 1e400\n')
    (folder / "good.toml").write_text('prompt = "a good room"\ncfg = 5.0\n')
    return folder


def test_presets_check_says_one_line_per_bad_file(tmp_path):
    folder = _bad_presets(tmp_path / "presets")
    expected = {
        "deep.toml": "tables and arrays nested 3000 levels deep; at most 8 are accepted",
        "huge.toml": "a preset may be at most 65536 bytes (64 KiB)",
        "long.toml": "prompt: is 4001 characters long; at most 4000 are accepted",
        "many.toml": "cfg: must be between 0.0 and 50",
    }
    for name, words in expected.items():
        proc = subprocess.run([*ARCHVIZ, "presets", "--check", str(folder / name)], capture_output=True, text=True,
                              timeout=60, env=base_env())
        assert proc.returncode == 1, (name, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
        assert str(folder / name) in proc.stderr and words in proc.stderr, proc.stderr
    ok = subprocess.run([*ARCHVIZ, "presets", "--check", str(folder / "good.toml")], capture_output=True, text=True,
                        timeout=60, env=base_env())
    assert ok.returncode == 0 and "ok  good" in ok.stdout


def test_a_server_with_bad_presets_answers_and_parses_once_per_change(tmp_path):
    folder = _bad_presets(tmp_path / "presets")
    env = {**base_env(), "ARCHVIZ_OUTPUT_DIR": str(tmp_path / "out")}
    job = {"model": "tiny", "controls": [{"type": "depth", "image": b64(depth_image())}], "styles": ["good"],
           "seeds": [0], "steps": 1, "output_dir": str(tmp_path / "out" / "a")}
    with running_server(["--presets", str(folder)], env=env) as server:
        health = server.get("/v1/health")
        assert health.status_code == 200, health.text
        errors = health.json()["preset_errors"]
        assert {os.path.basename(e.split(":")[0]) for e in errors} == {"deep.toml", "huge.toml", "long.toml",
                                                                       "many.toml"}
        listed = server.get("/v1/presets")
        assert listed.status_code == 200 and "good" in {p["name"] for p in listed.json()["presets"]}
        assert server.post("/v1/jobs", job).status_code == 202
        assert len(listed.content) < 100_000  # the 10 MB prompt is not echoed back
    # In-process: the cache parses again only when a file changes.
    cache = P.PresetCache([folder], include_user=False)
    first = cache.get()
    assert cache.get() is first and cache.parses == 1
    (folder / "good.toml").write_text('prompt = "a better room"\n')
    again = cache.get()
    assert cache.parses == 2 and again[0]["good"].prompt == "a better room"
