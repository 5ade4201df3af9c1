"""The task runner of Generate and Sweep (blender/tasks.py): the worker's events are
applied on the main thread by drain(), the timer drains the current task until it ends,
and a worker that fails reports its one-line error. Real bpy, a real worker thread and a
real HTTP client (to a port nobody listens on); the end-to-end runs with a backend are
tests/test_integration.py."""

import socket

import pytest

bpy = pytest.importorskip("bpy")

from archviz_controlnet.blender import tasks  # noqa: E402
from archviz_controlnet.blender.backend import BackendSettings  # noqa: E402
from archviz_controlnet.core.sweep import SweepEvent  # noqa: E402


@pytest.fixture
def task(tmp_path):
    task = tasks.Task("Scene", [("Camera", {"styles": ["modern", "japandi"], "seeds": [0, 1, 2]})], str(tmp_path),
                      backend=None)
    yield task
    tasks.Task.current = None


def test_drain_applies_the_workers_events_in_order(task, tmp_path):
    assert task.images_total == 6 and task.state == "running" and task.message == "starting the backend"
    task.events.put(("state", "generating"))
    task.events.put(("warning", "the GPU is not used"))
    assert task.drain() is True
    assert task.message == "generating" and task.device_warning == "the GPU is not used"
    task.events.put(("event", SweepEvent("download", message="downloading unet", download={"done": 5, "total": 10})))
    assert task.drain() is True
    assert task.message == "downloading unet" and task.download == {"done": 5, "total": 10}
    task.events.put(("event", SweepEvent("progress", fraction=0.5, images_done=3)))
    assert task.drain() is True
    assert task.download == {} and task.fraction == 0.5 and task.images_done == 3
    task.events.put(("event", SweepEvent("error", camera="Camera", message="out of memory", fraction=0.5,
                                         images_done=3)))
    assert task.drain() is True and task.error == "out of memory" and task.state == "running"
    task.events.put(("failed", "backend at http://x is not reachable"))
    assert task.drain() is False
    assert task.state == "failed"
    assert task.message == f"failed after 0 image(s) (kept in {tmp_path}): backend at http://x is not reachable"


def test_the_timer_drains_the_current_task_until_it_ends(task):
    tasks.Task.current = None
    assert tasks._timer() is None and tasks.running() is None
    tasks.Task.current = task
    assert tasks.running() is task
    assert tasks._timer() == tasks.TIMER_INTERVAL  # still running: call again
    task.cancel()
    assert task.message == "cancelling" and task.drain() is True  # nothing from the worker yet
    task.events.put(("finished", "cancelled"))
    assert tasks._timer() is None  # ended: the timer unregisters itself
    assert tasks.running() is None and task.message == f"cancelled; 0 image(s) kept in {task.out_dir}"


def test_a_worker_that_cannot_reach_its_backend_reports_the_url(task, monkeypatch):
    with socket.socket() as sock:  # a free port, closed again: nobody listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("ARCHVIZ_BACKEND_URL", f"http://127.0.0.1:{port}")
    task.backend = BackendSettings(bpy.context)  # the add-on is not enabled: settings from the environment
    assert task.backend.url == f"http://127.0.0.1:{port}"
    tasks.start(task, with_timer=False)
    assert tasks.Task.current is task and task.thread.name == "archviz-sweep"
    tasks.run_until_done(task)
    task.thread.join(timeout=30)
    assert not task.thread.is_alive()
    assert task.state == "failed" and tasks.running() is None
    assert task.error.startswith(f"backend at http://127.0.0.1:{port} is not reachable")
    assert "Traceback" not in task.message and task.message.endswith(task.error)
