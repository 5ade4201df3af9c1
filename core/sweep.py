"""Sweeps from the client side: cameras x styles x seeds over the backend.

Builds one backend job per camera from that camera's control passes, submits them, follows
their progress and brings every finished image to the local output folder as it comes.
Events go to a callback, so the same runner drives a terminal progress bar and, from a
worker thread, Blender's panel. No bpy, no torch.
"""

import json
import os
import threading
import time
from dataclasses import dataclass, field

from . import jobs as J
from .client import TERMINAL_STATES, BackendError, BackendUnreachable
from .png import atomic_write, read_text

PASS_FILES = {"depth": "depth.png", "lines": "lines.png", "normal": "normal.png", "seg": "seg.png"}


@dataclass
class ControlUnit:
    """One ControlNet unit: which pass, how strong, when. None = the style preset's value."""

    type: str
    scale: float | None = None
    start: float | None = None
    end: float | None = None
    mode: str | None = None
    line_style: str | None = None  # line units: read lines_<style>.png instead of lines.png
    model: str | None = None  # a ControlNet folder of its own (custom units), else the family's

    @classmethod
    def parse(cls, text):
        """``depth``, ``depth:0.9``, ``lines:0.6:0.2:1.0`` (type:scale:start:end), or
        ``custom:PATH[:scale[:start[:end]]]`` for a ControlNet made by ``archviz
        train-controlnet`` (its card names the pass it was trained on)."""
        parts = text.strip().split(":")
        if parts[0] == "custom":
            nums = []
            while len(parts) > 2 and len(nums) < 3 and _is_number(parts[-1]):
                nums.insert(0, float(parts.pop()))
            path = ":".join(parts[1:])
            return cls.custom(path, *(nums + [None] * (3 - len(nums))))
        if parts[0] not in PASS_FILES:
            raise J.JobError("controls", f"unknown control pass {parts[0]!r} (choose from {', '.join(PASS_FILES)}, "
                                         "or custom:PATH)")
        try:
            nums = [float(p) for p in parts[1:4]]
        except ValueError:
            raise J.JobError("controls", f"{text!r}: expected type:scale:start:end numbers") from None
        return cls(parts[0], *(nums + [None] * (3 - len(nums))))

    @classmethod
    def custom(cls, path, scale=None, start=None, end=None, mode=None):
        """A unit for a ControlNet folder made by ``archviz train-controlnet``: its card
        (``archviz_card.json``) says which control pass it reads."""
        if not path:
            raise J.JobError("controls", "a custom unit needs its ControlNet folder (custom:PATH)")
        folder = os.path.abspath(os.path.expanduser(path))
        card = os.path.join(folder, CUSTOM_CARD)
        if not os.path.isdir(folder):
            raise J.JobError("controls", f"custom ControlNet {path!r} is not a folder")
        try:
            with open(card, encoding="utf-8") as fh:
                data = json.load(fh)
            control = data.get("control")
        except FileNotFoundError:
            raise J.JobError("controls", f"custom ControlNet {path!r} has no {CUSTOM_CARD} (make one with archviz "
                                         "train-controlnet)") from None
        except (OSError, ValueError, AttributeError) as exc:
            raise J.JobError("controls", f"custom ControlNet {path!r}: cannot read {CUSTOM_CARD}: {exc}") from None
        if control not in PASS_FILES:
            raise J.JobError("controls", f"custom ControlNet {path!r} was trained on {control!r}, not a control pass "
                                         f"({', '.join(PASS_FILES)})")
        line_style = data.get("line_style") if control in J.LINE_TYPES else None
        return cls(control, scale, start, end, mode, line_style=line_style, model=folder)


#: The card ``archviz train-controlnet`` writes into the ControlNet folder.
CUSTOM_CARD = "archviz_card.json"


def check_custom_base(units, family):
    """JobError when a custom unit's ControlNet was trained on another base than the one
    this sweep uses (its residuals would not fit the UNet). ``family`` is a model family
    name or a local SD 1.5 base folder."""
    arch = "sdxl" if J.FAMILY_ARCH.get(family) == "sdxl" else "sd15"
    for i, unit in enumerate(units):
        if not unit.model:
            continue
        try:
            with open(os.path.join(unit.model, CUSTOM_CARD), encoding="utf-8") as fh:
                card = json.load(fh)
        except (OSError, ValueError):
            continue  # ControlUnit.custom read it already; a later change shows up as the backend's error
        trained = card.get("family")
        if card.get("arch") and card["arch"] != arch or (trained and family in J.FAMILIES and trained != family):
            raise J.JobError(f"controls[{i}]", f"custom ControlNet {unit.model!r} was trained on "
                                               f"{trained or card.get('arch')} ({card.get('arch')}); this sweep "
                                               f"uses {family}: train it on that base or sweep with "
                                               f"--model {trained or card.get('arch')}")


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


