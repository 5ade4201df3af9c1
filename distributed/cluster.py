"""Connecting to Ray: a local instance, or an existing cluster.

``local`` (or an empty address) starts a Ray instance inside this process's machine with a
bounded number of CPUs, no dashboard and no usage statistics; ``auto`` joins the cluster
this machine is part of (``ray start`` ran here); ``ray://host:10001`` connects through
Ray Client; ``host:6379`` joins through the head's GCS address.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

log = logging.getLogger("archviz.ray")

LOCAL = "local"


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached or joined."""


def normalize_address(address: str | None) -> str:
    """``None``/"" -> ``local``; ``auto``, ``ray://host:port`` and ``host:port`` as given."""
    address = (address or "").strip()
    if not address or address.lower() == LOCAL:
        return LOCAL
    if address == "auto" or address.startswith("ray://"):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r}: expected local, auto, ray://HOST:PORT or HOST:PORT")
    return address


@dataclass
class Cluster:
    address: str  # what we were asked for (normalized)
    started_here: bool  # a local instance this process started (it ends with this process)
    resources: dict  # ray.cluster_resources() when connected
    nodes: int

    @property
    def gpus(self) -> int:
        return int(self.resources.get("GPU", 0))

    @property
    def cpus(self) -> int:
        return int(self.resources.get("CPU", 0))

    def describe(self) -> str:
        where = "local Ray instance" if self.started_here else f"Ray cluster {self.address}"
        return f"{where}: {self.nodes} node(s), {self.cpus} CPU(s), {self.gpus} GPU(s)"


def import_ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is in the project's requirements
        raise RayUnavailable(f"Ray is not installed in {sys.executable} ({exc}); "
                             "pip install ray (see docs/ray.md)") from None
    return ray


def connect(address: str | None = LOCAL, num_cpus: int | None = None, object_store_mb: int = 1024) -> Cluster:
    """Start or join Ray once per process (a second call reuses the connection)."""
    address = normalize_address(address)
    ray = import_ray()
    started_here = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage statistics sent anywhere
        try:
            if address == LOCAL:
                ray.init(num_cpus=max(1, int(num_cpus or 2)), include_dashboard=False,
                         object_store_memory=object_store_mb * 2**20, logging_level=logging.WARNING,
                         namespace="archviz")
                started_here = True
            else:
                ray.init(address=address, logging_level=logging.WARNING, namespace="archviz")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayUnavailable(f"cannot {'start' if address == LOCAL else 'join'} Ray "
                                 f"({address}): {exc}") from None
    resources = dict(ray.cluster_resources())
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    cluster = Cluster(address=address, started_here=started_here, resources=resources, nodes=nodes)
    log.info("%s", cluster.describe())
    return cluster


def shutdown() -> None:
    ray = import_ray()
    if ray.is_initialized():
        ray.shutdown()
