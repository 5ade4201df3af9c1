"""Video jobs on a remote backend (one whose output folder this side cannot use): the clip
routes (``GET /v1/jobs/{id}/clips`` and ``.../clips/{clip}/{file}``), their token and path
rules, and ``archviz video --backend URL`` downloading the clips into its own ``--out``.
A real ``archviz serve`` on loopback with the tiny Wan VACE model; its output folder is
another folder than the client's."""

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from backend_support import b64, base_env, read_png, running_server

TOKEN = "video-remote-token-0123456789"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """A backend with a token whose default output folder is its own."""
    backend_side = tmp_path_factory.mktemp("backend-side")
    env = base_env()
    env["ARCHVIZ_OUTPUT_DIR"] = str(backend_side)
    with running_server(["--token", TOKEN], env=env) as server:
        yield server, backend_side


def _client(server):
    from archviz_controlnet.core.client import Client

    return Client(server.url, token=TOKEN)


def _video_job(frames=5):
    from archviz_controlnet.backend.server.video import control_sha256
    from archviz_controlnet.core import video as V

    rng = np.random.default_rng(2)
    controls = [{"depth": b64((rng.random((64, 64, 3)) * 255).astype(np.uint8))} for _ in range(frames)]
    job = V.VideoJob(family="tiny-wan", styles=["modern"], seeds=[4], control_types=["depth"],
                     frames=list(range(1, frames + 1)), controls=controls,
                     control_sha256=[control_sha256(c) for c in controls])
    job.validate()
    return dict(job.__dict__)


