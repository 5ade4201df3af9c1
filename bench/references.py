"""``archviz bench --references``: the per-image cost of reference images against none, for
each family that takes them (core/references.py), side by side in one process.

For each family's tiny test model (offline; the same code paths as the real ids) the same
sweep runs with no reference, one and two, the engine warm; each row's time is the fastest
of ``--repeats`` runs, divided by the images. The references' one-time encode per job is
shown apart (``encode``): it does not grow with the sweep. Tiny models measure the
mechanism's overhead in the engine, not the real models' FLOPs.
"""

from __future__ import annotations

import time

#: the tiny family that stands for each arch's mechanism (core/families.py REFERENCES)
def _families():
    from ..core import families

    return [(f.name, arch) for arch in families.REFERENCES for f in families.FAMILY_LIST
            if f.tiny and f.arch == arch and f.menu]


def add_reference_arguments(parser) -> None:
    parser.add_argument("--references", action="store_true",
                        help="the per-image cost of reference images (none, one, two) for each family that takes "
                             "them, on its tiny model (docs: References)")


def _board(seed: int, size: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(cells, size // 4, 0), size // 4, 1)


def _b64(array) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _job(family: str, arch: str, size: int, steps: int, styles, seeds, references) -> dict:
    import numpy as np

    from ..core.families import ARCHES

    y = np.linspace(40, 240, size, dtype=np.float32)[:, None] * np.ones((1, size), np.float32)
    depth = np.repeat(y.astype(np.uint8)[..., None], 3, axis=-1)
    job = {"model": {"family": family}, "controls": [{"type": "depth", "image": _b64(depth), "scale": 0.8}],
           "styles": list(styles), "seeds": list(seeds), "steps": steps, "width": size, "height": size}
    if ARCHES[arch].preset_section is None:  # SD 1.5: the job's own cfg
        job["cfg"] = 7.0
    if references:
        from ..core.references import MECHANISMS

        scale = 0.8 if MECHANISMS[arch].scaled else 1.0  # FLUX.2 Klein: no per-reference strength
        job["references"] = [{"image": _b64(_board(i + 1, 64)), "scale": scale} for i in range(references)]
    return job


def run_references(args) -> int:
    import torch

    from ..backend.engine.runner import Engine
    from ..backend.engine.sweep import build_plan
    from ..core import jobs as J
    from ..core.presets import load_presets

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine(args.device)
    presets = load_presets(include_user=False)
    steps = args.steps or 4
    size = args.size or 64
    repeats = max(1, args.repeats)
    print(f"reference images: per-image seconds on {engine.device} ({torch.get_num_threads()} threads), tiny models, "
          f"{size}x{size} px, {steps} steps, {len(args.styles)} style(s) x {len(args.seeds)} seed(s); "
          f"fastest of {repeats}")
    print(f"{'family':<12} {'mechanism':<16} {'none':>9} {'1 ref':>9} {'2 refs':>9} {'x (1)':>7} {'x (2)':>7} "
          f"{'encode':>9}")
    from ..core.references import MECHANISMS

    rows = []
    for family, arch in _families():
        per_image, encode = {}, {}
        for n in (0, 1, 2):
            plan = build_plan(J.Job.from_dict(_job(family, arch, size, steps, args.styles, args.seeds, n)), presets,
                              engine.dtype_name)
            engine.generate(plan, plan.images, preview_every=0)  # warm: models loaded, adapter in
            best = None
            for _ in range(repeats):
                t0 = engine._clock()
                engine.generate(plan, plan.images, preview_every=0)
                took = engine._clock() - t0
                best = took if best is None else min(best, took)
            per_image[n] = best / len(plan.images)
            encode[n] = engine.timings["references"]
        row = {"family": family, "mechanism": MECHANISMS[arch].label, "per_image_s": per_image,
               "encode_s": encode[2]}
        rows.append(row)
        print(f"{family:<12} {MECHANISMS[arch].label:<16} {per_image[0]:>9.4f} {per_image[1]:>9.4f} "
              f"{per_image[2]:>9.4f} {per_image[1] / per_image[0]:>7.2f} {per_image[2] / per_image[0]:>7.2f} "
              f"{encode[2]:>9.4f}")
    if args.json:
        import json

        with open(args.json, "w") as fh:
            json.dump({"references": rows, "device": str(engine.device), "time": time.time()}, fh, indent=2)
    return 0
