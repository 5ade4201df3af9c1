"""EXR writer: round trips through our reader and through OpenCV's (OpenEXR's) reader."""

import os
import subprocess
import sys

import numpy as np
import pytest

from archviz_controlnet.core.exr import encode_exr, read_exr, write_exr


def _channels(height=37, width=23, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "R": (rng.random((height, width)) * 100).astype(np.float32),
        "G": rng.standard_normal((height, width)).astype(np.float32),
        "B": np.arange(height * width, dtype=np.float32).reshape(height, width),
    }


@pytest.mark.parametrize("compression", ["NONE", "ZIP"])
def test_roundtrip_through_our_reader_is_exact(tmp_path, compression):
    rng = np.random.default_rng(3)
    channels = {
        "AI.R": rng.random((40, 24), dtype=np.float32),
        "AI.G": rng.random((40, 24), dtype=np.float32),
        "Depth.Z": np.where(rng.random((40, 24)) < 0.3, 1e10, rng.random((40, 24)) * 20).astype(np.float32),
        "Lines.V": (rng.random((40, 24)) < 0.1).astype(np.float32),
        "Seg.B": np.full((40, 24), 6 / 255, dtype=np.float32),
    }
    channels["AI.R"][0, 0] = np.inf
    channels["AI.G"][1, 1] = -0.0
    path = tmp_path / "x.exr"
    write_exr(path, channels, compression=compression)
    back = read_exr(str(path))
    assert sorted(back) == sorted(channels)
    for name, arr in channels.items():
        assert back[name].dtype == np.float32
        assert np.array_equal(back[name].view(np.uint32), arr.view(np.uint32)), name  # bit for bit
    assert [p.name for p in tmp_path.iterdir()] == ["x.exr"]  # no temporary file left


def test_zip_is_smaller_for_flat_images_and_raw_chunks_still_read(tmp_path):
    flat = {"Y": np.ones((64, 64), dtype=np.float32)}
    assert len(encode_exr(flat, "ZIP")) < len(encode_exr(flat, "NONE")) / 10
    noise = {"Y": np.random.default_rng(0).integers(0, 2 ** 32, size=(33, 17), dtype=np.uint32).view(np.float32)}
    # Random bits do not compress: every ZIP chunk (16 lines) is stored raw, as OpenEXR does,
    # so the file is the uncompressed one minus the 30 chunk headers and offsets it does not need.
    assert len(encode_exr(noise, "ZIP")) == len(encode_exr(noise, "NONE")) - 30 * 16
    path = tmp_path / "n.exr"
    write_exr(path, noise, "ZIP")
    assert np.array_equal(read_exr(str(path))["Y"].view(np.uint32), noise["Y"].view(np.uint32))


def test_header_has_the_required_attributes():
    data = encode_exr({"Z": np.zeros((3, 5), np.float32)}, "NONE")
    assert data[:4] == (20000630).to_bytes(4, "little") and data[4] == 2
    for attr in (b"channels\0chlist", b"compression\0compression", b"dataWindow\0box2i",
                 b"displayWindow\0box2i", b"lineOrder\0lineOrder", b"pixelAspectRatio\0float",
                 b"screenWindowCenter\0v2f", b"screenWindowWidth\0float"):
        assert attr in data, attr
    # after the header: 3 offsets, then 3 chunks of (y, size, 5 floats)
    header_end = len(data) - 3 * 8 - 3 * (8 + 5 * 4)
    offsets = np.frombuffer(data, dtype="<u8", count=3, offset=header_end)
    assert offsets.tolist() == [header_end + 24 + i * 28 for i in range(3)]


def test_long_channel_names_set_the_long_names_flag(tmp_path):
    name = "ArchVizVariantWithAVeryLongLayerName.R"
    path = tmp_path / "long.exr"
    write_exr(path, {name: np.ones((2, 2), np.float32)})
    assert path.read_bytes()[5] & 0x04  # version flag 0x400
    assert list(read_exr(str(path))) == [name]


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="at least one channel"):
        encode_exr({})
    with pytest.raises(ValueError, match="'B' has shape \\(2, 3\\)"):
        encode_exr({"A": np.zeros((2, 2)), "B": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="2-D"):
        encode_exr({"A": np.zeros((2, 2, 3))})
    with pytest.raises(ValueError, match="compression"):
        encode_exr({"A": np.zeros((2, 2))}, compression="PIZ")


@pytest.mark.parametrize("compression", ["NONE", "ZIP"])
def test_opencv_reads_what_we_write(tmp_path, compression):
    channels = _channels()
    path, ref = tmp_path / "x.exr", tmp_path / "got.npy"
    write_exr(path, channels, compression=compression)
    code = """
import sys, numpy as np, cv2
img = cv2.imread(sys.argv[1], cv2.IMREAD_UNCHANGED)
assert img is not None, "OpenCV could not read the file"
np.save(sys.argv[2], img)
"""
    # OpenCV reads its EXR switch at import time; a subprocess keeps it out of this one.
    subprocess.run([sys.executable, "-c", code, str(path), str(ref)], check=True,
                   env=dict(os.environ, OPENCV_IO_ENABLE_OPENEXR="1"))
    got = np.load(ref)
    assert got.dtype == np.float32 and got.shape == (37, 23, 3)
    for index, name in enumerate("BGR"):  # OpenCV returns BGR
        assert np.array_equal(got[:, :, index], channels[name]), name
