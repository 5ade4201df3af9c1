"""A real ``archviz serve --port 0`` process on loopback, tiny models, CPU.

One server for the whole module: sweeps end to end (files, metadata, manifest, contact
sheet), reproducibility through the API, resume, cancel, a queue, malformed requests, and a
missing real model, with the server alive after each."""

import json
import time

import numpy as np
import pytest

from backend_support import (TEST_HOME, b64, base_env, depth_image, lines_image, pixel_sha256, png_bytes,
                             read_png, running_server)


@pytest.fixture(scope="module")
def out_root(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def server(out_root):
    # Jobs may write only inside the output roots: the test folders are allowed explicitly.
    with running_server(["--output-root", str(out_root), "--output-root", str(TEST_HOME / "tmp-out")],
                        env=base_env()) as s:
        yield s


DEPTH, LINES = depth_image(), lines_image()


def sweep_job(out, **over):
    job = {
        "model": {"family": "tiny"},
        "controls": [
            {"type": "depth", "image": b64(DEPTH), "scale": 0.9, "start": 0.0, "end": 1.0},
            {"type": "lines", "image": b64(LINES), "scale": 0.6, "start": 0.2, "end": 1.0, "mode": "balanced"},
        ],
        "styles": ["modern", "industrial"],
        "seeds": [0, 1, 2],
        "steps": 2,
        "output_dir": str(out),
        "name_prefix": "Camera",
    }
    job.update(over)
    return job


def test_listening_line_and_health(server):
    assert server.stdout_lines[-1].strip() == f"archviz backend listening on {server.url}"
    assert server.url.startswith("http://127.0.0.1:")
    health = server.get("/v1/health").json()
    assert health["status"] == "ok" and health["device"] == "cpu" and health["dtype"] == "float32"
    assert health["version"] and isinstance(health["loaded_models"], list)


def test_presets_and_openapi(server):
    presets = server.get("/v1/presets").json()
    names = {p["name"] for p in presets["presets"]}
    assert len(names) >= 10 and {"modern", "japandi", "night-exterior"} <= names
    assert presets["errors"] == []
    spec = server.get("/openapi.json").json()
    for path in ("/v1/health", "/v1/presets", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/images/{n}",
                 "/v1/unload"):
        assert path in spec["paths"], path
    assert "delete" in spec["paths"]["/v1/jobs/{job_id}"]
    job_schema = spec["components"]["schemas"]["Job"]
    assert {"controls", "styles", "seeds", "steps", "cfg", "name_prefix", "skip_existing"} <= set(job_schema["properties"])
    assert spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Job"}


def test_two_control_sweep_end_to_end(server, out_root):
    out = out_root / "sweep"
    t0 = time.perf_counter()
    job_id = server.submit(sweep_job(out))
    status = server.wait(job_id)
    elapsed = time.perf_counter() - t0
    assert status["state"] == "done", status["error"]
    assert status["progress"]["images_done"] == status["progress"]["images_total"] == 6
    assert status["progress"]["steps_done"] == status["progress"]["steps_total"] == 2  # one batch of 6, 2 steps
    names = [f"Camera_{style}_s{seed}.png" for style in ("modern", "industrial") for seed in (0, 1, 2)]
    assert [i["file"] for i in status["images"]] == names
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["Camera_manifest.json", "Camera_contact_sheet.png"])

    presets = {p["name"]: p for p in server.get("/v1/presets").json()["presets"]}
    manifest = json.loads((out / "Camera_manifest.json").read_text())
    assert manifest["state"] == "done" and manifest["missing"] == [] and sorted(manifest["done"]) == sorted(names)
    assert manifest["styles"] == ["modern", "industrial"] and manifest["seeds"] == [0, 1, 2]
    assert manifest["contact_sheet"] == "Camera_contact_sheet.png"
    by_file = {e["file"]: e for e in manifest["images"]}

    tiles = {}
    for info in status["images"]:
        pixels, meta = read_png(out / info["file"])
        assert pixels.shape == (64, 64, 3) and pixels.std() > 5  # an image, not a flat fill
        preset = presets[info["style"]]
        assert meta["prompt"] == preset["prompt"] and meta["negative_prompt"] == preset["negative"]
        assert int(meta["seed"]) == info["seed"] and meta["steps"] == "2" and float(meta["cfg"]) == preset["cfg"]
        assert meta["scheduler"] == preset["scheduler"] and meta["style"] == info["style"]
        model = json.loads(meta["model"])
        assert model["family"] == "tiny" and model["base"].endswith("tiny/v1/sd15/base")
        assert [c.rsplit("/", 1)[-1] for c in model["controlnets"]] == ["controlnet-depth", "controlnet-lineart"]
        controls = json.loads(meta["controls"])
        assert [(c["type"], c["scale"], c["start"], c["end"], c["mode"]) for c in controls] == [
            ("depth", 0.9, 0.0, 1.0, "balanced"), ("lines", 0.6, 0.2, 1.0, "balanced")]
        assert [c["image_sha256"] for c in controls] == [pixel_sha256(DEPTH), pixel_sha256(LINES)]
        assert meta["params_sha256"] == info["params_sha256"] == by_file[info["file"]]["params_sha256"]
        assert by_file[info["file"]]["status"] == "done"
        served = server.get(f"/v1/jobs/{job_id}/images/{info['index']}")
        assert served.status_code == 200 and served.headers["content-type"] == "image/png"
        assert served.content == (out / info["file"]).read_bytes()
        tiles[info["file"]] = pixels
    assert len({v.tobytes() for v in tiles.values()}) == 6  # every (style, seed) differs

    sheet, meta = read_png(out / "Camera_contact_sheet.png")
    layout = json.loads(meta["archviz_tiles"])
    assert json.loads(meta["archviz_rows"]) == ["modern", "industrial"]
    assert json.loads(meta["archviz_columns"]) == [0, 1, 2]
    for file, (x, y, w, h) in layout.items():
        tile = sheet[y:y + h, x:x + w]
        k = w // 64
        assert np.array_equal(tile[::k, ::k], tiles[file])  # the right image in the right cell
    xs = sorted({b[0] for b in layout.values()})
    ys = sorted({b[1] for b in layout.values()})
    assert len(xs) == 3 and len(ys) == 2  # columns = seeds, rows = styles
    assert layout["Camera_industrial_s0.png"][1] > layout["Camera_modern_s0.png"][1]
    assert layout["Camera_modern_s2.png"][0] > layout["Camera_modern_s1.png"][0]
    labels = sheet[ys[0]:ys[0] + 160, :xs[0] - 4]
    assert (labels.min(axis=-1) < 100).sum() > 30  # the style name is written left of its row
    header = sheet[:ys[0] - 2, xs[0]:xs[0] + 160]
    assert (header.min(axis=-1) < 100).sum() > 30  # "seed 0" above its column
    assert server.get(f"/v1/jobs/{job_id}/contact_sheet").content == (out / "Camera_contact_sheet.png").read_bytes()
    print(f"cold-ish sweep 6 images: {elapsed:.2f}s")


