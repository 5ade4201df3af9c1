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
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from ...core.jobs import JobError
from ...core.png import WriteError, clean_stale_temps
from ...core.png import atomic_write as _atomic_write
from ..engine.sweep import PlannedImage, SweepPlan


class OutputWriteError(WriteError):
    """A result file could not be written (disk full, file size limit, permissions)."""


#: Deepest output folder accepted, in folders below the root of the file system.
MAX_FOLDER_DEPTH = 64
#: Longest path (bytes) and folder name (bytes) the usual Linux, macOS and Windows file
#: systems take.
MAX_PATH_BYTES, MAX_NAME_BYTES = 4000, 255


def check_folder_name(text: str, field: str = "output_dir") -> None:
    """JobError naming ``field`` for a folder path no file system takes: too long, a
    name over 255 bytes, too deep."""
    raw = os.fsencode(text)
    parts = [p for p in raw.split(b"/") if p]
    if len(parts) > MAX_FOLDER_DEPTH:
        raise JobError(field, f"is {len(parts)} folders deep; at most {MAX_FOLDER_DEPTH} are accepted")
    if len(raw) > MAX_PATH_BYTES:
        raise JobError(field, f"is {len(raw)} bytes long; paths can be at most {MAX_PATH_BYTES}")
    longest = max(parts, key=len, default=b"")
    if len(longest) > MAX_NAME_BYTES:
        raise JobError(field, f"has a folder name {len(longest)} bytes long ({_short(os.fsdecode(longest), 40)}); "
                              f"names can be at most {MAX_NAME_BYTES}")


def check_folder_target(real: Path, field: str = "output_dir") -> None:
    """JobError naming ``field`` when the folder or one above it exists but is not a
    folder (a file, a FIFO, a device)."""
    for path in (real, *real.parents):
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # missing, or below a file: the file above is named
        except OSError as exc:
            raise JobError(field, f"{path} cannot be used: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            kind = ("a file" if stat.S_ISREG(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                    else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device or other special file")
            raise JobError(field, f"{path} is {kind}, not a folder")
        return  # the nearest existing one is a folder


def _short(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


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
        check_folder_name(requested)
        path = Path(requested).expanduser()
        real = _real(path if path.is_absolute() else self.default / path)
        if not any(real == root or root in real.parents for root in self.roots):
            raise JobError("output_dir", f"{_short(requested)} is outside the server's output roots "
                                         f"({', '.join(map(str, self.roots))}); the server operator can add one "
                                         "with archviz serve --output-root DIR")
        check_folder_name(str(real))
        check_folder_target(real)
        return real

    def covers(self, path: str | os.PathLike) -> bool:
        real = _real(path)
        return any(real == root or root in real.parents for root in self.roots)

METADATA_KEYS = ("prompt", "negative_prompt", "seed", "steps", "cfg", "scheduler", "width", "height", "style",
                 "model", "controls", "params_sha256", "archviz", "parameters", "strength", "init_sha256",
                 "region_coverage", "mask_sha256", "preprocessors", "edit")


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, fsync, rename (core.png does
    it for both sides). On any failure the temporary file is removed and ``path`` is as it
    was; an OS error becomes an :class:`OutputWriteError` in one line: "disk full while
    writing /out/x.png (13012 bytes); the files finished before it are kept"."""
    _atomic_write(path, data, error=OutputWriteError)


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
    restyle = {}
    if style.edit is not None:  # instruction edit: the edit text and the picture's pixel hash
        a1111 += f", Edit: {style.edit}"
        restyle = {"edit": style.edit, "init_sha256": plan.init.sha256}
    elif plan.init is not None:  # img2img: the init image's pixel hash and the strength
        a1111 += f", Denoising strength: {plan.init.strength:g}"
        restyle = {"strength": f"{plan.init.strength:g}", "init_sha256": plan.init.sha256}
    if plan.region is not None:  # region edit: the share of pixels it may change, and which mask
        restyle.update(region_coverage=f"{plan.region.coverage:g}", mask_sha256=plan.region.sha256)
    if plan.fast is not None:  # fast mode is labelled on every image it made
        a1111 += f", Fast mode: {plan.fast['mode']}"
        restyle["fast"] = plan.fast["mode"]
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
        **restyle,
        **({"preprocessors": json.dumps(plan.preprocessed)} if plan.preprocessed else {}),
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


_FOLDER_LOCK = threading.RLock()


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
                        "params_sha256": i.params_sha256, "status": "missing", "job_id": job_id}
                       for i in plan.images],
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
        with self.locked():
            self._write(state, error, contact_sheet)

    def finish(self, state: str, error: dict | None, contact_sheet_of) -> str | None:
        """The last write of a job, under the lock: ``contact_sheet_of(others)`` draws the
        sheet from this job's images and the other jobs' ones still on disk."""
        with self.locked():
            sheet = contact_sheet_of(self.others())
            self._write(state, error, sheet)
            return sheet

    @contextmanager
    def locked(self):
        """An exclusive lock on the manifest's folder (``flock`` on the folder itself, so
        no lock file is left behind), held while the manifest is read, merged and
        replaced: jobs writing into one folder at once never drop each other's images.
        Where ``fcntl`` does not exist (Windows), jobs of this process still queue on a
        lock of their own."""
        with _FOLDER_LOCK:
            try:
                import fcntl
            except ImportError:
                yield
                return
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the lock

    def others(self) -> list[dict]:
        """Entries of the manifest on disk that other jobs made (another seed or style into
        the same folder and prefix) and whose image is still on disk with its parameters."""
        try:
            old = json.loads(self.path.read_text(encoding="utf-8"))
            entries = old.get("images", []) if isinstance(old, dict) else []
        except (OSError, ValueError):
            return []
        ours = {e["file"] for e in self.data["images"]}
        out = []
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("file"), str) or e["file"] in ours:
                continue
            if "/" in e["file"] or e["file"].startswith("."):
                continue
            if existing_matches(self.path.parent / e["file"], str(e.get("params_sha256", ""))):
                out.append({**e, "status": "done" if e.get("status") != "skipped" else "skipped",
                            "job_id": e.get("job_id", old.get("job_id"))})
        return out

    def _write(self, state: str | None, error: dict | None, contact_sheet: str | None) -> None:
        if state:
            self.data["state"] = state
        if error is not None:
            self.data["error"] = error
        if contact_sheet is not None:
            self.data["contact_sheet"] = contact_sheet
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        others = self.others()
        data = dict(self.data)
        if others:
            data["images"] = self.data["images"] + others
            data["done"] = self.data["done"] + [e["file"] for e in others]
            data["other_jobs"] = sorted({str(e["job_id"]) for e in others if e.get("job_id")})
        atomic_write(self.path, json.dumps(data, indent=2).encode())


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


