"""The HTTP API (FastAPI): validate, enqueue, report. JSON and PNG only on the wire.

==========================  ==============================================================
``GET /v1/health``          version, device, dtype, loaded models, queue
``GET /v1/presets``         style presets (+ errors of bad preset files)
``POST /v1/jobs``           submit a job (core.jobs JSON) -> 202 + job status
``GET /v1/jobs``            all known jobs (short status)
``GET /v1/jobs/{id}``       state, progress, finished images, error
``GET /v1/jobs/{id}/images/{n}``  PNG of sweep image ``n`` (style_index * len(seeds) + seed_index)
``GET /v1/jobs/{id}/previews/{n}``  the latest preview PNG of image ``n`` while it denoises
``GET /v1/jobs/{id}/contact_sheet``  the contact sheet PNG
``GET /v1/jobs/{id}/manifest``       the job's manifest.json
``GET /v1/jobs/{id}/controls/{n}``  control ``n`` a detector made from the job's picture
``POST /v1/video-jobs``      a video job (backend/server/video.py); status and cancel as above
``GET /v1/jobs/{id}/clips``  a video job's clips and the files of each finished one
``GET /v1/jobs/{id}/clips/{clip}/{file}``  a finished clip's PNG frame or metadata.json
``DELETE /v1/jobs/{id}``    cancel (queued: at once; running: within one denoising step)
``POST /v1/unload``         drop every warm model not in use
``POST /v1/preprocess``     run a detector on a photo/sketch, returns the control PNG
``POST /v1/picture``        a photo/sketch (PNG, JPEG, WebP, BMP, TIFF) checked and fitted to
                            a model's size, as the RGB PNG a sweep job sends (backend/server/picture.py)
==========================  ==============================================================

Every error is JSON ``{"detail": msg, "error": {"type", "message", "field"?}}``; malformed
jobs get 422 with the bad field named (``controls[0].image: not a PNG file``).

Limits and access (docs/hardening.md): request bodies above ``max_body_bytes`` get 413;
output folders must lie inside the output roots and model paths inside the model roots
(422 naming the field otherwise); with a token every route but health and the docs needs
``Authorization: Bearer <token>``, compared in constant time, else 401 with no detail.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field, TypeAdapter
from starlette.exceptions import HTTPException

from ... import __version__
from ...core import jobs as J
from ...core.presets import PresetCache
from ..engine.runner import Engine
from ..models.registry import BF16_ARCHES, check_job_models, model_roots
from .outputs import OutputRoots
from ..models.preprocess import PreprocessorError, run_detector
from ..engine.sweep import build_plan, decode_control_image
from .outputs import existing_matches
from .worker import DEFAULT_MAX_QUEUED, QueueFull, Worker, default_output_root
from .video import install as install_video_routes

#: The longest long poll of a job's status (``GET /v1/jobs/{id}?wait=S``), in seconds.
MAX_WAIT_S = 60.0


def _wait_seconds(text: str) -> float | str:
    """``?wait=`` as seconds, or the one-line error naming the bad value."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 <= seconds <= MAX_WAIT_S:  # also refuses NaN and inf
        return f"wait: must be seconds from 0 to {MAX_WAIT_S:g}, got {J._short(text, 40)}"
    return seconds


#: Largest request body accepted (8 controls of a few MiB of base64 PNG each fit easily).
MAX_BODY_BYTES = 64 * 2**20

log = logging.getLogger("archviz.backend")


def _error(status: int, kind: str, message: str, field: str | None = None) -> JSONResponse:
    err = {"type": kind, "message": message}
    if field is not None:
        err["field"] = field
    return JSONResponse(status_code=status, content={"detail": message, "error": err})


class JobAccepted(BaseModel):
    id: str
    state: str
    queue_position: int | None = None
    status_url: str
    images_total: int
    output_dir: str


class UnloadResult(BaseModel):
    unloaded: list[str]
    in_use: list[str]


class PictureRequest(BaseModel):
    image: str = Field(description="base64 of the picture file (PNG, JPEG, WebP, BMP or TIFF)")
    long_side: int = Field(description="long side of the fitted picture in pixels")
    multiple: int = Field(8, description="both sides a multiple of this (8; 16 for FLUX.1)")


class PreprocessRequest(BaseModel):
    detector: str = Field(description="canny | mlsd | lineart | depth | normal")
    image: str = Field(description="base64 PNG (photo or sketch)")
    width: int
    height: int


