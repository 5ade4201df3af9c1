"""Shared helpers for the backend tests: control images, a real ``archviz serve`` process
on loopback, and small HTTP helpers. (Fixtures live in the test modules; conftest.py is
not ours to edit.)"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SIZE = 64

# The tiny models are deterministic and versioned, so every test run on a machine shares
# one build of them (built atomically, once) instead of rebuilding per module.
TEST_HOME = Path(os.environ.get("ARCHVIZ_TEST_HOME") or Path(tempfile.gettempdir()) / f"archviz-test-home-{os.getuid()}")


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def b64(array_or_bytes) -> str:
    data = array_or_bytes if isinstance(array_or_bytes, bytes) else png_bytes(array_or_bytes)
    return base64.b64encode(data).decode("ascii")


def beauty_image(w: int = SIZE, h: int = SIZE) -> np.ndarray:
    """A stand-in beauty pass: a warm floor, a grey wall and a blue window, with some texture."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (150, 150, 145)
    img[y > h * 0.6] = (160, 110, 70)
    img[(x > w * 0.55) & (x < w * 0.85) & (y > h * 0.15) & (y < h * 0.5)] = (90, 140, 220)
    return (img.astype(np.int16) + ((x * 7 + y * 13) % 9 - 4)[..., None]).clip(0, 255).astype(np.uint8)


