"""Talk to the backend: a stdlib HTTP client for the ``/v1`` API and a launcher for a local
backend process. No bpy, no torch: Blender's Python and plain scripts both use it."""

import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

LISTENING_PREFIX = "archviz backend listening on "
TERMINAL_STATES = ("done", "failed", "cancelled")


class BackendError(RuntimeError):
    """The backend refused a request, failed a job, or cannot be reached. The message is
    the backend's own where it sent one."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class BackendUnreachable(BackendError):
    pass


class BackendAuthError(BackendError):
    """The backend refused the token (401): none was given, or the wrong one."""


#: HTTP answers that mean "not now" (queue full, too many connections, a proxy's hiccup).
RETRY_STATUSES = (429, 502, 503, 504)


class Client:
    """``retry_for``: seconds within which a transient failure (connection refused or
    reset, a timeout, 429/503 with Retry-After) is retried with growing pauses (0.25 s
    doubling to 4 s) before the error is raised. A submit is retried only when it cannot
    have reached the server (refused connection, 429, 503), so a job is never sent twice."""

    def __init__(self, url, token="", timeout=30.0, retry_for=30.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retry_for = retry_for
        self.retries = 0  # transient failures met and retried (shown by tests and logs)

    def _request(self, method, path, body=None, raw=False, retry_for=None):
        deadline = time.monotonic() + (self.retry_for if retry_for is None else retry_for)
        pause = 0.25
        while True:
            try:
                return self._request_once(method, path, body, raw)
            except BackendError as exc:
                wait = _retry_wait(exc, method, pause)
                if wait is None or time.monotonic() + wait > deadline:
                    raise
                self.retries += 1
                time.sleep(wait)
                pause = min(4.0, pause * 2)

    def _request_once(self, method, path, body=None, raw=False):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            text = _error_text(exc.read())
            if exc.code == 401:
                raise BackendAuthError(f"the backend at {self.url} refused the token (401 unauthorized): "
                                       + ("none was given" if not self.token else "it is not the server's"),
                                       status=401) from None
            error = BackendError(f"{method} {path}: {exc.code} {text}", status=exc.code)
            error.retry_after = _retry_after(exc.headers.get("Retry-After"))
            raise error from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            error = BackendUnreachable(f"backend at {self.url} is not reachable ({reason})")
            error.refused = isinstance(reason, ConnectionRefusedError)
            raise error from None
        return payload if raw else json.loads(payload or b"null")

    def health(self, retry_for=None):
        return self._request("GET", "/v1/health", retry_for=retry_for)

    def presets(self):
        return self._request("GET", "/v1/presets")

    def submit(self, job):
        return self._request("POST", "/v1/jobs", job)["id"]

    def job(self, job_id, wait=0.0, retry_for=None):
        """The job's status. With ``wait`` seconds (a long poll, under this client's
        ``timeout``) the backend answers as soon as the job has ended, or after ``wait``."""
        query = f"?wait={wait:g}" if wait else ""
        return self._request("GET", f"/v1/jobs/{job_id}{query}", retry_for=retry_for)

    def image(self, job_id, index):
        return self._request("GET", f"/v1/jobs/{job_id}/images/{index}", raw=True)

    def preview(self, job_id, index):
        """The latest preview PNG of a sweep image still denoising (BackendError 404 when
        it has none now: not started, or done). One try: a preview missed is not worth a wait."""
        return self._request("GET", f"/v1/jobs/{job_id}/previews/{index}", raw=True, retry_for=0)
    def sidecar(self, job_id, kind):
        """Bytes of a job's ``manifest`` (JSON) or ``contact_sheet`` (PNG) as the backend
        wrote them in its own output folder."""
        return self._request("GET", f"/v1/jobs/{job_id}/{kind}", raw=True)

    def submit_video(self, job):
        """POST /v1/video-jobs (a core/video.py VideoJob as a dict) -> the accepted job."""
        return self._request("POST", "/v1/video-jobs", job)

    def video_clips(self, job_id):
        """A video job's clips and, for each finished one, the files it has (GET /v1/jobs/{id}/clips)."""
        return self._request("GET", f"/v1/jobs/{job_id}/clips")

    def clip_file(self, job_id, clip, name):
        """Bytes of one file of a finished clip: a PNG frame or its metadata.json."""
        return self._request("GET", f"/v1/jobs/{job_id}/clips/{urllib.parse.quote(clip, safe='')}/"
                                    f"{urllib.parse.quote(name, safe='')}", raw=True)

    def control(self, job_id, index):
        """PNG bytes of control ``index`` a detector made from a job's picture."""
        return self._request("GET", f"/v1/jobs/{job_id}/controls/{index}", raw=True)

    def picture(self, data, long_side, multiple=8):
        """A photo or sketch file's bytes, checked and fitted by the backend (POST /v1/picture):
        {"image": base64 RGB PNG, "width", "height", "source": {...}}."""
        import base64

        body = {"image": base64.b64encode(data).decode("ascii"), "long_side": long_side, "multiple": multiple}
        return self._request("POST", "/v1/picture", body)

    def cancel(self, job_id, reason=None, retry_for=None):
        """Cancel a job; with ``reason`` (this client gives up) it ends ``failed`` with it."""
        query = "?" + urllib.parse.urlencode({"reason": reason}) if reason else ""
        return self._request("DELETE", f"/v1/jobs/{job_id}{query}", retry_for=retry_for)

    def is_up(self):
        try:
            self.health(retry_for=0)
            return True
        except BackendError:
            return False


