"""Hardening, round three, against real ``archviz serve`` processes on loopback: a job
that names a folder inside the tiny store, picture uploads that would inflate to
gigabytes, custom ControlNet configs that disagree with their weights. Memory figures go
to the test log; assertions bound sizes, never times."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from archviz_controlnet.backend.models import tiny
from backend_support import TEST_HOME, b64, base_env, depth_image, running_server


def _tree_digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    """A model home of its own with the tiny SD 1.5 models (copied from the shared test
    home): a test that goes wrong here must not damage the other tests' tiny store."""
    old = os.environ.get("ARCHVIZ_HOME")
    os.environ["ARCHVIZ_HOME"] = str(TEST_HOME)
    try:
        src = {name: tiny.ensure_tiny(tiny.tiny_path("sd15", name)) for name in ("base", "controlnet-depth")}
    finally:
        if old is None:
            os.environ.pop("ARCHVIZ_HOME")
        else:
            os.environ["ARCHVIZ_HOME"] = old
    home = tmp_path_factory.mktemp("home")
    for name, folder in src.items():
        shutil.copytree(folder, home / "tiny" / tiny.TINY_VERSION / "sd15" / name)
    return home


def _job(out, **over):
    data = {"model": "tiny", "controls": [{"type": "depth", "image": b64(depth_image())}], "styles": ["modern"],
            "seeds": [0], "steps": 1, "output_dir": str(out)}
    data.update(over)
    return data


def test_a_job_cannot_make_the_server_rebuild_its_tiny_models(tiny_home, tmp_path):
    store = tiny_home / "tiny" / tiny.TINY_VERSION / "sd15"
    before = _tree_digest(store)
    env = {**base_env(tiny_home), "ARCHVIZ_OUTPUT_DIR": str(tmp_path)}
    with running_server(env=env) as server:
        for bad in (store / "base" / "unet", store / "controlnet-nothing"):
            job = _job(tmp_path / "bad", controls=[{"type": "depth", "image": b64(depth_image()), "model": str(bad)}])
            status = server.wait(server.submit(job))
            assert status["state"] == "failed", (bad, status)
            assert status["error"]["type"] == "ModelNotFound", status["error"]
            assert f"{bad} is not one of the tiny models" in status["error"]["message"], status["error"]
            assert "Traceback" not in status["error"]["message"]
        assert _tree_digest(store) == before  # nothing deleted, nothing rewritten
        assert server.post("/v1/unload").status_code == 200
        status = server.wait(server.submit(_job(tmp_path / "good")))
        assert status["state"] == "done", status


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def test_a_custom_controlnet_config_is_checked_against_its_weights_before_building(tiny_home, tmp_path):
    src = tiny_home / "tiny" / tiny.TINY_VERSION / "sd15" / "controlnet-depth"
    config = json.loads((src / "config.json").read_text())
    roots = tmp_path / "models"
    cases = {"deep": ("layers_per_block", 1000, "config.json's layers_per_block is 1000, but its weights have 2"),
             "wide": ("block_out_channels", [32, 100000], "config.json's block_out_channels[1] is 100000; at most "
                                                          "65536 is accepted"),
             "wider": ("block_out_channels", [32, 4096], "config.json's block_out_channels does not match the "
                                                         "weights: down_blocks.1.")}
    for name, (field, value, _words) in cases.items():
        folder = roots / name
        shutil.copytree(src, folder)
        (folder / "config.json").write_text(json.dumps({**config, field: value}))
    env = {**base_env(tiny_home), "ARCHVIZ_OUTPUT_DIR": str(tmp_path)}
    with running_server(["--model-root", str(roots)], env=env) as server:
        good = server.wait(server.submit(_job(tmp_path / "warm")))  # the base and the code paths warm
        assert good["state"] == "done", good
        before = _rss_mb(server.proc.pid)
        for name, (_field, _value, words) in cases.items():
            job = _job(tmp_path / name, controls=[{"type": "depth", "image": b64(depth_image()),
                                                   "model": str(roots / name)}])
            status = server.wait(server.submit(job))
            assert status["state"] == "failed" and status["error"]["type"] == "ModelNotFound", status
            message = status["error"]["message"]
            assert f"ControlNet '{roots / name}': {words}" in message, message
        grown = _rss_mb(server.proc.pid) - before
        print(f"custom ControlNet configs refused: server RSS {before:.0f} MB -> +{grown:.0f} MB")
        assert grown < 100
        assert server.alive()


def _status_mb(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":")) / 1024


def test_concurrent_picture_uploads_are_decoded_one_at_a_time_and_released(tmp_path):
    """Four uploads at once of a 12-megapixel RGBA PNG (48 MB of pixels, a few hundred KB
    on the wire): the server's peak (VmHWM) and what it keeps afterwards stay bounded."""
    import base64
    import io

    import httpx
    from PIL import Image

    w, h = 4000, 3000
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = 90
    rgba[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = (200, 60, 30, 255)
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG", compress_level=1)
    del rgba
    body = {"image": base64.b64encode(buf.getvalue()).decode("ascii"), "long_side": 512, "multiple": 8}
    with running_server(env=base_env()) as server:
        first = server.post("/v1/picture", body)  # warm: Pillow's code, the first answer's buffers
        assert first.status_code == 200 and (first.json()["width"], first.json()["height"]) == (512, 384)
        assert first.json()["source"] == {**first.json()["source"], "width": w, "height": h, "format": "PNG"}
        rss0, hwm0 = _status_mb(server.proc.pid, "VmRSS"), _status_mb(server.proc.pid, "VmHWM")
        answers = []

        def upload():
            answers.append(httpx.post(server.url + "/v1/picture", json=body, timeout=120).status_code)

        threads = [threading.Thread(target=upload) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=150)
        rss1, hwm1 = _status_mb(server.proc.pid, "VmRSS"), _status_mb(server.proc.pid, "VmHWM")
        print(f"4 concurrent 12 MP RGBA uploads ({len(buf.getvalue())} bytes each): server RSS {rss0:.0f} MB -> "
              f"{rss1:.0f} MB kept, peak {hwm0:.0f} MB -> {hwm1:.0f} MB")
        assert answers == [200] * 4
        assert hwm1 - rss0 < 400  # one decode at a time: ~2 x 48 MB of pixels, not 4 x 5 copies
        assert rss1 - rss0 < 100  # released after the answers
        # A header Pillow itself refuses as a decompression bomb: the README's limit, in its words.
        import struct
        import zlib

        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(bytes(4096))) + chunk(b"IEND", b""))
        refused = server.post("/v1/picture", {**body, "image": base64.b64encode(bomb).decode("ascii")})
        assert refused.status_code == 422 and refused.json()["error"]["message"] == (
            "image: PNG of 30000x30000 = 900 megapixels is over the limit of 36 megapixels"), refused.text
