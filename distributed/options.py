"""Command-line options for Ray, shared by ``archviz serve`` and ``archviz sweep``.
No Ray import here: parsing arguments must stay instant."""

from __future__ import annotations

import argparse
import os

from . import ENV_ACTORS, ENV_ADDRESS, ENV_CPUS_PER_ACTOR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", nargs="?", const="local", default=os.environ.get(ENV_ADDRESS) or None,
                        metavar="ADDRESS",
                        help="spread the sweep over Ray actors (one per GPU, or CPU slots): no ADDRESS or "
                             "'local' starts a Ray instance here, 'auto' joins the cluster of this machine, "
                             f"ray://HOST:10001 or HOST:6379 joins that one (default: ${ENV_ADDRESS}; docs/ray.md)")
    parser.add_argument("--ray-actors", type=int, default=_env_int(ENV_ACTORS), metavar="N",
                        help=f"Ray actors (default: ${ENV_ACTORS}, else one per GPU of the cluster, else 2)")
    parser.add_argument("--ray-cpus-per-actor", type=float, default=_env_float(ENV_CPUS_PER_ACTOR, 1.0), metavar="N",
                        help=f"CPUs each actor reserves (default: ${ENV_CPUS_PER_ACTOR}, else 1; on a CPU-only "
                             "cluster give each actor a node's worth so torch can use its threads)")


def environment(args: argparse.Namespace) -> dict[str, str]:
    """The Ray choices as the environment of a backend this process starts (``archviz
    serve`` reads them as its defaults): how ``archviz sweep --ray`` and Blender with
    ``ARCHVIZ_RAY`` set hand them to their local backend."""
    if args.ray is None:
        return {}
    env = {ENV_ADDRESS: args.ray or "local", ENV_CPUS_PER_ACTOR: f"{args.ray_cpus_per_actor:g}"}
    if args.ray_actors:
        env[ENV_ACTORS] = str(args.ray_actors)
    return env


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


def make_engine(args: argparse.Namespace, budget_bytes: int | None, options=None):
    """The :class:`~.engine.RayEngine` for ``archviz serve --ray`` (imports Ray)."""
    from .cluster import RayUnavailable, normalize_address
    from .engine import RayEngine

    try:
        normalize_address(args.ray)
    except ValueError as exc:
        raise RayUnavailable(str(exc)) from None
    return RayEngine(args.ray, actors=args.ray_actors, device=args.device, budget_bytes=budget_bytes,
                     max_batch=args.max_batch, cpus_per_actor=args.ray_cpus_per_actor, options=options)