def depth_image(w: int = SIZE, h: int = SIZE) -> np.ndarray:
    """A room-like inverse depth: bright (near) at the bottom, a dark back wall box."""
    y = np.linspace(0, 1, h)[:, None] * np.ones((1, w))
    d = (40 + 200 * y).astype(np.uint8)
    d[h // 4: h // 2, w // 4: 3 * w // 4] = 30
    return np.stack([d] * 3, axis=-1)


def lines_image(w: int = SIZE, h: int = SIZE) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[h // 4, w // 4: 3 * w // 4] = 255
    img[h // 2, :] = 255
    img[h // 4: h // 2, w // 4] = 255
    img[h // 4: h // 2, 3 * w // 4] = 255
    for i in range(h // 2, h):  # perspective floor lines
        img[i, max(0, w // 4 - (i - h // 2))] = 255
        img[i, min(w - 1, 3 * w // 4 + (i - h // 2))] = 255
    return img


def pixel_sha256(array: np.ndarray) -> str:
    h, w = array.shape[:2]
    digest = hashlib.sha256(f"{w}x{h}:RGB:".encode())
    digest.update(np.ascontiguousarray(array[..., :3]).tobytes())
    return digest.hexdigest()


def base_env(home: Path | None = None) -> dict:
    env = dict(os.environ)
    env.update({
        "ARCHVIZ_HOME": str(home or TEST_HOME),
        "HF_HUB_OFFLINE": "1",  # never reach for the network
        "HF_HOME": str((home or TEST_HOME) / "hf"),  # an empty HF cache: real models are missing
        "ARCHVIZ_PRESET_DIR": str((home or TEST_HOME) / "no-user-presets"),
        "PYTHONUNBUFFERED": "1",
        # Tiny models: intra-op threads only spin against each other (4x slower on a busy
        # 2-core CI machine), so the test server runs single-threaded.
        "OMP_NUM_THREADS": "1",
    })
    return env


def use_test_home(mp, home: Path | None = None) -> None:
    """In this process, through a MonkeyPatch: the model home, offline empty Hugging Face
    cache and empty user preset folder that :func:`base_env` gives a child process."""
    env = base_env(home)
    for key in ("ARCHVIZ_HOME", "HF_HUB_OFFLINE", "HF_HOME", "ARCHVIZ_PRESET_DIR"):
        mp.setenv(key, env[key])


#: The memory profile each big family gets on a CUDA card with this much free memory:
#: (free GB, profile name), the thresholds of backend/engine/memory.py as the tests of each
#: family (test_flux.py, test_zimage.py, test_qwen.py) hold them, in one place.
MEMORY_PROFILE_CHOICES = {
    "flux": [(80, "full"), (44, "full"), (30, "24gb"), (20, "24gb"), (15.5, "16gb"), (11, "12gb"), (7, "12gb")],
    "zimage": [(80, "full"), (31, "full"), (23, "24gb"), (15, "16gb"), (11, "12gb"), (6, "12gb")],
    "qwen": [(80, "full"), (66, "full"), (40, "24gb"), (30, "24gb"), (23.5, "16gb"), (15.5, "16gb"), (7, "16gb")],
}


def torch_threads() -> int:
    """torch threads for in-process engine tests: ARCHVIZ_TEST_THREADS, 1 by default (tiny
    ops on a shared machine only contend)."""
    return int(os.environ.get("ARCHVIZ_TEST_THREADS", "1"))


@contextmanager
def quiet_test_home():
    """A test module's home (:func:`use_test_home`), with diffusers' and transformers'
    logging and progress bars off."""
    import pytest
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    with pytest.MonkeyPatch.context() as mp:
        use_test_home(mp)
        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        yield


def cpu_engine():
    """An Engine on the CPU with :func:`torch_threads` torch threads."""
    import torch

    from archviz_controlnet.backend.engine.runner import Engine

    torch.set_num_threads(torch_threads())
    return Engine("cpu")


class Server:
    """``python -m archviz_controlnet.cli serve --port 0`` as a child process."""

    def __init__(self, proc: subprocess.Popen, url: str, log: list[str]):
        self.proc, self.url, self.log = proc, url, log

    def request(self, method: str, path: str, body=None, raw: bytes | None = None, timeout: float = 60):
        import httpx

        content = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"} if content is not None else {}
        return httpx.request(method, self.url + path, content=content, headers=headers, timeout=timeout)

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body=None, raw: bytes | None = None):
        return self.request("POST", path, body=body, raw=raw)

    def delete(self, path: str):
        return self.request("DELETE", path)

    def submit(self, job: dict) -> str:
        r = self.post("/v1/jobs", job)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def wait(self, job_id: str, timeout: float = 120, states=("done", "failed", "cancelled")) -> dict:
        deadline = time.time() + timeout
        ends = set(states) <= {"done", "failed", "cancelled"}  # then a long poll answers at the end
        while time.time() < deadline:
            query = f"?wait={min(10.0, max(0.0, deadline - time.time())):.2f}" if ends else ""
            status = self.request("GET", f"/v1/jobs/{job_id}{query}", timeout=30).json()
            if status["state"] in states:
                return status
            if not ends:
                time.sleep(0.05)
        raise AssertionError(f"job {job_id} still {status['state']} after {timeout}s; server log:\n" + "".join(self.log[-40:]))

    def alive(self) -> bool:
        return self.proc.poll() is None and self.get("/v1/health").status_code == 200


@contextmanager
def running_server(extra_args: list[str] | None = None, env: dict | None = None, timeout: float = 90):
    cmd = [sys.executable, "-m", "archviz_controlnet.cli", "serve", "--port", "0", "--device", "cpu",
           *(extra_args or [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or base_env(), cwd=str(REPO))
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    url = None
    lines: list[str] = []
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("archviz backend listening on "):
                url = line.strip().rsplit(" ", 1)[-1]
                break
        if url is None:
            raise AssertionError(f"server did not announce itself; stdout {lines!r}; stderr:\n" + "".join(log))
        server = Server(proc, url, log)
        server.stdout_lines = lines
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_png(path_or_bytes) -> tuple[np.ndarray, dict]:
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(src) as im:
        return np.asarray(im.convert("RGB")), dict(im.text)


def bench_both_baselines(tmp_path, capsys, config: str, steps: int, rows: str):
    """``archviz bench --config CONFIG`` on the CPU, 2 styles x 2 seeds, with both baselines:
    the engine's images equal the loop's and the batched call's in both cases. Returns
    (printed text, the JSON report, {(side, case): side})."""
    import json

    from archviz_controlnet import cli

    out = tmp_path / "report.json"
    rc = cli.main(["bench", "--config", config, "--device", "cpu", "--styles", "modern,industrial", "--seeds",
                   "0-1", "--steps", str(steps), "--threads", "1", "--rows", rows, "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    sides = {(s["side"], s["case"]): s for s in report["sides"]}
    assert set(sides) == {(side, case) for side in ("loop", "batched", "ours") for case in ("full", "early-depth")}
    for case in ("full", "early-depth"):
        ours = sides["ours", case]
        assert ours["images"] == 4 and ours["finite"]
        assert ours["max_diff_vs"]["loop"] <= 1e-3 and ours["max_diff_vs"]["batched"] <= 1e-3
    return text, report, sides


def read_only_folder(path):
    """A folder nobody may write: a read-only tmpfs when running as root (root ignores
    permission bits), mode 0555 otherwise. Returns a cleanup function."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        import pytest

        pytest.skip("running as root without mount: no read-only folder to try")
    return lambda: subprocess.run(["umount", str(path)], check=False)
