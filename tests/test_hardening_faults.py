"""Faults (issue 6), each against real ``archviz serve`` processes on loopback, tiny models,
CPU: out of memory (a simulated budget), a full disk (RLIMIT_FSIZE on the server process:
a real OS-level write failure, no hooks), a port in use, two local backends at once (two
Blender instances), and a bounded soak of concurrent clients."""

import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time

import pytest

from backend_support import REPO, TEST_HOME, b64, base_env, depth_image, read_png, running_server

DEPTH = depth_image()
FAULTS_SURVIVED = []


def job(out, **over):
    data = {"model": "tiny", "controls": [{"type": "depth", "image": b64(DEPTH)}], "styles": ["modern"],
            "seeds": [0], "steps": 1, "output_dir": str(out)}
    data.update(over)
    return data


def test_out_of_memory_halves_the_batch_then_fails_as_data_and_releases_memory(tmp_path):
    with running_server(["--simulate-oom-above", "2", "--output-root", str(tmp_path)], env=base_env()) as server:
        status = server.wait(server.submit(job(tmp_path / "retry", seeds=list(range(6)), steps=2)))
        assert status["state"] == "done", status["error"]  # 6 -> 3 + 3 -> (1 + 2) + (1 + 2)
        assert sorted(i["seed"] for i in status["images"]) == list(range(6))
        assert "out of memory with 6 images per batch" in "".join(server.log)
        alone = server.wait(server.submit(job(tmp_path / "alone", seeds=[4], steps=2)))
        a, _ = read_png(tmp_path / "retry" / "modern_s4.png")
        b, _ = read_png(tmp_path / "alone" / "modern_s4.png")
        assert abs(a.astype(int) - b.astype(int)).max() <= 1  # the retried image is the same image
        FAULTS_SURVIVED.append("oom-retry")
    with running_server(["--simulate-oom-above", "0", "--output-root", str(tmp_path)], env=base_env()) as server:
        status = server.wait(server.submit(job(tmp_path / "fail", seeds=[0, 1])))
        assert status["state"] == "failed" and status["error"]["type"] == "OutOfMemoryError"
        assert "out of memory even with one image per batch" in status["error"]["message"]
        manifest = json.loads((tmp_path / "fail" / "manifest.json").read_text())
        assert manifest["state"] == "failed" and len(manifest["missing"]) == 2
        health = server.get("/v1/health").json()
        assert health["loaded_models"] and not any(m["in_use"] for m in health["loaded_models"])  # unpinned
        assert server.post("/v1/unload").json()["in_use"] == []
        assert server.get("/v1/health").json()["memory_used_mb"] == 0  # released
        assert server.alive()
        FAULTS_SURVIVED.append("oom-fail")


def _limit_file_size(nbytes):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def test_disk_full_while_writing_is_a_clear_error_and_leaves_no_corrupt_file(tmp_path):
    """RLIMIT_FSIZE makes every write past N bytes fail with EFBIG, as a full disk fails
    with ENOSPC (Python ignores SIGXFSZ, so the server sees the error). The manifest (~2
    KB) fits, a result PNG (~13 KB with its metadata) does not."""
    out = tmp_path / "full"
    out.mkdir()
    (out / "modern_s0.png").write_bytes(b"an older file that must survive")
    cmd = [sys.executable, "-m", "archviz_controlnet.cli", "serve", "--port", "0", "--device", "cpu",
           "--output-root", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=base_env(),
                            cwd=str(REPO), preexec_fn=_limit_file_size(6000))
    try:
        from backend_support import Server

        line = proc.stdout.readline()
        assert line.startswith("archviz backend listening on "), line + proc.stderr.read()
        server = Server(proc, line.strip().rsplit(" ", 1)[-1], [])
        threading.Thread(target=lambda: server.log.extend(iter(proc.stderr.readline, "")), daemon=True).start()
        status = server.wait(server.submit(job(out, seeds=[0, 1])))
        assert status["state"] == "failed" and status["error"]["type"] == "OutputWriteError"
        message = status["error"]["message"]
        assert f"disk full while writing {out / 'modern_s0.png'}" in message and "size limit" in message, message
        assert (out / "modern_s0.png").read_bytes() == b"an older file that must survive"  # untouched
        assert not list(out.glob(".*.tmp"))  # no half-written temporary file left
        manifest = json.loads((out / "manifest.json").read_text())  # the manifest is whole and says what happened
        assert manifest["state"] == "failed" and manifest["missing"] == ["modern_s0.png", "modern_s1.png"]
        # images are written beside the next batch (backend/server/image_writer.py): a failed
        # write still stops the engine, which does not denoise the batches after it
        status = server.wait(server.submit(job(tmp_path / "full-batches", seeds=list(range(12)), max_batch=1,
                                               steps=4, name_prefix="b")))
        assert status["state"] == "failed" and status["error"]["type"] == "OutputWriteError", status["error"]
        assert "b_modern_s0.png" in status["error"]["message"], status["error"]["message"]
        assert status["progress"]["steps_done"] < status["progress"]["steps_total"] == 48, status["progress"]
        assert server.alive()
        FAULTS_SURVIVED.append("disk-full")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_port_in_use_is_a_clear_error_and_port_0_picks_another():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "archviz_controlnet.cli", "serve", "--port", str(port),
                               "--device", "cpu"], capture_output=True, text=True, timeout=60, env=base_env())
        assert proc.returncode == 2
        assert f"cannot bind 127.0.0.1:{port}: Address already in use" in proc.stderr and "--port 0" in proc.stderr
    FAULTS_SURVIVED.append("port-in-use")


