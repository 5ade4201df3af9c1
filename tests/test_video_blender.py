"""The Video operator and its box (operators/video.py, blender/video_task.py, panels/video.py):
real bpy, real Cycles renders of a small animated-camera scene, the operator's own local
backend process on loopback with the tiny Wan VACE model, Blender's FFmpeg for the MP4."""

import json
import os
import time

import pytest

bpy = pytest.importorskip("bpy")

import archviz_controlnet  # noqa: E402
from archviz_controlnet.blender import backend as blender_backend  # noqa: E402
from archviz_controlnet.blender import tasks  # noqa: E402
from backend_support import TEST_HOME  # noqa: E402
from blender_support import box, camera, draw, fresh_scene, plane  # noqa: E402


def _scene(animated=True):
    scene = fresh_scene(64, 64)
    box("Wall", (0, 2, 0), (4, 0.2, 3))
    box("Table", (0, 0, -0.5), (1, 1, 0.5))
    plane("Floor", (0, 0, -1), 8)
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    scene.collection.objects.link(sun)
    sun.rotation_euler = (0.6, 0.2, 0.3)
    cam = camera("Camera", (-1, -5, 0.5), (0, 0, 0))
    scene.frame_start, scene.frame_end = 1, 9
    if animated:
        cam.keyframe_insert("location", frame=1)
        cam.location.x = 1.0
        cam.keyframe_insert("location", frame=9)
    return scene


@pytest.fixture(scope="module")
def out_root(tmp_path_factory):
    """One output folder for the module, so the operator's local backend (allowed to write
    there) is started once and reused."""
    yield tmp_path_factory.mktemp("video-op")
    blender_backend.stop_started_backends()


