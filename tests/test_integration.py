"""Blender <-> backend end to end: real bpy, a real backend process on loopback, tiny models.

The operators start their own local backend (the project venv's interpreter) the first
time they need one and reuse it; tests that kill it check that the next run starts anew.
"""

import os
import subprocess
import sys
import time

import pytest

bpy = pytest.importorskip("bpy")

import archviz_controlnet  # noqa: E402
from archviz_controlnet.blender import backend as blender_backend  # noqa: E402
from archviz_controlnet.blender import tasks  # noqa: E402
from archviz_controlnet.core.exr import read_exr  # noqa: E402
from archviz_controlnet.operators import generate as gen  # noqa: E402
from backend_support import TEST_HOME  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")


@pytest.fixture(scope="module")
def example_blend(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "interior.blend"
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "build_interior.py"), "--out", str(path)],
                   check=True, capture_output=True, timeout=120)
    return str(path)


@pytest.fixture
def addon(example_blend, tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHVIZ_HOME", str(TEST_HOME))
    monkeypatch.setenv("ARCHVIZ_MODEL", "tiny")
    # Tiny models on a busy 2-core machine run faster single-threaded (the backend
    # started by the operators inherits this).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bpy.ops.wm.open_mainfile(filepath=example_blend)
    archviz_controlnet.register()
    settings = bpy.context.scene.archviz
    settings.long_side = 64
    settings.steps = 2
    settings.output_dir = str(tmp_path / "out")
    gen.Task.current = None
    yield settings
    gen.Task.current = None
    archviz_controlnet.unregister()


def _images():
    from archviz_controlnet.blender.results import result_images

    return sorted(img.name for img in result_images())


def test_generate_makes_one_image_with_parameters(addon, tmp_path):
    addon.style = "japandi"
    addon.seed = 7
    assert bpy.ops.archviz.generate() == {"FINISHED"}
    image = bpy.data.images["Camera_japandi_s7"]
    assert tuple(image.size) == (64, 32)  # 16:9 at long side 64, multiples of 8
    path = image["archviz_path"]
    assert os.path.exists(path) and os.path.dirname(path) == str(tmp_path / "out")
    assert image["archviz_seed"] == 7 and image["archviz_style"] == "japandi" and image["archviz_camera"] == "Camera"
    assert image["steps"] == 2 and '"family": "tiny"' in image["model"] and len(image["params_sha256"]) == 64
    exr = read_exr(image["archviz_exr"])
    assert {"ArchViz.AI.R", "ArchViz.Depth.Z", "ArchViz.Lines.V", "ArchViz.Seg.R"} <= set(exr)


def test_sweep_over_all_cameras_then_texture_and_compositor(addon, tmp_path):
    addon.styles = "modern,industrial"
    addon.seeds = "0-1"
    addon.sweep_cameras = "ALL"
    assert bpy.ops.archviz.sweep() == {"FINISHED"}
    expected = sorted(f"{cam}_{style}_s{seed}" for cam in ("Camera", "Camera_Corner")
                      for style in ("industrial", "modern") for seed in (0, 1))
    assert _images() == expected
    out = tmp_path / "out"
    for cam in ("Camera", "Camera_Corner"):
        assert (out / f"{cam}_contact_sheet.png").exists() and (out / f"{cam}_manifest.json").exists()
        assert f"ArchViz Contact Sheet {cam}_contact_sheet.png" in bpy.data.images
    assert gen.Task.current.state == "done" and gen.Task.current.images_done == 8

    table = bpy.data.objects["Table"]
    for obj in bpy.context.view_layer.objects:
        obj.select_set(obj == table)
    bpy.context.view_layer.objects.active = table
    assert bpy.ops.archviz.apply_texture(image="Camera_modern_s1") == {"FINISHED"}
    mod = table.modifiers["ArchViz Projection"]
    assert mod.type == "UV_PROJECT" and mod.projectors[0].object == bpy.data.objects["Camera"]
    mat = table.material_slots[0].material
    assert mat.name == "ArchViz Camera_modern_s1"
    assert any(n.type == "TEX_IMAGE" and n.image.name == "Camera_modern_s1" for n in mat.node_tree.nodes)

    assert bpy.ops.archviz.add_to_compositor(images="Camera_modern_s0,Camera_modern_s1", active=1) == {"FINISHED"}
    tree = bpy.context.scene.compositing_node_group
    variants = sorted(n.image.name for n in tree.nodes if n.bl_idname == "CompositorNodeImage")
    assert variants == ["Camera_modern_s0", "Camera_modern_s1"]
    assert tree.nodes["ArchViz Switch"].inputs["Menu"].default_value == "Camera_modern_s1"


def test_timer_callback_brings_results_onto_the_main_thread(addon):
    """The UI path: a worker thread fills the queue, the bpy.app.timers callback drains it."""
    addon.styles = "modern"
    addon.seeds = "3"
    op = gen.ARCHVIZ_OT_sweep
    task = op._prepare(type("Op", (), {"plan": op.plan, "report": lambda *a: None})(), bpy.context)
    gen.Task.current = task
    task.start_thread()
    deadline = time.monotonic() + 120
    while tasks._timer() is not None:  # what bpy.app.timers would call every 0.2 s
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert task.thread.name == "archviz-sweep" and task.state == "done"
    assert _images() == ["Camera_modern_s3"]


def _run_until_first_image(task):
    deadline = time.monotonic() + 120
    while not task.images:
        assert task.drain(), task.message
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_cancel_keeps_finished_images(addon, tmp_path):
    addon.styles = "modern"
    addon.seeds = "0-7"
    addon.steps = 6
    addon.max_batch = 1  # one image per batch, so images finish one by one
    op = gen.ARCHVIZ_OT_sweep
    task = op._prepare(type("Op", (), {"plan": op.plan, "report": lambda *a: None})(), bpy.context)
    gen.Task.current = task
    task.start_thread()
    _run_until_first_image(task)
    assert bpy.ops.archviz.cancel() == {"FINISHED"}
    tasks.run_until_done(task)
    assert task.state == "cancelled" and "cancelled" in task.message
    kept = _images()
    assert 1 <= len(kept) < 8
    for name in kept:
        assert os.path.exists(bpy.data.images[name]["archviz_path"])


def test_backend_killed_mid_sweep_keeps_images_and_next_run_resumes(addon, tmp_path):
    addon.styles = "modern"
    addon.seeds = "0-5"
    addon.steps = 4
    addon.max_batch = 1
    op = gen.ARCHVIZ_OT_sweep
    task = op._prepare(type("Op", (), {"plan": op.plan, "report": lambda *a: None})(), bpy.context)
    gen.Task.current = task
    task.start_thread()
    _run_until_first_image(task)
    # How long a client waits for a backend that went away is tested in test_hardening2_client;
    # here the wait is short, what is kept after it is the point.
    task.runner.client.retry_for = 3.0
    blender_backend.started_backend().proc.kill()
    tasks.run_until_done(task)
    assert task.state == "failed" and "not reachable" in task.error
    finished = list(task.images)
    assert finished and all(os.path.exists(bpy.data.images[n]["archviz_path"]) for n in finished)
    mtimes = {n: os.path.getmtime(bpy.data.images[n]["archviz_path"]) for n in finished}
    # The manifest on disk says what is done and what is missing, each done PNG carries its
    # metadata, and the user is told how many images were kept.
    import json

    from backend_support import read_png

    manifest = json.loads((tmp_path / "out" / "Camera_manifest.json").read_text())
    done_files = sorted(f"{n}.png" for n in finished)
    assert manifest["state"] == "running"  # the backend died before it could finish it
    # (the backend may have finished one more image than the client saw before the kill)
    assert set(done_files) <= set(manifest["done"])
    assert sorted(manifest["missing"]) == sorted({f"Camera_modern_s{s}.png" for s in range(6)} - set(manifest["done"]))
    assert manifest["missing"]  # it really was cut off
    late = []  # written, but the kill came before its manifest update (the PNG is on disk first)
    for entry in manifest["images"]:
        assert entry["status"] == ("done" if entry["file"] in manifest["done"] else "missing")
        on_disk = os.path.exists(tmp_path / "out" / entry["file"])
        assert on_disk or entry["status"] == "missing"
        if on_disk:  # a whole image made with this entry's parameters
            _, meta = read_png(str(tmp_path / "out" / entry["file"]))
            assert meta["params_sha256"] == entry["params_sha256"] and meta["seed"] == str(entry["seed"])
            if entry["status"] == "missing":
                late.append(entry["file"])
    assert len(late) <= 1, late  # one kill falls between at most one image's write and its record
    assert f"failed after {len(finished)} image(s)" in task.message
    # The operator reports the backend's failure to the user and the next run resumes.
    assert bpy.ops.archviz.sweep() == {"FINISHED"}
    assert _images() == sorted(f"Camera_modern_s{s}" for s in range(6))
    assert {n: os.path.getmtime(bpy.data.images[n]["archviz_path"]) for n in finished} == mtimes


def test_cli_sweep_and_resume(example_blend, tmp_path):
    env = dict(os.environ, ARCHVIZ_HOME=str(TEST_HOME), OMP_NUM_THREADS="1")
    cmd = [ARCHVIZ, "sweep", example_blend, "--styles", "modern,industrial", "--seeds", "0-1", "--model", "tiny",
           "--long-side", "64", "--steps", "2", "--out", str(tmp_path / "out")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    assert "4 new image(s), 0 already on disk" in first.stdout
    sheet = tmp_path / "out" / "Camera_contact_sheet.png"
    assert f"contact sheet: {sheet}" in first.stdout and sheet.exists()
    pngs = sorted((tmp_path / "out").glob("Camera_*_s[0-9].png"))
    assert len(pngs) == 4 and len(list((tmp_path / "out").glob("Camera_*_s[0-9].exr"))) == 4
    mtimes = [p.stat().st_mtime for p in pngs]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr
    assert "0 new image(s), 4 already on disk" in second.stdout
    assert [p.stat().st_mtime for p in pngs] == mtimes


def test_cli_sweep_bad_input_exit_codes(example_blend, tmp_path):
    base = [ARCHVIZ, "sweep", example_blend, "--model", "tiny", "--out", str(tmp_path)]
    proc = subprocess.run(base + ["--styles", "modern", "--seeds", "3-1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "runs backwards" in proc.stderr
    proc = subprocess.run(base + ["--styles", "modern", "--seeds", "0", "--cameras", "Nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 3 and "no camera named 'Nope'" in proc.stderr


def test_backend_stops_when_its_parent_dies(tmp_path):
    script = (
        "import sys, time\n"
        "from archviz_controlnet.core.client import BackendProcess\n"
        "p = BackendProcess(device='cpu'); p.start()\n"
        "print(p.proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, ARCHVIZ_HOME=str(TEST_HOME)))
    backend_pid = int(parent.stdout.readline())
    os.kill(backend_pid, 0)  # running
    parent.kill()  # no atexit, no cleanup: only the closed pipe tells the backend
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(backend_pid, 0)
        except ProcessLookupError:
            break
        try:  # reap it if it is our grandchild's zombie (it is not: it was the parent's child)
            os.waitpid(backend_pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    else:
        os.kill(backend_pid, 9)
        pytest.fail("the backend outlived the process that started it")