def test_single_image_equals_the_one_in_the_sweep(server, out_root):
    sweep = server.wait(server.submit(sweep_job(out_root / "repro-sweep", steps=3)))
    single = server.wait(server.submit(sweep_job(out_root / "repro-one", steps=3, styles=["industrial"], seeds=[1])))
    assert sweep["state"] == single["state"] == "done"
    a, ma = read_png(out_root / "repro-sweep" / "Camera_industrial_s1.png")
    b, mb = read_png(out_root / "repro-one" / "Camera_industrial_s1.png")
    assert ma["params_sha256"] == mb["params_sha256"]
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float results agree to ~1e-6; PNG rounding aside
    other, _ = read_png(out_root / "repro-sweep" / "Camera_industrial_s2.png")
    assert np.abs(a.astype(int) - other.astype(int)).max() > 10


def test_skip_existing_resumes_a_cut_off_sweep(server, out_root):
    out = out_root / "resume"
    first = server.wait(server.submit(sweep_job(out, skip_existing=True)))
    assert first["state"] == "done" and not any(i["skipped"] for i in first["images"])
    kept = out / "Camera_modern_s1.png"
    lost = out / "Camera_industrial_s2.png"
    mtime = kept.stat().st_mtime_ns
    lost.unlink()
    second = server.wait(server.submit(sweep_job(out, skip_existing=True)))
    assert second["state"] == "done" and second["progress"]["images_done"] == 6
    skipped = {i["file"] for i in second["images"] if i["skipped"]}
    assert skipped == {f"Camera_{s}_s{k}.png" for s in ("modern", "industrial") for k in (0, 1, 2)} - {lost.name}
    assert lost.exists() and kept.stat().st_mtime_ns == mtime
    assert second["progress"]["steps_total"] == 2  # only the missing image went through the UNet
    manifest = json.loads((out / "Camera_manifest.json").read_text())
    assert sorted(e["status"] for e in manifest["images"]) == ["done"] + ["skipped"] * 5
    # other parameters -> nothing on disk matches, everything is made again
    third = server.wait(server.submit(sweep_job(out, skip_existing=True, cfg=3.0)))
    assert not any(i["skipped"] for i in third["images"])