def write_contact_sheet(plan: SweepPlan, output_dir: Path, name: str, others: list[dict] | None = None) -> str:
    """Contact sheet of whatever images of the plan exist on disk now, plus ``others``
    (manifest entries of other jobs into the same folder: file, style, seed,
    params_sha256), each in its style's row and seed's column."""
    rows = [s.name for s in plan.styles]
    cols = list(plan.job.seeds)
    cells = [(item.style, cols.index(item.seed), item.file, item.params_sha256) for item in plan.images]
    for e in others or []:
        style, seed = str(e.get("style")), e.get("seed")
        if style not in rows:
            rows.append(style)
        if seed not in cols:
            cols.append(seed)
        cells.append((rows.index(style), cols.index(seed), e["file"], str(e.get("params_sha256", ""))))
    tiles = {}
    for r, c, file, sha in cells:
        tile = _tile(output_dir / file, sha)
        if tile is not None:
            tiles[(r, c)] = tile
        else:
            tiles.setdefault((r, c), None)
    title = f"{plan.job.name_prefix + ' - ' if plan.job.name_prefix else ''}{plan.models.family}, " \
            f"{plan.width}x{plan.height}"
    sheet, boxes = contact_sheet(rows, cols, tiles, plan.width, plan.height, title)
    # Where each variant sits, so a viewer (or a test) can map a click back to its file.
    layout = {file: boxes[(r, c)] for r, c, file, _sha in cells}
    info = PngImagePlugin.PngInfo()
    info.add_text("archviz_tiles", json.dumps(layout))
    info.add_text("archviz_rows", json.dumps(rows))
    info.add_text("archviz_columns", json.dumps(cols))
    buf = io.BytesIO()
    # zlib's fastest level: the sheet is written as the job ends, while the client waits
    # for it; level 6 takes a third longer for a few percent less file
    sheet.save(buf, format="PNG", pnginfo=info, compress_level=1)
    atomic_write(output_dir / name, buf.getvalue())
    return name


def _tile(path: Path, params_sha256: str) -> Image.Image | None:
    """The image at ``path`` as a sheet tile when it was made with these parameters, else
    None; decoded once (its text chunks may follow the pixels)."""
    if not os.path.isfile(path):
        return None
    try:
        with Image.open(path) as im:
            im.load()
            if (getattr(im, "text", None) or {}).get("params_sha256") != params_sha256:
                return None
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError):
        return None
