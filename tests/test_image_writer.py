"""backend/server/image_writer.py: result PNGs are encoded and written on writer threads
while the engine goes on; the job still learns of the first failed write (the earliest
image's, whichever thread met it first) and the engine waits when the backlog is full."""

import threading
import time

import pytest

from archviz_controlnet.backend.server.image_writer import ImageWriter


def test_submit_hands_over_and_returns_while_the_write_runs():
    release, written = threading.Event(), []

    def write(item, array):
        release.wait(10)
        written.append(item)

    writer = ImageWriter(write)
    writer.submit("a", None)
    writer.submit("b", None)
    assert written == [] and not writer.failed  # the engine's thread did not wait for the writes
    release.set()
    writer.wait()
    assert sorted(written) == ["a", "b"]
    writer.raise_error()  # nothing failed: no error


def test_the_earliest_failed_image_is_the_error_and_later_images_are_still_tried():
    first_may_fail, tried = threading.Event(), []

    def write(item, array):
        if item == 0:
            first_may_fail.wait(10)  # image 1 fails first in time
        tried.append(item)
        if item in (0, 1):
            raise OSError(f"disk full while writing image {item}")

    writer = ImageWriter(write, threads=2)
    writer.submit(0, None)
    writer.submit(1, None)
    deadline = time.monotonic() + 10
    while not writer.failed:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(OSError, match="image 1"):  # the engine's next image stops it
        writer.submit(2, None)
    first_may_fail.set()
    writer.wait()
    assert sorted(tried) == [0, 1]
    with pytest.raises(OSError, match="image 0"):  # the job reports the earliest image's error
        writer.raise_error()


def test_a_full_backlog_makes_the_engine_wait():
    release = threading.Event()
    writer = ImageWriter(lambda item, array: release.wait(10), threads=1, backlog=2)
    writer.submit(0, None)
    writer.submit(1, None)
    third = threading.Thread(target=writer.submit, args=(2, None))
    third.start()
    third.join(0.3)
    assert third.is_alive()  # waits for a slot: finished images never pile up without bound
    release.set()
    third.join(10)
    assert not third.is_alive()
    writer.wait()