@pytest.fixture
def addon(out_root, monkeypatch):
    monkeypatch.setenv("ARCHVIZ_HOME", str(TEST_HOME))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the backend the operator starts inherits it
    for name in ("ARCHVIZ_BACKEND_URL", "ARCHVIZ_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    _scene()
    archviz_controlnet.register()
    settings = bpy.context.scene.archviz
    settings.output_dir = str(out_root)
    video = settings.video
    video.model = "tiny-wan"
    video.use_scene_range = False
    video.frame_start, video.frame_end = 1, 5
    tasks.Task.current = None
    yield video
    tasks.Task.current = None
    archviz_controlnet.unregister()


def test_poll_and_bad_settings_explain_themselves(addon):
    scene = bpy.context.scene
    addon.use_depth = addon.use_lines = False
    assert not bpy.ops.archviz.video.poll()
    with pytest.raises(RuntimeError, match="No control: tick Depth, Lines or both"):
        bpy.ops.archviz.video()
    addon.use_depth = True
    cam = scene.camera
    scene.camera = None
    with pytest.raises(RuntimeError, match="No camera: pick one in the Video box"):
        bpy.ops.archviz.video()
    scene.camera = cam
    addon.frame_end = 40
    with pytest.raises(RuntimeError, match=r"--frames '1-40' is outside the scene's frame range 1-9"):
        bpy.ops.archviz.video()
    addon.frame_end = 5
    addon.seeds = "x"
    with pytest.raises(RuntimeError, match="seeds") as exc:
        bpy.ops.archviz.video()
    assert "\n" not in str(exc.value).strip() and "Traceback" not in str(exc.value)
    tasks.Task.current = _running_stand_in()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            bpy.ops.archviz.video()
    finally:
        tasks.Task.current = None
    # the Video box draws its settings and the button
    from archviz_controlnet.panels.video import VIEW3D_PT_archviz_video

    calls = draw(VIEW3D_PT_archviz_video, bpy.context)
    drawn = {c[1][1] for c in calls if c[0] == "prop"}
    assert {"camera", "frame_start", "frame_end", "every", "model", "use_depth", "use_lines", "first_frame",
            "seeds"} <= drawn
    assert ("operator", ("archviz.video",), {"icon": "SEQUENCE"}) in calls


def _running_stand_in():
    """A task that is running (a real VideoTask that was never started)."""
    from archviz_controlnet.blender.video_task import VideoPlan, VideoTask

    plan = VideoPlan(camera="Camera", family="tiny-wan", styles=["modern"], seeds=[0], controls=["depth"],
                     frames=[1], out_dir="", long_side=64, fps=24.0)
    return VideoTask("Scene", plan, None)


def test_operator_makes_the_clip_and_lands_it_in_the_sequencer(addon, out_root):
    addon.seeds = "0"
    addon.first_frame = "BEAUTY"
    assert bpy.ops.archviz.video() == {"FINISHED"}
    task = tasks.Task.current
    assert task.state == "done" and task.fraction == pytest.approx(1.0)
    out = out_root / "video" / "Camera"
    folder = out / "modern_s0"
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["model"] == "tiny-wan" and meta["frames"] == [1, 2, 3, 4, 5] and meta["first_frame_sha256"]
    assert all((folder / f).is_file() for f in meta["frame_files"]) and len(meta["frame_files"]) == 5
    assert os.path.getsize(folder / "video.mp4") > 1000
    summary = json.loads((out / "video.json").read_text())
    assert summary["capture"]["depth_range"]["mode"] == "sequence" and summary["still_camera"] is False
    assert len(os.listdir(out / "passes")) >= 5
    scene = bpy.context.scene
    from archviz_controlnet.blender import compat

    strips = compat.sequencer_strips(scene.sequence_editor)
    strip = strips["ArchViz modern_s0"]
    assert strip.type == "MOVIE" and os.path.samefile(bpy.path.abspath(strip.filepath), folder / "video.mp4")
    assert strip.frame_final_duration == 5
    clip = bpy.data.movieclips["ArchViz modern_s0"]
    assert tuple(clip.size) == (64, 64)
    assert "1 clip(s) of 5 frames" in task.message and "frame-to-frame difference" in task.message
    # a second run keeps the passes and the clip, and replaces the strip
    mtime = (folder / "frame_0003.png").stat().st_mtime_ns
    assert bpy.ops.archviz.video() == {"FINISHED"}
    again = json.loads((out / "video.json").read_text())
    assert again["capture"]["frames_reused"] == 5 and again["clips"][0]["skipped"] is True
    assert (folder / "frame_0003.png").stat().st_mtime_ns == mtime
    assert [s.name for s in compat.sequencer_strips(scene.sequence_editor)] == ["ArchViz modern_s0"]


def test_cancel_during_the_passes_and_during_the_denoising(addon, out_root):
    """Cancel between two frames' passes keeps the frames rendered; cancel while the backend
    denoises stops the job there (the Cancel operator reaches the video run)."""
    from archviz_controlnet.blender.backend import BackendSettings
    from archviz_controlnet.blender.properties import output_root
    from archviz_controlnet.blender.video_settings import read_plan
    from archviz_controlnet.blender.video_task import VideoTask

    addon.use_scene_range = True  # frames 1-9: 4 not yet rendered by the test before
    addon.seeds = "5"
    addon.steps = 200  # the denoising outlasts a few polls of its status
    plan = read_plan(bpy.context, output_root(bpy.context.scene.archviz)[0])
    task = VideoTask(bpy.context.scene.name, plan, BackendSettings(bpy.context))
    tasks.start(task, with_timer=False)
    assert task.drain() and task.phase == "passes"
    assert bpy.ops.archviz.cancel() == {"FINISHED"}
    tasks.run_until_done(task)
    task.thread.join(timeout=60)
    assert task.state == "cancelled" and "cancelled; the passes of 1 frame(s) are kept" in task.message
    assert (out_root / "video" / "Camera" / "passes" / "0001" / "depth.png").is_file()
    assert not (out_root / "video" / "Camera" / "modern_s5").exists()

    task = VideoTask(bpy.context.scene.name, plan, BackendSettings(bpy.context))
    tasks.start(task, with_timer=False)
    while task.drain() and not (task.status and task.status["progress"]["steps_done"] >= 1):
        time.sleep(0.02)
    assert task.state == "running" and task.phase == "generating"
    assert task.capture["frames_reused"] >= 1  # the frames of the cancelled run
    assert bpy.ops.archviz.cancel() == {"FINISHED"}
    tasks.run_until_done(task)
    assert task.state == "cancelled" and "the clips and windows made so far are kept" in task.message
    assert task.status["progress"]["steps_done"] < task.status["progress"]["steps_total"]
    assert not (out_root / "video" / "Camera" / "modern_s5" / "video.mp4").exists()


def test_operator_with_a_remote_backend_downloads_the_clip(addon, out_root, tmp_path, monkeypatch):
    """A backend whose output folder is not the scene's: the clip's frames and metadata are
    downloaded into the scene's output folder, the MP4 is made there and lands in the
    sequencer; a rerun fetches no frame again."""
    from backend_support import base_env, running_server

    token = "video-op-remote-token-0123456789"
    env = base_env()
    env["ARCHVIZ_OUTPUT_DIR"] = str(tmp_path / "backend-side")
    with running_server(["--token", token], env=env) as server:
        monkeypatch.setenv("ARCHVIZ_BACKEND_URL", server.url)
        monkeypatch.setenv("ARCHVIZ_TOKEN", token)
        addon.seeds = "7"  # a clip no earlier test made in the scene's folder
        assert bpy.ops.archviz.video() == {"FINISHED"}
        task = tasks.Task.current
        assert task.state == "done", task.message
        folder = out_root / "video" / "Camera" / "modern_s7"
        (remote,) = (tmp_path / "backend-side").glob("*/modern_s7")
        meta = json.loads((folder / "metadata.json").read_text())
        assert meta["frame_files"] == [f"frame_{f:04d}.png" for f in range(1, 6)]
        for name in meta["frame_files"]:
            assert (folder / name).read_bytes() == (remote / name).read_bytes()
        assert os.path.getsize(folder / "video.mp4") > 1000 and not (remote / "video.mp4").exists()
        from archviz_controlnet.blender import compat

        strip = compat.sequencer_strips(bpy.context.scene.sequence_editor)["ArchViz modern_s7"]
        assert os.path.samefile(bpy.path.abspath(strip.filepath), folder / "video.mp4")
        mtime = (folder / "frame_0002.png").stat().st_mtime_ns
        # again: the backend makes it in a job folder of its own (no output folder is sent to a
        # remote backend, as for sweeps); the frames here have its hash, so none is fetched again
        assert bpy.ops.archviz.video() == {"FINISHED"}
        assert tasks.Task.current.state == "done", tasks.Task.current.message
        assert len(list((tmp_path / "backend-side").glob("*/modern_s7"))) == 2
        assert (folder / "frame_0002.png").stat().st_mtime_ns == mtime
