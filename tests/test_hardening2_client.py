"""The client side of round two, against real ``archviz serve`` processes on loopback:
transient failures are retried within a bounded time (real SIGSTOP), a client that gives
up cancels its job on the server, a killed backend (real SIGKILL) leaves a count of what
is on disk, and a refused token says so."""

import json
import signal
import threading
import time

import pytest

from backend_support import b64, base_env, depth_image, running_server

from archviz_controlnet.core.client import BackendAuthError, BackendUnreachable, Client
from archviz_controlnet.core.sweep import SweepGaveUp, SweepRunner

DEPTH = depth_image()


def job(out, **over):
    data = {"model": "tiny", "controls": [{"type": "depth", "image": b64(DEPTH)}], "styles": ["modern"],
            "seeds": [0], "steps": 1, "output_dir": str(out), "name_prefix": "Cam"}
    data.update(over)
    return data


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("client2")


def _run_in_thread(runner):
    result = {}

    def target():
        try:
            result["state"] = runner.run(lambda event: None)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def test_a_stopped_server_is_waited_for_and_the_sweep_finishes(root):
    with running_server(["--output-root", str(root)]) as server:
        client = Client(server.url, timeout=1.0, retry_for=60)
        runner = SweepRunner(client, [("Cam", job(root / "pause", seeds=list(range(4)), steps=30))], str(root / "pause"),
                             poll_interval=0.1)
        thread, result = _run_in_thread(runner)
        server.wait(runner.tracked[0].job_id or _wait_id(runner), states=("running",))
        server.proc.send_signal(signal.SIGSTOP)  # polls time out or are refused for 3 s
        time.sleep(3)
        server.proc.send_signal(signal.SIGCONT)
        thread.join(120)
        assert result.get("state") == "done", result
        assert client.retries >= 1  # the failed polls were retried, not the end of the sweep
        assert len(runner.images) == 4


def _wait_id(runner, timeout=30):
    deadline = time.time() + timeout
    while not runner.tracked[0].job_id and time.time() < deadline:
        time.sleep(0.02)
    return runner.tracked[0].job_id


def test_a_client_that_times_out_cancels_its_job_and_the_manifest_says_why(root):
    out = root / "timeout"
    with running_server(["--output-root", str(root)]) as server:
        runner = SweepRunner(Client(server.url), [("Cam", job(out, seeds=list(range(4)), steps=400))], str(out),
                             timeout=3)
        with pytest.raises(SweepGaveUp, match="did not finish within 3 s"):
            runner.run(lambda event: None)
        status = server.wait(runner.tracked[0].job_id)
        assert status["state"] == "failed" and status["error"]["type"] == "ClientGaveUp"
        assert "the client gave up: the sweep did not finish within 3 s" in status["error"]["message"]
        manifest = json.loads((out / "Cam_manifest.json").read_text())
        assert manifest["state"] == "failed" and "the client gave up" in manifest["error"]["message"]


class _SignallingClient(Client):
    """The real client; the test learns when it starts cancelling."""

    cancelling = threading.Event()

    def cancel(self, job_id, reason=None, retry_for=None):
        self.cancelling.set()
        return super().cancel(job_id, reason=reason, retry_for=retry_for)


def test_an_unreachable_server_is_given_up_within_the_bound_and_the_job_is_cancelled(root):
    out = root / "gone"
    with running_server(["--output-root", str(root)]) as server:
        client = _SignallingClient(server.url, timeout=1.0, retry_for=3)
        runner = SweepRunner(client, [("Cam", job(out, seeds=list(range(4)), steps=400))], str(out), poll_interval=0.1)
        thread, result = _run_in_thread(runner)
        server.wait(_wait_id(runner), states=("running",))
        server.proc.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        assert client.cancelling.wait(60)  # gave up on the polls
        gave_up_after = time.monotonic() - t0
        server.proc.send_signal(signal.SIGCONT)  # back: the cancel lands
        thread.join(60)
        assert isinstance(result.get("error"), BackendUnreachable), result
        status = server.wait(runner.tracked[0].job_id)
        assert status["state"] == "failed" and "the client gave up" in status["error"]["message"]
        print(f"gave up {gave_up_after:.1f} s after the server stopped (retry_for=3 s, timeout 1 s)")


def test_a_killed_backend_leaves_a_count_of_the_images_on_disk(root):
    out = root / "killed"
    with running_server(["--output-root", str(root)]) as server:
        client = Client(server.url, timeout=2.0, retry_for=1)
        # A slow poll: the runner has seen few of the images the backend wrote.
        runner = SweepRunner(client, [("Cam", job(out, seeds=list(range(8)), steps=2, max_batch=1))], str(out),
                             poll_interval=5.0)
        thread, result = _run_in_thread(runner)
        deadline = time.time() + 120
        while len(list(out.glob("Cam_modern_s*.png"))) < 3 and time.time() < deadline:
            time.sleep(0.05)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        thread.join(60)
        assert isinstance(result.get("error"), BackendUnreachable), result
        on_disk = len(list(out.glob("Cam_modern_s*.png")))
        assert on_disk >= 3 and runner.images_on_disk() == on_disk
        assert len(runner.images) < on_disk  # what the backend had reported falls short


def test_a_refused_token_says_so(root):
    env = base_env()
    with running_server(["--output-root", str(root), "--token", "right-token-0123456789"], env=env) as server:
        for token, words in (("", "none was given"), ("wrong", "it is not the server's")):
            with pytest.raises(BackendAuthError) as err:
                Client(server.url, token=token).submit(job(root / "auth"))
            assert "refused the token (401 unauthorized)" in str(err.value) and words in str(err.value)


def test_the_sweep_sees_the_end_of_its_job_at_once_not_at_the_next_poll(root):
    """The runner long-polls the running job (``?wait=``): with a 5 s poll interval the end
    of a job is still seen within moments, and the per-image events all arrive."""
    with running_server(["--output-root", str(root)]) as server:
        out = root / "long-poll"
        runner = SweepRunner(Client(server.url), [("Cam", job(out, seeds=[0, 1], steps=2))], str(out),
                             poll_interval=5.0)
        events = []
        started = time.monotonic()
        state = runner.run(lambda event: events.append((time.time(), event)))
        assert state == "done" and len(runner.images) == 2
        status = server.get(f"/v1/jobs/{runner.tracked[0].job_id}").json()
        seen_done = next(t for t, e in events if e.kind == "done")
        # polling every 5 s without the long poll sees the end about 5 s after it
        assert seen_done - status["finished"] < 2.5, (seen_done - status["finished"])
        assert time.monotonic() - started < 60