# Unit presets after the seed documents: weighted multi-control, and temporal scheduling
# (structure early, edges late).
UNIT_PRESETS = {
    "depth_lines": [ControlUnit("depth", 0.9, 0.0, 1.0), ControlUnit("lines", 0.6, 0.0, 1.0)],
    "early_depth_late_lines": [ControlUnit("depth", 1.0, 0.0, 0.5), ControlUnit("lines", 0.8, 0.2, 1.0)],
    "depth_seg": [ControlUnit("depth", 0.9, 0.0, 1.0), ControlUnit("seg", 0.5, 0.0, 0.8)],
    "all_passes": [ControlUnit("depth", 0.8), ControlUnit("lines", 0.6, 0.2, 1.0), ControlUnit("normal", 0.4),
                   ControlUnit("seg", 0.4, 0.0, 0.8)],
}


def camera_job(passes_dir, units, styles, seeds, model="tiny", output_dir=None, name_prefix="", steps=None,
               cfg=None, scheduler=None, skip_existing=True, max_batch=None, init=None, strength=None,
               mask=None, edits=None, fast=False, preview_every=None, references=None):
    """The backend job (a JSON-ready dict) for one camera's passes folder. Validated here,
    so a bad value is reported before anything is sent. ``init``: restyle from ``"beauty"``
    (the folder's beauty.png) or a PNG's path, at ``strength`` (core/restyle.py); ``mask``:
    a region edit's 8-bit alpha (core/region.py); ``edits``: instruction edit texts of the
    init image, each alone or with each of ``styles`` (core/edit.py)."""
    controls = []
    for i, unit in enumerate(units):
        if unit.line_style and unit.type in J.LINE_TYPES:
            path = os.path.join(passes_dir, f"lines_{unit.line_style}.png")
        else:
            path = os.path.join(passes_dir, PASS_FILES.get(unit.type, f"{unit.type}.png"))
        try:
            with open(path, "rb") as fh:
                png = fh.read()
        except OSError as exc:
            raise J.JobError(f"controls[{i}].image", f"cannot read {path}: {exc.strerror}") from None
        control = {"type": unit.type, "image": J.encode_png(png)}
        for key in ("scale", "start", "end", "mode", "model"):
            if getattr(unit, key, None) is not None:
                control[key] = getattr(unit, key)
        controls.append(control)
    if edits:
        from .edit import edit_styles

        try:
            styles = edit_styles(edits, styles)
        except ValueError as exc:
            raise J.JobError("edit", str(exc)) from None
    job = {"model": model if isinstance(model, dict) else {"family": model}, "controls": controls,
           "styles": list(styles), "seeds": list(seeds), "name_prefix": name_prefix, "skip_existing": skip_existing}
    if fast:  # the family's labelled fast mode (changes the pixels)
        job["fast"] = True
    if references:  # reference images (core/references.py): [{"image": base64, "scale": S}]
        job["references"] = [dict(r) for r in references]
    for key, value in (("output_dir", output_dir), ("steps", steps), ("cfg", cfg), ("scheduler", scheduler),
                       ("max_batch", max_batch), ("preview_every", preview_every)):
        if value is not None:
            job[key] = value
    if init is not None:
        from .restyle import BEAUTY

        path = os.path.join(passes_dir, "beauty.png") if init == BEAUTY else init
        try:
            with open(path, "rb") as fh:
                job["init_image"] = J.encode_png(fh.read())
        except OSError as exc:
            raise J.JobError("init_image", f"cannot read {path}: {exc.strerror}") from None
        if strength is not None:
            job["strength"] = strength
        if mask is not None:
            from .png import encode_png

            job["mask_image"] = J.encode_png(encode_png(mask))
    J.Job.from_dict(json.loads(json.dumps(job)))  # raises JobError naming the field
    return job


def human_bytes(n, unit_of=None):
    """``1.2 GB``-style size; with ``unit_of`` the unit is the one that number takes."""
    ref = n if unit_of is None else unit_of
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if ref >= size:
            return f"{n / size:.1f} {unit}" if unit_of is None else f"{n / size:.1f}"
    return f"{int(n)} B" if unit_of is None else f"{int(n)}"


