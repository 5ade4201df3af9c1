"""The example interior's 17-frame tiny walkthrough, with its figures (docs/video.md).

examples/interior.blend's camera has no animation, so this script saves a copy whose camera
dollies 1 m forward and pans 20 degrees over frames 1..17, then runs ``archviz video`` with
the tiny-wan family on it and prints the figures of video.json: capture seconds per frame,
peak memory of the capture process, denoise seconds per frame, the frame-to-frame
difference of the clip, of the beauty render and at each window seam.

    python bench/video_walkthrough.py examples/interior.blend OUT_DIR
"""

import json
import math
import os
import subprocess
import sys

ANIMATE = r"""
import sys, bpy
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
scene = bpy.context.scene
cam = scene.camera
scene.frame_start, scene.frame_end = 1, 17
cam.keyframe_insert("location", frame=1)
cam.keyframe_insert("rotation_euler", frame=1)
forward = cam.matrix_world.to_3x3().col[2] * -1.0
forward.z = 0.0
cam.location += forward.normalized() * 1.0
cam.rotation_euler.z += float(sys.argv[3])
cam.keyframe_insert("location", frame=17)
cam.keyframe_insert("rotation_euler", frame=17)
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[2], copy=True)
"""


def main(scene, out):
    os.makedirs(out, exist_ok=True)
    animated = os.path.join(out, "interior_walk.blend")
    subprocess.run([sys.executable, "-c", ANIMATE, scene, animated, str(math.radians(20))], check=True,
                   capture_output=True)
    cmd = [sys.executable, "-m", "archviz_controlnet.cli", "video", animated, "--model", "tiny-wan",
           "--frames", "1-17", "--long-side", "64", "--device", "cpu", "--out", os.path.join(out, "clip")]
    subprocess.run(cmd, check=True)
    summary = json.load(open(os.path.join(out, "clip", "video.json")))
    clip = summary["clips"][0]
    print(json.dumps({"frames": len(summary["frames"]), "size": summary["size"], "windows": summary["windows"],
                      "capture_seconds_per_frame": summary["capture"]["seconds_per_frame"],
                      "capture_peak_rss_mb": summary["capture"]["peak_rss_mb"],
                      "denoise_seconds_per_frame": clip["denoise_seconds_per_frame"],
                      "flicker_clip": clip["flicker"], "flicker_beauty": summary["beauty_flicker"],
                      "seams": clip["seams"]}, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:3])