def test_cancel_mid_job(server, out_root):
    job = sweep_job(out_root / "cancel", steps=400, seeds=list(range(12)), styles=["modern"])
    job_id = server.submit(job)
    deadline = time.time() + 60
    while server.get(f"/v1/jobs/{job_id}").json()["progress"]["steps_done"] < 3:
        assert time.time() < deadline
        time.sleep(0.02)
    r = server.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 200
    at_cancel = r.json()["progress"]["steps_done"]
    t0 = time.time()
    status = server.wait(job_id)
    assert status["state"] == "cancelled" and status["error"] is None
    assert status["progress"]["steps_done"] <= at_cancel + 1  # stops within one denoising step
    assert status["progress"]["steps_done"] < 400 < status["progress"]["steps_total"] == 800  # 12 seeds: batches of 8 + 4
    assert time.time() - t0 < 30  # generous: CI machines are shared
    manifest = json.loads((out_root / "cancel" / "Camera_manifest.json").read_text())
    assert manifest["state"] == "cancelled" and len(manifest["missing"]) == 12
    # the worker lives on
    assert server.wait(server.submit(sweep_job(out_root / "after-cancel", seeds=[0], styles=["modern"])))["state"] == "done"


def test_queue_of_several_jobs_runs_in_order_one_at_a_time(server, out_root):
    blocker = server.submit(sweep_job(out_root / "q0", steps=40, seeds=list(range(6)), styles=["modern"]))
    ids = [server.submit(sweep_job(out_root / f"q{k}", seeds=[k], styles=["japandi"])) for k in (1, 2, 3)]
    positions = [server.get(f"/v1/jobs/{i}").json()["queue_position"] for i in ids]
    assert positions == sorted(positions) and positions[-1] >= 2
    queued_cancel = server.submit(sweep_job(out_root / "q4", seeds=[9]))
    assert server.delete(f"/v1/jobs/{queued_cancel}").json()["state"] == "cancelled"  # never ran
    done = [server.wait(i) for i in [blocker, *ids]]
    assert [d["state"] for d in done] == ["done"] * 4
    for before, after in zip(done, done[1:]):
        assert before["finished"] <= after["started"]  # one worker, FIFO
    assert server.get(f"/v1/jobs/{queued_cancel}").json()["started"] is None
    assert not (out_root / "q4").exists()
    listed = {j["id"]: j["state"] for j in server.get("/v1/jobs").json()["jobs"]}
    assert listed[queued_cancel] == "cancelled" and listed[ids[-1]] == "done"


def _ok_job(**over):
    job = {"model": "tiny", "controls": [{"type": "depth", "image": b64(DEPTH)}], "styles": ["modern"], "seeds": [0],
           "steps": 2}
    job.update(over)
    return job


CORRUPT_PNG = png_bytes(DEPTH)[:60]  # valid signature and header, truncated data


