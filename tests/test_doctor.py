"""``archviz doctor`` on this machine (a real subprocess, the real probe in the backend's
Python, huggingface_hub's real cache scan), on a Hugging Face cache that holds the sd15
family (tiny weights laid out under the real repo ids), and the verdict as a pure function."""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from archviz_controlnet.backend.models import registry as M
from archviz_controlnet.backend.models import tiny
from archviz_controlnet.core import devices as D
from archviz_controlnet.core import doctor
from backend_support import TEST_HOME

COMMIT = "1" * 40


def run_doctor(env, *args):
    return subprocess.run([sys.executable, "-m", "archviz_controlnet.cli", "doctor", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def doctor_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(ARCHVIZ_HOME=str(TEST_HOME), HF_HOME=str(tmp_path / "hf"), XDG_DATA_HOME=str(tmp_path / "data"))
    env.update(extra)
    return env


def fields(stdout):
    return {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in stdout.splitlines()
            if ":" in line and not line.startswith(" ")}


def put_in_hf_cache(hub, repo_id, folder, drop=()):
    """``folder``'s files as ``repo_id`` in a Hugging Face cache, laid out as
    huggingface_hub does: content-addressed blobs, a snapshot of symlinks, refs/main."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    for path, _dirs, names in os.walk(folder):
        for name in names:
            src = os.path.join(path, name)
            rel = os.path.relpath(src, folder)
            if rel in drop:
                continue
            data = open(src, "rb").read()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = repo / "snapshots" / COMMIT / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)


def tiny_sd15_cache(hub, drop_base=()):
    """The sd15 family (base + depth + lineart ControlNets) from the tiny weights."""
    pairs = [(M.SD15_BASE, "base"), (M.SD15_CONTROLNETS["depth"], "controlnet-depth"),
             (M.SD15_CONTROLNETS["lines"], "controlnet-lineart")]
    for repo_id, name in pairs:
        folder = tiny.ensure_tiny(tiny.tiny_path("sd15", name))
        put_in_hf_cache(hub, repo_id, folder, drop_base if name == "base" else ())


def test_doctor_on_this_machine(tmp_path):
    """No NVIDIA GPU, CPU torch, an empty Hugging Face cache: no real generation (exit 1),
    with the fix, and --model tiny works offline."""
    env = doctor_env(tmp_path)
    env.pop("ARCHVIZ_HOME")  # this machine's own tiny folder, whatever its state
    out = run_doctor(env)
    assert out.returncode == 1, out.stdout + out.stderr
    f = fields(out.stdout)
    import platform

    import torch

    assert f["OS"].startswith(platform.system()) and f["OS"].endswith(platform.machine())
    assert f["Python"].startswith(platform.python_version()) and f["Backend Python"] == sys.executable
    nvidia = D.query_nvidia_smi()
    if torch.version.cuda is None and not torch.cuda.is_available():  # this machine's CPU torch
        device = platform.processor() or platform.machine()
        assert f["torch"] == f"{torch.__version__} (CPU-only build); device cpu ({device})"
    assert f["torch"].startswith(torch.__version__)
    if nvidia.gpus:
        assert f["GPU"].startswith(nvidia.gpus[0].name) and f["Driver"] == nvidia.gpus[0].driver
    else:  # no NVIDIA driver here
        assert f["GPU"] == f"none ({nvidia.error})" and f["Driver"] == "-" and f["VRAM"] == "-"
    assert f["HF cache"].startswith(f"{tmp_path / 'hf' / 'hub'} (") and f["HF cache"].endswith(" GB free)")
    assert f["Model sd15"] == "not cached (0/3 repos complete)"
    assert f["Model sdxl"] == "not cached (0/4 repos complete)"
    assert f["Model tiny"].startswith("works offline (--model tiny")
    assert f["HF token"] == "no" and f["Hub access"] == "online allowed"
    assert f["Backend venv"] == f"{tmp_path / 'data' / 'archviz' / 'backend-venv'} (not created yet)"
    assert "ERROR: no real model family is cached" in out.stdout
    assert "  fix: archviz models download sd15" in out.stdout
    assert out.stdout.rstrip().endswith("verdict: a real generation cannot run here yet; --model tiny works offline")


def test_doctor_with_sd15_cached_can_generate_and_never_prints_the_token(tmp_path):
    tiny_sd15_cache(tmp_path / "hf" / "hub")
    secret = "hf_" + "x" * 30
    out = run_doctor(doctor_env(tmp_path, HF_TOKEN=secret, HF_HUB_OFFLINE="1"))
    assert out.returncode == 0, out.stdout + out.stderr
    f = fields(out.stdout)
    assert f["Model sd15"].startswith("cached (") and f["Model sdxl"].startswith("not cached")
    assert f["HF token"] == "yes" and secret not in out.stdout + out.stderr
    assert f["Hub access"] == "offline: HF_HUB_OFFLINE=1"
    assert "ERROR" not in out.stdout
    assert out.stdout.rstrip().endswith("verdict: a real generation can run here")


def test_doctor_finds_an_incomplete_snapshot(tmp_path):
    tiny_sd15_cache(tmp_path / "hf" / "hub", drop_base=("tokenizer/merges.txt",))
    out = run_doctor(doctor_env(tmp_path, HF_HUB_OFFLINE="1"), "--json")
    assert out.returncode == 1
    import json

    report = json.loads(out.stdout)
    sd15 = report["facts"]["probe"]["families"]["sd15"]
    assert [r["complete"] for r in sd15["repos"]] == [False, True, True]
    problem = "tokenizer/ has no vocab.json + merges.txt (or tokenizer.json)"  # hub.check_loadable's words
    assert sd15["repos"][0]["missing"] == [problem]
    (error,) = [f for f in report["findings"] if f["severity"] == "error"]
    assert f"sd15: {M.SD15_BASE}: {problem}" in error["problem"]
    assert error["fix"].startswith("offline is on (HF_HUB_OFFLINE): allow going online, then archviz models "
                                   "download sd15")


def test_doctor_on_a_python_without_the_backend(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python")
    out = run_doctor(doctor_env(tmp_path), "--python", python)
    assert out.returncode == 1
    f = fields(out.stdout)
    assert f["Backend Python"] == python and f["torch"].startswith("not usable:")
    assert f["Model sd15"] == "unknown (the backend check did not run)"
    assert f"ERROR: the backend's Python cannot run the backend check: {python} -m " in out.stdout
    assert "fix: click Set up Backend in the add-on preferences" in out.stdout


# ------------------------------------------------------------------ the verdict, pure

def facts(**changes):
    base = {"os": "Windows 11", "system": "Windows", "machine": "AMD64", "python": "3.11.9", "backend_python": "py",
            "probe": {"torch": {"ok": True, "torch": "2.13.0+cpu", "cuda_build": None, "device": "cpu",
                                "device_name": "cpu"},
                      "modules": {"diffusers": "0.42.1", "uvicorn": "0.54.0"},
                      "families": {"sd15": {"ready": True, "repos": [{"repo": M.SD15_BASE, "cached": True,
                                                                      "complete": True, "missing": [],
                                                                      "bytes": 5 * 10**9}]}},
                      "tiny": {"buildable": True}},
            "probe_error": "", "gpus": [], "nvidia_error": "nvidia-smi not found", "hf_cache": "C:/hf/hub",
            "hf_free_bytes": 100 * 10**9, "token": False, "offline_env": False, "offline_switch": False,
            "blender_online": None, "venv_dir": "C:/venv", "venv_exists": True}
    base.update(changes)
    return base


def test_verdict_gpu_unused_is_a_warning_with_its_fix_not_a_failure():
    rtx = [D.GpuInfo("NVIDIA GeForce RTX 4090", "572.83", 24564).__dict__]
    findings, ok = doctor.diagnose(facts(gpus=rtx))
    assert ok
    (warning,) = findings
    assert warning.severity == "warning" and "RTX 4090" in warning.problem and "CPU-only build" in warning.problem
    assert "Set up Backend again" in warning.fix
    lines = doctor.report_lines(facts(gpus=rtx), findings, ok)
    assert "GPU:            NVIDIA GeForce RTX 4090" in lines and "VRAM:           24.0 GB" in lines
    assert "Driver:         572.83" in lines


def test_verdict_offline_in_blender_and_low_disk():
    f = facts(blender_online=False, hf_free_bytes=2 * 10**9,
              probe={**facts()["probe"], "families": {"sd15": {"ready": False, "repos": []}}})
    findings, ok = doctor.diagnose(f)
    assert not ok
    error = next(x for x in findings if x.severity == "error")
    assert "Blender's Allow Online Access" in error.fix
    assert any(x.severity == "warning" and "only 2.0 GB free" in x.problem for x in findings)
    assert "Hub access:     offline: Blender's Allow Online Access is off" in doctor.report_lines(f, findings, ok)


def test_preferences_doctor_button_runs_the_same_report(tmp_path, monkeypatch):
    bpy = pytest.importorskip("bpy")
    import addon_utils

    from archviz_controlnet.blender import preferences, properties
    from archviz_controlnet.blender import runs as setup

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("archviz_controlnet", default_set=True)
    try:
        prefs = properties.preferences()
        prefs.python = sys.executable
        prefs.hf_cache = str(tmp_path / "hf")
        prefs.offline = True
        assert bpy.ops.archviz.doctor() == {"FINISHED"}
        report = setup.doctor
        assert report.state == "done" and not report.can_generate
        assert "Model sd15:     not cached (0/3 repos complete)" in report.lines
        blender = "" if bpy.app.online_access else ", Blender's Allow Online Access is off"  # off in the bpy module
        assert "Hub access:     offline: HF_HUB_OFFLINE=1, the add-on's Offline switch" + blender in report.lines
        assert f"HF cache:       {tmp_path / 'hf' / 'hub'}" in next(l for l in report.lines if l.startswith("HF cache"))
        labels = []

        class Layout:
            def __getattr__(self, name):
                def record(*args, **kwargs):
                    if name == "label":
                        labels.append(kwargs["text"])
                    return Layout()
                return record

        preferences.draw_preferences(prefs, bpy.context, Layout())
        assert "verdict: a real generation cannot run here yet; --model tiny works offline" in labels
    finally:
        addon_utils.disable("archviz_controlnet", default_set=True)


def test_verdict_for_blenders_own_python():
    """numpy but no torch and no hub client: what the probe finds in Blender's Python."""
    probe = {"torch": {"ok": False, "error": "ModuleNotFoundError: No module named 'torch'"},
             "modules": {"diffusers": None, "huggingface_hub": None, "uvicorn": None},
             "hub_error": "ModuleNotFoundError: No module named 'huggingface_hub'", "tiny": {"buildable": False}}
    f = facts(probe=probe, backend_python="/blender/python/bin/python3.11")
    findings, ok = doctor.diagnose(f)
    assert not ok
    assert [x.problem for x in findings] == [
        "torch does not import in /blender/python/bin/python3.11: ModuleNotFoundError: No module named 'torch'",
        "the backend's Python lacks diffusers, huggingface_hub, uvicorn"]
    assert all(x.fix.startswith("click Set up Backend in the add-on preferences") for x in findings)
    lines = doctor.report_lines(f, findings, ok)
    assert lines[-1] == "verdict: a real generation cannot run here yet"
    assert "Model tiny:     cannot run (the backend packages are missing)" in lines
