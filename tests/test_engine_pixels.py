"""The SD 1.5 / SDXL engine's pixels, pinned: the tiny models' images (uint8, as saved)
recorded before the engine was split into a sweep core and family modules, checked after
with a stated tolerance. Float results differ in their last bits between CPUs (AVX2 and
AVX-512 kernels sum in other orders), so the check compares pixels, never hashes: every
image within ``MAX_DIFF`` levels of 255 everywhere and ``MEAN_DIFF`` on average. A change
of the engine's behaviour (a window, a mode, a seed's noise) moves pixels far more than
that. A real change needs a new ``ENGINE_VERSION`` (backend/engine/sweep.py) and a new record,
never a silent one.

Record (only when pixels are meant to change, with ENGINE_VERSION bumped)::

    .venv/bin/python tests/test_engine_pixels.py --record
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend_support import b64, depth_image, lines_image, use_test_home  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "engine_pixels.json"  # versions and engine version
PIXELS = DATA.with_suffix(".npz")  # the images, uint8, one array per case
MAX_DIFF = 8  # levels of 255, at any pixel
MEAN_DIFF = 1.0  # levels of 255, over an image


def _controls(*units):
    images = {"depth": depth_image(), "lines": lines_image(), "canny": lines_image(), "normal": depth_image()}
    return [{"type": t, "image": b64(images[t]), **kw} for t, kw in units]


#: name -> (make_plan keyword arguments, which images: "all" or a list of indices)
CASES = {
    "sd15-two-units-full": dict(controls=_controls(("depth", {"scale": 0.9}), ("lines", {"scale": 0.6})),
                                steps=4, seeds=(7,)),
    "sd15-windows": dict(controls=_controls(("depth", {"scale": 1.0, "end": 0.5}),
                                            ("lines", {"scale": 0.8, "start": 0.2})), steps=4, seeds=(7,)),
    "sd15-scale-zero": dict(controls=_controls(("depth", {"scale": 0.9}), ("lines", {"scale": 0.0, "start": 0.5})),
                            steps=4, seeds=(7,)),
    "sd15-modes": dict(controls=_controls(("depth", {"scale": 0.9, "mode": "prompt"}),
                                          ("lines", {"scale": 0.6, "mode": "controlnet"})), steps=3, seeds=(2,)),
    "sd15-batch": dict(styles=("modern", "industrial"), seeds=(0, 1, 2), steps=3, scheduler="euler_a"),
    "sdxl-two-units": dict(family="tiny-sdxl", seeds=(3, 4), steps=3,
                           controls=_controls(("depth", {"scale": 0.5, "end": 0.7}),
                                              ("canny", {"scale": 0.4, "start": 0.3}))),
    "sdxl-union": dict(family="tiny-sdxl", union=True, steps=3, seeds=(5, 6),
                       controls=_controls(("normal", {"scale": 0.6}), ("depth", {"scale": 0.5, "start": 0.3}))),
    "sdxl-batch": dict(family="tiny-sdxl", styles=("modern", "industrial"), seeds=(0, 1), steps=2,
                       controls=_controls(("depth", {"scale": 0.7}))),
}


def as_saved(array: np.ndarray) -> np.ndarray:
    from archviz_controlnet.backend.engine.runner import to_uint8

    return np.ascontiguousarray(to_uint8(array))


def versions() -> dict:
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__}


def compute(engine) -> dict:
    from test_backend_engine import make_plan

    out = {}
    for name, kwargs in CASES.items():
        plan = make_plan(**kwargs)
        images = engine.generate(plan, plan.images)
        out[name] = np.stack([as_saved(images[item.index]) for item in plan.images])
    return out


@pytest.fixture(scope="module")
def engine():
    with pytest.MonkeyPatch.context() as mp:
        use_test_home(mp)
        from archviz_controlnet.backend.engine.runner import Engine

        torch.set_num_threads(1)
        yield Engine("cpu")


def differences(now: np.ndarray, saved: np.ndarray) -> tuple[int, float]:
    """(largest, mean) absolute difference in levels of 255."""
    diff = np.abs(now.astype(np.int16) - saved.astype(np.int16))
    return int(diff.max()), float(diff.mean())


def test_tolerance_tells_a_changed_image_from_cpu_noise():
    """The bounds the test below uses: last-bit noise passes, a changed image does not."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    noisy = np.clip(image.astype(np.int16) + rng.integers(-1, 2, image.shape), 0, 255).astype(np.uint8)
    largest, mean = differences(noisy, image)
    assert largest <= MAX_DIFF and mean <= MEAN_DIFF
    other = np.roll(image, 1, axis=2)  # the same pixels one column over: another image
    largest, mean = differences(other, image)
    assert largest > MAX_DIFF and mean > MEAN_DIFF


def test_sd_images_are_those_recorded_before_the_engine_split(engine):
    from archviz_controlnet.backend.engine.sweep import ENGINE_VERSION

    meta = json.loads(DATA.read_text())
    if meta["versions"] != versions():
        pytest.skip(f"images recorded with {meta['versions']}, this environment has {versions()}")
    saved = dict(np.load(PIXELS))
    now = compute(engine)
    assert set(now) == set(saved)
    changed = {}
    for name in now:
        assert now[name].shape == saved[name].shape, name
        largest, mean = differences(now[name], saved[name])
        if largest > MAX_DIFF or mean > MEAN_DIFF:
            changed[name] = (largest, round(mean, 3))
    assert not changed, (f"pixels changed (largest, mean difference in levels of 255) {changed} at "
                         f"ENGINE_VERSION {ENGINE_VERSION} (recorded at {meta['engine_version']})")
    assert meta["engine_version"] == ENGINE_VERSION  # same pixels: same engine version
    # the cases really differ from each other (a constant image would pass above)
    flat = [img for images in now.values() for img in images]
    assert all(differences(a, b)[1] > MEAN_DIFF for i, a in enumerate(flat) for b in flat[i + 1:])


if __name__ == "__main__" and "--record" in sys.argv:
    os.environ.setdefault("ARCHVIZ_TEST_THREADS", "1")
    with pytest.MonkeyPatch.context() as mp:
        use_test_home(mp)
        from archviz_controlnet.backend.engine.runner import Engine
        from archviz_controlnet.backend.engine.sweep import ENGINE_VERSION

        torch.set_num_threads(1)
        images = compute(Engine("cpu"))
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps({"engine_version": ENGINE_VERSION, "versions": versions()}, indent=1) + "\n")
    np.savez_compressed(PIXELS, **images)
    print(f"recorded {sum(len(v) for v in images.values())} images in {PIXELS}")