def download_text(download):
    """One line for a model download in progress (the panel and the status bar):
    ``Downloading unet: 1.2 / 3.4 GB`` (the file's bytes), then all files' bytes."""
    if not download:
        return ""
    total, done = int(download.get("total") or 0), int(download.get("done") or 0)
    if download.get("finished"):
        return f"Downloaded {human_bytes(int(download.get('bytes_fetched', done)))}"
    ftotal, fdone = int(download.get("file_total") or 0), int(download.get("file_done") or 0)
    unit = human_bytes(ftotal).split()[-1]
    text = (f"Downloading {download.get('component') or download.get('file', 'model')}: "
            f"{human_bytes(fdone, ftotal)} / {human_bytes(ftotal, ftotal)} {unit}")
    if total > ftotal:
        text += (f" (all files {human_bytes(done, total)} / {human_bytes(total)}, "
                 f"file {download.get('file_index', '?')} of {download.get('files_total', '?')})")
    return text


def download_fraction(download):
    """0..1 of a model download (all files' bytes)."""
    total = int((download or {}).get("total") or 0)
    return min(1.0, int(download.get("done") or 0) / total) if total else 0.0


@dataclass
class SweepEvent:
    kind: str  # "progress" | "download" | "image" | "preview" | "error" | "done"
    camera: str = ""
    message: str = ""
    fraction: float = 0.0  # whole sweep, 0..1
    images_done: int = 0
    images_total: int = 0
    image: dict = field(default_factory=dict)  # for "image": path, style, seed, params; "preview": png, step...
    download: dict = field(default_factory=dict)  # for "download": the job status' download (bytes)


@dataclass
class _Tracked:
    camera: str
    job: dict
    job_id: str = ""
    state: str = "new"
    steps_done: int = 0
    steps_total: int = 1
    seen: set = field(default_factory=set)
    total_images: int = 0
    error: str = ""
    downloaded: bool = False  # the end of the job's model download was reported
    previews: dict = field(default_factory=dict)  # image index -> step of the last preview reported
    sidecars: bool = False  # the manifest and contact sheet are in the local folder


#: Seconds a client that gave up on an unreachable backend still tries to cancel its jobs.
UNREACHABLE_CANCEL_S = 5.0


class SweepGaveUp(BackendError):
    """The sweep ran past its time limit; its jobs were cancelled on the backend."""