def _retry_after(value):
    try:
        return max(0.0, min(300.0, float(value)))
    except (TypeError, ValueError):
        return None


def _retry_wait(exc, method, pause):
    """Seconds to wait before trying ``exc``'s request again, or None when it must not be
    retried (a real answer, or a POST that may have reached the server)."""
    if isinstance(exc, BackendUnreachable):
        if method == "POST" and not getattr(exc, "refused", False):
            return None  # reset or timed out: the job may have been queued already
        return pause
    if exc.status in RETRY_STATUSES and (method != "POST" or exc.status in (429, 503)):
        after = getattr(exc, "retry_after", None)
        return pause if after is None else max(pause, after)
    return None


def _error_text(payload):
    """The backend's message from an error body ({"detail": ...} or {"error": {...}})."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return payload.decode("utf-8", "replace")[:500]
    if isinstance(data, dict):
        detail = data.get("detail", data.get("error", data))
        if isinstance(detail, dict):
            return detail.get("message") or json.dumps(detail)
        if isinstance(detail, list):  # a list of validation errors
            return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
        return str(detail)
    return str(data)


class BackendProcess:
    """A backend started by this process: ``python -m archviz_controlnet.cli serve``.

    It binds a free loopback port and prints its URL; this class waits for that line.
    The child's stdin is a pipe that this process never writes: when this process ends,
    however it ends, the pipe closes and the backend stops itself (no orphan).

    ``output_roots`` / ``model_roots``: folders the backend may write results into / load
    model files from besides its defaults (``--output-root`` / ``--model-root``); a
    backend refuses jobs that point anywhere else."""

    def __init__(self, python=None, device="auto", host="127.0.0.1", extra_args=(), env=None, log_path=None,
                 output_roots=(), model_roots=()):
        self.python = python or sys.executable
        self.device = device
        self.host = host
        self.output_roots = [os.path.abspath(p) for p in output_roots]
        self.model_roots = [os.path.abspath(p) for p in model_roots]
        self.extra_args = list(extra_args)
        self.env = dict(os.environ if env is None else env)
        self.log_path = log_path
        self.proc = None
        self.url = None
        self._lines = queue.Queue()

    def command(self):
        roots = [a for p in self.output_roots for a in ("--output-root", p)]
        roots += [a for p in self.model_roots for a in ("--model-root", p)]
        return [self.python, "-m", "archviz_controlnet.cli", "serve", "--host", self.host, "--port", "0",
                "--device", self.device, "--exit-with-stdin", *roots, *self.extra_args]

    def covers(self, output_roots=(), model_roots=()):
        """True when this backend was started allowing every one of these folders."""
        def inside(path, roots):
            path = os.path.realpath(path)
            return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep)
                       for r in map(os.path.realpath, roots))
        return (all(inside(p, self.output_roots) for p in output_roots)
                and all(inside(p, self.model_roots) for p in model_roots))

    def start(self, timeout=180.0):
        env = dict(self.env)
        package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.basename(package_dir) == "archviz_controlnet":  # an installed extension: put it on the path
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(package_dir), env.get("PYTHONPATH")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, env=env, text=True, bufsize=1)
        except OSError as exc:
            raise BackendError(f"cannot start the backend with {self.python!r}: {exc.strerror}") from None
        log = None
        if self.log_path:
            os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
            log = open(self.log_path, "a", encoding="utf-8")
        threading.Thread(target=self._pump, args=(log,), daemon=True).start()
        deadline = time.monotonic() + timeout
        tail = []
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self._lines.empty():
                    break
                continue
            if line is None:
                break
            tail = (tail + [line])[-20:]
            if line.startswith(LISTENING_PREFIX):
                self.url = line[len(LISTENING_PREFIX):].strip()
                return self.url
        self.stop()
        raise BackendError("the backend did not start" + (": " + " | ".join(tail[-5:]) if tail else "")
                           + f" (command: {' '.join(self.command())})")

    def _pump(self, log):
        try:
            for line in self.proc.stdout:
                if log:
                    log.write(line)
                    log.flush()
                self._lines.put(line.rstrip("\n"))
        finally:
            self._lines.put(None)
            if log:
                log.close()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10.0):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the backend's signal to exit cleanly
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout / 2)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=timeout / 2)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self.proc = None
