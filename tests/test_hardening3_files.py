"""Hardening, round three: runs that write into one folder at once. ``archviz passes``
renders into a unique temporary EXR and renames every file into place, under a lock on
the folder: a second run waits for the first (and says so) instead of reading its
half-written ``passes.exr`` or clashing on a shared temporary name. Real Blender renders
(64 px, one sample) into one folder."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from archviz_controlnet.core.exr import read_exr
from archviz_controlnet.core.png import folder_lock
from blender_support import SCENE_SCRIPT

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    pytest.importorskip("bpy")
    path = tmp_path_factory.mktemp("scene") / "room.blend"
    subprocess.run([sys.executable, "-c", SCENE_SCRIPT, str(ROOT / "tests"), str(path)], check=True,
                   capture_output=True, timeout=120)
    return path


def passes(scene, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "archviz_controlnet.cli", "passes", str(scene), "--out", str(out),
                             "--long-side", "64", "--supersample", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _whole(out: Path) -> None:
    assert {"passes.exr", "depth.png", "depth.npy", "passes.json"} <= {p.name for p in out.iterdir()}
    channels = read_exr(str(out / "passes.exr"))  # reads back whole
    assert channels
    assert np.load(out / "depth.npy").shape == (64, 64)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_run_waits_for_another_writing_into_the_same_passes_folder(scene, tmp_path):
    out = tmp_path / "passes"
    out.mkdir()
    err: list[str] = []
    with folder_lock(str(out)):  # another run holds the folder
        proc = passes(scene, out)
        reader = threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")), daemon=True)
        reader.start()
        deadline = time.monotonic() + 120  # generous: only to end the test if the run never waits
        while not any("waiting for another run writing into" in line for line in err):
            assert proc.poll() is None, f"the run did not wait for the folder's lock: {''.join(err)[-2000:]}"
            assert time.monotonic() < deadline, "".join(err)[-2000:]
            time.sleep(0.05)
        assert not (out / "passes.exr").exists()  # nothing written while the other run holds it
    assert proc.wait(timeout=120) == 0, "".join(err)[-2000:]
    reader.join(timeout=10)
    assert f"archviz passes: waiting for another run writing into {out}" in "".join(err)
    _whole(out)


def test_three_renders_into_one_folder_at_once_all_finish_whole(scene, tmp_path):
    out = tmp_path / "passes"
    procs = [passes(scene, out) for _ in range(3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [code for code, _err in results] == [0, 0, 0], results
    _whole(out)