@pytest.mark.parametrize("body, field", [
    (b"{this is not json", "body"),
    (b"[1, 2]", "job"),
    (json.dumps(_ok_job(controls=[{"type": "depth", "image": b64(b"hello, not a png")}])).encode(), "controls[0].image"),
    (json.dumps(_ok_job(controls=[{"type": "depth", "image": b64(CORRUPT_PNG)}])).encode(), "controls[0].image"),
    (json.dumps(_ok_job(controls=[{"type": "depth", "image": "@@@"}])).encode(), "controls[0].image"),
    (json.dumps(_ok_job(controls=[{"type": "depth", "image": b64(DEPTH)},
                                  {"type": "lines", "image": b64(lines_image(64, 48))}])).encode(), "controls[1].image"),
    (json.dumps(_ok_job(width=128)).encode(), "controls[0].image"),
    (json.dumps(_ok_job(controls=[{"type": "depth", "image": b64(depth_image(60, 64))}])).encode(), "controls[0].image"),
    (json.dumps(_ok_job(styles=["no-such-style"])).encode(), "styles[0].preset"),
    (json.dumps(_ok_job(controls=[{"type": "openpose", "image": b64(DEPTH)}])).encode(), "controls[0].type"),
    (json.dumps(_ok_job(steps=0)).encode(), "steps"),
    (json.dumps(_ok_job(steps=-5)).encode(), "steps"),
    (json.dumps(_ok_job()).replace('"steps": 2', '"steps": 2, "cfg": NaN').encode(), "cfg"),
    (json.dumps(_ok_job(cfg="high")).encode(), "cfg"),
    (json.dumps(_ok_job(scheduler="heun")).encode(), "scheduler"),
    (json.dumps(_ok_job(seeds=[])).encode(), "seeds"),
    (json.dumps(_ok_job(seeds=["a"])).encode(), "seeds[0]"),
    (json.dumps(_ok_job(controls=[{"type": "depth", "image": b64(DEPTH), "scale": -1}])).encode(), "controls[0].scale"),
    (json.dumps(_ok_job(controls=[{"type": "depth", "image": b64(DEPTH), "start": 0.9, "end": 0.1}])).encode(),
     "controls[0].end"),
    (json.dumps(_ok_job(model={"family": "tiny-sdxl"},
                        controls=[{"type": "seg", "image": b64(DEPTH)}])).encode(), "controls[0].type"),
    (json.dumps(_ok_job(model={"family": "gpt"})).encode(), "model.family"),
    (json.dumps(_ok_job(extra=1)).encode(), "extra"),
])
def test_malformed_jobs_get_4xx_naming_the_field(server, body, field):
    r = server.post("/v1/jobs", raw=body)
    assert 400 <= r.status_code < 500, r.text
    data = r.json()
    assert data["error"]["field"] == field, data
    assert field in data["detail"] and data["error"]["message"] == data["detail"]
    assert server.alive()


def test_bad_paths_and_server_survives(server):
    assert server.get("/v1/jobs/nope").status_code == 404
    assert "nope" in server.get("/v1/jobs/nope").json()["detail"]
    job_id = server.submit(_ok_job(output_dir=str(TEST_HOME / "tmp-out")))
    server.wait(job_id)
    r = server.get(f"/v1/jobs/{job_id}/images/abc")
    assert r.status_code == 422 and r.json()["error"]["field"] == "n"
    assert server.get(f"/v1/jobs/{job_id}/images/7").status_code == 404
    assert server.get(f"/v1/jobs/{job_id}/images/0").status_code == 200
    assert server.alive()


def test_missing_real_model_fails_as_data(server, out_root):
    status = server.wait(server.submit(_ok_job(model="sd15", output_dir=str(out_root / "real"))))
    assert status["state"] == "failed"
    assert status["error"]["type"] == "ModelNotFound"
    msg = status["error"]["message"]
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in msg and "'tiny'" in msg
    manifest = json.loads((out_root / "real" / "manifest.json").read_text())
    assert manifest["state"] == "failed" and manifest["error"]["type"] == "ModelNotFound"
    assert server.wait(server.submit(_ok_job(output_dir=str(out_root / "after-fail"))))["state"] == "done"


def test_preprocess_endpoint_and_preprocessed_control(server, out_root):
    photo = np.full((60, 100, 3), 90, np.uint8)
    photo[15:45, 30:70] = 220
    r = server.post("/v1/preprocess", {"detector": "canny", "image": b64(photo), "width": 64, "height": 64})
    assert r.status_code == 200, r.text
    edges, _ = read_png(__import__("base64").b64decode(r.json()["image"]))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) <= {0, 255} and edges.max() == 255
    r = server.post("/v1/preprocess", {"detector": "mlsd", "image": b64(photo), "width": 64, "height": 64})
    assert r.status_code == 409 and "mlsd_large_512_fp32.pth" in r.json()["detail"]
    r = server.post("/v1/preprocess", {"detector": "blur", "image": b64(photo), "width": 64, "height": 64})
    assert r.status_code == 422 and r.json()["error"]["field"] == "detector"
    job = _ok_job(controls=[{"type": "canny", "image": b64(photo), "preprocess": "canny"}], width=64, height=64,
                  output_dir=str(out_root / "photo"))
    assert server.wait(server.submit(job))["state"] == "done"


