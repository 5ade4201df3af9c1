"""Results on disk: PNGs with generation metadata, manifest.json, the contact sheet.

Every file is written atomically (temporary file in the same folder, then ``os.replace``),
so a crash, a kill or a full disk never leaves a half-written PNG or manifest behind, and a
finished image is on disk before it is reported.

Where a request may write is bounded by :class:`OutputRoots`: the server's default output
folder plus the ``--output-root`` folders; anything else (``..``, symlinks out, other
absolute paths) is refused with an error naming ``output_dir``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from ..core.jobs import JobError
from .sweep import PlannedImage, SweepPlan


class OutputWriteError(OSError):
    """A result file could not be written (disk full, file size limit, permissions)."""


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


class OutputRoots:
    """The folders a request may write into. ``default`` (the server's own output folder)
    is always one; a job without ``output_dir`` writes to ``default/<job id>`` and a
    relative ``output_dir`` is taken inside ``default``."""

    def __init__(self, default: str | os.PathLike, extra: list[str | os.PathLike] | None = None):
        self.default = _real(default)
        self.roots = [self.default] + [_real(p) for p in (extra or []) if _real(p) != self.default]

    def resolve(self, requested: str | None, job_id: str) -> Path:
        """The real folder for a job's ``output_dir``; JobError when it is outside the roots."""
        if not requested:
            return self.default / job_id
        path = Path(requested).expanduser()
        real = _real(path if path.is_absolute() else self.default / path)
        if not any(real == root or root in real.parents for root in self.roots):
            raise JobError("output_dir", f"{requested!r} is outside the server's output roots "
                                         f"({', '.join(map(str, self.roots))}); the server operator can add one "
                                         "with archviz serve --output-root DIR")
        return real

    def covers(self, path: str | os.PathLike) -> bool:
        real = _real(path)
        return any(real == root or root in real.parents for root in self.roots)

METADATA_KEYS = ("prompt", "negative_prompt", "seed", "steps", "cfg", "scheduler", "width", "height", "style",
                 "model", "controls", "params_sha256", "archviz", "parameters")


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, fsync, rename. On any failure
    the temporary file is removed and ``path`` is as it was; an OS error becomes an
    :class:`OutputWriteError` that names the file and says what went wrong."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        hint = {28: "the disk is full", 27: "the file is larger than the size limit (ulimit -f) or the disk is full",
                122: "the disk quota is exceeded", 13: "permission denied", 30: "the file system is read-only"}
        reason = hint.get(exc.errno, exc.strerror or str(exc))
        raise OutputWriteError(exc.errno, f"cannot write {path} ({len(data)} bytes): {reason}; "
                                          "the files finished before it are kept") from exc
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: str | None) -> None:
    if tmp and os.path.exists(tmp):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def image_metadata(plan: SweepPlan, item: PlannedImage, warnings: list[str] | None = None) -> dict[str, str]:
    """Text chunks of one result PNG (``warnings``: e.g. a prompt cut to 77 tokens)."""
    style = plan.styles[item.style]
    params = plan.params(item)
    controls = [{"type": u.type, "scale": u.scale, "start": u.start, "end": u.end, "mode": u.mode,
                 "model": u.model, "preprocess": u.preprocess, "image_sha256": u.image_sha256}
                for u in style.units]
    a1111 = (f"{style.prompt}\nNegative prompt: {style.negative}\nSteps: {style.steps}, Sampler: {style.scheduler}, "
             f"CFG scale: {style.cfg:g}, Seed: {item.seed}, Size: {plan.width}x{plan.height}, "
             f"Model: {plan.models.base}")
    return {
        "prompt": style.prompt,
        "negative_prompt": style.negative,
        "seed": str(item.seed),
        "steps": str(style.steps),
        "cfg": f"{style.cfg:g}",
        "scheduler": style.scheduler,
        "width": str(plan.width),
        "height": str(plan.height),
        "style": style.name,
        "model": json.dumps(plan.models.ids()),
        "controls": json.dumps(controls),
        "params_sha256": item.params_sha256,
        "archviz": json.dumps({"params": params, "style": style.name, "preset": style.preset,
                               "file": item.file, "index": item.index}),
        "parameters": a1111,  # what other tools (A1111, ComfyUI loaders) show
        **({"warnings": json.dumps(warnings)} if warnings else {}),
    }


def png_bytes(array: np.ndarray, metadata: dict[str, str]) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, value) if any(ord(c) > 127 for c in value) else info.add_text(key, value)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_png_text(path: str | os.PathLike) -> dict[str, str]:
    try:
        with Image.open(path) as im:
            return dict(getattr(im, "text", {}) or {})
    except (OSError, SyntaxError, ValueError):
        return {}


def existing_matches(path: str | os.PathLike, params_sha256: str) -> bool:
    """True when ``path`` is a PNG made with exactly these parameters (resume)."""
    return os.path.isfile(path) and read_png_text(path).get("params_sha256") == params_sha256


