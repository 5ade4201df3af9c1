"""Child process of ``archviz bench --capture``: build the example interior, render its
control passes at a long side of 512 px, print one JSON line with the timings.

Run as ``python -m archviz_controlnet.bench.capture_timing``; it imports bpy, so the bench
process itself (torch) never does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--long-side", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import bpy

    from ..blender.capture.render import CaptureOptions, render_controls

    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="archviz-bench-capture-") as tmp:
        blend = os.path.join(tmp, "interior.blend")
        t0 = time.perf_counter()
        sys.argv = ["build_interior.py", "--out", blend]
        import runpy

        runpy.run_path(str(repo / "examples" / "build_interior.py"), run_name="__main__")
        build_s = time.perf_counter() - t0
        bpy.ops.wm.open_mainfile(filepath=blend)
        scene = bpy.context.scene
        options = CaptureOptions(long_side=args.long_side)
        times = []
        result = None
        for i in range(1 + args.repeats):
            t0 = time.perf_counter()
            result = render_controls(scene, os.path.join(tmp, f"passes{i}"), options)
            times.append(time.perf_counter() - t0)
        width, height = result.info.get("width"), result.info.get("height")
        if not width:
            res = result.info.get("resolution") or [None, None]
            width, height = res[0], res[1]
        print(json.dumps({"first_s": times[0], "warm_s": statistics.median(times[1:]), "times": times,
                          "repeats": args.repeats, "build_scene_s": build_s, "width": width, "height": height,
                          "threads": scene.render.threads, "cpus": os.cpu_count(),
                          "passes": sorted(result.files)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
