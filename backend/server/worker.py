"""Job records, the queue, and the one worker thread that owns the GPU.

The HTTP layer only validates, enqueues and reports (:mod:`.app`). This thread takes one
job at a time, writes results as they finish, and turns every failure into data
(``{"type", "message"}``) on the job: the worker never dies with a job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ...core.jobs import JobError, sidecar_filename
from ...core.png import clean_stale_temps
from ..engine.runner import Cancelled, Engine, to_uint8
from ..models.hub import DownloadCancelled
from ..engine.families.registry import ENGINES
from .image_writer import ImageWriter
from .outputs import (Manifest, OutputRoots, atomic_write, existing_matches, image_metadata, png_bytes,
                      write_contact_sheet)
from ..engine.sweep import PlannedImage, SweepPlan
from ..models.tiny import archviz_home

log = logging.getLogger("archviz.backend")

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
#: Finished jobs kept for status and image URLs; the oldest go first. A finished record
#: keeps no control image (they are dropped when the job ends), only its plan's
#: parameters and one small dict per image: a few KB per job, about 1 MB per 100 images.
MAX_RECORDS = 500
#: Jobs waiting to run (``archviz serve --max-queued``); past it a submit gets 429.
DEFAULT_MAX_QUEUED = 64


class QueueFull(RuntimeError):
    def __init__(self, limit: int, retry_after: int):
        super().__init__(f"the queue is full ({limit} jobs waiting); try again in {retry_after} s")
        self.limit, self.retry_after = limit, retry_after


def default_output_root() -> Path:
    return Path(os.environ.get("ARCHVIZ_OUTPUT_DIR") or archviz_home() / "outputs").expanduser()


def error_data(exc: BaseException) -> dict:
    kind = type(exc).__name__
    kind = {"ModelNotFoundError": "ModelNotFound", "JobError": "ValidationError", "GatedModelError": "GatedModel",
            "DiskSpaceError": "DiskSpace"}.get(kind, kind)
    message = str(exc)
    if kind == "OutOfMemoryError":
        message = (f"out of memory even with one image per batch ({message.splitlines()[0] if message else ''}); "
                   "lower the size, use fewer ControlNets, or free GPU memory (POST /v1/unload)")
    data = {"type": kind, "message": message}
    if isinstance(exc, JobError):
        data["field"] = exc.field
    return data


class Ended:
    """Set once, when a job reaches its final state. The status route's long polls
    (``GET /v1/jobs/{id}?wait=S``) wait on it on their event loop, without a thread each and
    without polling: :meth:`set` wakes them from the worker's thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._set = False
        self._waiters: list = []  # (event loop, future) of each waiting request

    def set(self) -> None:
        with self._lock:
            self._set, waiters, self._waiters = True, self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_wake, future)

    async def wait(self, timeout: float) -> bool:
        """True once the job has ended, False when ``timeout`` seconds passed first."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self._set:
                return True
            self._waiters.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except asyncio.TimeoutError:
            with self._lock:
                if (loop, future) in self._waiters:
                    self._waiters.remove((loop, future))
            return self._set


def _wake(future) -> None:
    if not future.done():  # a waiter that timed out meanwhile has a cancelled future
        future.set_result(True)


@dataclass(kw_only=True)
class QueuedRecord:
    """What the worker, the status route and cancel keep of any job in the queue (a sweep's
    JobRecord, a video's backend/server/video.py VideoRecord)."""

    created: float = field(default_factory=time.time)
    state: str = "queued"
    started: float | None = None
    finished: float | None = None
    steps_done: int = 0
    steps_total: int = 0
    error: dict | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str | None = None  # a client that gave up says why; the job then fails with it
    lock: threading.Lock = field(default_factory=threading.Lock)
    phase: str | None = None  # while running: downloading | loading | generating
    ended: Ended = field(default_factory=Ended)  # set with the final state (long polls wait on it)


@dataclass
class JobRecord(QueuedRecord):
    id: str
    plan: SweepPlan
    output_dir: Path
    images: dict[int, dict] = field(default_factory=dict)  # sweep index -> image info
    manifest_file: str = ""
    contact_sheet_file: str | None = None
    warnings: list[str] = field(default_factory=list)
    download: dict | None = None  # bytes per file and overall of the model download, if any
    # The latest preview of each image still denoising: index -> (step, steps, PNG bytes);
    # dropped when the image itself is done (backend/engine/previews.py).
    previews: dict[int, tuple] = field(default_factory=dict)
    preview_count: int = 0  # previews made so far (every step that made one, every image)

    def on_preview(self, item: PlannedImage, step: int, steps: int, png: bytes) -> None:
        with self.lock:
            if item.index not in self.images:
                self.previews[item.index] = (step, steps, png)
                self.preview_count += 1

    def preview(self, index: int) -> tuple | None:
        with self.lock:
            return self.previews.get(index)
    fetched: list = field(default_factory=lambda: [0, 0])  # bytes, files of this job's downloads so far

    def on_download(self, progress: dict) -> None:
        with self.lock:
            self.phase = "downloading"
            self.download = dict(progress)

    def set_phase(self, phase: str) -> None:
        with self.lock:
            self.phase = phase

    def step(self, n: int = 1) -> None:
        with self.lock:
            self.steps_done += n

    def add_image(self, item: PlannedImage, skipped: bool) -> None:
        style = self.plan.styles[item.style]
        with self.lock:
            self.previews.pop(item.index, None)
            self.images[item.index] = {
                "index": item.index,
                "file": item.file,
                "path": str(self.output_dir / item.file),
                "style": style.name,
                "seed": item.seed,
                "params_sha256": item.params_sha256,
                "prompt": style.prompt,
                "negative": style.negative,
                "steps": style.steps,
                "cfg": style.cfg,
                "scheduler": style.scheduler,
                "skipped": skipped,
                "url": f"/v1/jobs/{self.id}/images/{item.index}",
            }

    def status(self, queue_position: int | None = None) -> dict:
        with self.lock:
            plan = self.plan
            total = len(plan.images)
            return {
                "id": self.id,
                "state": self.state,
                "created": self.created,
                "started": self.started,
                "finished": self.finished,
                "queue_position": queue_position,
                "progress": {
                    "steps_done": self.steps_done,
                    "steps_total": self.steps_total,
                    "images_done": len(self.images),
                    "images_total": total,
                    "fraction": (len(self.images) / total) if self.state == "done" or not self.steps_total
                    else min(1.0, self.steps_done / self.steps_total),
                },
                "images": [self.images[k] for k in sorted(self.images)],
                # The latest preview of each image still denoising (GET its url for the PNG).
                "previews": [{"index": k, "style": plan.styles[plan.images[k].style].name if k < total else None,
                              "seed": plan.images[k].seed if k < total else None, "step": v[0], "steps": v[1],
                              "url": f"/v1/jobs/{self.id}/previews/{k}"} for k, v in sorted(self.previews.items())],
                "previews_made": self.preview_count,
                "fast": dict(plan.fast) if plan.fast else None,
                "phase": self.phase if self.state == "running" else None,
                "download": dict(self.download) if self.download else None,
                "error": self.error,
                "warnings": list(self.warnings),
                "output_dir": str(self.output_dir),
                "manifest": str(self.output_dir / self.manifest_file) if self.manifest_file else None,
                "contact_sheet": str(self.output_dir / self.contact_sheet_file) if self.contact_sheet_file else None,
                "model": plan.models.ids(),
                "styles": [s.name for s in plan.styles],
                "seeds": list(plan.job.seeds),
                "width": plan.width,
                "height": plan.height,
                # a sweep from a picture: the detectors' controls (GET /v1/jobs/{id}/controls/{n})
                **({"picture_controls": list(plan.preprocessed)} if plan.preprocessed else {}),
            }


class Worker:
    """A locked FIFO of jobs and the single thread that runs them."""

    def __init__(self, engine: Engine, roots: OutputRoots | None = None, max_queued: int = DEFAULT_MAX_QUEUED):
        self.engine = engine
        self.roots = roots or OutputRoots(default_output_root())
        self.max_queued = max_queued
        self._durations: list[float] = []  # seconds of the last finished jobs (Retry-After)
        self.records: dict[str, JobRecord] = {}
        self._order: list[str] = []  # queued ids, FIFO
        self._queue: "queue.Queue[str | None]" = queue.Queue()
        self._lock = threading.Lock()
        self.current: str | None = None
        self.jobs_run = 0
        self._thread = threading.Thread(target=self._loop, name="archviz-gpu-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        for record in list(self.records.values()):
            record.cancel_event.set()
        self._queue.put(None)

    # -- HTTP-side API -------------------------------------------------------------------
    def submit(self, plan: SweepPlan) -> JobRecord:
        job_id = uuid.uuid4().hex[:12]
        out = self.roots.resolve(plan.job.output_dir, job_id)  # JobError outside the output roots
        record = JobRecord(id=job_id, plan=plan, output_dir=out)
        record.manifest_file = sidecar_filename(plan.job.name_prefix, "manifest.json")
        with self._lock:
            if len(self._order) >= self.max_queued:
                release_inputs(plan)
                raise QueueFull(self.max_queued, self.retry_after())
            self.records[job_id] = record
            self._order.append(job_id)
            self._prune()
        self._queue.put(job_id)
        return record

    def submit_record(self, record) -> None:
        """Queue a record that runs itself on this thread (``record.run_with(worker)``): a
        video job (backend/server/video.py), with the sweeps' queue limit, status and cancel."""
        with self._lock:
            if len(self._order) >= self.max_queued:
                raise QueueFull(self.max_queued, self.retry_after())
            self.records[record.id] = record
            self._order.append(record.id)
            self._prune()
        self._queue.put(record.id)

    def get(self, job_id: str) -> JobRecord | None:
        return self.records.get(job_id)

    def queue_position(self, job_id: str) -> int | None:
        with self._lock:
            return self._order.index(job_id) if job_id in self._order else None

    def retry_after(self) -> int:
        """Seconds a client should wait before submitting again: the mean of the last jobs'
        run times (1..300), 10 before any job finished."""
        recent = self._durations[-10:]
        return max(1, min(300, round(sum(recent) / len(recent)))) if recent else 10

    def cancel(self, job_id: str, reason: str | None = None) -> JobRecord | None:
        """Cancel a job. With ``reason`` (a client that gave up says why) the job ends
        ``failed`` with that reason in its status and manifest instead of ``cancelled``."""
        record = self.records.get(job_id)
        if record is None:
            return None
        with record.lock:
            if reason and record.state not in FINISHED:
                record.cancel_reason = reason
        record.cancel_event.set()
        with self._lock:
            if job_id in self._order:  # not started yet: ended right away
                self._order.remove(job_id)
                with record.lock:
                    record.state, record.error = _cancelled_state(record)
                    record.finished = time.time()
                record.ended.set()
                release_inputs(record.plan)
        return record

    def queued(self) -> int:
        with self._lock:
            return len(self._order)

    def _prune(self) -> None:
        finished = [r for r in self.records.values() if r.state in FINISHED]
        for r in sorted(finished, key=lambda r: r.created)[: max(0, len(self.records) - MAX_RECORDS)]:
            self.records.pop(r.id, None)

    # -- the thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                if job_id not in self._order:
                    continue  # cancelled while queued
                self._order.remove(job_id)
                self.current = job_id
            record = self.records[job_id]
            try:
                runs_itself = getattr(record, "run_with", None)  # a video job (backend/server/video.py)
                runs_itself(self) if runs_itself else self.run(record)
            except BaseException:  # noqa: BLE001 - the worker must outlive any job
                log.exception("job %s crashed the runner", job_id)
            finally:
                release_inputs(record.plan)
                if record.started and record.finished:
                    self._durations = (self._durations + [record.finished - record.started])[-10:]
                self.current = None
                self.jobs_run += 1

    def run(self, record: JobRecord) -> None:
        plan, out = record.plan, record.output_dir
        with record.lock:
            record.state = "running"
            record.started = time.time()
        manifest = None
        try:
            out.mkdir(parents=True, exist_ok=True)
            removed = clean_stale_temps(out)  # left by a process killed while writing
            if removed:
                log.info("job %s: removed %d stale temporary file(s) in %s", record.id, len(removed), out)
            manifest = Manifest(plan, record.id, out, record.manifest_file)
            todo = []
            for item in plan.images:
                if plan.job.skip_existing and existing_matches(out / item.file, item.params_sha256):
                    record.add_image(item, skipped=True)
                    manifest.mark(item, "skipped")
                else:
                    todo.append(item)
            record.steps_total = sum(plan.styles[b[0].style].steps for b in self.engine.batches(plan, todo))
            if todo:
                self.fetch_models(record)
                self.prepare_picture(record, out)
                record.set_phase("loading")
                record.warnings = prompt_warnings(plan, self.engine)
                manifest.data["warnings"] = list(record.warnings)
                if plan.preprocessed:  # a sweep from a picture: its controls' files and settings
                    manifest.data["picture_controls"] = plan.preprocessed
            manifest.write("running")

            reporting = threading.Lock()  # the writer threads report one image at a time

            def write_image(item: PlannedImage, array) -> None:
                data = png_bytes(to_uint8(array), image_metadata(plan, item, record.warnings))
                atomic_write(out / item.file, data)  # on disk before it is reported
                with reporting:
                    manifest.mark(item, "done")
                    manifest.write()
                    record.add_image(item, skipped=False)

            if todo:
                record.set_phase("generating")
                writer = ImageWriter(write_image)  # PNGs encoded and written beside the next batch
                try:
                    self.engine.generate(plan, todo, on_step=record.step, on_image=writer.submit,
                                         cancelled=lambda: record.cancel_event.is_set() or writer.failed,
                                         on_preview=record.on_preview)
                except Cancelled:
                    writer.wait()
                    writer.raise_error()  # a failed write stopped the engine: that is the job's error
                    raise
                finally:
                    writer.wait()  # every image handed over is on disk before the job ends
                    problem = getattr(self.engine, "preview_warning", "")
                    if problem:  # previews failed and stopped; the images went on
                        with record.lock:
                            record.warnings.append(problem)
                writer.raise_error()
            if record.cancel_event.is_set():
                raise Cancelled()
            final, error = "done", None
        except (Cancelled, DownloadCancelled):
            final, error = _cancelled_state(record)
        except Exception as exc:  # noqa: BLE001 - errors are data
            log.error("job %s failed: %s\n%s", record.id, exc, traceback.format_exc())
            final, error = "failed", error_data(exc)
        sheet = None
        if manifest is not None:
            try:
                def sheet_of(others):  # under the manifest's lock: the images of every job in this folder
                    if plan.job.contact_sheet and (record.images or others):
                        return write_contact_sheet(plan, out, sidecar_filename(plan.job.name_prefix,
                                                                               "contact_sheet.png"), others)
                    return None

                sheet = manifest.finish(final, error, sheet_of)
            except Exception as exc:  # noqa: BLE001 - keep the first error, report this one if none
                log.error("job %s: writing manifest/contact sheet failed: %s", record.id, exc)
                if error is None:
                    final, error = "failed", error_data(exc)
        with record.lock:
            record.contact_sheet_file = sheet
            record.error = error
            record.state = final
            record.finished = time.time()
            record.previews.clear()
        record.ended.set()

    def fetch_models(self, record: JobRecord) -> None:
        """The job's hub models as complete snapshots before anything loads: the job shows
        the ``downloading`` phase with bytes per file and overall while files come in."""
        fetch = getattr(self.engine, "fetch_models", None)
        if fetch is None:  # an engine that loads models elsewhere (Ray actors)
            return
        result = fetch(record.plan.models, progress=record.on_download, cancelled=record.cancel_event.is_set)
        self._downloaded(record, result)

    def prepare_picture(self, record: JobRecord, out: Path) -> None:
        """A sweep from a photo or sketch: its detectors' weights (a download shown like a
        model's), then each detector once, the controls saved beside the results
        (backend/server/picture.py)."""
        if any(c.preprocess != "none" for c in record.plan.controls):
            from .picture import fetch_weights, prepare_controls

            self._downloaded(record, fetch_weights(record.plan, progress=record.on_download,
                                                   cancelled=record.cancel_event.is_set))
            record.set_phase("preprocessing")
            prepare_controls(record.plan, out, cancelled=record.cancel_event.is_set)

    def _downloaded(self, record: JobRecord, result: dict | None) -> None:
        if result and result["files_fetched"]:
            with record.lock:  # the job's totals: a picture's detectors download after the models
                record.fetched = [record.fetched[0] + result["bytes_fetched"],
                                  record.fetched[1] + result["files_fetched"]]
                record.download = {**(record.download or {}), "finished": True,
                                   "bytes_fetched": record.fetched[0], "files_fetched": record.fetched[1]}
            log.info("job %s: fetched %d file(s), %d bytes from the hub", record.id, result["files_fetched"],
                     result["bytes_fetched"])


def _cancelled_state(record: JobRecord) -> tuple[str, dict | None]:
    if record.cancel_reason:
        return "failed", {"type": "ClientGaveUp", "message": record.cancel_reason}
    return "cancelled", None


def release_inputs(plan: SweepPlan) -> None:
    """Drop a job's control images (decoded pixels and the base64 PNGs of the request)
    once it can no longer run: status and resume need only the plan's parameters and
    hashes. Then hand freed heap back to the OS (glibc keeps it otherwise)."""
    for control in plan.controls:
        control.image = None
    for control in plan.job.controls:
        control.image = ""
    _trim_heap()


def _trim_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def prompt_warnings(plan: SweepPlan, engine: Engine) -> list[str]:
    """A warning per prompt longer than the text encoder reads (77 CLIP tokens with the
    start and end tokens; FLUX.1: its T5 encoder's 512, the CLIP one only gives the pooled
    summary): it is cut there, as diffusers does, and the user should know."""
    base = engine.cache.base(plan.models).value
    reader = ENGINES[plan.models.arch].prompt_reader  # backend/engine/families/registry.py
    if reader == "qwen":
        from ..engine.families.qwen import prompt_overflow

        return [f"styles[{i}] ({style.name}): {message}" for i, style in enumerate(plan.styles)
                for what, text in (("prompt", style.prompt), ("negative prompt", style.negative)) if text
                for message in [prompt_overflow(base["tokenizer"], what, text)] if message]
    t5 = reader == "t5"
    tokenizer = base["tokenizer_2"] if t5 else base["tokenizer"]
    limit = int(getattr(tokenizer, "model_max_length", 77) or 77)
    if t5 or reader == "512":  # Z-Image: its Qwen3 encoder reads 512 tokens (the pipeline's)
        limit = min(limit, 512)
    out = []
    for i, style in enumerate(plan.styles):
        for what, text in (("prompt", style.prompt), ("negative prompt", style.negative)):
            if not text:
                continue
            ids = tokenizer(text, truncation=False, add_special_tokens=True).input_ids
            if len(ids) > limit:
                kept = tokenizer.decode(ids[:limit - 1] if t5 else ids[1:limit - 1], skip_special_tokens=True)
                out.append(f"styles[{i}] ({style.name}): the {what} is {len(ids)} tokens; the text encoder reads "
                           f"{limit}, so it was cut after: {kept[-60:]!r}")
    return out


def simulate_memory_budget(engine: Engine, max_images: int) -> None:
    """Test hook (``archviz serve --simulate-oom-above N``): a UNet batch of more than
    ``max_images`` images raises ``torch.OutOfMemoryError`` as CUDA would, so the engine's
    halve-and-retry path and the job's failure path run on a CPU machine. Wraps the
    engine's :meth:`~.engine.Engine.denoise` on this instance only."""
    import torch

    real = engine.denoise

    def denoise(plan, helper, comps, style, units, batch, *args, **kwargs):
        if len(batch) > max_images:
            raise torch.OutOfMemoryError(f"simulated: a batch of {len(batch)} images is over the simulated "
                                         f"memory budget of {max_images}")
        return real(plan, helper, comps, style, units, batch, *args, **kwargs)

    engine.denoise = denoise
