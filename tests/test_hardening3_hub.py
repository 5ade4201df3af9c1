"""Hardening, round three: a hostile or broken hub, against the real huggingface_hub client
and the loopback hub of tests/fake_hub.py (or a socket that accepts and never answers). A
commit id that is a path, a body that never ends, a hub that never answers (for
``archviz models download`` and for a job a user cancels on a real ``archviz serve``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from archviz_controlnet.backend.models import registry as M
from backend_support import TEST_HOME, b64, depth_image, running_server
from fake_hub import FakeHub, SilentHub

ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")
DEPTH = M.SD15_CONTROLNETS["depth"]
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _env(url: str, home: Path, **extra) -> dict:
    env = dict(os.environ)
    for key in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE", "HF_ENDPOINT", "TRANSFORMERS_OFFLINE"):
        env.pop(key, None)
    env.update({"HF_ENDPOINT": url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1", "ARCHVIZ_HOME": str(TEST_HOME), **extra})
    return env


def _download(env, *names, timeout=120):
    return subprocess.run([ARCHVIZ, "models", "download", "--precision", "fp32", *names], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _one_line(proc) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


def test_a_commit_id_that_is_a_path_writes_nothing(repos, tmp_path):
    home = tmp_path / "deep" / "er" / "hf"
    with FakeHub(repos) as hub:
        hub.shas[DEPTH] = "../../../../../x"
        line = _one_line(_download(_env(hub.url, home), "sd15-depth"))
    assert "answered a commit id that is not 40 hex digits ('../../../../../x')" in line, line
    assert DEPTH in line and "nothing was written" in line
    assert list(tmp_path.rglob("x.json")) == [] and list(tmp_path.rglob("x")) == []
    assert not (home / "hub" / f"models--{DEPTH.replace('/', '--')}" / "refs" / "main").exists()


def test_a_body_that_never_ends_stops_at_the_listed_size(repos, tmp_path):
    home = tmp_path / "hf"
    cap = 256 * 2**20  # the fake hub's own bound, so the test ends even when the client never stops
    with FakeHub(repos) as hub:
        hub.listed_sizes[(DEPTH, WEIGHTS)] = 4096
        hub.endless[f"{DEPTH}/{WEIGHTS}"] = cap
        line = _one_line(_download(_env(hub.url, home), "sd15-depth"))
        sent = hub.sent.get(f"{DEPTH}/{WEIGHTS}", 0)
    written = sum(p.stat().st_size for p in home.rglob("*") if p.is_file())
    print(f"endless body: hub sent {sent} bytes, {written} bytes on disk in the cache")
    assert f"{DEPTH} {WEIGHTS}: the hub sent more than the 4096 bytes (4.1 KB) its listing gives" in line, line
    assert written < 64 * 1024  # the listing and config; no weights past the listed 4 KB
    assert not list(home.rglob("*.incomplete"))
    assert sent < cap


def test_a_hub_that_never_answers_is_one_line_after_the_timeout(tmp_path):
    with SilentHub() as url:
        env = _env(url, tmp_path / "hf", ARCHVIZ_HUB_TIMEOUT="1", ARCHVIZ_HUB_TRIES="2")
        line = _one_line(_download(env, "sd15-depth", timeout=60))
    assert f"could not be fetched: the hub at {url} did not answer in 1 s (2 tries)" in line, line


def test_cancel_interrupts_a_listing_and_the_next_job_runs(tmp_path):
    job = {"model": "sd15", "controls": [{"type": "depth", "image": b64(depth_image())}], "styles": ["modern"],
           "seeds": [0], "steps": 1, "width": 64, "height": 64}
    with SilentHub() as url:
        # A long timeout: only the cancel can end the listing within the test's waits.
        env = _env(url, tmp_path / "hf", ARCHVIZ_HUB_TIMEOUT="600", ARCHVIZ_OUTPUT_DIR=str(tmp_path))
        with running_server(["--output-root", str(tmp_path)], env=env) as server:
            stuck = server.submit({**job, "output_dir": str(tmp_path / "a")})
            server.wait(stuck, timeout=60, states=("running", "done", "failed", "cancelled"))
            assert server.delete(f"/v1/jobs/{stuck}").status_code == 200
            assert server.wait(stuck, timeout=60)["state"] == "cancelled"
            tiny = server.submit({**job, "model": "tiny", "output_dir": str(tmp_path / "b")})
            status = server.wait(tiny, timeout=120)
            assert status["state"] == "done", status
            assert server.alive()
