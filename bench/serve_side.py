"""The ``serve`` side of ``archviz bench``: the same job end to end through the backend's
HTTP API (``archviz serve``'s app, uvicorn on loopback, over the bench's warm engine):
JSON in, the job validated and planned on the HTTP thread, the worker's sweep, each image
PNG-encoded with its metadata and written with the manifest, the client polling the status
until the job is done. Against the in-process engine call of the same plan this is the cost
of HTTP, PNG encoding and metadata.

The server runs in this process (a thread) because the bench's random-weight models live
only in this engine's cache; a separate ``archviz serve`` would have to load them.
"""

from __future__ import annotations

import http.client
import json
import tempfile
import threading
import time
from pathlib import Path

FINISHED = ("done", "failed", "cancelled")


class LocalServer:
    #: The client's status polls, as the add-on's sweep makes them (core/sweep.py): a long
    #: poll (``?wait=``) of 0.25 s, answered the moment the job ends.
    POLL_S = 0.25

    def __init__(self, engine, root: str | None = None, poll_s: float = POLL_S):
        import uvicorn

        from ..backend.server.app import create_app
        from ..backend.server.connections import tcp_socket

        self.root = root or tempfile.mkdtemp(prefix="archviz-bench-serve-")
        self.poll_s = poll_s
        app = create_app(engine, output_roots=[self.root])
        self._sock = tcp_socket()  # as archviz serve's: Nagle off on its connections
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True,
                                        name="archviz-bench-serve")
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("archviz bench: the serve side's server did not start")
            time.sleep(0.01)
        self._conn = None
        self.jobs = 0
        self.engine = engine
        self.generate_times: list[float] = []  # generate_s of every job run, in order

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        self._conn.request(method, path, body=data, headers=headers)
        response = self._conn.getresponse()
        payload = json.loads(response.read() or b"{}")
        if response.status >= 400:
            raise RuntimeError(f"archviz bench: serve side: {method} {path}: {response.status} {payload}")
        return payload

    def run(self, job: dict) -> dict:
        """Submit ``job`` (a fresh output folder, nothing skipped, no previews) and wait for
        it; returns the final status with ``output_dir``, ``wall_s`` (submit to done, as the
        client sees it) and ``generate_s`` (the engine's own call inside the worker, clocked
        in the same run, less the worker's per-image PNG encoding, metadata and writes, which
        run inside it: the rest of the wall time is HTTP, planning, PNG and metadata)."""
        engine, generate, clocked = self.engine, self.engine.generate, [0.0, 0.0]

        def clocked_generate(*args, **kwargs):
            on_image = kwargs.get("on_image")
            if on_image is not None:  # the worker's PNG encoding, metadata and writes of each image
                def clocked_on_image(*a, **k):
                    t1 = time.perf_counter()
                    try:
                        return on_image(*a, **k)
                    finally:
                        clocked[1] += time.perf_counter() - t1
                kwargs["on_image"] = clocked_on_image
            t0 = time.perf_counter()
            try:
                return generate(*args, **kwargs)
            finally:
                clocked[0] += time.perf_counter() - t0

        engine.generate = clocked_generate  # this instance only, for this job
        t0 = time.perf_counter()
        try:
            status = self._run(job)
        finally:
            del engine.generate
        # the engine's own work: its call less the worker's per-image callback inside it
        status["wall_s"], status["generate_s"] = time.perf_counter() - t0, clocked[0] - clocked[1]
        status["images_s"] = clocked[1]
        self.generate_times.append(status["generate_s"])
        return status

    def _run(self, job: dict) -> dict:
        self.jobs += 1
        out = Path(self.root) / f"job{self.jobs}"
        job = {**job, "output_dir": str(out), "skip_existing": False, "preview_every": 0}
        if self._conn is not None:
            self._conn.close()
        # a connection per job (the server closes idle keep-alive connections), kept while polling
        self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        accepted = self._request("POST", "/v1/jobs", job)
        while True:
            status = self._request("GET", f"{accepted['status_url']}?wait={self.poll_s:g}")
            if status.get("state") in FINISHED:
                break
        if status["state"] != "done":
            raise RuntimeError(f"archviz bench: serve side: job {status['state']}: {status.get('error')}")
        status["output_dir"] = accepted["output_dir"]
        return status

    def images(self, plan, status: dict) -> dict:
        """{index: uint8 HxWx3} of a finished job, read back from its PNGs."""
        import numpy as np
        from PIL import Image

        out = {}
        for item in plan.images:
            with Image.open(Path(status["output_dir"]) / item.file) as im:
                out[item.index] = np.asarray(im.convert("RGB"))
        return out

    def close(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        if self._conn is not None:
            self._conn.close()
