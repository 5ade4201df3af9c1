"""The engine's device: ``auto`` picks cuda, then mps, then cpu (the pure choice is tested
per case in test_devices.py), and a backend on the CPU while the machine has a GPU says
so in the log, ``/v1/health``, ``archviz sweep`` and the panel.

No NVIDIA GPU can exist here. Where a test needs one, a ``nvidia-smi`` on PATH prints what
the real one prints for an RTX 4090 (the query form the code asks for); torch, the server,
the sweep and Blender are the real ones, and the real torch here is a CPU-only build."""

import os
import subprocess
import sys

import pytest
import torch

from archviz_controlnet.backend.engine import runner as E
from archviz_controlnet.core import devices as D
from backend_support import TEST_HOME, base_env, running_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")
RTX = "NVIDIA GeForce RTX 4090, 572.83, 24564 MiB"


@pytest.fixture
def gpu_path(tmp_path):
    """A PATH whose ``nvidia-smi`` reports an RTX 4090 with driver 572.83."""
    folder = tmp_path / "nvidia-bin"
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho '{RTX}'\n")
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


def test_pick_device_with_this_torch():
    assert E.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else
                                          "mps" if E.mps_available() else "cpu")
    assert E.pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="--device cuda was asked for but torch sees no CUDA device"):
            E.pick_device("cuda")
    if not E.mps_available():
        with pytest.raises(RuntimeError, match="--device mps was asked for"):
            E.pick_device("mps")


def test_engine_dtype_follows_the_device():
    engine = E.Engine("cpu")
    assert engine.dtype == torch.float32 and engine.dtype_name == "float32"
    assert E.EngineOptions.defaults("mps") == E.EngineOptions.defaults("cuda")  # CPU-measured options stay on the CPU


def test_backend_device_warning_uses_torchs_own_build():
    rtx = D.NvidiaSmi(D.parse_nvidia_smi(RTX))
    warning = E.device_warning(torch.device("cpu"), "auto", rtx)
    if torch.version.cuda is None:  # this machine's CPU-only torch
        assert f"torch {torch.__version__} is a CPU-only build" in warning and "RTX 4090" in warning
    if sys.platform != "darwin":  # (an Apple Silicon Mac always has a GPU)
        assert E.device_warning(torch.device("cpu"), "auto", D.NvidiaSmi(error="nvidia-smi not found")) == ""
    assert E.device_warning(torch.device("cuda"), "auto", rtx) == ""


def test_health_and_log_warn_when_a_gpu_is_not_used(gpu_path):
    env = dict(base_env(), PATH=gpu_path)
    with running_server(["--device", "auto"], env=env) as server:
        health = server.get("/v1/health").json()
        assert health["device"] == "cpu"
        assert health["device_warning"].startswith("running on the CPU although this machine has "
                                                   "NVIDIA GeForce RTX 4090")
        assert "CPU-only build" in health["device_warning"]
    assert any("WARNING archviz.backend: running on the CPU although this machine has NVIDIA GeForce RTX 4090"
               in line for line in server.log)


def test_health_has_no_warning_without_a_gpu():
    if D.query_nvidia_smi().gpus:
        pytest.skip("this machine has an NVIDIA GPU")
    with running_server(["--device", "auto"]) as server:
        assert server.get("/v1/health").json()["device_warning"] == ""


@pytest.fixture(scope="module")
def small_blend(tmp_path_factory):
    pytest.importorskip("bpy")
    path = tmp_path_factory.mktemp("scene") / "interior.blend"
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "build_interior.py"), "--out", str(path)],
                   check=True, capture_output=True, timeout=120)
    return str(path)


def test_cli_sweep_prints_the_warning(small_blend, gpu_path, tmp_path):
    env = dict(os.environ, ARCHVIZ_HOME=str(TEST_HOME), OMP_NUM_THREADS="1", PATH=gpu_path)
    proc = subprocess.run([ARCHVIZ, "sweep", small_blend, "--styles", "modern", "--seeds", "0", "--model", "tiny",
                           "--long-side", "64", "--steps", "1", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert ("archviz sweep: warning: running on the CPU although this machine has NVIDIA GeForce RTX 4090"
            in proc.stderr)
    assert "1 new image(s)" in proc.stdout  # it still runs: a warning, not a refusal


def test_panel_shows_the_warning(small_blend, gpu_path, tmp_path, monkeypatch):
    bpy = pytest.importorskip("bpy")
    import archviz_controlnet
    from archviz_controlnet import panels
    from archviz_controlnet.blender import backend as blender_backend
    from archviz_controlnet.operators import generate as gen

    monkeypatch.setenv("PATH", gpu_path)
    monkeypatch.setenv("ARCHVIZ_HOME", str(TEST_HOME))
    monkeypatch.setenv("ARCHVIZ_MODEL", "tiny")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    blender_backend.stop_started_backends()  # a backend started before without this PATH
    bpy.ops.wm.open_mainfile(filepath=small_blend)
    archviz_controlnet.register()
    try:
        settings = bpy.context.scene.archviz
        settings.long_side, settings.steps, settings.output_dir = 64, 1, str(tmp_path / "out")
        assert bpy.ops.archviz.generate() == {"FINISHED"}
        task = gen.Task.current
        assert task.device_warning.startswith("running on the CPU although this machine has NVIDIA GeForce RTX 4090")
        labels = []

        class Layout:
            def __getattr__(self, name):
                def record(*args, **kwargs):
                    if name == "label":
                        labels.append((kwargs.get("text"), kwargs.get("icon")))
                    return Layout()
                return record

        panels.draw_progress(Layout(), task)
        first = next(i for i, (text, _icon) in enumerate(labels) if text.startswith("running on the CPU"))
        assert labels[first][0].startswith("running on the CPU although this machine has NVIDIA GeForce RTX 4090")
        assert labels[first][1] == "ERROR"
        shown = " ".join(text for text, _icon in labels[first:])
        assert shown == task.device_warning  # the whole warning, wrapped over labels
    finally:
        gen.Task.current = None
        blender_backend.stop_started_backends()
        archviz_controlnet.unregister()
