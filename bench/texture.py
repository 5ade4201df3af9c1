"""Bench of ``archviz texture`` and ``archviz walkthrough`` on the example interior and the
real scenes (``../shared/realscenes``: the FZK-Haus from its triangulated IFC, Sponza).

Per scene: two cameras are textured; a held-out camera (halfway between them, not
generated from) and the two cameras themselves are checked (``--check-cameras``: share
of the textured objects' pixels whose texels the bake covers well); then a walkthrough
camera moving from the first camera to the second is rendered from ``textured.blend`` and
from the untextured scene, and the mean frame-to-frame difference of both is compared (a
bake adds no flicker: the two should be alike). Printed: coverage (texels: share of the
visible surface covered well; pixels: per checked camera), mismatch across the overlap
(mean abs diff per channel, 0-255, of each view against the blended bake where two or more
views reached the texel), seam visibility (gradient across view boundaries over the
gradient elsewhere), time per view and for the bake, and the walkthrough figures.

Run (from the repository root, with the project venv and the tiny models' home)::

    python -m archviz_controlnet.bench.texture --out /tmp/texture-bench [--scenes interior,FZK-Haus,Sponza]
        [--model tiny] [--long-side 128] [--steps 2] [--frames 12]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INTERIOR = ROOT / "examples" / "interior.blend"

#: scene -> (the two cameras textured, FZK's added second exterior camera)
SCENES = {
    "interior": ("Camera", "Camera_Corner"),
    "FZK-Haus": ("Ext_SW", "Ext_SE"),
    "Sponza": ("Atrium", "Aisle"),
}


def _look(cam, target):
    from mathutils import Vector

    cam.rotation_euler = (Vector(target) - cam.location).to_track_quat("-Z", "Y").to_euler()


def add_walk(scene, first, second, frames, keys=5):
    """A camera ``Walk`` from ``first``'s pose to ``second``'s over ``frames`` frames, each
    key looking at the point the two cameras' view axes pass nearest, and ``Held`` (a still
    camera at the walk's middle pose)."""
    import bpy
    from mathutils import Vector

    a, b = scene.objects[first], scene.objects[second]
    fa = a.matrix_world.to_quaternion() @ Vector((0, 0, -1))
    fb = b.matrix_world.to_quaternion() @ Vector((0, 0, -1))
    pa, pb = a.matrix_world.translation.copy(), b.matrix_world.translation.copy()
    ta, tb = pa + fa * 4.0, pb + fb * 4.0
    data = a.data.copy()
    walk = bpy.data.objects.new("Walk", data)
    scene.collection.objects.link(walk)
    held = bpy.data.objects.new("Held", data)
    scene.collection.objects.link(held)
    scene.frame_start, scene.frame_end = 1, frames
    for k in range(keys):
        t = k / (keys - 1)
        walk.location = pa.lerp(pb, t)
        _look(walk, ta.lerp(tb, t))
        frame = 1 + round(t * (frames - 1))
        walk.keyframe_insert("location", frame=frame)
        walk.keyframe_insert("rotation_euler", frame=frame)
        if k == keys // 2:
            held.location = walk.location.copy()
            held.rotation_euler = walk.rotation_euler.copy()
    bpy.context.view_layer.update()


def build(label, out_dir, frames):
    """The scene of ``label`` with its Walk and Held cameras, saved as ``<label>.blend``."""
    import bpy

    from . import realscenes

    if label == "interior":
        if not INTERIOR.is_file():
            raise SystemExit(f"bench texture: no {INTERIOR}: run make examples/interior.blend")
        bpy.ops.wm.open_mainfile(filepath=str(INTERIOR))
        scene = bpy.context.scene
    elif label == "FZK-Haus":
        scene = realscenes.build_house(realscenes.data_dir() / realscenes.HOUSE_NPZ, width=640, height=480)
        cam = bpy.data.objects.new("Ext_SE", bpy.data.objects["Ext_SW"].data.copy())
        scene.collection.objects.link(cam)
        cam.location = (24.0, -11.0, 1.7)
        _look(cam, (6.0, 5.0, 2.6))
    else:
        scene = realscenes.build_sponza(realscenes.data_dir() / realscenes.SPONZA_GLB, width=640, height=480)
    add_walk(scene, *SCENES[label], frames)
    path = Path(out_dir) / f"{label}.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


def archviz(*argv):
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "archviz_controlnet.cli", *argv], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"bench texture: archviz {argv[0]} failed ({proc.returncode}): "
                         f"{proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - started


def frame_difference(folder):
    """(mean absolute difference (0-255) between consecutive frames, mean absolute
    difference between neighbouring pixels of one frame). A moving camera changes pixels in
    proportion to how much detail the frames hold; flicker comes on top of that, so the
    ratio of the two is what compares a textured walkthrough with an untextured one."""
    import numpy as np
    from PIL import Image

    frames = sorted(p for p in Path(folder).iterdir() if p.name.startswith("frame_") and p.suffix == ".png")
    arrays = [np.asarray(Image.open(p).convert("RGB"), np.float64) for p in frames]
    temporal = float(np.mean([np.abs(a - b).mean() for a, b in zip(arrays, arrays[1:])])) if len(arrays) > 1 else 0.0
    spatial = float(np.mean([(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()) / 2
                             for a in arrays]))
    return temporal, spatial


