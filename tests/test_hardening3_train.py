"""Hardening, round three: ``archviz train-controlnet`` with datasets a careless colleague
leaves behind (a metadata line that is a list, a target that is no image, a seed that is
text, a file name that is a number, a bomb header, a cut target), ``--out`` a file, and
the training log after a resume. Real commands on real PNGs, with the tiny base."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend_support import TEST_HOME

ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")


def _bomb(path: Path, width: int, height: int) -> None:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(4096))) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four aligned 64 px pairs (a target and its depth control), as archviz dataset lays them out."""
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    (root / "controls").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(root / "images" / f"v{i}.png")
        ramp = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[:, None], (1, 64))
        Image.fromarray(np.stack([ramp] * 3, -1)).save(root / "controls" / f"depth_v{i}.png")
        rows.append({"file_name": f"images/v{i}.png", "controls": {"depth": f"controls/depth_v{i}.png"},
                     "text": "a room", "seed": i, "name": f"v{i}"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def train(data, out, *extra, timeout=300):
    env = {**os.environ, "ARCHVIZ_HOME": str(TEST_HOME), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([ARCHVIZ, "train-controlnet", "--data", str(data), "--out", str(out), "--base", "tiny",
                           "--val-views", "0", "--validate-every", "0", *extra],
                          env=env, capture_output=True, text=True, timeout=timeout)


def one_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("archviz train-controlnet: "), proc.stderr[-3000:]
    return lines[0]


def _variant(data: Path, folder: Path, rows=None, files=None) -> Path:
    shutil.copytree(data, folder)
    if rows is not None:
        (folder / "metadata.jsonl").write_text("".join(r + "\n" for r in rows))
    for name, write in (files or {}).items():
        write(folder / name)
    return folder


def test_bad_datasets_and_out_are_one_line_before_any_model_loads(data, tmp_path):
    meta = (data / "metadata.jsonl").read_text().splitlines()
    row0 = json.loads(meta[0])
    whole = (data / "images" / "v0.png").read_bytes()
    cases = {
        "list": ({"rows": ["[1, 2]", *meta[1:]]}, "metadata.jsonl line 1 is a JSON list, not an object"),
        "text": ({"files": {"images/v0.png": lambda p: p.write_text("not a picture")}},
                 "metadata.jsonl line 1: target images/v0.png is not an image"),
        "seed": ({"rows": [json.dumps({**row0, "seed": "abc"}), *meta[1:]]},
                 "metadata.jsonl line 1: seed 'abc' is not a whole number"),
        "number": ({"rows": [json.dumps({**row0, "file_name": 5}), *meta[1:]]},
                   "metadata.jsonl line 1: file_name 5 is not a file name"),
        "bomb": ({"files": {"images/v0.png": lambda p: _bomb(p, 20000, 20000)}},
                 "metadata.jsonl line 1: target images/v0.png is 20000x20000 = 400 megapixels, over the limit of 36"),
        "cut": ({"files": {"images/v3.png": lambda p: p.write_bytes(whole[: len(whole) // 2])}},
                "metadata.jsonl line 4: target images/v3.png is damaged and cannot be decoded"),
        "escape": ({"rows": [json.dumps({**row0, "file_name": "../../etc/passwd"}), *meta[1:]]},
                   "metadata.jsonl line 1: file_name '../../etc/passwd' is outside the dataset folder"),
    }
    for name, (change, words) in cases.items():
        bad = _variant(data, tmp_path / name, **change)
        line = one_line(train(bad, tmp_path / f"net-{name}", "--steps", "1"))
        assert words in line, (name, line)
        assert not (tmp_path / f"net-{name}").exists()
    out = tmp_path / "a-file"
    out.write_text("not a folder")
    line = one_line(train(data, out, "--steps", "1"))
    assert f"--out {str(out)!r}: {out} is a file, not a folder" in line, line


def test_the_training_log_after_a_resume_has_each_step_once(data, tmp_path):
    out = tmp_path / "net"
    first = train(data, out, "--steps", "3", "--checkpoint-every", "2", "--batch", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    # A run killed after step 3 was logged, before its checkpoint was written: the state
    # on disk is the checkpoint of step 2 and a log up to step 3.
    checkpoints = out / "training" / "checkpoints"
    shutil.rmtree(checkpoints / "step-0000003")
    again = train(data, out, "--steps", "4", "--checkpoint-every", "2", "--batch", "2", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    log = [json.loads(line) for line in (out / "training" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]
