"""Bad input and access against a real ``archviz serve`` (issue 6): each bad request gets
a 4xx naming the problem and the server stays up; output folders and model paths stay
inside their roots; no pickle is ever unpickled; bodies are bounded; tokens are checked.
Tiny models, CPU, loopback."""

import base64
import json
import os
import struct
import zlib

import numpy as np
import pytest

from archviz_controlnet.core import jobs as J
from backend_support import TEST_HOME, b64, base_env, depth_image, lines_image, png_bytes, read_png, running_server

DEPTH = depth_image()
BAD_INPUTS_TRIED = []


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header(w, h, depth=8, colour=2, idat=b""):
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(idat)) + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("hardening")
    out, models, outside = base / "out", base / "models", base / "outside"
    for p in (out, models, outside):
        p.mkdir()
    return {"out": out, "models": models, "outside": outside}


@pytest.fixture(scope="module")
def server(roots):
    with running_server(["--output-root", str(roots["out"]), "--model-root", str(roots["models"])],
                        env=base_env()) as s:
        yield s


def job(out, **over):
    data = {"model": "tiny", "controls": [{"type": "depth", "image": b64(DEPTH)}], "styles": ["modern"],
            "seeds": [0], "steps": 1, "output_dir": str(out)}
    data.update(over)
    return data


def _bad(server, body, field, words, status=422):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = server.post("/v1/jobs", raw=raw)
    BAD_INPUTS_TRIED.append(field)
    assert r.status_code == status, (r.status_code, r.text[:400])
    data = r.json()
    if field is not None:
        assert data["error"]["field"] == field, data
    for w in words:
        assert w in data["detail"], (w, data["detail"][:400])
    assert len(r.content) < 2000  # the bad payload is not echoed back
    assert server.get("/v1/health").status_code == 200  # the server stays up
    return data


