"""The SD 1.5 / SDXL engine's pixels, pinned: hashes of the tiny models' images (uint8, as
saved) recorded before the engine was split into a sweep core and family modules, checked
after. A change here means different images for the same parameters: that needs a new
``ENGINE_VERSION`` (backend/sweep.py) and new hashes, never a silent change.

Record (only when pixels are meant to change, with ENGINE_VERSION bumped)::

    .venv/bin/python tests/test_engine_pixels.py --record
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend_support import b64, depth_image, lines_image, use_test_home  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "engine_pixels.json"


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


def image_hash(array: np.ndarray) -> str:
    from archviz_controlnet.backend.engine import to_uint8

    return hashlib.sha256(np.ascontiguousarray(to_uint8(array)).tobytes()).hexdigest()[:24]


def versions() -> dict:
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__}


def compute(engine) -> dict:
    from test_backend_engine import make_plan

    out = {}
    for name, kwargs in CASES.items():
        plan = make_plan(**kwargs)
        images = engine.generate(plan, plan.images)
        out[name] = [image_hash(images[item.index]) for item in plan.images]
    return out


@pytest.fixture(scope="module")
def engine():
    with pytest.MonkeyPatch.context() as mp:
        use_test_home(mp)
        from archviz_controlnet.backend.engine import Engine

        torch.set_num_threads(1)
        yield Engine("cpu")


def test_sd_images_are_those_recorded_before_the_engine_split(engine):
    from archviz_controlnet.backend.sweep import ENGINE_VERSION

    saved = json.loads(DATA.read_text())
    if saved["versions"] != versions():
        pytest.skip(f"hashes recorded with {saved['versions']}, this environment has {versions()}")
    now = compute(engine)
    assert set(now) == set(saved["images"])
    changed = sorted(name for name in now if now[name] != saved["images"][name])
    assert not changed, (f"pixels changed for {changed} at ENGINE_VERSION {ENGINE_VERSION} "
                         f"(recorded at {saved['engine_version']})")
    assert saved["engine_version"] == ENGINE_VERSION  # same pixels: same engine version
    # the cases really differ from each other (a hash of a constant image would pass above)
    assert len({h for hashes in now.values() for h in hashes}) == sum(len(h) for h in now.values())


if __name__ == "__main__" and "--record" in sys.argv:
    os.environ.setdefault("ARCHVIZ_TEST_THREADS", "1")
    with pytest.MonkeyPatch.context() as mp:
        use_test_home(mp)
        from archviz_controlnet.backend.engine import Engine
        from archviz_controlnet.backend.sweep import ENGINE_VERSION

        torch.set_num_threads(1)
        images = compute(Engine("cpu"))
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps({"engine_version": ENGINE_VERSION, "versions": versions(), "images": images},
                               indent=1) + "\n")
    print(f"recorded {sum(len(v) for v in images.values())} image hashes in {DATA}")
