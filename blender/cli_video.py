"""``archviz video SCENE.blend --camera CAM --frames 1-81 --out DIR``: a walkthrough video from the
camera path. Every frame's passes are rendered under one depth range (blender/video.py), the
backend runs Wan VACE over the control video (backend/server/video.py), and each (style, seed)
clip comes back as PNG frames, an MP4 at the scene's frame rate and metadata.json. A rerun
keeps the frames already rendered and the clips (or windows of a clip) already made.

Exit status: 0 done; 1 the backend failed; 2 a bad argument; 3 the scene cannot give passes;
130 cancelled (Ctrl+C).
"""

import json
import os
import sys
import time

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_SCENE_ERROR = 3
EXIT_CANCELLED = 130


def add_arguments(parser):
    from ..core import video as V

    parser.add_argument("scene", help="the .blend file")
    parser.add_argument("--camera", default="", help="camera object (default: the scene camera)")
    parser.add_argument("--frames", default=None, metavar="A-B",
                        help="scene frames of the clip (default: the scene's frame range)")
    parser.add_argument("--every", type=int, default=1, metavar="N", help="take every N-th frame (default 1)")
    parser.add_argument("--model", default="wan", help=f"video family: {', '.join(V.VIDEO_FAMILIES)} (default wan)")
    parser.add_argument("--styles", default="modern", help="comma-separated preset names (default modern)")
    parser.add_argument("--seeds", default="0", help="seeds and ranges, e.g. 0-3 (default 0)")
    parser.add_argument("--controls", default="depth,lines",
                        help="depth, lines or depth,lines (the depth frames with the lines drawn over them)")
    parser.add_argument("--first-frame", default=None, metavar="PATH|beauty",
                        help="start the clip from this still: a PNG (e.g. an archviz sweep image) or beauty "
                             "(the first frame's beauty render)")
    parser.add_argument("--long-side", type=int, default=None,
                        help="long side of the frames (default: the family's, 832 for wan)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the family's)")
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the family's)")
    parser.add_argument("--window", type=int, default=None,
                        help="frames per window, 4k + 1 (default: the family's, 81 for wan)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="frames each window shares with the one before (default: the family's)")
    parser.add_argument("--backend", default=os.environ.get("ARCHVIZ_BACKEND_URL", ""),
                        help="URL of a running backend (default: start a local one for this run)")
    parser.add_argument("--token", default=os.environ.get("ARCHVIZ_TOKEN", ""), help="backend access token")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"),
                        help="device for a backend this command starts")
    parser.add_argument("--remake", action="store_true", help="make the clips again (the passes are still reused)")
    parser.add_argument("--out", required=True, help="output folder (clips, passes/, video.json)")


def _fail(message, code=EXIT_BAD_INPUT):
    print(f"archviz video: {message}", file=sys.stderr)
    return code


def run(args):
    from ..core import jobs as J
    from ..core import video as V
    from .capture.blendfile import input_problem

    problem = input_problem(args.scene, args.out)
    if problem:
        return _fail(problem)
    try:
        family = V.video_family(args.model)
        if args.every < 1:
            raise V.VideoError(f"--every {args.every}: give a whole number of frames, 1 or more")
        controls = [c.strip() for c in args.controls.split(",") if c.strip()]
        bad = [c for c in controls if c not in V.VIDEO_CONTROLS]
        if bad or not controls:
            raise V.VideoError(f"--controls {args.controls!r}: video takes {', '.join(V.VIDEO_CONTROLS)}")
        seeds = J.parse_seeds(args.seeds)
        styles = [s.strip() for s in args.styles.split(",") if s.strip()]
        if not styles:
            raise V.VideoError("--styles: give at least one preset name")
        window = args.window or family.window
        overlap = args.overlap if args.overlap is not None else min(family.overlap, window - 1)
        V.check_window(window, overlap)
        if args.first_frame and args.first_frame != "beauty" and not os.path.isfile(args.first_frame):
            raise V.VideoError(f"--first-frame {args.first_frame!r}: no such file (give a PNG or beauty)")
    except (V.VideoError, J.JobError) as exc:
        return _fail(str(exc))
    from ..core.presets import load_presets_tolerant, style_names_problem

    problem = style_names_problem(styles, None if args.backend else set(load_presets_tolerant()[0]))
    if problem:
        return _fail(problem)

    import bpy  # noqa: F401 - Blender before the modules that use it

    from ..core.client import BackendError
    from ..core.passes import PassError
    from .capture.blendfile import BlendFileError, open_blend
    from .capture.render import CaptureError, resolve_camera
    from . import video as BV

    out_dir = os.path.abspath(args.out)
    try:
        warning = open_blend(args.scene)
    except BlendFileError as exc:
        return _fail(str(exc))
    if warning:
        print(f"archviz video: {warning}", file=sys.stderr)
    scene = bpy.context.scene
    try:
        camera = resolve_camera(scene, args.camera)
        first, last = V.parse_frames(args.frames, scene.frame_start, scene.frame_end) if args.frames \
            else (scene.frame_start, scene.frame_end)
        frames = V.frame_numbers(first, last, args.every)
    except V.VideoError as exc:
        return _fail(str(exc))
    except CaptureError as exc:
        return _fail(str(exc), EXIT_SCENE_ERROR)
    still = not BV.camera_animated(scene, camera)
    if still:
        print(f"archviz video: note: {BV.still_camera_note(camera.name)}")
    fps = scene.render.fps / (scene.render.fps_base or 1.0)
    long_side = args.long_side or family.long_side
    print(f"rendering the passes of {len(frames)} frame(s) ({frames[0]}..{frames[-1]}"
          f"{f' every {args.every}' if args.every > 1 else ''}) from camera {camera.name!r}")
    try:
        capture = BV.capture_frames(scene, camera, frames, out_dir, long_side, family.multiple,
                                    scene_file=os.path.abspath(args.scene),
                                    on_frame=lambda i, n, f, reused: print(
                                        f"  frame {f} ({i + 1}/{n}){' kept' if reused else ''}", flush=True))
    except KeyboardInterrupt:
        return _fail("cancelled; the frames rendered so far are kept", EXIT_CANCELLED)
    except (CaptureError, PassError) as exc:
        return _fail(str(exc), EXIT_SCENE_ERROR)
    print(f"passes: {capture['frames_rendered']} rendered, {capture['frames_reused']} kept "
          f"(depth range {capture['depth_range']['near']:.3g}..{capture['depth_range']['far']:.3g} m over the clip)")
    first_frame = ""
    if args.first_frame == "beauty":
        first_frame = os.path.join(capture["folders"][0], "beauty.png")
    elif args.first_frame:
        first_frame = os.path.abspath(args.first_frame)
    try:
        # a remote backend (--backend) writes into its own output folder; the clips are
        # downloaded into out_dir when the job ends (core/video_fetch.py)
        job = BV.build_job(family.name, styles, seeds, controls, frames, capture["folders"],
                           "" if args.backend else out_dir, fps,
                           steps=args.steps, cfg=args.cfg, window=window, overlap=overlap, first_frame=first_frame,
                           remake=args.remake)
    except V.VideoError as exc:
        return _fail(str(exc))
    from .backend import connect

    try:
        client, proc = connect(url=args.backend, token=args.token, device=args.device,
                               log_path=os.path.join(out_dir, "backend.log") if not args.backend else None,
                               output_roots=[out_dir])
    except BackendError as exc:
        return _fail(str(exc), EXIT_FAILED)
    from ..core.video_fetch import local_clips

    try:
        state, status = _follow(client, job)
        # the finished clips into out_dir (downloaded from a remote backend), also those a
        # failed or cancelled job finished: nothing made is left behind on the backend
        try:
            status = local_clips(client, status, out_dir, on_file=_said_per_clip if args.backend else None)
        except BackendError as exc:
            if state == "done":
                raise
            print(f"archviz video: the clips the {state} job finished stay on the backend: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return _fail("cancelled; the clips and windows made so far are kept", EXIT_CANCELLED)
    except BackendError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except OSError as exc:
        return _fail(f"cannot write the clips into {out_dir}: {exc}", EXIT_FAILED)
    finally:
        if proc is not None:
            proc.stop()
    if state != "done":
        err = (status.get("error") or {}).get("message") or state
        return _fail(f"the video job {state}: {err}", EXIT_CANCELLED if state == "cancelled" else EXIT_FAILED)
    mp4s = BV.encode_clips(status, fps)
    summary = _summary(status, capture, family, job, fps, still, camera.name, mp4s)
    from ..core.png import atomic_write

    atomic_write(os.path.join(out_dir, "video.json"), (json.dumps(summary, indent=2) + "\n").encode())
    for clip in summary["clips"]:
        seams = ", ".join(f"{s['diff']:.2f}" for s in clip["seams"]) or "none (one window)"
        print(f"{clip['folder']}: {len(frames)} frames, MP4 {clip['mp4']}; frame-to-frame difference "
              f"{clip['flicker']:.2f} (beauty render {summary['beauty_flicker']:.2f}); seams {seams}"
              f"{' (kept from an earlier run)' if clip['skipped'] else ''}")
    return 0


def _said_per_clip(clip, i, n):
    if i == n:
        print(f"  {clip}: file {i}/{n} downloaded", flush=True)


def _follow(client, job):
    """Submit the job and show its progress until it ends. Returns (state, status)."""
    from tqdm import tqdm

    accepted = client.submit_video(dict(job.__dict__))
    job_id = accepted["id"]
    bar = tqdm(total=1000, desc="video", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}", mininterval=0.5)
    try:
        while True:
            status = client.job(job_id)
            p = status["progress"]
            bar.n = int(p["fraction"] * 1000)
            bar.set_postfix_str(f"step {p['steps_done']}/{p['steps_total']}, clips {p['clips_done']}/"
                                f"{p['clips_total']}{', ' + status['phase'] if status.get('phase') else ''}")
            bar.refresh()
            if status["state"] in ("done", "failed", "cancelled"):
                return status["state"], status
            time.sleep(0.25)
    except KeyboardInterrupt:
        client.cancel(job_id)
        raise
    finally:
        bar.close()


def _summary(status, capture, family, job, fps, still, camera, mp4s):
    clips = []
    for clip, mp4 in zip(status["clips"], mp4s):
        with open(os.path.join(clip["folder"], "metadata.json")) as fh:
            meta = json.load(fh)
        clips.append({"folder": clip["folder"], "style": clip["style"], "seed": clip["seed"], "mp4": mp4,
                      "skipped": clip["skipped"], "flicker": meta["flicker"]["mean_abs_frame_diff"],
                      "seams": meta["flicker"]["seams"], "denoise_seconds_per_frame": meta["denoise_seconds_per_frame"],
                      "params_sha256": meta["params_sha256"]})
    from . import video as BV

    return {"model": family.name, "camera": camera, "still_camera": still, "frames": job.frames, "fps": fps,
            "controls": job.control_types, "size": [job.width, job.height], "window": job.window_frames,
            "overlap": job.overlap_frames, "windows": status["windows"],
            "capture": {k: v for k, v in capture.items() if k != "folders"},
            "beauty_flicker": BV.beauty_flicker(capture["folders"]), "clips": clips}
