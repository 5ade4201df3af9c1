"""Sweeps spread over Ray actors: many GPUs, many machines, the same engine.

Nothing here is imported unless the user chose Ray (``archviz serve --ray``,
``archviz sweep --ray``, ``ARCHVIZ_RAY``), so the add-on and the single-process backend
never load ``ray``.

* :mod:`.cluster` starts a local Ray instance or joins a cluster (``auto``,
  ``ray://host:port``, ``host:port``).
* :mod:`.actor` is the Ray actor: one GPU (or CPU slot) with a warm
  :class:`~..backend.engine.Engine`, running one engine batch per call and streaming its
  steps and images back.
* :mod:`.engine` is :class:`RayEngine`, a drop-in for the local ``Engine`` under the
  backend's :class:`~..backend.server.worker.Worker`: it fans a job's batches out over the
  actors, retries the batches of a lost actor elsewhere, and hands every finished image to
  the worker, which writes PNGs, manifest and contact sheet exactly as for a local job.
* :mod:`.options` holds the command-line options shared by ``archviz serve`` and
  ``archviz sweep``.
"""

#: Environment variable naming the Ray cluster to use: ``local`` (start one), ``auto``,
#: ``ray://host:port`` or ``host:port``. Unset or empty: no Ray.
ENV_ADDRESS = "ARCHVIZ_RAY"
#: Environment variable with the number of actors (default: one per GPU, else 2).
ENV_ACTORS = "ARCHVIZ_RAY_ACTORS"
#: Environment variable with the CPUs each actor reserves (default 1).
ENV_CPUS_PER_ACTOR = "ARCHVIZ_RAY_CPUS_PER_ACTOR"