def _job_schema() -> tuple[dict, dict]:
    """JSON schema of the job dataclasses (one source of truth: core.jobs)."""
    schema = TypeAdapter(J.Job).json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    defs["Job"] = schema
    return {"$ref": "#/components/schemas/Job"}, defs


OPEN_PATHS = ("/v1/health", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the limit of {limit / 2**20:g} MiB")


class BodyLimitMiddleware:
    """413 for a body over ``limit`` bytes: from Content-Length before anything is read,
    and while reading for chunked or lying requests (the body is never buffered past it)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit or declared < 0:
                    status = 413 if declared > self.limit else 400
                    message = (f"request body is larger than the limit of {self.limit / 2**20:g} MiB"
                               if status == 413 else "bad Content-Length header")
                    response = _error(status, "RequestTooLarge" if status == 413 else "BadRequest", message)
                    return await response(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        return await self.app(scope, limited_receive, send)


def _is_authorized(request: Request, token: str) -> bool:
    sent = request.headers.get("authorization", "")
    # hmac.compare_digest takes as long for a wrong token as for a right one of the same
    # length; both sides are hashed first so the length is not leaked either.
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest(hashlib.sha256(sent.encode("utf-8", "surrogateescape")).digest(),
                               hashlib.sha256(expected).digest())


def create_app(engine: Engine, preset_dirs: list[str] | None = None, token: str | None = None, *,
               output_roots: list[str] | None = None, model_dirs: list[str] | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, max_queued: int = DEFAULT_MAX_QUEUED) -> FastAPI:
    """The API over ``engine``. With ``token``, every route but health and the docs needs
    ``Authorization: Bearer <token>`` (a studio server shared by several Blender seats).
    ``output_roots``: folders besides the default output folder that jobs may write into;
    ``model_dirs``: folders besides the HF cache and tiny models that jobs may load from."""
    roots = OutputRoots(default_output_root(), output_roots)
    allowed_models = model_roots(model_dirs)
    worker = Worker(engine, roots, max_queued=max_queued)

    @asynccontextmanager
    async def lifespan(_app):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="ArchViz ControlNet backend", version=__version__, lifespan=lifespan,
                  description="Multi-ControlNet style sweeps for architectural visualization.")
    app.state.worker = worker
    app.state.engine = engine
    app.state.output_roots = roots
    app.state.model_roots = allowed_models
    app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes)
    app.state.started = time.time()
    dirs = None
    if preset_dirs:
        from ...core.presets import builtin_dir

        dirs = [builtin_dir(), *preset_dirs]

    preset_cache = PresetCache(dirs)  # parsed once per change of the preset files, not per request
    app.state.presets = preset_cache

    def presets():
        return preset_cache.get()

    if token:
        @app.middleware("http")
        async def _auth(request: Request, call_next):
            request.state.authorized = _is_authorized(request, token)
            if request.url.path not in OPEN_PATHS and not request.state.authorized:
                # No detail: a missing and a wrong token look the same from outside.
                response = _error(401, "Unauthorized", "unauthorized")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
            return await call_next(request)

    # -- errors as data -------------------------------------------------------------------
    @app.exception_handler(J.JobError)
    async def _job_error(_: Request, exc: J.JobError):
        return _error(422, "ValidationError", str(exc), exc.field)

    @app.exception_handler(QueueFull)
    async def _queue_full(_: Request, exc: QueueFull):
        response = _error(429, "QueueFull", str(exc))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    async def _request_error(_: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query")]
        field = ".".join(loc) or "body"
        return _error(422, "ValidationError", f"{field}: {first.get('msg')}", field)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException):
        kind = {404: "NotFound", 405: "MethodNotAllowed", 409: "Conflict", 410: "Gone",
                413: "RequestTooLarge"}.get(
            exc.status_code, "HTTPError")
        return _error(exc.status_code, kind, str(exc.detail))

    def _record(job_id: str):
        record = worker.get(job_id)
        if record is None:
            raise HTTPException(404, f"job {J._short(job_id, 40)} not found")
        return record

    # -- endpoints --------------------------------------------------------------------------
    @app.get("/v1/health")
    def health(request: Request) -> dict:
        import diffusers
        import torch

        if token and not getattr(request.state, "authorized", False):
            return {"status": "ok", "version": __version__}  # nothing about the machine without the token
        _, errors = presets()
        return {
            "status": "ok",
            "version": __version__,
            "device": str(engine.device),
            "dtype": engine.dtype_name,
            # Non-empty when the backend runs on the CPU although the machine has a GPU (and why).
            "device_warning": getattr(engine, "device_warning", ""),
            "engine_options_changing_images": engine.image_changes,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "loaded_models": engine.cache.describe(),
            "memory_budget_mb": round(engine.cache.budget_bytes / 2**20),
            "memory_used_mb": round(engine.cache.used_bytes() / 2**20, 2),
            "queue": {"queued": worker.queued(), "running": worker.current},
            "jobs_run": worker.jobs_run,
            "uptime_s": round(time.time() - app.state.started, 1),
            "preset_errors": [str(e) for e in errors],
            "pid": os.getpid(),
        }

    @app.get("/v1/presets")
    def list_presets() -> dict:
        found, errors = presets()
        return {"presets": [p.to_dict() for p in sorted(found.values(), key=lambda p: p.name)],
                "errors": [{"file": e.file, "key": e.key, "message": str(e)} for e in errors]}

    body_schema, job_defs = _job_schema()

    @app.post("/v1/jobs", status_code=202, response_model=JobAccepted,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}}})
    async def submit(request: Request):
        raw = await request.body()  # BodyLimitMiddleware: 413 past max_body_bytes
        job = J.Job.from_json(raw)  # JobError -> 422 naming the field
        check_job_models(job, allowed_models)  # no reads outside the model roots
        found, _ = presets()
        changes_for = getattr(engine, "image_changes_for", None)  # with the family's memory profile
        changes = changes_for(job.model.arch) if changes_for else engine.image_changes
        dtype = "bfloat16" if job.model.arch in BF16_ARCHES and engine.dtype_name == "float16" else engine.dtype_name
        plan = build_plan(job, found, dtype, changes)
        record = worker.submit(plan)
        return JSONResponse(status_code=202, content={
            "id": record.id, "state": record.state, "queue_position": worker.queue_position(record.id),
            "status_url": f"/v1/jobs/{record.id}", "images_total": len(plan.images),
            "output_dir": str(record.output_dir)})

    @app.get("/v1/jobs")
    def list_jobs() -> dict:
        return {"jobs": [{"id": r.id, "state": r.state, "created": r.created,
                          "images_done": len(r.images), "images_total": len(r.plan.images)}
                         for r in sorted(worker.records.values(), key=lambda r: r.created)]}

    @app.get("/v1/jobs/{job_id}")
    async def job_status(job_id: str, wait: str = "0"):
        """The job's status. ``?wait=S`` (a long poll, at most MAX_WAIT_S seconds): answer
        as soon as the job has ended, or after S seconds with the status then; a client
        learns of the end at once, without polling often."""
        record = _record(job_id)
        seconds = _wait_seconds(wait)
        if isinstance(seconds, str):
            return _error(422, "ValidationError", seconds, "wait")
        if seconds > 0:
            await record.ended.wait(seconds)
        return record.status(worker.queue_position(job_id))

    @app.get("/v1/jobs/{job_id}/images/{n}", response_class=FileResponse,
             responses={200: {"content": {"image/png": {}}}})
    def job_image(job_id: str, n: int):
        record = _record(job_id)
        if not 0 <= n < len(record.plan.images):
            raise HTTPException(404, f"image {n} is outside this job's {len(record.plan.images)} images")
        info = record.images.get(n)
        if info is None:
            raise HTTPException(404, f"image {n} of job {job_id} is not done (state {record.state})")
        # The file may have been replaced since (another job into the same folder with
        # other parameters): serve this job's image or say why not, never another's.
        if not os.path.isfile(info["path"]):
            raise HTTPException(410, f"image {n} of job {job_id} ({info['file']}) is no longer on disk")
        if not existing_matches(info["path"], info["params_sha256"]):
            raise HTTPException(409, f"image {n} of job {job_id} ({info['file']}) was replaced on disk by an image "
                                     "made with other parameters (another job into the same folder); submit this "
                                     "job again to make it again")
        return FileResponse(info["path"], media_type="image/png", filename=info["file"])

    @app.get("/v1/jobs/{job_id}/previews/{n}", responses={200: {"content": {"image/png": {}}}})
    def job_preview(job_id: str, n: int):
        """The latest preview of image ``n`` (a small PNG, ``X-Archviz-Step: step/steps``);
        404 once the image is done (fetch the image) or before its first preview."""
        record = _record(job_id)
        if not 0 <= n < len(record.plan.images):
            raise HTTPException(404, f"image {n} is outside this job's {len(record.plan.images)} images")
        found = record.preview(n)
        if found is None:
            raise HTTPException(404, f"image {n} of job {job_id} has no preview now (state {record.state})")
        step, steps, png = found
        return Response(content=png, media_type="image/png", headers={"X-Archviz-Step": f"{step}/{steps}"})

    @app.get("/v1/jobs/{job_id}/contact_sheet", response_class=FileResponse,
             responses={200: {"content": {"image/png": {}}}})
    def job_contact_sheet(job_id: str):
        record = _record(job_id)
        if not record.contact_sheet_file:
            raise HTTPException(404, f"job {job_id} has no contact sheet yet (state {record.state})")
        return FileResponse(record.output_dir / record.contact_sheet_file, media_type="image/png")

    @app.get("/v1/jobs/{job_id}/manifest", response_class=FileResponse,
             responses={200: {"content": {"application/json": {}}}})
    def job_manifest(job_id: str):
        """The job's manifest.json as written in its output folder (a remote client keeps a copy)."""
        record = _record(job_id)
        path = record.output_dir / record.manifest_file if record.manifest_file else None
        if path is None or not path.is_file():
            raise HTTPException(404, f"job {job_id} has no manifest yet (state {record.state})")
        return FileResponse(path, media_type="application/json")

    @app.get("/v1/jobs/{job_id}/controls/{n}", response_class=FileResponse,
             responses={200: {"content": {"image/png": {}}}})
    def job_control(job_id: str, n: int):
        record = _record(job_id)
        notes = record.plan.preprocessed
        if not 0 <= n < len(notes):
            raise HTTPException(404, f"job {job_id} has {len(notes)} control(s) made from a picture, not {n + 1}")
        path = record.output_dir / notes[n]["file"]
        if not path.is_file():
            raise HTTPException(410, f"control {n} of job {job_id} ({notes[n]['file']}) is no longer on disk")
        return FileResponse(path, media_type="image/png")

    @app.delete("/v1/jobs/{job_id}")
    def cancel(job_id: str, reason: str | None = None) -> dict:
        """Cancel. ``?reason=TEXT``: a client that gave up (disk full on its side, a
        timeout) says why, and the job ends ``failed`` with that reason instead."""
        _record(job_id)
        record = worker.cancel(job_id, reason=reason[:500] if reason else None)
        return record.status(worker.queue_position(job_id))

    @app.post("/v1/unload", response_model=UnloadResult)
    def unload() -> dict:
        return engine.unload()

    @app.post("/v1/preprocess")
    def preprocess(req: PreprocessRequest) -> dict:
        if req.detector not in J.PREPROCESSORS or req.detector == "none":
            raise J.JobError("detector", f"unknown detector {J._short(req.detector)} "
                                         f"(expected one of {', '.join(J.PREPROCESSORS[1:])})")
        for name in ("width", "height"):
            value = getattr(req, name)
            if not J.MIN_SIZE <= value <= J.MAX_SIZE or value % J.SIZE_MULTIPLE:
                raise J.JobError(name, f"must be a multiple of {J.SIZE_MULTIPLE} in {J.MIN_SIZE}..{J.MAX_SIZE}")
        image = decode_control_image(J.decode_png(req.image, "image"), "image")
        try:
            out, settings = run_detector(req.detector, image, req.width, req.height)
        except PreprocessorError as exc:
            return _error(409, "PreprocessorError", str(exc), "detector")
        buf = io.BytesIO()
        out.save(buf, format="PNG")
        return {"image": base64.b64encode(buf.getvalue()).decode("ascii"), "width": out.width,
                "height": out.height, "settings": settings}

    @app.post("/v1/picture")
    def picture(req: PictureRequest) -> dict:
        from .picture import fit_picture

        if len(req.image) > (J.MAX_PNG_BYTES + 2) // 3 * 4:
            raise J.JobError("image", f"the file is larger than the limit of {J.MAX_PNG_BYTES // 2**20} MiB")
        try:
            data = base64.b64decode(req.image, validate=True)
        except (ValueError, TypeError) as exc:
            raise J.JobError("image", f"not valid base64 ({exc})") from None
        return fit_picture(data, req.long_side, req.multiple)

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(job_defs)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
    install_video_routes(app, worker, presets)  # POST /v1/video-jobs (archviz video)
    return app


def dumps(data) -> str:  # small helper for the CLI and tests
    return json.dumps(data, indent=2)