def _wait(client, job_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.job(job_id)
        if status["state"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"video job {job_id} still {status['state']}")


@pytest.fixture(scope="module")
def finished(remote):
    server, backend_side = remote
    client = _client(server)
    job_id = client.submit_video(_video_job())["id"]
    status = _wait(client, job_id)
    assert status["state"] == "done", status
    return client, status


def test_a_remote_clip_is_listed_and_downloaded_into_the_local_folder(finished, tmp_path):
    from archviz_controlnet.core.video_fetch import local_clips

    client, status = finished
    listing = client.video_clips(status["id"])
    (clip,) = listing["clips"]
    names = [f"frame_{f:04d}.png" for f in range(1, 6)]
    assert clip["name"] == "modern_s4" and clip["done"] and clip["files"] == [*names, "metadata.json"]
    backend_folder = status["clips"][0]["folder"]
    local_out = tmp_path / "here"
    assert not str(backend_folder).startswith(str(local_out))

    fetched = []
    local = local_clips(client, status, str(local_out), on_file=lambda c, i, n: fetched.append((c, i, n)))
    folder = local_out / "modern_s4"
    assert local["clips"][0]["folder"] == str(folder) and local["clips"][0]["backend_folder"] == backend_folder
    assert [i for _c, i, _n in fetched] == [1, 2, 3, 4, 5, 6] and {n for *_x, n in fetched} == {6}
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["frame_files"] == names and meta["params_sha256"] == clip["params_sha256"]
    for name in names:
        ours, text = read_png(str(folder / name))
        theirs, _ = read_png(os.path.join(backend_folder, name))
        assert ours.std() > 1 and np.array_equal(ours, theirs) and text["params_sha256"] == clip["params_sha256"]
    assert (folder / "metadata.json").read_bytes() == open(os.path.join(backend_folder, "metadata.json"), "rb").read()
    # again: the frames there with this clip's hash are kept, only metadata.json comes again
    before = (folder / names[2]).stat().st_mtime_ns
    fetched.clear()
    local_clips(client, status, str(local_out), on_file=lambda c, i, n: fetched.append(i))
    assert fetched == [6] and (folder / names[2]).stat().st_mtime_ns == before


def test_clip_routes_need_the_token_and_serve_nothing_outside_the_clip(finished, remote):
    from archviz_controlnet.core.client import BackendError

    client, status = finished
    server, backend_side = remote
    job = status["id"]
    base = f"{server.url}/v1/jobs/{job}/clips"
    assert httpx.get(base).status_code == 401
    assert httpx.get(f"{base}/modern_s4/metadata.json").status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path, status_code, needle in (
            ("/modern_s4/..%2F..%2Fmetadata.json", 404, None),  # not even routed
            ("/..%2Fmodern_s4/metadata.json", 404, None),
            ("/../metadata.json", 404, None),
            ("/nope/metadata.json", 404, "has no clip 'nope' (its clips: modern_s4)"),
            ("/modern_s4/progress.json", 404, "has no file 'progress.json'"),
            ("/modern_s4/..", 404, None),
            ("/modern_s4/.", 404, None),
            ("/modern_s4/%2Fetc%2Fpasswd", 404, None),
            ("/modern_s4/%2E%2E", 404, None),
            ("/modern_s4/video.mp4", 404, "has no file"),
    ):
        code, body = _raw_get(server.url, f"/v1/jobs/{job}/clips{path}")
        assert code == status_code, (path, body)
        if needle:
            message = json.loads(body)["error"]["message"]
            assert needle in message and "\n" not in message
    r = httpx.get(f"{server.url}/v1/jobs/0123456789ab/clips", headers=auth)
    assert r.status_code == 404 and "not found" in r.json()["detail"]
    sweep = client.submit({"model": "tiny", "controls": [{"type": "depth", "image": b64(np.zeros((64, 64, 3), np.uint8))}],
                           "styles": ["modern"], "seeds": [0], "steps": 1})
    client.cancel(sweep)
    r = httpx.get(f"{server.url}/v1/jobs/{sweep}/clips/modern_s0/metadata.json", headers=auth)
    assert r.status_code == 404 and "is a sweep, not a video job" in r.json()["detail"]
    # a frame swapped for a link out of the clip's folder is not served (a listed name)
    folder = status["clips"][0]["folder"]
    secret = backend_side / "secret.png"
    os.replace(os.path.join(folder, "frame_0001.png"), secret)
    os.symlink(secret, os.path.join(folder, "frame_0001.png"))
    r = httpx.get(f"{base}/modern_s4/frame_0001.png", headers=auth)
    assert r.status_code == 404 and "not a file inside the clip's folder" in r.json()["detail"]
    os.replace(secret, os.path.join(folder, "frame_0001.png"))  # the link gone, the frame back
    assert client.clip_file(job, "modern_s4", "frame_0001.png")[:8] == b"\x89PNG\r\n\x1a\n"
    # a clip replaced by one made with other parameters: 409, and the client says which file
    meta_path = os.path.join(folder, "metadata.json")
    original = open(meta_path, "rb").read()
    meta = json.loads(original)
    with open(meta_path, "w") as fh:
        json.dump(dict(meta, params_sha256="0" * 64), fh)
    try:
        r = httpx.get(f"{base}/modern_s4/frame_0002.png", headers=auth)
        assert r.status_code == 409 and "other parameters" in r.json()["detail"]
        listing = client.video_clips(job)
        assert listing["clips"][0]["files"] == [] and "other parameters" in listing["clips"][0]["problem"]
        with pytest.raises(BackendError, match="clip modern_s4: .*other parameters"):
            from archviz_controlnet.core.video_fetch import local_clips

            local_clips(client, status, str(backend_side / "elsewhere"))
    finally:
        with open(meta_path, "wb") as fh:
            fh.write(original)


def _raw_get(url, path):
    """GET ``path`` exactly as written (http.client sends it as is: no dot segments removed)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


class _Hostile(BaseHTTPRequestHandler):
    """A backend that names a clip or file with a path in it."""

    listing = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        body = json.dumps(self.listing).encode() if self.path.endswith("/clips") else b"\x89PNG\r\n\x1a\nX"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("clip,files", [("../escaped", ["metadata.json"]),
                                        ("ok_s0", ["../../escaped.png", "metadata.json"]),
                                        ("ok_s0", ["/tmp/escaped.png", "metadata.json"]),
                                        ("..", ["metadata.json"])])
def test_a_hostile_backend_cannot_make_the_client_write_outside_its_folder(tmp_path, clip, files):
    from archviz_controlnet.core.client import BackendError, Client
    from archviz_controlnet.core.video_fetch import local_clips

    handler = type("H", (_Hostile,), {"listing": {"clips": [{"name": clip, "done": True, "params_sha256": "x",
                                                              "files": files}]}})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        out = tmp_path / "deep" / "out"
        status = {"id": "j", "state": "done", "clips": [{"folder": f"/srv/{clip}"}]}
        with pytest.raises(BackendError, match="is not a plain file name; nothing was written") as exc:
            local_clips(Client(f"http://127.0.0.1:{httpd.server_port}", retry_for=0), status, str(out))
        assert "\n" not in str(exc.value)
    finally:
        httpd.shutdown()
        httpd.server_close()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == []


def test_cli_with_a_remote_backend_downloads_the_clip_and_encodes_the_mp4_here(remote, tmp_path):
    from test_video import ANIMATED_SCENE

    server, backend_side = remote
    scene = tmp_path / "scene.blend"
    subprocess.run([sys.executable, "-c", ANIMATED_SCENE, TESTS, str(scene), "animated"], check=True,
                   capture_output=True, timeout=120)
    out = tmp_path / "local-out"
    env = base_env()
    env["ARCHVIZ_TOKEN"] = TOKEN
    proc = subprocess.run([sys.executable, "-m", "archviz_controlnet.cli", "video", str(scene), "--model", "tiny-wan",
                           "--frames", "1-5", "--seeds", "3", "--backend", server.url, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "modern_s3: file 6/6 downloaded" in proc.stdout
    folder = out / "modern_s3"
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["frame_files"] == [f"frame_{f:04d}.png" for f in range(1, 6)]
    assert all((folder / f).is_file() for f in meta["frame_files"]) and os.path.getsize(folder / "video.mp4") > 1000
    summary = json.loads((out / "video.json").read_text())
    assert summary["clips"][0]["folder"] == str(folder)
    # the backend wrote the clip into its own folder, not into --out
    made = [p for p in backend_side.glob("*/modern_s3/metadata.json")]
    assert len(made) == 1 and json.loads(made[0].read_text())["params_sha256"] == meta["params_sha256"]
    assert not (made[0].parent / "video.mp4").exists()
