"""Sweeps on Ray: a local Ray instance with 2 CPU actors, tiny models, 64 px, 3-4 steps.

The same job runs through the backend's own worker (``Worker.run``: resume check, PNG
metadata, manifest, contact sheet) once with the local engine and once with
``RayEngine``; the files must match byte for byte in pixels and metadata. One actor is
killed in the middle of a batch: the sweep still ends with every image made exactly once.
A second run resumes (nothing new), and ``archviz serve`` with ``ARCHVIZ_RAY`` set serves
a sweep to the client the add-on and ``archviz sweep`` use, with one progress stream.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")
torch = pytest.importorskip("torch")

from archviz_controlnet.backend.engine.runner import Engine  # noqa: E402
from archviz_controlnet.backend.server.outputs import OutputRoots  # noqa: E402
from archviz_controlnet.backend.engine.sweep import build_plan  # noqa: E402
from archviz_controlnet.backend.server.worker import Worker  # noqa: E402
from archviz_controlnet.core import jobs as J  # noqa: E402
from archviz_controlnet.core.presets import load_presets  # noqa: E402
from backend_support import REPO, TEST_HOME, b64, base_env, depth_image, lines_image, read_png, running_server  # noqa: E402

STYLES = ["modern", "japandi"]
SEEDS = [0, 1, 2, 3]


def job_dict(out, steps=3, max_batch=2, **over):
    job = {"model": {"family": "tiny"},
           "controls": [{"type": "depth", "image": b64(depth_image()), "scale": 0.9},
                        {"type": "lines", "image": b64(lines_image()), "scale": 0.6, "start": 0.2}],
           "styles": STYLES, "seeds": SEEDS, "steps": steps, "max_batch": max_batch, "output_dir": str(out),
           "name_prefix": "Cam", "skip_existing": True}
    job.update(over)
    return job


@pytest.fixture(scope="module")
def env():
    with pytest.MonkeyPatch.context() as mp:
        # Set before Ray starts: its actors inherit this environment.
        for key, value in base_env().items():
            if key.startswith(("ARCHVIZ_", "HF_", "OMP_")):
                mp.setenv(key, value)
        mp.delenv("ARCHVIZ_RAY", raising=False)
        torch.set_num_threads(1)
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        yield


@pytest.fixture(scope="module")
def ray_engine(env):
    from archviz_controlnet.distributed.engine import RayEngine

    engine = RayEngine("local", actors=2, device="cpu")
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def local_engine(env):
    return Engine("cpu")


@pytest.fixture(scope="module")
def presets():
    return load_presets(include_user=False)


def run_job(engine, job, presets, root):
    worker = Worker(engine, OutputRoots(root))
    record = worker.submit(build_plan(J.Job.from_dict(job), presets, engine.dtype_name))
    worker.run(record)
    assert record.state == "done", record.error
    return record


def pngs(folder):
    return sorted(p for p in os.listdir(folder) if p.endswith(".png") and "contact_sheet" not in p)


def assert_same_files(a, b):
    assert pngs(a) == pngs(b) and len(pngs(a)) == len(STYLES) * len(SEEDS)
    for name in pngs(a):
        (pa, ta), (pb, tb) = read_png(os.path.join(a, name)), read_png(os.path.join(b, name))
        assert np.array_equal(pa, pb), name
        assert ta == tb, name  # prompt, seed, params_sha256, the whole archviz block
    sheet_a, _ = read_png(os.path.join(a, "Cam_contact_sheet.png"))
    sheet_b, _ = read_png(os.path.join(b, "Cam_contact_sheet.png"))
    assert np.array_equal(sheet_a, sheet_b)
    ma, mb = (json.load(open(os.path.join(d, "Cam_manifest.json"))) for d in (a, b))
    assert ma["state"] == mb["state"] == "done"
    for key in ("done", "missing", "model", "dtype", "styles", "seeds", "style_settings"):
        assert ma[key] == mb[key], key

    def images(m):  # each entry names the job that made it: two runs, two job ids
        assert all(e["job_id"] == m["job_id"] for e in m["images"])
        return [{k: v for k, v in e.items() if k != "job_id"} for e in m["images"]]

    assert images(ma) == images(mb)
    assert {e["status"] for e in mb["images"]} == {"done"}
    assert all(len(e["params_sha256"]) == 64 for e in mb["images"])


def test_ray_sweep_matches_a_local_sweep(ray_engine, local_engine, presets, tmp_path):
    local = run_job(local_engine, job_dict(tmp_path / "local"), presets, tmp_path)
    distributed = run_job(ray_engine, job_dict(tmp_path / "ray"), presets, tmp_path)
    assert_same_files(tmp_path / "local", tmp_path / "ray")
    # Both actors worked (4 batches of 2 over 2 idle actors), nothing was retried.
    stats = ray_engine.stats
    assert stats["units"] == 4 and sorted(stats["images_by_actor"]) == [0, 1]
    assert sum(stats["images_by_actor"].values()) == 8 and stats["retried_units"] == 0
    # One progress count for the whole job: every step of every batch, once.
    assert distributed.steps_done == distributed.steps_total == local.steps_total == 4 * 3
    assert str(ray_engine.device).startswith("ray: 2 actor(s) on cpu")


def test_killed_actor_mid_batch_loses_and_repeats_nothing(ray_engine, local_engine, presets, tmp_path):
    killed = []

    def kill_on_first_step(label, event):
        # The first denoising step of some batch: its image cannot have left the actor
        # yet (at most 2 events run ahead of the driver), so that batch must be redone.
        if event[0] == "step" and not killed:
            slot = next(s for s in ray_engine.slots if s.label == label)
            killed.append(slot.number)
            ray.kill(slot.actor)

    ray_engine.observer = kill_on_first_step
    try:
        record = run_job(ray_engine, job_dict(tmp_path / "ray", steps=4, max_batch=1), presets, tmp_path)
    finally:
        ray_engine.observer = None
    stats = ray_engine.stats
    assert killed and stats["lost_actors"] == killed
    assert stats["retried_units"] == 1 and stats["duplicates_dropped"] == 0
    survivor = 1 - killed[0]
    assert sum(stats["images_by_actor"].values()) == 8  # each image arrived (and was written) once
    assert stats["images_by_actor"][survivor] >= 5  # the lost batch plus its own share
    assert sorted(record.images) == list(range(8)) and not any(i["skipped"] for i in record.images.values())
    assert [s.state for s in ray_engine.slots if s.number == killed[0]][0] in ("dead", "probing")
    run_job(local_engine, job_dict(tmp_path / "local", steps=4, max_batch=1), presets, tmp_path)
    assert_same_files(tmp_path / "local", tmp_path / "ray")


def test_resume_makes_nothing_new_and_a_new_job_gets_a_full_pool(ray_engine, presets, tmp_path):
    out = tmp_path / "ray"
    # One image per batch: a remade image then sees the same batch as the first time, so
    # its bytes are identical (batch composition moves floats by ~1e-6 on CPU).
    run_job(ray_engine, job_dict(out, max_batch=1), presets, tmp_path)
    before = {name: (out / name).read_bytes() for name in pngs(out)}
    mtimes = {name: os.stat(out / name).st_mtime_ns for name in before}
    again = run_job(ray_engine, job_dict(out, max_batch=1), presets, tmp_path)
    assert all(info["skipped"] for info in again.images.values()) and len(again.images) == 8
    assert {name: os.stat(out / name).st_mtime_ns for name in before} == mtimes
    # Two images gone: only those two are made again, with the same bytes.
    for name in ("Cam_modern_s1.png", "Cam_japandi_s2.png"):
        (out / name).unlink()
    partial = run_job(ray_engine, job_dict(out, max_batch=1), presets, tmp_path)
    made = sorted(info["file"] for info in partial.images.values() if not info["skipped"])
    assert made == ["Cam_japandi_s2.png", "Cam_modern_s1.png"]
    assert {name: (out / name).read_bytes() for name in pngs(out)} == before
    assert all(s.state != "dead" for s in ray_engine.slots)  # an actor killed before was replaced


def test_serve_with_archviz_ray_streams_one_progress_to_the_client(env, local_engine, presets, tmp_path):
    """What the add-on and ``archviz sweep --ray`` do: a local backend started with
    ARCHVIZ_RAY set, driven by core.sweep.SweepRunner (the events Blender's task drains)."""
    from archviz_controlnet.core.client import Client
    from archviz_controlnet.core.sweep import SweepRunner

    server_env = {**base_env(), "ARCHVIZ_RAY": "local", "ARCHVIZ_RAY_ACTORS": "2"}
    with running_server(["--output-root", str(tmp_path)], env=server_env, timeout=180) as server:
        health = server.get("/v1/health").json()
        assert health["device"].startswith("ray: 2 actor(s) on cpu") and health["dtype"] == "float32"
        runner = SweepRunner(Client(server.url), [("Cam", job_dict(tmp_path / "served"))], str(tmp_path / "served"),
                             poll_interval=0.1)
        events = []
        assert runner.run(events.append) == "done"
    kinds = [e.kind for e in events]
    assert kinds.count("image") == 8 and kinds[-1] == "done" and "error" not in kinds
    fractions = [e.fraction for e in events if e.kind == "progress"]
    assert fractions == sorted(fractions) and events[-1].fraction == 1.0
    run_job(local_engine, job_dict(tmp_path / "local"), presets, tmp_path)
    assert_same_files(tmp_path / "local", tmp_path / "served")


def test_ray_is_loaded_only_when_chosen():
    """Choosing Ray is a command-line option: parsing it loads neither ray nor torch, and
    nothing under distributed/ touches bpy."""
    code = ("import sys, argparse; from archviz_controlnet.distributed import options; "
            "p = argparse.ArgumentParser(); options.add_arguments(p); a = p.parse_args(['--ray', 'auto']); "
            "assert a.ray == 'auto' and options.environment(a)['ARCHVIZ_RAY'] == 'auto'; "
            "assert p.parse_args(['--ray']).ray == 'local' and p.parse_args([]).ray is None; "
            "print(sorted(m for m in ('ray', 'torch', 'bpy') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if k != "ARCHVIZ_RAY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    for name in os.listdir(REPO / "distributed"):
        if name.endswith(".py"):
            text = (REPO / "distributed" / name).read_text()
            assert "import bpy" not in text and "from bpy" not in text, name
