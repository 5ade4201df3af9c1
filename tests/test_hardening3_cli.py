"""Hardening, round three, on the command line: ``archviz upscale`` with a decompression
bomb or hostile metadata, ``archviz sweep`` with pictures that are too large, cut or bomb
headers, edit texts that are not text and style names that are paths. Each is one line
and exit status 2 before any render or backend, against the real commands and real files."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from backend_support import TEST_HOME, b64, depth_image, running_server

ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")
ROOT = Path(__file__).resolve().parent.parent

SCENE_SCRIPT = r"""
import sys, bpy
sys.path.insert(0, sys.argv[1])
from blender_support import fresh_scene, box, plane, camera
fresh_scene(64, 64)
box("Wall", (0, 2, 0), (4, 0.2, 3))
plane("Floor", (0, 0, -1), 8)
camera("Camera", (0, -5, 0.5), (0, 0, 0))
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[2])
"""


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` RGB over a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(bytes(4096)))
                     + _chunk(b"IEND", b""))
    return path


def archviz_png(path: Path, meta) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("archviz", json.dumps(meta))
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(path, pnginfo=info)
    return path


def run(*args, timeout=120):
    env = {**os.environ, "ARCHVIZ_HOME": str(TEST_HOME), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([ARCHVIZ, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


def one_line(proc, command):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith(f"archviz {command}: "), proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "room.blend"
    subprocess.run([sys.executable, "-c", SCENE_SCRIPT, str(ROOT / "tests"), str(path)], check=True,
                   capture_output=True, timeout=120)
    return path


def test_upscale_refuses_a_bomb_header_and_hostile_metadata_in_one_line(tmp_path):
    scene = tmp_path / "room.blend"
    scene.write_bytes(b"BLENDER")  # read only after the image and its metadata passed
    good = {"model": {"family": "tiny"}, "prompt": "a room", "negative": "", "steps": 2, "cfg": 5.0, "seed": 0,
            "scheduler": "unipc", "controls": [{"type": "depth", "scale": 1.0}]}
    cases = {
        bomb_png(tmp_path / "bomb.png", 30000, 30000): "bomb.png: 30000x30000 = 900 megapixels is over the limit of 36",
        bomb_png(tmp_path / "big.png", 8000, 8000): "big.png: 8000x8000 = 64 megapixels is over the limit of 36",
        archviz_png(tmp_path / "one.png", {"params": 1}): "one.png: its archviz metadata's params is 1, not an object",
        archviz_png(tmp_path / "empty.png", {"params": {}}): "empty.png: its archviz metadata's params.model.family "
                                                             "is None, not one of",
        archviz_png(tmp_path / "ctl.png", {"params": {**good, "controls": [{"type": 3}]}}):
            "ctl.png: its archviz metadata's params.controls[0].type is 3, not one of",
        archviz_png(tmp_path / "seed.png", {"params": {**good, "seed": "abc"}}):
            "seed.png: its archviz metadata's params.seed is 'abc', not a number",
    }
    for image, words in cases.items():
        line = one_line(run("upscale", image, "--scale", "2", "--scene", scene), "upscale")
        assert words in line, line


def test_sweep_checks_every_picture_before_any_render_or_backend(scene, tmp_path):
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as fh:  # a 50 MB PNG: the signature, then nothing (sparse)
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.truncate(50 * 2**20)
    bomb = bomb_png(tmp_path / "bomb.png", 30000, 30000)
    whole = tmp_path / "whole.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(whole)
    half = tmp_path / "half.png"
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    base = ["--styles", "modern", "--seeds", "0", "--model", "tiny"]
    cases = [
        (["--image", huge], f"--image {huge} is 50.0 MiB; a picture may be at most 16 MiB"),
        (["--image", bomb], f"--image {bomb}: PNG of 30000x30000 = 900 megapixels is over the limit of 36 megapixels"),
        ([scene, "--init", bomb], f"--init {bomb}: PNG of 30000x30000 = 900 megapixels is over the limit"),
        ([scene, "--init", half], f"--init {half}: the PNG is cut short"),
    ]
    for i, (args, words) in enumerate(cases):
        out = tmp_path / f"out{i}"
        proc = run("sweep", *args, *base, "--out", out)
        line = one_line(proc, "sweep")
        assert words in line, line
        assert "rendering" not in proc.stdout and not (out / "passes").exists()


def test_bad_style_names_and_edit_texts_are_refused_before_any_work(scene, tmp_path):
    for styles, words in (("../../etc/passwd", "--styles: '../../etc/passwd' is not a preset name"),
                          ("modern,nowhere", "--styles: unknown preset 'nowhere' (known: ")):
        out = tmp_path / "out"
        proc = run("sweep", scene, "--styles", styles, "--seeds", "0", "--model", "tiny", "--out", out)
        assert words in one_line(proc, "sweep")
        assert "rendering" not in proc.stdout and not (out / "passes").exists()
    # A lone surrogate: what Python makes of bytes that are not UTF-8 in an argument.
    env = {**os.environ, "ARCHVIZ_HOME": str(TEST_HOME), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([ARCHVIZ.encode(), b"sweep", str(scene).encode(), b"--model", b"tiny-kontext", b"--edit",
                           b"make it \xff snowy", b"--seeds", b"0", b"--out", str(tmp_path / "e").encode()],
                          env=env, capture_output=True, timeout=120)
    proc.stderr = proc.stderr.decode("utf-8", "replace")
    proc.stdout = proc.stdout.decode("utf-8", "replace")
    line = one_line(proc, "sweep")
    assert "--edit: the edit text is not valid Unicode (a lone surrogate '\\udcff' at 8)" in line, line
    # A NUL, which no command line can carry: through the backend's API.
    job = {"model": "tiny-kontext", "controls": [], "init_image": b64(depth_image()),
           "styles": [{"name": "e", "edit": "make it\u0000 snowy"}], "seeds": [0], "steps": 1}
    with running_server() as server:
        answer = server.post("/v1/jobs", job)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == {"type": "ValidationError", "field": "styles[0].edit",
                                      "message": "styles[0].edit: the edit text contains a NUL character (at 7)"}
