"""Result images written beside the denoising.

Encoding a finished image as PNG with its metadata and writing it (fsync, rename) takes a
CPU core 0.1-0.2 s at 1024 px. Done on the engine's thread, that is time a GPU waits;
here it runs on writer threads while the engine goes on with the next batch. What a client
sees is unchanged: an image is reported (manifest, job status) only once it is on disk,
the job ends after its last write, and the first failed write (a full disk) stops the
engine and fails the job, with every image written before it kept.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

#: Writer threads: PNG encoding (zlib) runs without the GIL, so two images encode at once.
THREADS = 2
#: Finished images waiting for a writer at most; the engine waits past it (bounded memory).
BACKLOG = 8


class ImageWriter:
    """``write(item, array)`` for each finished image on writer threads. :meth:`submit` is
    the engine's ``on_image``; it raises the first write error, so the engine stops at its
    next image; :attr:`failed` is for its ``cancelled`` check, which stops it mid-batch."""

    def __init__(self, write: Callable, threads: int = THREADS, backlog: int = BACKLOG):
        self._write = write
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="archviz-write")
        self._slots = threading.BoundedSemaphore(backlog)
        self._errors: dict[int, BaseException] = {}  # by the image's place in the handing order
        self._handed = 0
        self._closed = False

    @property
    def failed(self) -> bool:
        return bool(self._errors)

    def submit(self, item, array) -> None:
        self.raise_error()
        self._slots.acquire()
        try:
            self._pool.submit(self._run, self._handed, item, array)
            self._handed += 1
        except BaseException:
            self._slots.release()
            raise

    def _run(self, order: int, item, array) -> None:
        try:
            self._write(item, array)  # tried even after a failure: a freed disk keeps the image
        except BaseException as exc:  # noqa: BLE001 - handed to the engine's thread
            self._errors[order] = exc
        finally:
            self._slots.release()

    def wait(self) -> None:
        """Return once every image handed over is written (or its write failed)."""
        if not self._closed:
            self._closed = True
            self._pool.shutdown(wait=True)

    def raise_error(self) -> None:
        """Raise the error of the earliest image whose write failed (whichever thread met
        one first, the job reports the same one)."""
        if self._errors:
            raise self._errors[min(self._errors)]