def measure(label, blend, out, args):
    first, second = SCENES[label]
    tex_dir = out / label
    t_texture = archviz("texture", str(blend), "--cameras", f"{first},{second}", "--check-cameras",
                        f"{first},{second},Held", "--model", args.model, "--long-side", str(args.long_side),
                        "--steps", str(args.steps), "--texture-size", str(args.texture_size), "--out", str(tex_dir))
    report = json.loads((tex_dir / "texture.json").read_text())
    walks = {}
    for name, scene_file in (("textured", tex_dir / "textured.blend"), ("untextured", blend)):
        folder = tex_dir / f"walk_{name}"
        seconds = archviz("walkthrough", str(scene_file), "--camera", "Walk", "--frames", f"1-{args.frames}",
                          "--samples", str(args.samples), "--long-side", str(args.walk_size), "--out", str(folder))
        temporal, spatial = frame_difference(folder)
        walks[name] = {"frame_diff": round(temporal, 3), "spatial_diff": round(spatial, 3),
                       "ratio": round(temporal / max(spatial, 1e-9), 3), "seconds": round(seconds, 2)}
    objs = report["objects"].values()
    visible = sum(o["visible_texels"] for o in objs) or 1
    mismatch = [v["mean_abs_diff_rgb"] for v in report["mismatch"].values()]
    row = {
        "scene": label, "cameras": [first, second], "objects": len(report["objects"]),
        "covered_texels": round(sum(o["covered"] * o["visible_texels"] for o in objs) / visible, 4),
        "check": {k: v.get("covered") for k, v in report.get("check_cameras", {}).items()},
        "check_baked": {k: v.get("baked") for k, v in report.get("check_cameras", {}).items()},
        "mismatch_rgb": [round(sum(m[c] for m in mismatch) / len(mismatch), 2) for c in range(3)] if mismatch else None,
        "seam_ratio": report["seams"]["ratio"], "seam_pairs": report["seams"]["boundary_pairs"],
        "view_seconds": [v["seconds"] for v in report["views"]], "bake_seconds": report["bake_seconds"],
        "texture_run_seconds": round(t_texture, 2), "walk": walks,
    }
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m archviz_controlnet.bench.texture")
    parser.add_argument("--out", required=True)
    parser.add_argument("--scenes", default="interior,FZK-Haus,Sponza")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--long-side", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--texture-size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--walk-size", type=int, default=96)
    parser.add_argument("--json", default="", help="also write the rows here")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in [s.strip() for s in args.scenes.split(",") if s.strip()]:
        if label not in SCENES:
            print(f"bench texture: unknown scene {label!r} ({', '.join(SCENES)})", file=sys.stderr)
            return 2
        blend = build(label, out, args.frames)
        rows.append(measure(label, blend, out, args))
    print(f"model {args.model}, views {args.long_side} px, {args.steps} steps, textures up to {args.texture_size} px; "
          f"walkthrough {args.frames} frames at {args.walk_size} px, Cycles {args.samples} samples")
    print(f"{'scene':9s} {'objs':>4s} {'covered':>7s} {'held-out':>8s} {'cams':>11s} {'mismatch rgb':>17s} "
          f"{'seams':>6s} {'t/view s':>11s} {'bake s':>6s} {'frame diff tex/untex':>21s} {'/detail tex/untex':>18s}")
    for r in rows:
        cams = "/".join(f"{r['check'][c]:.0%}" for c in r["cameras"])
        mm = "/".join(f"{m:.1f}" for m in r["mismatch_rgb"]) if r["mismatch_rgb"] else "-"
        seams = f"{r['seam_ratio']:.2f}" if r["seam_ratio"] is not None else "-"
        views = "/".join(f"{s:.1f}" for s in r["view_seconds"])
        walk = f"{r['walk']['textured']['frame_diff']:.2f}/{r['walk']['untextured']['frame_diff']:.2f}"
        ratio = f"{r['walk']['textured']['ratio']:.2f}/{r['walk']['untextured']['ratio']:.2f}"
        print(f"{r['scene']:9s} {r['objects']:4d} {r['covered_texels']:7.1%} {r['check']['Held']:8.1%} {cams:>11s} "
              f"{mm:>17s} {seams:>6s} {views:>11s} {r['bake_seconds']:6.2f} {walk:>21s} {ratio:>18s}")
        print(f"{'':9s} baked (any weight): held-out {r['check_baked']['Held']:.1%}, cameras "
              + "/".join(f"{r['check_baked'][c]:.0%}" for c in r["cameras"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