class SweepRunner:
    """Runs per-camera jobs on one backend and reports through ``emit(SweepEvent)``.

    ``run()`` blocks until every job ended. Images are written to ``out_dir`` (the
    backend's own file when it shares this disk, a download otherwise) before they are
    announced, so nothing announced can be lost. ``cancel()`` may be called from any thread.

    A transient failure of one poll is retried by the client (``Client.retry_for``); when
    the runner gives up (the backend stays unreachable, a local write fails, or ``timeout``
    seconds passed), it cancels its jobs on the backend, saying why, before it raises.
    """

    def __init__(self, client, camera_jobs, out_dir, poll_interval=0.25, timeout=None, previews=False):
        self.client = client
        # previews: fetch each new preview the job status lists and report it as a
        # "preview" event (image: camera, index, style, seed, step, steps, png bytes)
        self.previews = previews
        self.timeout = timeout
        self.tracked = [_Tracked(camera, job, total_images=len(job["styles"]) * len(job["seeds"]))
                        for camera, job in camera_jobs]
        self.out_dir = out_dir
        self.poll_interval = poll_interval
        self._cancel = threading.Event()
        self.images = []  # every image event's payload, in arrival order
        self.errors = []

    def cancel(self, reason=None, retry_for=2.0):
        """Cancel every job still running. With ``reason`` (this client gives up) the jobs
        end ``failed`` with it on the backend and in their manifests. ``retry_for``: how
        long a briefly unreachable backend is given to take it (short for a user's cancel)."""
        self._cancel.set()
        for t in self.tracked:
            if t.job_id and t.state not in TERMINAL_STATES:
                try:
                    self.client.cancel(t.job_id, reason=reason, retry_for=retry_for)
                except BackendError:
                    pass  # the job ended meanwhile or the backend is gone; run() reports it

    def give_up(self, reason, retry_for=None):
        """Cancel the jobs on the backend because this client stops following them; the
        backend gets ``retry_for`` seconds (default the client's) to take the cancel."""
        self.cancel(reason=reason, retry_for=self.client.retry_for if retry_for is None else retry_for)

    def images_on_disk(self):
        """How many of this sweep's images are in ``out_dir`` now, with this sweep's
        parameters: counted from the files (the manifests name them and their parameter
        hashes), not from what the backend had reported, which a killed backend cuts short."""
        count = 0
        seen = set()
        for t in self.tracked:
            manifest = os.path.join(self.out_dir, J.sidecar_filename(t.job.get("name_prefix", ""), "manifest.json"))
            try:
                with open(manifest, encoding="utf-8") as fh:
                    entries = json.load(fh).get("images", [])
            except (OSError, ValueError, AttributeError):
                entries = []
            for e in entries:
                file = e.get("file") if isinstance(e, dict) else None
                if not isinstance(file, str) or file in seen or os.sep in file:
                    continue
                if read_text(os.path.join(self.out_dir, file)).get("params_sha256") == e.get("params_sha256"):
                    seen.add(file)
                    count += 1
        downloaded = {os.path.basename(i["path"]) for i in self.images}
        return count + len(downloaded - seen)

    @property
    def cancelled(self):
        return self._cancel.is_set()

    def _totals(self):
        steps = sum(t.steps_total for t in self.tracked) or 1
        done = sum(t.steps_total if t.state in TERMINAL_STATES else t.steps_done for t in self.tracked)
        images = sum(len(t.seen) for t in self.tracked)
        return done / steps, images, sum(t.total_images for t in self.tracked)

    def run(self, emit):
        os.makedirs(self.out_dir, exist_ok=True)
        try:
            self._follow(emit)
        except BackendError as exc:
            if not getattr(exc, "status", None) == 401:
                # An unreachable backend had its chance (Client.retry_for): a short try only.
                self.give_up(f"the client gave up: {exc}",
                             retry_for=UNREACHABLE_CANCEL_S if isinstance(exc, BackendUnreachable) else None)
            raise
        except OSError as exc:  # a local write (a download, an EXR next to it) failed: disk full
            self.give_up(f"the client gave up: {exc}")
            raise
        if self.cancelled:
            for t in self.tracked:  # pick up what finished before the cancel landed
                if t.job_id:
                    try:
                        self._poll(t, emit)
                    except BackendUnreachable:
                        break
        fraction, done, total = self._totals()
        state = "cancelled" if self.cancelled else ("failed" if self.errors else "done")
        emit(SweepEvent("done", message=state, fraction=fraction, images_done=done, images_total=total))
        return state

    def _follow(self, emit):
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        for t in self.tracked:
            if self.cancelled:
                break
            t.job_id = self.client.submit(t.job)
            t.state = "queued"
        waited = {}
        while not self.cancelled and any(t.state not in TERMINAL_STATES for t in self.tracked if t.job_id):
            if deadline is not None and time.monotonic() > deadline:
                raise SweepGaveUp(f"the sweep did not finish within {self.timeout:g} s")
            for t in self.tracked:
                if t.job_id and t.state not in TERMINAL_STATES:
                    self._poll(t, emit, waited.get(t.job_id))
            fraction, done, total = self._totals()
            emit(SweepEvent("progress", fraction=fraction, images_done=done, images_total=total))
            waited = self._pause()

    def _pause(self):
        """Wait ``poll_interval`` before the next round of polls, or less: the first job not
        yet ended (the backend runs them in order) is long-polled, so its end is seen the
        moment it comes. Returns {job id: the status the long poll got} (empty when it
        failed: the next poll reports that; an older backend answers at once, and the rest
        of the interval is slept)."""
        started = time.monotonic()
        running = next((t for t in self.tracked if t.job_id and t.state not in TERMINAL_STATES), None)
        if running is None:  # every job has ended: the loop stops, no pause
            return {}
        wait = min(self.poll_interval, getattr(self.client, "timeout", 30.0) / 2)  # under the HTTP timeout
        try:
            status = self.client.job(running.job_id, wait=wait, retry_for=0)
            if status.get("state") in TERMINAL_STATES or time.monotonic() - started >= self.poll_interval:
                return {running.job_id: status}
        except BackendError:
            pass  # the next poll meets it again and reports it
        time.sleep(max(0.0, self.poll_interval - (time.monotonic() - started)))
        return {}

    def _poll(self, t, emit, status=None):
        status = status or self.client.job(t.job_id)
        t.state = status["state"]
        progress = status.get("progress") or {}
        t.steps_done = int(progress.get("steps_done", progress.get("step", 0)) or 0)
        t.steps_total = max(1, int(progress.get("steps_total", progress.get("total", 1)) or 1))
        download = status.get("download")
        if download and (status.get("phase") == "downloading" or (download.get("finished") and not t.downloaded)):
            t.downloaded = bool(download.get("finished"))
            fraction, done, total = self._totals()
            emit(SweepEvent("download", camera=t.camera, message=download_text(status["download"]),
                            fraction=fraction, images_done=done, images_total=total, download=status["download"]))
        for entry in status.get("images", []):
            key = entry.get("index")
            if key in t.seen:
                continue
            path = self._local_copy(t, entry)
            t.seen.add(key)
            params = {k: v for k, v in entry.items() if k not in ("index", "url", "path", "skipped")}
            params["model"] = json.dumps(status.get("model") or t.job.get("model"))
            for key in ("steps", "cfg", "scheduler", "width", "height"):
                if status.get(key, t.job.get(key)) is not None:
                    params[key] = status.get(key, t.job.get(key))
            edit = next((s.get("edit") for s in t.job.get("styles", [])
                         if isinstance(s, dict) and s.get("name") == entry.get("style")), None)
            if edit is not None:  # an instruction edit: its edit text on the result
                params["edit"] = edit
            elif t.job.get("init_image") is not None:  # a restyle: its strength on the result too
                params["strength"] = t.job.get("strength", status.get("strength"))
            payload = {"path": path, "camera": t.camera, "style": entry.get("style"), "seed": entry.get("seed"),
                       "params": params, "skipped": bool(entry.get("skipped"))}
            self.images.append(payload)
            fraction, done, total = self._totals()
            emit(SweepEvent("image", camera=t.camera, fraction=fraction, images_done=done, images_total=total,
                            image=payload))
        if self.previews:
            self._previews(t, status, emit)
        if t.state in TERMINAL_STATES and not t.sidecars:
            self._local_sidecars(t, status)
        if t.state == "failed":
            error = status.get("error") or {"message": "the job failed without a message"}
            t.error = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            self.errors.append(f"{t.camera}: {t.error}")
            emit(SweepEvent("error", camera=t.camera, message=t.error))

    def _previews(self, t, status, emit):
        """Each image's newest preview once (a preview that is gone by the time it is asked
        for, because its image got done, is skipped: the image follows)."""
        for entry in status.get("previews") or []:
            key, step = entry.get("index"), entry.get("step")
            if key in t.seen or t.previews.get(key) == step:
                continue
            try:
                png = self.client.preview(t.job_id, key)
            except BackendUnreachable:
                raise
            except BackendError:
                continue
            t.previews[key] = step
            fraction, done, total = self._totals()
            emit(SweepEvent("preview", camera=t.camera, fraction=fraction, images_done=done, images_total=total,
                            image={"camera": t.camera, "index": key, "style": entry.get("style"),
                                   "seed": entry.get("seed"), "step": step, "steps": entry.get("steps"),
                                   "png": png}))

    def _local_sidecars(self, t, status):
        """The job's manifest and contact sheet in the local output folder. A backend on
        this machine wrote them there; a remote one wrote them in its own folder, so they
        are downloaded (a sheet a job did not make, e.g. cancelled early, is skipped)."""
        t.sidecars = True
        for kind in ("manifest", "contact_sheet"):
            remote = status.get(kind)
            if not remote:
                continue
            try:
                self._local_file(os.path.basename(remote), remote, lambda: self.client.sidecar(t.job_id, kind))
            except BackendError as exc:  # the images are what matters: say so, keep them
                self.errors.append(f"{t.camera}: the {kind.replace('_', ' ')} could not be fetched: {exc}")

    def _local_copy(self, t, entry):
        """The image in the local output folder: the backend's file when it is already
        there, else downloaded (remote backend)."""
        name = entry.get("file") or os.path.basename(entry.get("path", ""))
        return self._local_file(name, entry.get("path"), lambda: self.client.image(t.job_id, entry["index"]))

    def _local_file(self, name, remote, fetch):
        return local_file(os.path.join(self.out_dir, name), remote, fetch)


def local_file(local, remote, fetch):
    """A backend's result at the local path ``local``: the backend's file ``remote`` when it
    is that very file (a backend on this machine writing into this folder), else
    ``fetch()``'s bytes written there atomically (a remote backend: downloaded). Sweeps'
    images and sidecars and video clips' frames (core/video_fetch.py) all come this way."""
    if not (remote and os.path.abspath(remote) == os.path.abspath(local) and os.path.exists(local)):
        atomic_write(local, fetch())
    return local