TWO_BLENDERS = r"""
import json, os, sys, time
from archviz_controlnet.core.client import BackendProcess, Client
out = sys.argv[1]
proc = BackendProcess(device="cpu", output_roots=[out])
proc.start()
client = Client(proc.url)
job = json.loads(sys.stdin.readline())
job["output_dir"] = out
job_id = client.submit(job)
while client.job(job_id)["state"] not in ("done", "failed", "cancelled"):
    time.sleep(0.05)
status = client.job(job_id)
print(json.dumps({"url": proc.url, "pid": proc.proc.pid, "state": status["state"],
                  "files": [i["file"] for i in status["images"]]}), flush=True)
proc.stop()
"""


def test_two_blender_instances_each_start_their_own_backend(tmp_path):
    """Two processes (as two Blender instances would) each start a local backend at once:
    each gets its own free port and its own results; each backend stops with its process."""
    parents = []
    for k in range(2):
        p = subprocess.Popen([sys.executable, "-c", TWO_BLENDERS, str(tmp_path / f"blender{k}")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=base_env())
        p.stdin.write(json.dumps(job(None, seeds=[k, k + 10])) + "\n")
        p.stdin.flush()
        parents.append(p)
    results = [json.loads(p.communicate(timeout=180)[0].strip().splitlines()[-1]) for p in parents]
    assert results[0]["url"] != results[1]["url"] and results[0]["pid"] != results[1]["pid"]
    for k, r in enumerate(results):
        assert r["state"] == "done" and r["files"] == [f"modern_s{k}.png", f"modern_s{k + 10}.png"]
        assert sorted(f.name for f in (tmp_path / f"blender{k}").glob("*.png")) == sorted(
            r["files"] + ["contact_sheet.png"])
        with pytest.raises(ProcessLookupError):  # stopped with its parent
            for _ in range(100):
                os.kill(r["pid"], 0)
                time.sleep(0.1)
    FAULTS_SURVIVED.append("two-instances")


CLIENTS, JOBS_PER_CLIENT = 4, 10


def test_soak_concurrent_clients_lose_and_duplicate_nothing(tmp_path):
    """4 clients x 10 small jobs at once (32 px, 1 step, 1-3 seeds each; every 7th job names
    a missing model and must fail with a reason, every 9th is cancelled). Every job ends
    done, failed-with-reason or cancelled; every image of every done job is on disk exactly
    once with its own parameters."""
    from archviz_controlnet.core.client import BackendError, Client

    small = b64(depth_image(32, 32))
    outcomes, errors = [], []
    with running_server(["--output-root", str(tmp_path)], env=base_env()) as server:
        def client_thread(c):
            client = Client(server.url, timeout=60)
            try:
                for k in range(JOBS_PER_CLIENT):
                    n = c * JOBS_PER_CLIENT + k
                    spec = job(tmp_path / "soak", controls=[{"type": "depth", "image": small}],
                               seeds=[n * 10 + s for s in range(1 + n % 3)], name_prefix=f"c{c}j{k}",
                               styles=["modern"] if n % 2 else ["japandi"])
                    if n % 7 == 3:
                        spec["model"] = {"family": "sd15", "base": "acme/missing-model"}
                    job_id = client.submit(spec)
                    if n % 9 == 5:
                        client.cancel(job_id)
                    outcomes.append((n, job_id, spec))
            except BackendError as exc:  # pragma: no cover - reported below
                errors.append(str(exc))

        threads = [threading.Thread(target=client_thread, args=(c,)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors and len(outcomes) == CLIENTS * JOBS_PER_CLIENT
        expected_files, states = [], {}
        for n, job_id, spec in outcomes:
            status = server.wait(job_id, timeout=300)
            states[status["state"]] = states.get(status["state"], 0) + 1
            if n % 7 == 3 and status["state"] != "cancelled":
                assert status["state"] == "failed" and "acme/missing-model" in status["error"]["message"]
            elif status["state"] == "failed":
                pytest.fail(f"job {n} failed: {status['error']}")
            elif status["state"] == "done":
                files = [i["file"] for i in status["images"]]
                assert len(files) == len(spec["seeds"])
                expected_files += files
            else:
                assert status["state"] == "cancelled" and n % 9 == 5
        assert server.alive()
    on_disk = sorted(p.name for p in (tmp_path / "soak").glob("*.png") if "contact_sheet" not in p.name)
    assert len(expected_files) == len(set(expected_files))  # no duplicates reported
    assert sorted(expected_files) == on_disk  # nothing lost, nothing extra
    for name in on_disk[:: max(1, len(on_disk) // 8)]:
        _, meta = read_png(tmp_path / "soak" / name)
        assert json.loads(meta["archviz"])["file"] == name
        assert int(meta["seed"]) == int(name.rsplit("_s", 1)[1][:-4])
    print(f"soak: {CLIENTS * JOBS_PER_CLIENT} jobs {states}, {len(on_disk)} images, 0 lost, 0 duplicated")
    FAULTS_SURVIVED.append("soak")


def test_figures():
    print(f"faults survived: {len(FAULTS_SURVIVED)} {FAULTS_SURVIVED}")
    assert len(FAULTS_SURVIVED) == 6