def test_bad_images_sizes_and_numbers(server, roots):
    out = roots["out"] / "bad"
    good = png_bytes(DEPTH)
    cases = [
        (job(out, controls=[{"type": "depth", "image": b64(good[:45])}]), "controls[0].image", ["cannot decode PNG"]),
        (job(out, controls=[{"type": "depth", "image": b64(good[:20])}]), "controls[0].image", ["truncated PNG"]),
        (job(out, controls=[{"type": "depth", "image": b64(good[:33] + os.urandom(200) + good[-12:])}]),
         "controls[0].image", ["cannot decode PNG"]),
        (job(out, controls=[{"type": "depth", "image": b64(_png_header(50_000, 50_000))}]), "controls[0].image",
         ["2500 megapixels", "limit of 36 megapixels"]),
        (job(out, controls=[{"type": "depth", "image": "A" * (J.MAX_PNG_BYTES * 4 // 3 + 8)}]), "controls[0].image",
         ["larger than the limit of 16 MiB"]),
        (job(out, controls=[{"type": "depth", "image": b64(_png_header(0, 0))}]), "controls[0].image", ["zero size"]),
        (job(out, controls=[{"type": "depth", "image": b64(_png_header(64, 64, depth=16, colour=0,
                                                                      idat=b"\0" * (64 * 129)))}]),
         "controls[0].image", ["16-bit"]),
        (job(out, controls=[{"type": "depth", "image": b64(depth_image(60, 64))}]), "controls[0].image",
         ["width 60 is not a multiple of 8"]),
        (job(out, width=0), "width", ["between 32 and 4096"]),
        (job(out, height=100), "height", ["multiple of 8"]),
        (job(out, controls=[{"type": "depth", "image": b64(DEPTH)}, {"type": "lines", "image": b64(lines_image(64, 32))}]),
         "controls[1].image", ["64x32 but controls[0].image is 64x64"]),
        (json.dumps(job(out)).replace('"steps": 1', '"steps": 1, "cfg": NaN').encode(), "cfg", ["finite"]),
        (json.dumps(job(out)).replace('"steps": 1', '"steps": 1, "cfg": Infinity').encode(), "cfg", ["finite"]),
        (json.dumps(job(out, controls=[{"type": "depth", "image": b64(DEPTH), "scale": 1}])).replace(
            '"scale": 1', '"scale": -Infinity').encode(), "controls[0].scale", ["finite"]),
        (job(out, steps=-1), "steps", ["between 1 and 500"]),
        (job(out, steps=10**12), "steps", ["between 1 and 500"]),
        (job(out, steps=1.5), "steps", ["expected an integer"]),
        (job(out, seeds=[2**32]), "seeds[0]", ["between 0 and 4294967295"]),
        (job(out, seeds=[-1]), "seeds[0]", ["between 0 and 4294967295"]),
        (job(out, seeds=[2**63 - 1]), "seeds[0]", ["between 0 and 4294967295"]),
        (job(out, styles=["no-such-preset"]), "styles[0].preset", ["unknown preset 'no-such-preset'", "modern"]),
        (job(out, controls=[{"type": "openpose", "image": b64(DEPTH)}]), "controls[0].type", ["unknown value"]),
        (job(out, scheduler="heun"), "scheduler", ["unknown value 'heun'", "unipc"]),
        (job(out, model={"family": "sd3"}), "model.family", ["unknown value 'sd3'"]),
        (b'{"model": "tiny", "styles": ["\xff\xfe"]}', "body", ["not UTF-8"]),
        (b"\x89PNG\r\n\x1a\n", "body", ["not UTF-8"]),
        (b"[" * 50_000, "body", ["nested too deeply"]),
        (json.dumps(job(out, styles=[{"name": "x", "prompt": "a\ud800"}])).encode(), "styles[0].prompt",
         ["lone surrogate"]),
        (job(out, styles=[{"name": "x", "prompt": "p" * 5000}]), "styles[0].prompt", ["longer than 4000"]),
        (job(out, name_prefix="../../etc"), "name_prefix", ["path separators"]),
    ]
    for body, field, words in cases:
        _bad(server, body, field, words)


def test_unknown_model_id_fails_as_data_naming_it(server, roots):
    status = server.wait(server.submit(job(roots["out"] / "nomodel",
                                           model={"family": "sd15", "base": "acme/no-such-model"})))
    BAD_INPUTS_TRIED.append("model.base (unknown id)")
    assert status["state"] == "failed" and status["error"]["type"] == "ModelNotFound"
    assert "acme/no-such-model" in status["error"]["message"]
    assert server.alive()


def test_long_prompt_is_cut_with_a_warning_in_status_manifest_and_metadata(server, roots):
    out = roots["out"] / "long"
    words = " ".join(f"word{i}" for i in range(150))
    status = server.wait(server.submit(job(out, styles=[{"name": "wordy", "prompt": words}])))
    assert status["state"] == "done", status["error"]
    assert len(status["warnings"]) == 1 and "prompt is" in status["warnings"][0]
    assert "the text encoder reads 77" in status["warnings"][0] and "styles[0] (wordy)" in status["warnings"][0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["warnings"] == status["warnings"]
    _, meta = read_png(out / "wordy_s0.png")
    assert json.loads(meta["warnings"]) == status["warnings"]
    short = server.wait(server.submit(job(roots["out"] / "short", styles=[{"name": "s", "prompt": "a room"}])))
    assert short["state"] == "done" and short["warnings"] == []  # (the tiny tokenizer splits words finely)


def test_output_folders_stay_inside_the_roots(server, roots):
    out = roots["out"]
    link = out / "escape"
    if not link.exists():
        link.symlink_to(roots["outside"], target_is_directory=True)
    for bad in ["/etc", str(roots["outside"]), str(out / ".." / "outside"), "../../../tmp/x",
                str(link / "sub"), "~/archviz-out"]:
        _bad(server, job(bad), "output_dir", ["outside the server's output roots", "--output-root"])
    assert not any(roots["outside"].iterdir())
    # a relative folder is taken inside the default output root
    status = server.wait(server.submit(job("relative/ok")))
    assert status["state"] == "done"
    assert status["output_dir"] == str((TEST_HOME / "outputs" / "relative" / "ok").resolve())


def test_model_paths_stay_inside_the_roots_and_pickle_is_never_loaded(server, roots, tmp_path):
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle

    payload = pickle.dumps(Evil())
    for where in (roots["outside"], roots["models"]):
        (where / "evil.ckpt").write_bytes(payload)
        cn = where / "cn"
        cn.mkdir(exist_ok=True)
        (cn / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
        (cn / "diffusion_pytorch_model.bin").write_bytes(payload)

    for field, over in [
        ("model.base", {"model": {"family": "tiny", "base": "/etc"}}),
        ("model.base", {"model": {"family": "tiny", "base": "../../etc/passwd"}}),
        ("model.vae", {"model": {"family": "tiny", "vae": str(roots["outside"] / "cn")}}),
        ("model.controlnets.depth", {"model": {"family": "tiny", "controlnets": {"depth": str(roots["outside"] / "evil.ckpt")}}}),
        ("controls[0].model", {"controls": [{"type": "depth", "image": b64(DEPTH), "model": str(roots["models"] / ".." / "outside" / "cn")}]}),
        ("controls[0].model", {"controls": [{"type": "depth", "image": b64(DEPTH), "model": "relative/evil.ckpt"}]}),
    ]:
        _bad(server, job(roots["out"] / "m", **over), field, [])
    # Inside a model root, pickle weights are refused unless the operator allowed that model
    for ref in (str(roots["models"] / "evil.ckpt"), str(roots["models"] / "cn")):
        status = server.wait(server.submit(job(roots["out"] / "m2", model={"family": "tiny", "controlnets": {"depth": ref}})))
        BAD_INPUTS_TRIED.append("pickle weights")
        assert status["state"] == "failed", status
        assert ref in status["error"]["message"], status["error"]
    assert "--allow-pickle" in server.wait(server.submit(job(
        roots["out"] / "m3", model={"family": "tiny", "controlnets": {"depth": str(roots["models"] / "evil.ckpt")}})))[
        "error"]["message"]
    assert not marker.exists()  # nothing was ever unpickled
    assert server.alive()


def test_pickle_allowed_per_model_only():
    from archviz_controlnet.backend.models import registry as models

    old = os.environ.get("ARCHVIZ_ALLOW_PICKLE")
    try:
        os.environ["ARCHVIZ_ALLOW_PICKLE"] = os.pathsep.join(["/models/trusted.ckpt", "acme/old-model"])
        assert models.pickle_allowed("/models/trusted.ckpt") and models.pickle_allowed("acme/old-model")
        assert not models.pickle_allowed("/models/other.ckpt") and not models.pickle_allowed("acme/other")
        assert models._use_safetensors("/models/other.ckpt") is True
        del os.environ["ARCHVIZ_ALLOW_PICKLE"]
        assert not models.pickle_allowed("/models/trusted.ckpt")
    finally:
        if old is None:
            os.environ.pop("ARCHVIZ_ALLOW_PICKLE", None)
        else:
            os.environ["ARCHVIZ_ALLOW_PICKLE"] = old


def test_body_limit_token_and_health_in_process(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from archviz_controlnet.backend.engine.runner import Engine
    from archviz_controlnet.backend.server.app import create_app

    monkeypatch.setenv("ARCHVIZ_HOME", str(TEST_HOME))
    token = "correct-horse-battery-staple-42"
    app = create_app(Engine("cpu"), token=token, max_body_bytes=100_000)
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        # 401 with nothing that tells a missing token from a wrong one
        answers = [client.get("/v1/jobs", headers=h) for h in
                   ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {token}x"},
                    {"Authorization": token}, {"Authorization": "Basic " + base64.b64encode(b"a:b").decode()})]
        assert {r.status_code for r in answers} == {401}
        assert len({r.content for r in answers}) == 1 and answers[0].json()["detail"] == "unauthorized"
        assert answers[0].headers["www-authenticate"] == "Bearer"
        assert client.post("/v1/jobs", content=b"x" * 500_000).status_code == 401  # refused before reading
        assert client.get("/v1/health").json() == {"status": "ok", "version": client.get("/v1/health").json()["version"]}
        full = client.get("/v1/health", headers=auth).json()
        assert full["device"] == "cpu" and "pid" in full
        assert client.get("/v1/jobs", headers=auth).status_code == 200
        # body limit: declared, and streamed without a length
        r = client.post("/v1/jobs", content=b"x" * 200_000, headers=auth)
        assert r.status_code == 413 and "limit of" in r.json()["detail"]

        def stream():
            for _ in range(40):
                yield b"y" * 10_000

        r = client.post("/v1/jobs", content=stream(), headers=auth)
        assert r.status_code == 413 and r.json()["error"]["type"] == "RequestTooLarge"
        r = client.post("/v1/preprocess", content=stream(), headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 413
        assert client.get("/v1/health", headers=auth).status_code == 200
    BAD_INPUTS_TRIED.extend(["401"] * 6 + ["413"] * 3)


def test_serve_refuses_a_public_bind_without_token():
    import subprocess
    import sys

    env = base_env()
    env.pop("ARCHVIZ_TOKEN", None)
    proc = subprocess.run([sys.executable, "-m", "archviz_controlnet.cli", "serve", "--host", "0.0.0.0", "--port", "0",
                           "--device", "cpu"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "refusing to listen on 0.0.0.0 without a token" in proc.stderr
    assert "listening on http" not in proc.stdout


def test_figures():
    assert len(BAD_INPUTS_TRIED) >= 40
    print(f"bad inputs tried against the server: {len(BAD_INPUTS_TRIED)}")