class Manifest:
    """``manifest.json``: what the job is, and per image whether it is done or missing."""

    def __init__(self, plan: SweepPlan, job_id: str, output_dir: Path, name: str):
        self.path = output_dir / name
        self.plan = plan
        self.data = {
            "job_id": job_id,
            "state": "running",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "updated": None,
            "model": plan.models.ids(),
            "dtype": plan.dtype,
            "engine_options": plan.engine_options,  # those that change images; {} for the exact engine
            "width": plan.width,
            "height": plan.height,
            "styles": [s.name for s in plan.styles],
            "seeds": list(plan.job.seeds),
            "name_prefix": plan.job.name_prefix,
            "style_settings": [{"name": s.name, "preset": s.preset, "prompt": s.prompt, "negative": s.negative,
                                "steps": s.steps, "cfg": s.cfg, "scheduler": s.scheduler,
                                "controls": [u.__dict__ for u in s.units]} for s in plan.styles],
            "images": [{"index": i.index, "file": i.file, "style": plan.styles[i.style].name, "seed": i.seed,
                        "params_sha256": i.params_sha256, "status": "missing"} for i in plan.images],
            "done": [],
            "missing": [i.file for i in plan.images],
            "contact_sheet": None,
            "error": None,
            "warnings": [],
        }

    def mark(self, item: PlannedImage, status: str) -> None:
        entry = self.data["images"][self._pos(item)]
        entry["status"] = status
        self._refresh()

    def _pos(self, item: PlannedImage) -> int:
        return next(k for k, e in enumerate(self.data["images"]) if e["index"] == item.index)

    def _refresh(self) -> None:
        imgs = self.data["images"]
        self.data["done"] = [e["file"] for e in imgs if e["status"] in ("done", "skipped")]
        self.data["missing"] = [e["file"] for e in imgs if e["status"] not in ("done", "skipped")]

    def write(self, state: str | None = None, error: dict | None = None, contact_sheet: str | None = None) -> None:
        if state:
            self.data["state"] = state
        if error is not None:
            self.data["error"] = error
        if contact_sheet is not None:
            self.data["contact_sheet"] = contact_sheet
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write(self.path, json.dumps(self.data, indent=2).encode())


# ---------------------------------------------------------------------------------------
# Contact sheet
# ---------------------------------------------------------------------------------------


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def contact_sheet(rows: list[str], cols: list[int], tiles: dict[tuple[int, int], Image.Image | None],
                  tile_w: int, tile_h: int, title: str = "") -> tuple[Image.Image, dict[tuple[int, int], list[int]]]:
    """Grid with one row per style and one column per seed, labelled on the left and on top.
    Missing tiles are drawn grey with a cross. Small images are upscaled (nearest) to at
    least 160 px wide so the labels stay readable. Returns the sheet and each tile's box
    ``[x, y, w, h]`` keyed by (row, column)."""
    scale = max(1, int(np.ceil(160 / max(1, tile_w))))
    tw, th = tile_w * scale, tile_h * scale
    font = _font(14)
    label_w = max(90, 10 + max((int(font.getlength(r)) for r in rows), default=0))
    header_h = 24 + (22 if title else 0)
    gap = 4
    width = label_w + len(cols) * (tw + gap) + gap
    height = header_h + len(rows) * (th + gap) + gap
    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    boxes = {}
    if title:
        draw.text((gap, 4), title, fill=(20, 20, 20), font=font)
    for c, seed in enumerate(cols):
        x = label_w + gap + c * (tw + gap)
        draw.text((x + 4, header_h - 20), f"seed {seed}", fill=(20, 20, 20), font=font)
    for r, name in enumerate(rows):
        y = header_h + gap + r * (th + gap)
        draw.text((6, y + th // 2 - 8), name, fill=(20, 20, 20), font=font)
        for c in range(len(cols)):
            x = label_w + gap + c * (tw + gap)
            boxes[(r, c)] = [x, y, tw, th]
            tile = tiles.get((r, c))
            if tile is None:
                draw.rectangle([x, y, x + tw - 1, y + th - 1], fill=(200, 200, 200))
                draw.line([x, y, x + tw - 1, y + th - 1], fill=(150, 150, 150), width=2)
                draw.line([x, y + th - 1, x + tw - 1, y], fill=(150, 150, 150), width=2)
            else:
                sheet.paste(tile.convert("RGB").resize((tw, th), Image.NEAREST), (x, y))
    return sheet, boxes


def write_contact_sheet(plan: SweepPlan, output_dir: Path, name: str) -> str:
    """Contact sheet of whatever images of the plan exist on disk now."""
    tiles = {}
    for item in plan.images:
        path = output_dir / item.file
        r, c = item.style, plan.job.seeds.index(item.seed)
        if existing_matches(path, item.params_sha256):
            with Image.open(path) as im:
                tiles[(r, c)] = im.convert("RGB")
        else:
            tiles[(r, c)] = None
    title = f"{plan.job.name_prefix + ' - ' if plan.job.name_prefix else ''}{plan.models.family}, " \
            f"{plan.width}x{plan.height}"
    sheet, boxes = contact_sheet([s.name for s in plan.styles], list(plan.job.seeds), tiles, plan.width,
                                 plan.height, title)
    # Where each variant sits, so a viewer (or a test) can map a click back to its file.
    layout = {item.file: boxes[(item.style, plan.job.seeds.index(item.seed))] for item in plan.images}
    info = PngImagePlugin.PngInfo()
    info.add_text("archviz_tiles", json.dumps(layout))
    info.add_text("archviz_rows", json.dumps([s.name for s in plan.styles]))
    info.add_text("archviz_columns", json.dumps(list(plan.job.seeds)))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", pnginfo=info)
    atomic_write(output_dir / name, buf.getvalue())
    return name
