"""``archviz bench --ray [ADDRESS]``: how a sweep scales from 1 to N Ray actors.

The same tiny sweep (2 styles x 8 seeds, 64 px, 8 steps, one image per batch so the work
spreads evenly) runs end to end through the backend's worker (resume check off, PNGs,
manifest and contact sheet written by the driver) on 1, 2, ... N warm actors, after a
warm-up job that loads the models into every actor. The single-process engine runs the
same job first as the reference. Prints a table (actors, seconds, images/s, speed-up,
efficiency) and, with ``--json``, writes it.

On a machine without a GPU each actor is one CPU slot running torch single-threaded
(``OMP_NUM_THREADS=1``); on a GPU cluster each actor owns one GPU and N defaults to the
number of GPUs. Standalone: ``python -m archviz_controlnet.bench.ray_scaling --ray``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

STYLES = ("modern", "japandi")


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="measure scaling over Ray actors instead: no ADDRESS starts a local Ray instance; "
                             "auto, ray://HOST:PORT or HOST:PORT joins a cluster")
    parser.add_argument("--ray-actors", type=int, default=None, metavar="N",
                        help="largest actor count (default: the cluster's GPUs, else 2)")
    parser.add_argument("--ray-seeds", type=int, default=8, metavar="N", help="seeds per style (default 8)")
    parser.add_argument("--ray-steps", type=int, default=8, metavar="N", help="denoising steps (default 8)")
    parser.add_argument("--ray-size", type=int, default=64, metavar="PX", help="image side (default 64)")
    parser.add_argument("--ray-model", default="tiny", help="model family (default tiny)")
    parser.add_argument("--ray-repeats", type=int, default=2, metavar="N", help="timed runs per count; best kept")
    if not any(a.dest == "json" for a in parser._actions):
        parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    if not any(a.dest == "device" for a in parser._actions):
        parser.add_argument("--device", default="auto", help="auto (CUDA if the cluster has GPUs), cuda or cpu")


def _controls(size: int) -> list[dict]:
    """A depth ramp and a box of lines, as PNGs (stdlib+numpy; PIL is a backend dependency)."""
    import io

    import numpy as np
    from PIL import Image

    from ..core.jobs import encode_png

    y = np.linspace(0, 1, size)[:, None] * np.ones((1, size))
    depth = (40 + 200 * y).astype(np.uint8)
    depth[size // 4: size // 2, size // 4: 3 * size // 4] = 30
    lines = np.zeros((size, size), np.uint8)
    lines[size // 4, size // 4: 3 * size // 4] = 255
    lines[size // 2, :] = 255
    out = []
    for kind, array, scale in (("depth", depth, 0.9), ("lines", lines, 0.6)):
        buf = io.BytesIO()
        Image.fromarray(np.stack([array] * 3, axis=-1)).save(buf, format="PNG")
        out.append({"type": kind, "image": encode_png(buf.getvalue()), "scale": scale})
    return out


def job_dict(out: str, args, seeds: int | None = None) -> dict:
    return {"model": {"family": args.ray_model}, "controls": _controls(args.ray_size), "styles": list(STYLES),
            "seeds": list(range(seeds or args.ray_seeds)), "steps": args.ray_steps, "max_batch": 1,
            "output_dir": out, "skip_existing": False}


def _timed(engine, args, presets, root: str) -> float:
    from ..backend.server.outputs import OutputRoots
    from ..backend.engine.sweep import build_plan
    from ..backend.server.worker import Worker
    from ..core import jobs as J

    worker = Worker(engine, OutputRoots(root))
    best = None
    for _ in range(max(1, args.ray_repeats)):
        out = tempfile.mkdtemp(dir=root)
        plan = build_plan(J.Job.from_dict(job_dict(out, args)), presets, engine.dtype_name, engine.image_changes)
        record = worker.submit(plan)
        t0 = time.perf_counter()
        worker.run(record)
        seconds = time.perf_counter() - t0
        if record.state != "done":
            raise RuntimeError(f"benchmark job {record.state}: {record.error}")
        best = seconds if best is None else min(best, seconds)
    return best


def _warm(engine, args, presets, root: str, images: int) -> None:
    from ..backend.server.outputs import OutputRoots
    from ..backend.engine.sweep import build_plan
    from ..backend.server.worker import Worker
    from ..core import jobs as J

    worker = Worker(engine, OutputRoots(root))
    job = job_dict(tempfile.mkdtemp(dir=root), args, seeds=max(1, images))
    job["styles"], job["steps"] = job["styles"][:1], 1
    record = worker.submit(build_plan(J.Job.from_dict(job), presets, engine.dtype_name, engine.image_changes))
    worker.run(record)


def run_ray_scaling(args) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # CPU actors: one thread per slot
    from ..backend.engine.runner import Engine
    from ..core.presets import load_presets
    from ..distributed.cluster import connect
    from ..distributed.engine import RayEngine

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    device = getattr(args, "device", "auto") or "auto"
    presets = load_presets(include_user=False)
    root = tempfile.mkdtemp(prefix="archviz-ray-bench-")
    n_images = len(STYLES) * args.ray_seeds
    rows = []

    local = None
    if (args.ray or "local") == "local":
        import torch

        torch.set_num_threads(1 if not torch.cuda.is_available() else torch.get_num_threads())
        local = Engine(device if device in ("auto", "cuda", "cpu") else "auto")
        _warm(local, args, presets, root, 1)
        seconds = _timed(local, args, presets, root)
        rows.append({"actors": 0, "what": f"single process ({local.device})", "seconds": seconds,
                     "images_per_s": n_images / seconds})
        local.unload()

    gpus_here = 0
    if (args.ray or "local") == "local" and device != "cpu":
        import torch

        gpus_here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    top = args.ray_actors or gpus_here or 2
    cluster = connect(args.ray, num_cpus=top)
    if not args.ray_actors and cluster.gpus and device != "cpu":
        top = cluster.gpus
    print(f"{cluster.describe()}; sweep of {n_images} images, {args.ray_size} px, {args.ray_steps} steps, "
          f"model {args.ray_model}, 1 image per batch", flush=True)
    engine = None
    try:
        for n in range(1, top + 1):
            engine = RayEngine(args.ray, actors=n, device=device if device in ("auto", "cuda", "cpu") else "auto")
            _warm(engine, args, presets, root, n)  # every actor loads the models
            seconds = _timed(engine, args, presets, root)
            rows.append({"actors": n, "what": str(engine.device), "seconds": seconds,
                         "images_per_s": n_images / seconds})
            engine.close()
            engine = None
    finally:
        if engine is not None:
            engine.close()
    one = next(r for r in rows if r["actors"] == 1)
    print(f"{'actors':>6}  {'seconds':>8}  {'images/s':>8}  {'speed-up':>8}  {'efficiency':>10}  what")
    for r in rows:
        r["speedup"] = one["seconds"] / r["seconds"]
        r["efficiency"] = r["speedup"] / r["actors"] if r["actors"] else None
        eff = f"{r['efficiency']:.0%}" if r["efficiency"] is not None else "-"
        print(f"{r['actors'] or '-':>6}  {r['seconds']:8.2f}  {r['images_per_s']:8.2f}  {r['speedup']:7.2f}x  "
              f"{eff:>10}  {r['what']}")
    report = {"cluster": cluster.describe(), "images": n_images, "size": args.ray_size, "steps": args.ray_steps,
              "model": args.ray_model, "cpu_count": os.cpu_count(), "rows": rows}
    if getattr(args, "json", None):
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {args.json}")
    from ..distributed.cluster import shutdown

    if cluster.started_here:
        shutdown()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="archviz bench --ray", description=__doc__.splitlines()[0])
    add_ray_arguments(parser)
    args = parser.parse_args(argv)
    if args.ray is None:
        args.ray = "local"
    return run_ray_scaling(args)


if __name__ == "__main__":
    sys.exit(main())
