"""PNG writer and EXR reader, checked against independent implementations (Pillow, OpenCV)."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from archviz_controlnet.core.exr import ExrError, read_exr
from archviz_controlnet.core.png import encode_png, write_png


@pytest.mark.parametrize("shape", [(7, 5), (7, 5, 3), (7, 5, 4)])
def test_png_roundtrip_through_pillow(shape, tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / "x.png"
    write_png(str(path), arr, text={"seed": 7, "prompt": "a loft"})
    with Image.open(path) as im:
        assert np.array_equal(np.array(im), arr)
        assert im.text == {"seed": "7", "prompt": "a loft"}
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temporary file left


def test_png_rejects_bad_arrays():
    with pytest.raises(ValueError, match="float"):
        encode_png(np.zeros((2, 2), dtype=float))
    with pytest.raises(ValueError, match="shape"):
        encode_png(np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="0x2"):
        encode_png(np.zeros((2, 0), dtype=np.uint8))


@pytest.mark.parametrize("compression", ["NO", "ZIPS", "ZIP"])
@pytest.mark.parametrize("half", [False, True])
def test_exr_reader_matches_opencv_writer(tmp_path, compression, half):
    os.environ["OPENCV_IO_ENABLE_OPENEXR"] = "1"
    code = f"""
import os, sys, numpy as np, cv2
rng = np.random.default_rng(1)
img = (rng.random((37, 23, 3)) * 100).astype(np.float32)
params = [cv2.IMWRITE_EXR_COMPRESSION, cv2.IMWRITE_EXR_COMPRESSION_{compression}]
if {half}:
    params += [cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_HALF]
assert cv2.imwrite(sys.argv[1], img, params)
np.save(sys.argv[2], img)
"""
    exr, ref = tmp_path / "x.exr", tmp_path / "ref.npy"
    # OpenCV reads its EXR switch at import time; a subprocess keeps it out of this one.
    subprocess.run([sys.executable, "-c", code, str(exr), str(ref)], check=True,
                   env=dict(os.environ, OPENCV_IO_ENABLE_OPENEXR="1"))
    img = np.load(ref)
    channels = read_exr(str(exr))
    assert sorted(channels) == ["B", "G", "R"]
    got = np.stack([channels["B"], channels["G"], channels["R"]], axis=-1)  # OpenCV stores BGR
    tol = 0.05 if half else 0.0
    np.testing.assert_allclose(got, img, atol=tol, rtol=1e-3 if half else 0)


def test_exr_reader_refuses_other_files(tmp_path):
    path = tmp_path / "x.exr"
    path.write_bytes(b"not an exr at all")
    with pytest.raises(ExrError, match="not an OpenEXR"):
        read_exr(str(path))
