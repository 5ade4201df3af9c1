"""Detectors that turn a photo or a sketch into a control image (Blender passes need none).

* ``canny``: the seeds' adaptive Canny (thresholds from the median, blur 5x5), with an
  aspect-preserving resize and centred padding to the job's size. No weights needed.
* ``mlsd``, ``lineart``: controlnet_aux detectors, imported submodule by submodule (its
  package ``__init__`` pulls in torchvision/timm detectors that we do not need). Weights are
  the lllyasviel/Annotators files, looked up in ``$ARCHVIZ_HOME/annotators/`` and then in
  the Hugging Face cache; never downloaded.
* ``depth``: a DPT/MiDaS depth model through transformers (the seeds' DepthPreprocessor),
  from ``$ARCHVIZ_HOME/annotators/dpt-hybrid-midas/`` or the HF cache of
  ``Intel/dpt-hybrid-midas``; output is inverse depth, near = white (CONVENTIONS.md).
* ``normal``: controlnet_aux NormalBae (``scannet.pt``); it needs torchvision, which does
  not install next to the CPU torch here, so it says so when missing.

All outputs are white-on-black RGB images of exactly the job's width x height.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import numpy as np
from PIL import Image

from .tiny import archviz_home

ANNOTATOR_REPO = "lllyasviel/Annotators"
DEPTH_REPO = "Intel/dpt-hybrid-midas"
WEIGHT_FILES = {
    "mlsd": ("mlsd_large_512_fp32.pth",),
    "lineart": ("sk_model.pth", "sk_model2.pth"),
    "normal": ("scannet.pt",),
}


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


def adaptive_canny(image: Image.Image, width: int, height: int, sigma: float = 0.33) -> Image.Image:
    import cv2

    gray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    gray = cv2.GaussianBlur(gray, (5, 5), 0)
    median = float(np.median(gray))
    lower = int(max(0, (1.0 - sigma) * median))
    upper = int(min(255, (1.0 + sigma) * median))
    edges = cv2.Canny(gray, lower, upper)
    # Nearest keeps the edges 1 px and pure white on black after the resize.
    return _rgb(fit_pad(edges, width, height, interpolation=cv2.INTER_NEAREST))


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------


def find_weight(name: str, detector: str) -> str:
    """Local path of an annotator file, or a PreprocessorError naming it and where to put it."""
    local = annotator_dir() / name
    if local.is_file():
        return str(local)
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(ANNOTATOR_REPO, name, local_files_only=True)
    except Exception:  # noqa: BLE001 - any miss in the cache means "not here"
        pass
    raise PreprocessorError(
        f"the {detector} detector needs the annotator weights file {name!r}, which is missing: put it at "
        f"{local} (or set ARCHVIZ_ANNOTATORS to a folder that has it), or have it in the Hugging Face cache "
        f"of {ANNOTATOR_REPO} (huggingface-cli download {ANNOTATOR_REPO} {name})")


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
    paths = [find_weight(name, kind) for name in WEIGHT_FILES[kind]]
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
    _DETECTORS[kind] = det
    return det


def _depth_model():
    if "depth" in _DETECTORS:
        return _DETECTORS["depth"]
    from transformers import AutoModelForDepthEstimation

    local = annotator_dir() / "dpt-hybrid-midas"
    target = str(local) if local.is_dir() else DEPTH_REPO
    try:
        model = AutoModelForDepthEstimation.from_pretrained(target, local_files_only=True).eval()
    except OSError as exc:
        raise PreprocessorError(
            f"the depth detector needs a DPT/MiDaS model, which is missing: put the folder of {DEPTH_REPO} "
            f"(config.json + model.safetensors) at {local}, or have it in the Hugging Face cache "
            f"(huggingface-cli download {DEPTH_REPO}). Loader said: {exc}") from exc
    _DETECTORS["depth"] = model
    return model


def depth_map(image: Image.Image, width: int, height: int) -> Image.Image:
    """Relative inverse depth, near = white, min-max normalised (MiDaS convention)."""
    import torch

    model = _depth_model()
    photo = fit_pad(np.asarray(image.convert("RGB")), width, height)
    size = int(getattr(model.config, "image_size", 384) or 384)
    x = torch.from_numpy(np.asarray(Image.fromarray(photo).resize((size, size), Image.BICUBIC), dtype=np.float32))
    x = (x / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        pred = model(pixel_values=x.permute(2, 0, 1)[None]).predicted_depth
    pred = torch.nn.functional.interpolate(pred[:, None], size=(height, width), mode="bicubic",
                                           align_corners=False)[0, 0].numpy()
    lo, hi = float(pred.min()), float(pred.max())
    norm = (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
    return _rgb((norm * 255.0).round())


def run_preprocessor(kind: str, image: Image.Image, width: int, height: int) -> Image.Image:
    """A control image of exactly width x height from a photo or sketch."""
    if kind == "none":
        return image
    if kind == "canny":
        return adaptive_canny(image, width, height)
    if kind == "depth":
        return depth_map(image, width, height)
    if kind in ("mlsd", "lineart", "normal"):
        detector = _detector(kind)
        photo = fit_pad(np.asarray(image.convert("RGB")), width, height)
        res = min(width, height)
        out = detector(photo, detect_resolution=res, image_resolution=res, output_type="np")
        out = np.asarray(out, dtype=np.uint8)
        import cv2

        if out.shape[:2] != (height, width):
            out = cv2.resize(out, (width, height), interpolation=cv2.INTER_LINEAR)
        return _rgb(out)
    raise PreprocessorError(f"unknown preprocessor {kind!r}")
