"""The Ray actor: one GPU (or a CPU slot) with a warm engine.

Each actor owns a :class:`~..backend.engine.Engine` (the very engine of the single-process
backend, with its warm model cache), so models load once per actor and stay loaded
between batches and jobs. :meth:`SweepActor.run` makes one engine batch of a
:class:`~..backend.engine.sweep.SweepPlan` and streams ``("step", n)`` and
``("image", index, float32 HxWx3 array)`` back as they happen (a Ray streaming
generator). The images are made here and written by the driver, so the output folder
only has to exist where the driver runs.

Methods other than ``run`` live in their own concurrency group: a cancel, a health
query or an unload is answered while a batch is denoising.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading

import ray

log = logging.getLogger("archviz.ray")

#: Events an actor may have produced but the driver not yet taken. Small on purpose: an
#: image counts as done only once the driver has it, and a lost actor's unsent events
#: are simply made again elsewhere.
BACKPRESSURE = 2


class PlanMismatch(RuntimeError):
    """The actor would not make the pixels the plan's ``params_sha256`` promise."""


def _quiet_libraries() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


@ray.remote(concurrency_groups={"control": 2})
class SweepActor:
    def __init__(self, device: str = "auto", budget_bytes: int | None = None, max_batch: int | None = None,
                 options=None):
        from ..backend.engine.runner import Engine

        _quiet_libraries()
        self.engine = Engine(device, budget_bytes=budget_bytes, max_batch=max_batch, options=options)
        self._cancelled: set[str] = set()
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.batches_run = 0

    # -- control group: answered while a batch runs ---------------------------------------
    @ray.method(concurrency_group="control")
    def info(self) -> dict:
        from .. import __version__
        from ..backend.engine.sweep import ENGINE_VERSION

        ctx = ray.get_runtime_context()
        return {"device": str(self.engine.device), "dtype": self.engine.dtype_name, "pid": os.getpid(),
                "host": socket.gethostname(), "node_id": ctx.get_node_id(), "actor_id": ctx.get_actor_id(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "version": __version__,
                "engine_version": ENGINE_VERSION, "batches_run": self.batches_run}

    @ray.method(concurrency_group="control")
    def batch_limit(self, plan) -> int:
        return self.engine.batch_limit(plan)

    @ray.method(concurrency_group="control")
    def cancel(self, call_id: str) -> None:
        with self._lock:
            self._cancelled.add(call_id)
            event = self._events.get(call_id)
        if event is not None:
            event.set()

    @ray.method(concurrency_group="control")
    def cache(self) -> dict:
        cache = self.engine.cache
        return {"models": cache.describe(), "used_bytes": cache.used_bytes(), "budget_bytes": cache.budget_bytes}

    @ray.method(concurrency_group="control")
    def tokenizer(self, models, name: str, args: tuple | None = None, kwargs: dict | None = None):
        """Use the base model's tokenizer here (loading the model into the warm cache), so
        the driver checks prompt lengths without holding any weights: an attribute's value
        (``args`` None), or the result of calling it."""
        tokenizer = self.engine.cache.base(models).value["tokenizer"]
        attr = tokenizer if name == "__call__" else getattr(tokenizer, name)
        if args is None:
            return ("callable", None) if callable(attr) else ("value", attr)
        return attr(*args, **(kwargs or {}))

    @ray.method(concurrency_group="control")
    def unload(self) -> dict:
        return self.engine.unload()

    # -- the work: one engine batch per call -------------------------------------------------
    @ray.method(_generator_backpressure_num_objects=BACKPRESSURE)
    def run(self, plan, indexes: list[int], call_id: str):
        """Make the images ``indexes`` of ``plan``; yields ``("step", 1)`` per denoising
        step and ``("image", index, array)`` per finished image."""
        if plan.dtype != self.engine.dtype_name:
            raise PlanMismatch(f"the job was planned for {plan.dtype} but this actor runs {self.engine.dtype_name} "
                               f"on {self.engine.device}: every actor must use the same kind of device")
        by_index = {item.index: item for item in plan.images}
        images = [by_index[i] for i in indexes]
        event = threading.Event()
        with self._lock:
            if call_id in self._cancelled:
                event.set()
            self._events[call_id] = event
        events: "queue.Queue[tuple]" = queue.Queue()

        def work() -> None:
            try:
                self.engine.generate(plan, images, on_step=lambda n: events.put(("step", n)),
                                     on_image=lambda item, array: events.put(("image", item.index, array)),
                                     cancelled=event.is_set)
                events.put(("end",))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through Ray
                events.put(("error", exc))

        thread = threading.Thread(target=work, name=f"archviz-batch-{call_id}", daemon=True)
        thread.start()
        try:
            while True:
                kind, *rest = events.get()
                if kind == "end":
                    self.batches_run += 1
                    return
                if kind == "error":
                    raise rest[0]
                yield (kind, *rest)
        finally:
            event.set()  # the caller went away or the batch ended: stop the engine at its next step
            thread.join()
            with self._lock:
                self._events.pop(call_id, None)
                self._cancelled.discard(call_id)
