"""``archviz video``: the Wan VACE engine against diffusers' WanVACEPipeline on the tiny model,
the windows, and the command end to end on a small animated-camera scene (real Cycles
renders, a real backend process on loopback, Blender's FFmpeg for the MP4)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from backend_support import base_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")

ANIMATED_SCENE = r"""
import sys, bpy
sys.path.insert(0, sys.argv[1])
from blender_support import fresh_scene, box, plane, camera
scene = fresh_scene(64, 64)
box("Wall", (0, 2, 0), (4, 0.2, 3))
box("Table", (0, 0, -0.5), (1, 1, 0.5))
plane("Floor", (0, 0, -1), 8)
light = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
scene.collection.objects.link(light)
light.rotation_euler = (0.6, 0.2, 0.3)
cam = camera("Camera", (-1, -5, 0.5), (0, 0, 0))
scene.frame_start, scene.frame_end = 1, 17
if sys.argv[3] == "animated":
    cam.keyframe_insert("location", frame=1)
    cam.location.x = 1.0
    cam.keyframe_insert("location", frame=17)
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[2])
"""


# ------------------------------------------------------------------------------ core
def test_windows_overlap_and_cover_the_clip():
    from archviz_controlnet.core import video as V

    assert V.plan_windows(9, 9, 4) == [(0, 9)]
    windows = V.plan_windows(17, 9, 4)
    assert windows == [(0, 9), (5, 14), (10, 17)]
    for (a0, b0), (a1, _b1) in zip(windows, windows[1:]):
        assert b0 - a1 == 4  # each window starts from the last 4 frames of the one before
    w = V.blend_weights(4)
    assert np.all(np.diff(w) > 0) and 0 < w[0] and w[-1] < 1
    assert V.clip_length(8) == 9 and V.clip_length(9) == 9 and V.clip_length(3) == 5
    with pytest.raises(V.VideoError, match="4k \\+ 1"):
        V.check_window(8, 2)


def test_image_families_and_bad_frames_are_refused_in_one_line():
    from archviz_controlnet.core import video as V

    with pytest.raises(V.VideoError, match="makes still images, not video") as exc:
        V.video_family("sdxl")
    assert "\n" not in str(exc.value)
    with pytest.raises(V.VideoError, match="outside the scene's frame range 1-17"):
        V.parse_frames("0-20", 1, 17)
    assert V.parse_frames("0-20", 1, 17, inside_scene=False) == (0, 20)  # archviz walkthrough: any frame
    assert V.parse_frames("-5--2", -10, 17) == (-5, -2)
    with pytest.raises(V.VideoError, match="at most 10 frames"):
        V.parse_frames("1-11", 1, 100, most=10)
    with pytest.raises(V.VideoError, match="last frame comes before the first"):
        V.parse_frames("9-3", 1, 17, inside_scene=False)
    with pytest.raises(V.VideoError, match="--every 0"):
        V.frame_numbers(1, 17, 0)
    assert V.frame_numbers(1, 17, 4) == [1, 5, 9, 13, 17]


# ------------------------------------------------------------------------------ engine
@pytest.fixture(scope="module")
def tiny_wan(home):
    import torch

    from archviz_controlnet.backend.engine import video as VE
    from archviz_controlnet.backend.engine.runner import Engine
    from archviz_controlnet.core import video as V

    torch.set_num_threads(1)
    engine = VE.VideoEngine(Engine(device="cpu"))
    family = V.video_family("tiny-wan")
    return engine, family, engine.pipeline(family)


def test_engine_equals_wan_vace_pipeline_with_seeds_batched(tiny_wan):
    """Two seeds in one batch, with CFG and a known first frame, against the pipeline run
    once per seed with the same control video and mask: equal to 1e-4."""
    import torch
    from PIL import Image

    engine, family, pipe = tiny_wan
    rng = np.random.default_rng(0)
    controls = [Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)) for _ in range(9)]
    first = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    video = [Image.fromarray(first)] + controls[1:]
    white, black = Image.new("RGB", (64, 64), (255,) * 3), Image.new("RGB", (64, 64), (0,) * 3)
    mask = [black] + [white] * 8
    seeds = (3, 7)
    reference = [pipe(prompt="a modern interior", negative_prompt="blurry", video=video, mask=mask, height=64,
                      width=64, num_frames=9, num_inference_steps=2, guidance_scale=5.0,
                      generator=torch.Generator().manual_seed(s), max_sequence_length=32).frames[0] for s in seeds]
    pos, neg = engine.encode_prompt(pipe, family, "a modern interior", "blurry", 5.0)
    cond = engine.conditioning(pipe, video, mask, 64, 64)
    steps = []
    latents = engine.denoise(pipe, cond, pos, neg, [torch.Generator().manual_seed(s) for s in seeds], 9, 64, 64, 2,
                             5.0, steps.append, lambda: False)
    ours = engine.decode(pipe, latents)
    assert len(steps) == 2
    for ref, out in zip(reference, ours):
        assert ref.shape == out.shape == (9, 64, 64, 3)
        assert ref.std() > 0.01  # not a flat image: the comparison means something
        assert np.abs(ref - out).max() < 1e-4
    assert np.abs(ours[0] - ours[1]).max() > 0.01  # the seeds differ


def test_cancel_stops_between_steps(tiny_wan):
    import torch

    from archviz_controlnet.backend.engine.runner import Cancelled

    engine, family, pipe = tiny_wan
    pos, neg = engine.encode_prompt(pipe, family, "x", "", 1.0)
    cond = torch.zeros(1, 2 * 4 + 64, 3, 8, 8)
    with pytest.raises(Cancelled):
        engine.denoise(pipe, cond, pos, neg, [torch.Generator().manual_seed(0)], 9, 64, 64, 2, 1.0, None,
                       lambda: True)


# ------------------------------------------------------------------------------ the command
@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video-scenes")
    out = {}
    for kind in ("animated", "still"):
        path = folder / f"{kind}.blend"
        subprocess.run([sys.executable, "-c", ANIMATED_SCENE, TESTS, str(path), kind], check=True,
                       capture_output=True, timeout=120)
        out[kind] = path
    return out


def _video(args, cwd):
    env = base_env()
    return subprocess.run([sys.executable, "-m", "archviz_controlnet.cli", "video", *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=cwd)


def test_cli_end_to_end_windows_and_resume(scenes, tmp_path):
    """13 frames of a moving camera in windows of 9 with 4 frames of overlap: PNG frames, the
    MP4, metadata and the seams; a rerun keeps the passes and the clip."""
    out = tmp_path / "out"
    args = [str(scenes["animated"]), "--model", "tiny-wan", "--frames", "1-13", "--seeds", "0,1", "--device", "cpu",
            "--out", str(out)]
    first = _video(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads((out / "video.json").read_text())
    assert summary["windows"] == [[0, 9], [5, 13]] and summary["still_camera"] is False
    assert summary["capture"]["frames_rendered"] == 13 and summary["capture"]["depth_range"]["mode"] == "sequence"
    for clip, seed in zip(summary["clips"], (0, 1)):
        folder = out / f"modern_s{seed}"
        meta = json.loads((folder / "metadata.json").read_text())
        assert meta["model"] == "tiny-wan" and meta["seed"] == seed and meta["frames"] == list(range(1, 14))
        assert meta["controls"] == ["depth", "lines"] and len(meta["params_sha256"]) == 64
        assert [f"frame_{f:04d}.png" for f in range(1, 14)] == meta["frame_files"]
        assert all((folder / f).is_file() for f in meta["frame_files"])
        assert len(meta["flicker"]["seams"]) == 1 and meta["flicker"]["seams"][0]["frame_index"] == 9
        assert os.path.getsize(folder / "video.mp4") > 1000
        assert not (folder / ".carry").exists()
        for i in range(1, 14):
            assert (out / "passes" / f"{i:04d}" / "depth.png").is_file()
    # one depth range for every frame
    ranges = {json.dumps(json.loads((out / "passes" / f"{i:04d}" / "passes.json").read_text())["depth_range"]
                         ["near"]) for i in range(1, 14)}
    assert len(ranges) == 1
    frame = out / "modern_s0" / "frame_0007.png"
    before = frame.stat().st_mtime_ns
    second = _video(args, tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    again = json.loads((out / "video.json").read_text())
    assert again["capture"]["frames_reused"] == 13 and again["capture"]["frames_rendered"] == 0
    assert all(c["skipped"] for c in again["clips"])
    assert frame.stat().st_mtime_ns == before


def test_cli_refuses_bad_input_in_one_line_and_takes_a_still_camera(scenes, tmp_path):
    base = [str(scenes["animated"]), "--device", "cpu", "--out", str(tmp_path / "bad")]
    for extra, needle in ((["--model", "tiny-wan", "--frames", "1-40"], "outside the scene's frame range 1-17"),
                          (["--model", "tiny-wan", "--every", "0"], "--every 0"),
                          (["--model", "sdxl"], "makes still images, not video")):
        proc = _video(base + extra, tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("archviz video:")]
        assert len(lines) == 1 and needle in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
    out = tmp_path / "still"
    proc = _video([str(scenes["still"]), "--model", "tiny-wan", "--frames", "1-5", "--device", "cpu",
                   "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "has no animation: a still camera gives a still video" in proc.stdout
    summary = json.loads((out / "video.json").read_text())
    assert summary["still_camera"] is True and summary["beauty_flicker"] == 0.0
    assert (out / "modern_s0" / "video.mp4").is_file()


def _job_of_13_frames(tmp_path):
    """A 13-frame job of random control frames in windows of 9 with 4 frames of overlap,
    its styles resolved as the server resolves them."""
    from backend_support import b64

    from archviz_controlnet.backend.server.video import control_sha256
    from archviz_controlnet.core import video as V

    rng = np.random.default_rng(1)
    controls = [{"depth": b64((rng.random((64, 64, 3)) * 255).astype(np.uint8))} for _ in range(13)]
    job = V.VideoJob(family="tiny-wan", styles=["modern"], seeds=[4], control_types=["depth"],
                     frames=list(range(1, 14)), controls=controls,
                     control_sha256=[control_sha256(c) for c in controls], output_dir=str(tmp_path))
    job.validate()
    styles = [{"name": "modern", "prompt": "a modern interior", "negative": "blurry", "steps": 2, "cfg": 5.0}]
    return job, styles


def test_a_clip_cut_off_after_its_first_window_goes_on_from_there(tiny_wan, tmp_path):
    """Cancelled once the first window is written, the clip's rerun makes only the second
    window (from the first one's frames on disk) and equals a run that was never cut off."""
    from archviz_controlnet.backend.server.video import VideoRecord

    engine, _family, _pipe = tiny_wan
    job, styles = _job_of_13_frames(tmp_path)
    assert job.window_plan() == [(0, 9), (5, 13)]

    class CutAfterFirstWindow(VideoRecord):
        def step(self, n=1):  # the user presses Cancel as the first window's last step ends
            super().step(n)
            if self.steps_done == styles[0]["steps"]:
                self.cancel_event.set()

    cut = CutAfterFirstWindow(id="cut", job=job, styles=styles, output_dir=tmp_path / "resumed", video=engine)
    cut.run_with(None)
    clip = tmp_path / "resumed" / "modern_s4"
    assert cut.state == "cancelled"
    assert json.loads((clip / "progress.json").read_text())["window"] == 0
    assert sorted(p.name for p in clip.glob("frame_*.png")) == [f"frame_{f:04d}.png" for f in range(1, 6)]
    assert len(list((clip / ".carry").glob("*.png"))) == 4  # frames 6-9, which window 2 starts from
    assert not (clip / "metadata.json").exists()

    rerun = VideoRecord(id="rerun", job=job, styles=styles, output_dir=tmp_path / "resumed", video=engine)
    rerun.run_with(None)
    assert rerun.state == "done" and rerun.windows_skipped == 1
    assert engine.stats["transformer_rows"] == 2 * 2  # one window: 2 steps x (cond + uncond)
    whole = VideoRecord(id="whole", job=job, styles=styles, output_dir=tmp_path / "whole", video=engine)
    whole.run_with(None)
    assert whole.state == "done" and whole.windows_skipped == 0 and engine.stats["transformer_rows"] == 2 * 2 * 2
    from backend_support import read_png

    meta = json.loads((clip / "metadata.json").read_text())
    assert meta["frame_files"] == [f"frame_{f:04d}.png" for f in range(1, 14)] and not (clip / ".carry").exists()
    assert meta == {**json.loads((tmp_path / "whole" / "modern_s4" / "metadata.json").read_text()),
                    "seconds": meta["seconds"], "denoise_seconds_per_frame": meta["denoise_seconds_per_frame"]}
    for name in meta["frame_files"]:
        resumed, _ = read_png(str(clip / name))
        straight, _ = read_png(str(tmp_path / "whole" / "modern_s4" / name))
        assert resumed.std() > 1  # a picture, not a flat frame
        assert np.abs(resumed.astype(int) - straight.astype(int)).max() <= 1
