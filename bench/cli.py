"""``archviz bench``: baseline diffusers loop vs our engine, side by side, one process."""

from __future__ import annotations

import argparse

from . import runner


def _csv(text: str) -> tuple:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _seeds(text: str) -> tuple:
    out = []
    for part in _csv(text):
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return tuple(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = runner.Spec()
    parser.add_argument("--config", choices=tuple(runner.CONFIGS), default="tiny",
                        help="; ".join(f"{k}: {v}" for k, v in runner.CONFIGS.items()))
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cuda or cpu")
    parser.add_argument("--styles", type=_csv, default=None,
                        help=f"comma-separated presets (default: {','.join(d.styles)}; small-*: modern,industrial)")
    parser.add_argument("--seeds", type=_seeds, default=None, help="e.g. 0-3 (default: 0-3; small-*: 0-1)")
    parser.add_argument("--size", type=int, default=None,
                        help="image side in px (default: " + ", ".join(f"{v} for {k}" for k, v in
                                                                      runner.DEFAULT_SIZE.items()) + ")")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"denoising steps (default {d.steps}; " + ", ".join(f"{v} for {k}" for k, v in
                                                                          runner.DEFAULT_STEPS.items()) + ")")
    parser.add_argument("--cfg", type=float, default=d.cfg)
    parser.add_argument("--scheduler", default=d.scheduler)
    parser.add_argument("--cases", type=_csv, default=d.cases,
                        help=f"control cases to run (known: {', '.join(runner.CASES)})")
    parser.add_argument("--rows", default=None,
                        help="optimisation rows: 'all', 'none' or a comma list "
                             f"({', '.join((*runner.ROWS, *runner.JOB_ROWS))}); default: all on CUDA, the CPU-relevant ones "
                             "on CPU")
    parser.add_argument("--row-case", default=d.row_case, help="case the rows run on")
    parser.add_argument("--no-baseline", action="store_true", help="skip the diffusers baseline")
    parser.add_argument("--capture", action="store_true",
                        help="also time the control passes of the example scene (needs bpy)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed runs per side after its untimed warm-up, the order of the sides alternating; "
                             "the median counts, min and max are printed")
    parser.add_argument("--serve", action=argparse.BooleanOptionalAction, default=None,
                        help="also run the job end to end through the HTTP API (default: on for small-*)")
    parser.add_argument("--no-overhead", action="store_true",
                        help="skip the overhead row (time per step outside the forwards, from a profile)")
    parser.add_argument("--json", default=None, help="write the whole report to this JSON file")
    from .ray_scaling import add_ray_arguments

    add_ray_arguments(parser)  # --ray: scaling from 1 to N Ray actors instead of the side-by-side run
    from .configs_wan import add_video_configs

    add_video_configs(parser)  # --config tiny-wan | wan: the video engine (bench/configs_wan.py)
    from .references import add_reference_arguments

    add_reference_arguments(parser)  # --references: the per-image cost of reference images (bench/references.py)


def spec_from_args(args) -> runner.Spec:
    rows = None
    if args.rows == "all":
        rows = tuple(runner.ROWS) + runner.JOB_ROWS
    elif args.rows == "none":
        rows = ()
    elif args.rows:
        rows = _csv(args.rows)
    elif args.config in runner.SMALL:  # compute-bound configs: the side-by-side run and the overhead row
        rows = ()
    cases = args.cases
    if cases == runner.Spec.cases:  # the config's own cases (an edit model's one, Klein's one)
        cases = runner.cases_of(args.config)
    unknown = [c for c in args.cases if c not in runner.CASES]
    if unknown:
        raise SystemExit(f"archviz bench: --cases: unknown {unknown[0]!r} (known: {', '.join(runner.CASES)})")
    size = args.size or runner.DEFAULT_SIZE[args.config]
    steps = args.steps if args.steps is not None else runner.DEFAULT_STEPS.get(args.config, runner.Spec.steps)
    styles, seeds = runner.DEFAULT_SWEEP.get(args.config, (runner.Spec.styles, runner.Spec.seeds))
    serve = args.serve if args.serve is not None else args.config in runner.SMALL
    return runner.Spec(config=args.config, device=args.device, styles=args.styles or styles, seeds=args.seeds or seeds,
                       size=size, serve=serve, overhead=not args.no_overhead,
                       steps=steps, cfg=args.cfg, scheduler=args.scheduler, cases=cases, rows=rows,
                       row_case=args.row_case, baseline=not args.no_baseline, capture=args.capture,
                       threads=args.threads, repeats=args.repeats)


def run(args) -> int:
    if args.config in ("tiny-wan", "wan"):  # the video families (bench/configs_wan.py)
        from .configs_wan import run as run_video

        return run_video(args)
    if args.ray is not None:
        from .ray_scaling import run_ray_scaling

        return run_ray_scaling(args)
    if args.references:  # the per-image cost of reference images (bench/references.py)
        return __import__(f"{__package__}.references", fromlist=["x"]).run_references(args)
    spec = spec_from_args(args)
    report = runner.run(spec)
    if args.json:
        runner.dump(report, args.json)
    return 0
