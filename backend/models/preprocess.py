"""Detectors that turn a photo or a sketch into a control image (Blender passes need none).

* ``canny``: the seeds' adaptive Canny (thresholds from the median, blur 5x5), with an
  aspect-preserving resize and centred padding to the job's size. No weights needed.
* ``mlsd``, ``lineart``: controlnet_aux detectors, imported submodule by submodule (its
  package ``__init__`` pulls in torchvision/timm detectors that we do not need). Weights are
  the lllyasviel/Annotators files: ``$ARCHVIZ_ANNOTATORS`` (default
  ``$ARCHVIZ_HOME/annotators/``) when the files are there, else exactly those files of the
  hub repository through :func:`.hub.ensure` (progress, offline and disk checks).
* ``depth``: a DPT/MiDaS depth model through transformers (the seeds' DepthPreprocessor):
  ``$ARCHVIZ_ANNOTATORS/dpt-hybrid-midas/`` when it is there, else ``$ARCHVIZ_DEPTH_MODEL``
  (default ``Intel/dpt-hybrid-midas``; ``Intel/dpt-large`` also fits) as a hub snapshot of
  ``config.json`` + ``model.safetensors``. Output is inverse depth, near = white
  (CONVENTIONS.md).
* ``normal``: controlnet_aux NormalBae (``scannet.pt``); it needs torchvision, which does
  not install next to the CPU torch here, so it says so when missing.

All outputs are white-on-black RGB images of exactly the job's width x height.
:func:`run_detector` also returns the detector's settings (thresholds, model and revision),
which go into the saved control's and the results' metadata.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from . import hub
from .tiny import archviz_home

ANNOTATOR_REPO = "lllyasviel/Annotators"
DEPTH_REPO = "Intel/dpt-hybrid-midas"
WEIGHT_FILES = {
    "mlsd": ("mlsd_large_512_fp32.pth",),
    "lineart": ("sk_model.pth", "sk_model2.pth"),
    "normal": ("scannet.pt",),
}
CANNY_SIGMA = 0.33
CANNY_BLUR = 5
#: controlnet_aux's MLSD defaults (score and distance thresholds)
MLSD_THRESHOLDS = {"thr_v": 0.1, "thr_d": 0.1}


class PreprocessorError(RuntimeError):
    """A detector cannot run (weights or a package missing)."""


def annotator_dir() -> Path:
    return Path(os.environ.get("ARCHVIZ_ANNOTATORS") or archviz_home() / "annotators").expanduser()


# ---------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------


def fit_pad(array: np.ndarray, width: int, height: int, interpolation=None) -> np.ndarray:
    """Resize keeping the aspect ratio so it fits in width x height, then pad centred with 0."""
    import cv2

    h, w = array.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    if interpolation is None:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(array, (new_w, new_h), interpolation=interpolation)
    pad_h, pad_w = height - new_h, width - new_w
    pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
    if resized.ndim == 3:
        pads = pads + ((0, 0),)
    return np.pad(resized, pads)


def _rgb(gray: np.ndarray) -> Image.Image:
    if gray.ndim == 2:
        gray = np.stack([gray] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(gray.astype(np.uint8)))


# ---------------------------------------------------------------------------------------
# Adaptive Canny (the seeds' AdaptiveCannyPreprocessor, for any target size)
# ---------------------------------------------------------------------------------------


def adaptive_canny(image: Image.Image, width: int, height: int, sigma: float = CANNY_SIGMA) -> Image.Image:
    return adaptive_canny_with_settings(image, width, height, sigma)[0]


def adaptive_canny_with_settings(image: Image.Image, width: int, height: int,
                                 sigma: float = CANNY_SIGMA) -> tuple[Image.Image, dict]:
    import cv2

    gray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    gray = cv2.GaussianBlur(gray, (CANNY_BLUR, CANNY_BLUR), 0)
    median = float(np.median(gray))
    lower = int(max(0, (1.0 - sigma) * median))
    upper = int(min(255, (1.0 + sigma) * median))
    edges = cv2.Canny(gray, lower, upper)
    # Nearest keeps the edges 1 px and pure white on black after the resize.
    out = _rgb(fit_pad(edges, width, height, interpolation=cv2.INTER_NEAREST))
    return out, {"detector": "adaptive_canny", "sigma": sigma, "blur": CANNY_BLUR, "median": median,
                 "low": lower, "high": upper}


# ---------------------------------------------------------------------------------------
# Weights: a local folder first, else the hub (backend/models/hub.py)
# ---------------------------------------------------------------------------------------


def depth_repo() -> str:
    return os.environ.get("ARCHVIZ_DEPTH_MODEL", "").strip() or DEPTH_REPO


def _local_depth() -> Path | None:
    local = annotator_dir() / "dpt-hybrid-midas"
    return local if local.is_dir() else None


def weight_needs(kinds) -> list[tuple[str, object, str]]:
    """``(repo_id, components, label)`` for :func:`.hub.ensure`: what the detectors among
    ``kinds`` need from the hub (nothing for those whose files are in the local folder)."""
    needs = []
    files = [f for k in kinds if k in WEIGHT_FILES for f in WEIGHT_FILES[k]
             if not (annotator_dir() / f).is_file()]
    if files:
        needs.append((ANNOTATOR_REPO, hub.Files(dict.fromkeys(files)), "annotator weights"))
    if "depth" in kinds and _local_depth() is None:
        ref = depth_repo()
        if not Path(ref).expanduser().is_dir():
            needs.append((ref, None, "depth model"))
    return needs


def ensure_weights(kinds, progress: hub.Progress | None = None,
                   cancelled: Callable[[], bool] = lambda: False) -> dict:
    """Every weight file the detectors among ``kinds`` need, as complete hub snapshots in the
    Hugging Face cache (downloaded with ``progress`` when missing). :func:`.hub.ensure`'s
    result; its failures are one-line PreprocessorErrors naming the repository and what to do."""
    needs = weight_needs(kinds)
    if not needs:
        return {"snapshots": {}, "bytes_fetched": 0, "files_fetched": 0, "bytes_total": 0}
    try:
        return hub.ensure(needs, fp16=False, progress=progress, cancelled=cancelled)
    except hub.DownloadCancelled:
        raise
    except hub.HubError as exc:
        raise PreprocessorError(f"{exc} (the detectors' weights: run once online, or put the files in "
                                f"{annotator_dir()})") from None


def find_weight(name: str, detector: str) -> tuple[str, str]:
    """(path, where) of an annotator file: the local folder, else the hub snapshot of
    lllyasviel/Annotators (fetched when missing), or a PreprocessorError naming it."""
    local = annotator_dir() / name
    if local.is_file():
        return str(local), str(local)
    needs = [(ANNOTATOR_REPO, hub.Files([name]), f"the {detector} detector's weights")]
    try:
        snap = hub.ensure(needs, fp16=False)["snapshots"][ANNOTATOR_REPO]
    except hub.HubError as exc:
        raise PreprocessorError(
            f"the {detector} detector needs the annotator weights file {name!r}, which is missing: put it at "
            f"{local} (or set ARCHVIZ_ANNOTATORS to a folder that has it), or fetch it from {ANNOTATOR_REPO} "
            f"(huggingface-cli download {ANNOTATOR_REPO} {name}); hub: {exc}") from None
    return str(Path(snap) / name), f"{ANNOTATOR_REPO}@{Path(snap).name}/{name}"


def _aux(submodule: str):
    """Import ``controlnet_aux.<submodule>`` without running the package ``__init__`` (which
    imports every detector, several of them needing torchvision and timm)."""
    if "controlnet_aux" not in sys.modules:
        spec = importlib.util.find_spec("controlnet_aux")
        if spec is None or not spec.submodule_search_locations:
            raise PreprocessorError(
                "the controlnet_aux package is not installed; install it without its heavy extras: "
                "pip install --no-deps controlnet_aux==0.0.10 einops")
        package = types.ModuleType("controlnet_aux")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["controlnet_aux"] = package
    try:
        return importlib.import_module(f"controlnet_aux.{submodule}")
    except ImportError as exc:
        raise PreprocessorError(f"controlnet_aux.{submodule} cannot be imported here: {exc}") from exc


_DETECTORS: dict[str, object] = {}


def _detector(kind: str):
    if kind in _DETECTORS:
        return _DETECTORS[kind]
    found = [find_weight(name, kind) for name in WEIGHT_FILES[kind]]
    paths = [path for path, _where in found]
    folder = os.path.dirname(paths[0])
    if kind == "mlsd":
        det = _aux("mlsd").MLSDdetector.from_pretrained(folder, filename=os.path.basename(paths[0]))
    elif kind == "lineart":
        det = _aux("lineart").LineartDetector.from_pretrained(
            folder, filename=os.path.basename(paths[0]), coarse_filename=os.path.basename(paths[1]))
    elif kind == "normal":
        det = _aux("normalbae").NormalBaeDetector.from_pretrained(folder, filename=os.path.basename(paths[0]))
    else:  # pragma: no cover
        raise PreprocessorError(f"unknown detector {kind!r}")
    _DETECTORS[kind] = det, [where for _path, where in found]
    return _DETECTORS[kind]


def _depth_model():
    """(model, where): the local folder, else the hub snapshot of :func:`depth_repo`."""
    if "depth" in _DETECTORS:
        return _DETECTORS["depth"]
    from transformers import AutoModelForDepthEstimation

    local = _local_depth()
    ref = depth_repo()
    if local is not None:
        folder, where = local, str(local)
    elif Path(ref).expanduser().is_dir():
        folder, where = Path(ref).expanduser(), str(Path(ref).expanduser())
    else:
        try:
            snap = hub.ensure([(ref, None, "depth model")], fp16=False)["snapshots"][ref]
        except hub.HubError as exc:
            raise PreprocessorError(
                f"the depth detector needs a DPT/MiDaS model: {exc}; run once online, or put the folder of "
                f"{ref} (config.json + model.safetensors) at {annotator_dir() / 'dpt-hybrid-midas'}") from None
        folder, where = Path(snap), f"{ref}@{Path(snap).name}"
    try:
        model = AutoModelForDepthEstimation.from_pretrained(str(folder), local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise PreprocessorError(f"the depth model in {folder} cannot be loaded: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    _DETECTORS["depth"] = model, where
    return _DETECTORS["depth"]


def predict_depth(image: Image.Image, width: int, height: int) -> tuple[np.ndarray, dict]:
    """The DPT's relative inverse depth (larger = nearer) at width x height, and its settings."""
    import torch

    model, where = _depth_model()
    photo = fit_pad(np.asarray(image.convert("RGB")), width, height)
    size = int(getattr(model.config, "image_size", 384) or 384)
    x = torch.from_numpy(np.asarray(Image.fromarray(photo).resize((size, size), Image.BICUBIC), dtype=np.float32))
    x = (x / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        pred = model(pixel_values=x.permute(2, 0, 1)[None]).predicted_depth
    pred = torch.nn.functional.interpolate(pred[:, None], size=(height, width), mode="bicubic",
                                           align_corners=False)[0, 0].numpy()
    return pred, {"detector": "dpt", "model": where, "input_size": size,
                  "normalise": "min-max of the predicted inverse depth, near = white"}


def depth_control(pred: np.ndarray) -> Image.Image:
    """A control image from a predicted inverse depth (MiDaS: larger = nearer): min-max
    normalised per image, near = white, far = black (CONVENTIONS.md)."""
    pred = np.asarray(pred, np.float64)
    lo, hi = float(pred.min()), float(pred.max())
    norm = (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
    return _rgb((norm * 255.0).round())


def depth_map(image: Image.Image, width: int, height: int) -> Image.Image:
    """Relative inverse depth, near = white, min-max normalised (MiDaS convention)."""
    return depth_control(predict_depth(image, width, height)[0])


def run_detector(kind: str, image: Image.Image, width: int, height: int) -> tuple[Image.Image, dict]:
    """(control image of exactly width x height, the detector's settings) from a photo or sketch."""
    if kind == "canny":
        return adaptive_canny_with_settings(image, width, height)
    if kind == "depth":
        pred, settings = predict_depth(image, width, height)
        return depth_control(pred), settings
    if kind in ("mlsd", "lineart", "normal"):
        detector, where = _detector(kind)
        photo = fit_pad(np.asarray(image.convert("RGB")), width, height)
        res = min(width, height)
        extra = dict(MLSD_THRESHOLDS) if kind == "mlsd" else {"coarse": False} if kind == "lineart" else {}
        out = detector(photo, detect_resolution=res, image_resolution=res, output_type="np", **extra)
        out = np.asarray(out, dtype=np.uint8)
        import cv2

        if out.shape[:2] != (height, width):
            out = cv2.resize(out, (width, height), interpolation=cv2.INTER_LINEAR)
        return _rgb(out), {"detector": kind, "weights": where, "detect_resolution": res, **extra}
    raise PreprocessorError(f"unknown preprocessor {kind!r}")


def run_preprocessor(kind: str, image: Image.Image, width: int, height: int) -> Image.Image:
    """A control image of exactly width x height from a photo or sketch."""
    if kind == "none":
        return image
    return run_detector(kind, image, width, height)[0]