def test_unload_then_warm_vs_cold(server, out_root):
    job = sweep_job(out_root / "timing", seeds=[0, 1, 2, 3], styles=["modern"], skip_existing=False)  # remake each time
    server.wait(server.submit(job))
    assert server.get("/v1/health").json()["loaded_models"]
    unloaded = server.post("/v1/unload").json()
    used = {"controlnet-depth", "controlnet-lineart", "base"}
    assert used <= {p.rsplit("/", 1)[-1] for p in unloaded["unloaded"]} and unloaded["in_use"] == []
    assert server.get("/v1/health").json()["loaded_models"] == []
    t0 = time.perf_counter()
    cold = server.wait(server.submit(job))
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = server.wait(server.submit(job))
    warm_s = time.perf_counter() - t0
    assert cold["state"] == warm["state"] == "done"
    kinds = sorted(m["kind"] for m in server.get("/v1/health").json()["loaded_models"])
    assert kinds == ["base", "controlnet", "controlnet"]
    print(f"cold job {cold_s:.2f}s, warm job {warm_s:.2f}s, warm {4 / warm_s:.1f} images/s")


def test_token_protects_everything_but_health(tmp_path, monkeypatch):
    """In-process app (no second server process): the studio token check."""
    from fastapi.testclient import TestClient

    from archviz_controlnet.backend.engine.runner import Engine
    from archviz_controlnet.backend.server.app import create_app

    monkeypatch.setenv("ARCHVIZ_HOME", str(TEST_HOME))
    with TestClient(create_app(Engine("cpu"), token="s3cret")) as client:
        assert client.get("/v1/health").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        r = client.get("/v1/presets")
        assert r.status_code == 401 and r.json()["error"]["type"] == "Unauthorized"
        assert client.get("/v1/presets", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/v1/jobs", content=b"{}").status_code == 401
        ok = client.get("/v1/presets", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["presets"]


def test_listening_socket_turns_nagle_off_on_each_connection():
    """``archviz serve`` (and the bench's serve side) listen on ``tcp_socket()``: asyncio sets
    TCP_NODELAY only on accepted connections whose socket's protocol is IPPROTO_TCP, and
    without it a kept-alive client's every response body waits ~40 ms for a delayed ACK."""
    import asyncio
    import socket

    from archviz_controlnet.backend.server.connections import tcp_socket

    nodelay = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport):
            nodelay.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def accept_one():
        sock = tcp_socket()
        sock.bind(("127.0.0.1", 0))
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        await reader.read()  # the probe closes it
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(accept_one())
    assert len(nodelay) == 1 and nodelay[0] != 0, nodelay


def test_status_long_poll_answers_when_the_job_ends(server, out_root):
    """``GET /v1/jobs/{id}?wait=S`` holds the request until the job has ended (a run, or a
    cancel while queued), or S seconds passed; bad waits are one-line 422s naming the value."""
    import threading

    blocker = server.submit(sweep_job(out_root / "long-poll", steps=40, seeds=list(range(4)), styles=["modern"]))
    queued = server.submit(sweep_job(out_root / "long-poll-queued", seeds=[0], styles=["modern"]))
    # a short wait on a running job comes back after about the wait, not ended
    t0 = time.monotonic()
    short = server.get(f"/v1/jobs/{blocker}?wait=0.3").json()
    assert short["state"] in ("queued", "running") and time.monotonic() - t0 >= 0.3
    # a cancel while queued wakes the long poll on that job
    got = {}
    waiter = threading.Thread(target=lambda: got.update(server.request("GET", f"/v1/jobs/{queued}?wait=60").json()))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()  # still waiting: the job is queued
    assert server.delete(f"/v1/jobs/{queued}").json()["state"] == "cancelled"
    waiter.join(timeout=30)
    assert not waiter.is_alive() and got["state"] == "cancelled"
    # a long poll on the running job answers with its end, well before the 60 s
    ended = server.request("GET", f"/v1/jobs/{blocker}?wait=60", timeout=90).json()
    answered = time.time()
    assert ended["state"] == "done" and len(ended["images"]) == 4
    assert answered - ended["finished"] < 10, "the long poll did not wake when the job ended"
    # an ended job answers at once
    assert server.get(f"/v1/jobs/{blocker}?wait=60").json()["state"] == "done"
    for bad in ("abc", "-1", "61", "nan", "inf"):
        r = server.get(f"/v1/jobs/{blocker}?wait={bad}")
        assert r.status_code == 422, (bad, r.text)
        error = r.json()["error"]
        assert error["field"] == "wait" and repr(bad) in error["message"] and "\n" not in error["message"]
    assert server.get(f"/v1/jobs/nope?wait=1").status_code == 404
