"""``RayEngine``: the backend's engine, fanned out over Ray actors.

It has the interface the backend's :class:`~..backend.server.worker.Worker` and HTTP server use
of :class:`~..backend.engine.Engine` (``generate``, ``batches``, ``batch_limit``,
``device``, ``dtype_name``, ``cache``, ``unload``), so a job runs through the very same
worker code as on one GPU: the same resume check (``skip_existing`` by
``params_sha256``), the same PNG metadata, manifest and contact sheet, written by the
driver as each image arrives. Only *where* the denoising happens changes:

1. The job's images are cut into units with the engine's own batching
   (:meth:`Engine.batches <..backend.engine.Engine.batches>`): images that sample alike
   share a batch, at most ``max_batch`` per batch (the job's, else ``--max-batch``, else
   what one actor's engine would pick, capped so that every actor gets work).
2. Each idle actor gets the next unit; it streams its denoising steps and finished images
   back (:mod:`.actor`). An image counts as done when the driver has it, and the worker
   writes it to disk right then.
3. A lost actor (killed, crashed, its node gone) ends its unit with a Ray actor error: the
   unit's images that did not arrive go back to the front of the queue for the next live
   actor (Ray restarts a crashed actor by itself, ``max_restarts``; a restarted one
   rejoins once it answers). Images that arrived are never made again.
4. An error inside the engine (a missing model, out of memory on one image) fails the job
   as it would on one GPU; cancel reaches every actor within one denoising step.

Pixels are the engine's: identical to a local run of the same batches. (The project
already treats an image's pixels as a function of its parameters, ``params_sha256``, up
to batch composition: a different batch size can move a few pixels by one level. Set the
job's ``max_batch`` to get the same batches, and so the same bytes, on both.)
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from ..backend.engine.runner import Cancelled, Engine
from ..backend.engine.sweep import PlannedImage, SweepPlan
from .cluster import LOCAL, RayUnavailable, connect, import_ray

log = logging.getLogger("archviz.ray")

DEFAULT_STARTUP_TIMEOUT = 600.0  # first start of an actor: import torch, maybe build models
DEFAULT_RESTART_TIMEOUT = 300.0  # how long a lost actor may take to come back before it is dropped
DEFAULT_MAX_ATTEMPTS = 3  # a unit whose actor is lost this often fails the job (a poison batch)
POLL = 0.2  # seconds between cancel checks while waiting on actors


class ActorsLost(RuntimeError):
    """Every actor is gone, or one batch lost its actor too often."""


@dataclass
class RayDevice:
    """What ``/v1/health`` shows as the device: ``ray: 2 actors on cuda``."""

    type: str  # the actors' torch device type
    actors: int
    address: str

    def __str__(self) -> str:
        return f"ray: {self.actors} actor(s) on {self.type} ({self.address})"


@dataclass
class _Slot:
    number: int
    actor: object
    info: dict = field(default_factory=dict)
    state: str = "starting"  # starting | idle | busy | probing | dead

    @property
    def label(self) -> str:
        where = f"{self.info.get('host', '?')}/{self.info.get('pid', '?')}" if self.info else "starting"
        return f"actor{self.number} ({where})"


@dataclass
class _Unit:
    key: int
    items: list[PlannedImage]
    attempts: int = 0


@dataclass
class _Call:
    slot: _Slot
    unit: _Unit
    call_id: str
    steps: int = 0  # steps this attempt reported


class _FixedLimit:
    """Lets :meth:`Engine.batches` (the engine's own grouping) run with a given limit."""

    def __init__(self, limit: int):
        self.limit = limit

    def batch_limit(self, plan) -> int:
        return self.limit


class _CacheView:
    """``engine.cache`` for ``/v1/health``: the actors' warm models, summed."""

    def __init__(self, engine: "RayEngine"):
        self.engine = engine

    def _each(self) -> list[tuple[_Slot, dict]]:
        return self.engine._ask_each("cache")

    def describe(self) -> list[dict]:
        return [{**m, "actor": slot.label} for slot, data in self._each() for m in data["models"]]

    def used_bytes(self) -> int:
        return sum(data["used_bytes"] for _slot, data in self._each())

    @property
    def budget_bytes(self) -> int:
        return sum(data["budget_bytes"] for _slot, data in self._each())

    def base(self, models):
        """What the worker reads of a base model on the driver: its tokenizer (to warn
        about prompts the text encoder cuts), fetched from an actor that loads the model."""
        return _Entry({"tokenizer": self.engine._tokenizer(models)})


@dataclass
class _Entry:
    value: dict


class _RemoteTokenizer:
    """An actor's tokenizer, used from the driver (attributes and calls go to the actor,
    where the model is loaded anyway: a tokenizer does not survive pickling unchanged)."""

    def __init__(self, ray, actor, models, timeout: float):
        self._ray, self._actor, self._models, self._timeout = ray, actor, models, timeout

    def _remote(self, name: str, args=None, kwargs=None):
        return self._ray.get(self._actor.tokenizer.remote(self._models, name, args, kwargs), timeout=self._timeout)

    def __call__(self, *args, **kwargs):
        return self._remote("__call__", args, kwargs)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        kind, value = self._remote(name)
        if kind == "value":
            return value
        return lambda *args, **kwargs: self._remote(name, args, kwargs)


class RayEngine:
    """Ray actors behind the engine interface. ``address``: ``local`` (start a Ray
    instance here), ``auto``, ``ray://host:port`` or ``host:port``."""

    def __init__(self, address: str | None = LOCAL, actors: int | None = None, device: str = "auto",
                 budget_bytes: int | None = None, max_batch: int | None = None, cpus_per_actor: float = 1.0,
                 startup_timeout: float = DEFAULT_STARTUP_TIMEOUT, restart_timeout: float = DEFAULT_RESTART_TIMEOUT,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, options=None):
        if device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device: expected auto, cuda or cpu, got {device!r}")
        if actors is not None and actors < 1:
            raise ValueError(f"actors: at least 1, got {actors}")
        self.ray = import_ray()
        local_gpus = _local_gpus() if (address or LOCAL) == LOCAL and device != "cpu" else 0
        wanted = actors or local_gpus or None
        self.cluster = connect(address, num_cpus=math.ceil((wanted or 2) * cpus_per_actor))
        gpus = self.cluster.gpus
        if device == "cuda" and not gpus:
            raise RayUnavailable(f"--device cuda was asked for but the {self.cluster.describe()} has no GPU")
        self.use_gpu = device == "cuda" or (device == "auto" and gpus > 0)
        self.n_actors = actors or (gpus if self.use_gpu else 2)
        if self.use_gpu and self.n_actors > gpus:
            raise RayUnavailable(f"{self.n_actors} actors with one GPU each were asked for but the "
                                 f"{self.cluster.describe()}")
        self.cpus_per_actor = cpus_per_actor
        self.actor_device = "cuda" if self.use_gpu else "cpu"
        self.budget_bytes = budget_bytes
        self.options = options  # EngineOptions or changes to the defaults, for every actor (None: the defaults)
        from ..backend.engine.runner import EngineOptions

        self.image_changes = EngineOptions.resolve(options, self.actor_device).image_changes()
        env_batch = os.environ.get("ARCHVIZ_MAX_BATCH")
        self.max_batch = max_batch or (int(env_batch) if env_batch else None)
        self.startup_timeout = startup_timeout
        self.restart_timeout = restart_timeout
        self.max_attempts = max_attempts
        self.observer: Callable[[str, tuple], None] | None = None  # (actor label, event): monitoring, tests
        self.stats: dict = {}
        self._limits: dict[tuple, int] = {}
        self._next_number = 0
        self.slots: list[_Slot] = [self._new_slot() for _ in range(self.n_actors)]
        self._wait_ready(self.slots)
        dtypes = {slot.info["dtype"] for slot in self.slots}
        if len(dtypes) != 1:
            raise RayUnavailable(f"the actors disagree on the dtype ({', '.join(sorted(dtypes))}); "
                                 "use one kind of device (--device cuda or cpu)")
        self.dtype_name = dtypes.pop()
        self.device = RayDevice(self.actor_device, self.n_actors, self.cluster.address)
        self.cache = _CacheView(self)
        log.info("%s; %d actor(s) on %s (%s): %s", self.cluster.describe(), self.n_actors, self.actor_device,
                 self.dtype_name, ", ".join(s.label for s in self.slots))

    # -- actors ----------------------------------------------------------------------------
    def _new_slot(self, number: int | None = None) -> _Slot:
        from .actor import SweepActor

        if number is None:
            number, self._next_number = self._next_number, self._next_number + 1
        actor = SweepActor.options(
            num_gpus=1 if self.use_gpu else 0, num_cpus=self.cpus_per_actor,
            max_restarts=3,  # Ray brings a crashed actor (or one whose node died) back, elsewhere if need be
            max_task_retries=0,  # ...but a lost batch is re-planned here, so no image is made twice
        ).remote(self.actor_device, self.budget_bytes, self.max_batch, self.options)
        return _Slot(number, actor)

    def _wait_ready(self, slots: list[_Slot]) -> None:
        refs = {slot.actor.info.remote(): slot for slot in slots}
        try:
            infos = self.ray.get(list(refs), timeout=self.startup_timeout)
        except self.ray.exceptions.GetTimeoutError:
            raise RayUnavailable(
                f"{len(slots)} Ray actor(s) did not start within {self.startup_timeout:.0f} s: the "
                f"{self.cluster.describe()} may lack the resources ({'1 GPU' if self.use_gpu else ''}"
                f"{' + ' if self.use_gpu else ''}{self.cpus_per_actor:g} CPU per actor)") from None
        except self.ray.exceptions.RayActorError as exc:
            raise RayUnavailable(f"a Ray actor failed to start: {exc}") from None
        for info, slot in zip(infos, refs.values()):
            slot.info, slot.state = info, "idle"

    def live_slots(self) -> list[_Slot]:
        return [s for s in self.slots if s.state != "dead"]

    def _ensure_actors(self) -> None:
        """Replace actors that are gone for good (a new job starts with a full pool)."""
        for k, slot in enumerate(self.slots):
            if slot.state == "dead":
                self.slots[k] = self._new_slot(slot.number)

    def _ask_each(self, method: str, timeout: float = 10.0) -> list[tuple[_Slot, object]]:
        slots = [s for s in self.slots if s.state in ("idle", "busy")]
        out = []
        for slot in slots:
            try:
                out.append((slot, self.ray.get(getattr(slot.actor, method).remote(), timeout=timeout)))
            except (self.ray.exceptions.RayError, self.ray.exceptions.GetTimeoutError) as exc:
                log.warning("%s did not answer %s: %s", slot.label, method, exc)
        return out

    def _tokenizer(self, models) -> "_RemoteTokenizer":
        slot = next((s for s in self.slots if s.state in ("idle", "busy")), None)
        if slot is None:
            raise ActorsLost("no Ray actor is up to load the model")
        return _RemoteTokenizer(self.ray, slot.actor, models, self.startup_timeout)

    def unload(self) -> dict:
        out = {"unloaded": [], "in_use": []}
        for slot, data in self._ask_each("unload"):
            for key in out:
                out[key].extend(f"{slot.label}: {name}" for name in data.get(key, []))
        return out

    def shutdown(self) -> None:
        """Kill the actors, and stop Ray when this process started it."""
        self.close()
        if self.cluster.started_here and self.ray.is_initialized():
            self.ray.shutdown()

    def close(self) -> None:
        """Kill the actors (their models go with them); Ray itself keeps running."""
        for slot in self.slots:
            try:
                self.ray.kill(slot.actor)
            except self.ray.exceptions.RayError:
                pass  # already gone
            slot.state = "dead"

    # -- sizing: the engine's own batching --------------------------------------------------
    def batch_limit(self, plan: SweepPlan, n_images: int | None = None) -> int:
        if plan.job.max_batch:
            return plan.job.max_batch  # the user's choice, exactly as on one GPU
        limit = self.max_batch or self._actor_limit(plan)
        if n_images:
            limit = min(limit, math.ceil(n_images / max(1, len(self.live_slots()))))  # work for every actor
        return max(1, limit)

    def _actor_limit(self, plan: SweepPlan) -> int:
        """What one actor's engine would put in a batch (by its free GPU memory; 8 on CPU)."""
        key = (plan.models.arch, plan.width, plan.height)
        if key not in self._limits:
            slot = next((s for s in self.slots if s.state in ("idle", "busy")), None)
            if slot is None:
                return 8
            self._limits[key] = int(self.ray.get(slot.actor.batch_limit.remote(plan), timeout=60))
        return self._limits[key]

    def batches(self, plan: SweepPlan, images: Iterable[PlannedImage]) -> list[list[PlannedImage]]:
        images = list(images)
        return Engine.batches(_FixedLimit(self.batch_limit(plan, len(images))), plan, images)

    # -- the sweep ----------------------------------------------------------------------------
    def generate(self, plan: SweepPlan, images: list[PlannedImage], *,
                 on_step: Callable[[int], None] | None = None,
                 on_image: Callable[[PlannedImage, np.ndarray], None] | None = None,
                 cancelled: Callable[[], bool] | None = None,
                 on_preview=None, preview_every: int | None = None) -> dict[int, np.ndarray]:
        """Make ``images`` on the actors; ``on_image`` runs here, in the caller's thread, as
        each image arrives. Returns {index: float32 HxWx3 array in [0, 1]}. Previews are not
        made on Ray actors (``on_preview`` is never called; the job status has none)."""
        ray = self.ray
        cancelled = cancelled or (lambda: False)
        self._ensure_actors()
        probing: dict[object, tuple[_Slot, float]] = {}
        for slot in self.slots:  # new actors, and lost ones that may have been restarted
            if slot.state in ("starting", "probing"):
                probing[slot.actor.info.remote()] = (slot, time.monotonic())
        plan_ref = ray.put(plan)  # shipped once per node, not once per batch
        units = deque(_Unit(k, batch) for k, batch in enumerate(self.batches(plan, images)))
        high_water: dict[int, int] = {}  # unit key -> steps already reported (a retry does not count twice)
        running: dict[object, _Call] = {}
        results: dict[int, np.ndarray] = {}
        stats = self.stats = {"units": len(units), "retried_units": 0, "lost_actors": [], "images_by_actor": {},
                              "duplicates_dropped": 0}
        stopping = False
        failure: BaseException | None = None

        def stop() -> None:
            nonlocal stopping
            stopping = True
            units.clear()
            for call in running.values():
                try:
                    call.slot.actor.cancel.remote(call.call_id)
                except ray.exceptions.RayError:
                    pass  # that actor is gone; its generator ends with an error below

        while units or running:
            if not stopping and cancelled():
                stop()
            for slot in self.slots:  # hand out work
                if not units or stopping:
                    break
                if slot.state == "idle":
                    unit = units.popleft()
                    call = _Call(slot, unit, uuid.uuid4().hex[:12])
                    gen = slot.actor.run.remote(plan_ref, [i.index for i in unit.items], call.call_id)
                    running[gen] = call
                    slot.state = "busy"
            if not running and not probing:
                if units:
                    raise ActorsLost(f"every Ray actor is gone with {sum(len(u.items) for u in units)} image(s) "
                                     f"still to make; the {len(results)} finished are kept (run again to resume)")
                break
            ready, _ = ray.wait([*running, *probing], num_returns=1, timeout=POLL)
            for ref in ready:
                if ref in probing:
                    self._probed(ref, probing.pop(ref)[0])
                    continue
                call = running[ref]
                try:
                    event = ray.get(next(ref))
                except StopIteration:
                    del running[ref]
                    call.slot.state = "idle"
                    continue
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError,
                        ray.exceptions.OutOfMemoryError) as exc:
                    del running[ref]
                    fatal = self._lost(call, exc, units, results, probing, stopping)
                    if fatal is not None and failure is None:
                        failure = fatal
                        stop()
                    continue
                except ray.exceptions.RayTaskError as exc:
                    del running[ref]
                    call.slot.state = "idle"
                    cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                    if isinstance(cause, Cancelled) and stopping:
                        continue
                    log.error("%s failed a batch: %s", call.slot.label, cause)
                    if failure is None:
                        failure = cause
                        stop()
                    continue
                if self.observer is not None:
                    self.observer(call.slot.label, event)
                if event[0] == "step":
                    call.steps += event[1]
                    seen = high_water.get(call.unit.key, 0)
                    if call.steps > seen:
                        high_water[call.unit.key] = call.steps
                        if on_step:
                            on_step(call.steps - seen)
                elif event[0] == "image":
                    _, index, array = event
                    if index in results:
                        stats["duplicates_dropped"] += 1
                        continue
                    item = next(i for i in call.unit.items if i.index == index)
                    results[index] = array
                    by_actor = stats["images_by_actor"]
                    by_actor[call.slot.number] = by_actor.get(call.slot.number, 0) + 1
                    if on_image:
                        on_image(item, array)
            now = time.monotonic()
            for ref, (slot, since) in list(probing.items()):
                if now - since > (self.startup_timeout if not slot.info else self.restart_timeout):
                    log.warning("%s did not come back within %.0f s; dropping it", slot.label, now - since)
                    slot.state = "dead"
                    del probing[ref]
        if failure is not None:
            raise failure
        if stopping:
            raise Cancelled()
        return results

    # -- failures ------------------------------------------------------------------------------
    def _lost(self, call: _Call, exc: BaseException, units: deque, results: dict, probing: dict,
              stopping: bool) -> BaseException | None:
        """Put the images of a lost actor's batch that did not arrive back in the queue;
        returns the error that ends the job when that batch has lost its actor too often."""
        slot, unit = call.slot, call.unit
        fatal = None
        missing = [i for i in unit.items if i.index not in results]
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self.stats["lost_actors"].append(slot.number)
        if missing and not stopping:
            if unit.attempts + 1 >= self.max_attempts:
                fatal = ActorsLost(f"images {[i.file for i in missing]} lost their Ray actor {self.max_attempts} "
                                   f"times (last: {reason}); the {len(results)} finished are kept")
            else:
                units.appendleft(_Unit(unit.key, missing, unit.attempts + 1))
                self.stats["retried_units"] += 1
        log.warning("%s was lost (%s); %d image(s) of its batch go to another actor", slot.label, reason,
                    len(missing) if not stopping else 0)
        # A killed actor stays dead; a crashed one is restarted by Ray and answers this again.
        slot.state = "probing"
        probing[slot.actor.info.remote()] = (slot, time.monotonic())
        return fatal

    def _probed(self, ref, slot: _Slot) -> None:
        try:
            slot.info = self.ray.get(ref)
            slot.state = "idle"
            log.info("%s is up", slot.label)
        except self.ray.exceptions.RayError as exc:
            slot.state = "dead"
            log.warning("%s is gone for good: %s", slot.label, str(exc).splitlines()[0] if str(exc) else exc)


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover - torch is a backend requirement
        return 0
