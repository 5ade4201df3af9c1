"""A Hugging Face hub on loopback for tests: the HTTP the real ``huggingface_hub`` client
(2.4) speaks when it lists and downloads a model, over tiny weights laid out like the real
repositories.

Served (``HF_ENDPOINT=http://127.0.0.1:PORT``):

- ``GET /api/models/{repo}/revision/{rev}``: model info (``sha``, ``siblings``, ``gated``);
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=``: the file listing with sizes,
  git blob ids and LFS sha256 (no ``xetHash``: plain HTTP downloads, never Xet);
- ``HEAD`` / ``GET /{repo}/resolve/{rev}/{path}``: ``ETag`` (sha256 for LFS files, git blob
  sha1 otherwise), ``X-Repo-Commit``, ``Content-Length``, ``Accept-Ranges`` and ``Range``
  requests (206 + ``Content-Range``);
- errors as the hub sends them: unknown repo 401 ``RepoNotFound``, unknown file 404
  ``EntryNotFound``, and for a gated repo 401 (no token) / 403 (wrong token) ``GatedRepo``
  on every file unless ``Authorization: Bearer <the right token>`` is sent.

Every request is logged with the bytes of body sent (``FakeHub.log``). A file can be held
after a number of bytes until the test releases it (``hold``), so a test can look at a
download in flight or kill it there, without any timing.

:func:`build_repos` writes the repositories from the project's tiny models under the REAL
repo ids: the pipeline folders (fp32 safetensors plus ``.fp16.`` variants), and what a
real repo also has and the backend must not fetch: ``.bin`` pickles, ``safety_checker``,
``feature_extractor``, a single-file checkpoint, images and a README.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".png")
CHUNK = 16 * 1024


def _fp16_copy(src: Path, dst: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src))
    save_file({k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}, str(dst),
              metadata={"format": "pt"})


def _bin_copy(src: Path, dst: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(src)), str(dst))


def _model_folder(src: Path, dst: Path, stem: str, bin_name: str) -> None:
    """A model folder as the hub has it: config, fp32 and fp16 safetensors, a .bin."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("."):
            shutil.copy(f, dst / f.name)
    _fp16_copy(dst / f"{stem}.safetensors", dst / f"{stem}.fp16.safetensors")
    _bin_copy(dst / f"{stem}.safetensors", dst / bin_name)


def build_repos(root: Path) -> dict[str, Path]:
    """The SD 1.5 base and its depth and lineart ControlNets, tiny, under their real ids."""
    from archviz_controlnet.backend.models import registry as M
    from archviz_controlnet.backend.models import tiny

    repos = {}
    base = root / M.SD15_BASE
    if not (base / ".built").exists():
        src = tiny.ensure_tiny(tiny.tiny_path("sd15", "base"))
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        shutil.copy(src / "model_index.json", base / "model_index.json")
        _model_folder(src / "unet", base / "unet", "diffusion_pytorch_model", "diffusion_pytorch_model.bin")
        _model_folder(src / "vae", base / "vae", "diffusion_pytorch_model", "diffusion_pytorch_model.bin")
        _model_folder(src / "text_encoder", base / "text_encoder", "model", "pytorch_model.bin")
        for folder in ("tokenizer", "scheduler"):
            shutil.copytree(src / folder, base / folder)
        # Folders and files of the real repo that our pipeline does not load.
        (base / "safety_checker").mkdir()
        shutil.copy(src / "text_encoder" / "config.json", base / "safety_checker" / "config.json")
        shutil.copy(src / "text_encoder" / "model.safetensors", base / "safety_checker" / "model.safetensors")
        (base / "feature_extractor").mkdir()
        (base / "feature_extractor" / "preprocessor_config.json").write_text('{"crop_size": 224}')
        shutil.copy(src / "unet" / "diffusion_pytorch_model.safetensors", base / "v1-5-pruned-emaonly.safetensors")
        (base / "v1-inference.yaml").write_text("model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n")
        (base / "README.md").write_text("---\nlicense: creativeml-openrail-m\n---\n# tiny stand-in\n")
        (base / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
        (base / ".built").write_text("")
    repos[M.SD15_BASE] = base
    for kind, repo_id in (("depth", M.SD15_CONTROLNETS["depth"]), ("lineart", M.SD15_CONTROLNETS["lineart"])):
        path = root / repo_id
        if not (path / ".built").exists():
            src = tiny.ensure_tiny(tiny.tiny_path("sd15", f"controlnet-{kind}"))
            shutil.rmtree(path, ignore_errors=True)
            _model_folder(src, path, "diffusion_pytorch_model", "diffusion_pytorch_model.bin")
            (path / "images").mkdir()
            (path / "images" / "input.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2000))
            (path / "README.md").write_text("---\nlicense: openrail\n---\n# tiny stand-in\n")
            (path / ".built").write_text("")
        repos[repo_id] = path
    return repos


class SilentHub:
    """``with SilentHub() as url:`` a hub that accepts connections (the kernel completes
    them in the listen backlog) and never answers a byte; closed on exit."""

    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc):
        self.sock.close()


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, repo_id: str, folder: Path):
        self.id = repo_id
        self.commit = hashlib.sha1(f"commit of {repo_id}".encode()).hexdigest()
        self.files: dict[str, dict] = {}
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.name == ".built":
                continue
            rel = path.relative_to(folder).as_posix()
            data = path.read_bytes()
            entry = {"data": data, "oid": _git_blob_sha1(data), "size": len(data)}
            if rel.endswith(LFS_SUFFIXES):
                entry["sha256"] = hashlib.sha256(data).hexdigest()
            self.files[rel] = entry

    def etag(self, path: str) -> str:
        entry = self.files[path]
        return entry.get("sha256") or entry["oid"]


class FakeHub:
    """``with FakeHub(repos) as hub:`` serves ``repos`` ({repo_id: folder}) on loopback."""

    def __init__(self, repos: dict[str, Path], gated: dict[str, str] | None = None):
        self.repos = {rid: Repo(rid, folder) for rid, folder in repos.items()}
        self.gated = dict(gated or {})  # repo id -> the token that opens it
        self.listed_sizes: dict[tuple[str, str], int] = {}  # (repo, path) -> size the listing claims
        self.log: list[dict] = []
        self.sent: dict[str, int] = {}  # "repo/path" -> body bytes sent so far (last GET)
        self.holds: dict[str, int] = {}  # path suffix -> hold the body after this many bytes
        self.shas: dict[str, str] = {}  # repo id -> the commit id its info answers (a hostile hub's)
        self.endless: dict[str, int] = {}  # path suffix -> send a body with no length, up to this many bytes
        self.released = threading.Event()
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet; the hub keeps its own log
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    # -- what the tests read ------------------------------------------------------------
    def fetched(self) -> dict[str, int]:
        """``repo/path`` -> body bytes sent by GET /resolve, summed over requests."""
        out: dict[str, int] = {}
        for e in self.log:
            if e["kind"] == "resolve" and e["method"] == "GET":
                out[e["file"]] = out.get(e["file"], 0) + e["bytes"]
        return out

    def env(self, hf_home: Path, **extra) -> dict:
        env = dict(os.environ)
        for key in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE", "HF_ENDPOINT", "TRANSFORMERS_OFFLINE"):
            env.pop(key, None)
        env.update({"HF_ENDPOINT": self.url, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1",
                    "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
        env.update(extra)
        return env

    # -- HTTP ---------------------------------------------------------------------------
    def _record(self, **entry):
        with self._lock:
            self.log.append(entry)

    def _send(self, h, status, headers=None, body=b"", head=False, error=None):
        h.send_response(status)
        if error:
            h.send_header("X-Error-Code", error[0])
            h.send_header("X-Error-Message", error[1])
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head and body:
            h.wfile.write(body)

    def _json(self, h, data, head=False):
        body = json.dumps(data).encode()
        self._send(h, 200, {"Content-Type": "application/json"}, body, head)
        return len(body)

    def _handle(self, h, head):
        url = urlparse(h.path)
        path = unquote(url.path)
        parts = path.strip("/").split("/")
        try:
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                self._api(h, "/".join(parts[2:4]), parts[4], parts[5], "/".join(parts[6:]), parse_qs(url.query), head)
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(h, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
            else:
                self._record(kind="other", method=h.command, file=path, status=404, bytes=0)
                self._send(h, 404, head=head, error=("EntryNotFound", "no such route"))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _endless(self, h, name, cap):
        sent = 0
        block = bytes(CHUNK * 16)
        self.sent[name] = 0
        try:
            while sent < cap:
                h.wfile.write(block)
                sent += len(block)
                self.sent[name] = sent
        finally:
            h.close_connection = True
            self._record(kind="resolve", method="GET", file=name, status=200, bytes=sent)

    def _repo(self, h, repo_id, head):
        repo = self.repos.get(repo_id)
        if repo is None:
            self._send(h, 401, head=head, error=("RepoNotFound", "Repository not found"))
        return repo

    def _api(self, h, repo_id, what, rev, sub, query, head):
        repo = self._repo(h, repo_id, head)
        if repo is None:
            self._record(kind="api", method=h.command, file=repo_id, status=401, bytes=0)
            return
        if rev not in ("main", repo.commit):
            self._send(h, 404, head=head, error=("RevisionNotFound", "Revision not found"))
            return
        if what == "revision":
            data = {"id": repo.id, "modelId": repo.id, "sha": self.shas.get(repo.id, repo.commit), "private": False,
                    "gated": "manual" if repo.id in self.gated else False, "disabled": False,
                    "downloads": 0, "likes": 0, "tags": [], "library_name": "diffusers",
                    "siblings": [{"rfilename": p} for p in repo.files]}
        else:
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            data, folders = [], set()
            for p, e in repo.files.items():
                rel = p[len(sub) + 1:] if sub else p
                if sub and not p.startswith(sub + "/"):
                    continue
                if "/" in rel:
                    top = (sub + "/" if sub else "") + rel.split("/")[0]
                    if top not in folders:
                        folders.add(top)
                        data.append({"type": "directory", "oid": _git_blob_sha1(top.encode()), "size": 0, "path": top})
                    if not recursive:
                        continue
                size = self.listed_sizes.get((repo.id, p), e["size"])
                item = {"type": "file", "oid": e["oid"], "size": size, "path": p}
                if "sha256" in e:
                    item["lfs"] = {"oid": e["sha256"], "size": size, "pointerSize": 134}
                data.append(item)
        sent = self._json(h, data, head)
        self._record(kind="api", method=h.command, file=f"{repo_id}:{what}", status=200, bytes=sent)

    def _resolve(self, h, repo_id, rev, path, head):
        repo = self._repo(h, repo_id, head)
        name = f"{repo_id}/{path}"
        if repo is None:
            self._record(kind="resolve", method=h.command, file=name, status=401, bytes=0)
            return
        if repo.id in self.gated:
            auth = h.headers.get("Authorization", "")
            if auth != f"Bearer {self.gated[repo.id]}":
                status = 403 if auth else 401
                message = (f"Access to model {repo.id} is restricted. You must have access to it and be "
                           "authenticated to access it. Please log in.")
                self._send(h, status, head=head, error=("GatedRepo", message))
                self._record(kind="resolve", method=h.command, file=name, status=status, bytes=0)
                return
        entry = repo.files.get(path)
        if rev not in ("main", repo.commit) or entry is None:
            self._send(h, 404, {"X-Repo-Commit": repo.commit}, head=head, error=("EntryNotFound", "Entry not found"))
            self._record(kind="resolve", method=h.command, file=name, status=404, bytes=0)
            return
        data = entry["data"]
        start = 0
        rng = h.headers.get("Range", "")
        if rng.startswith("bytes=") and not head:
            start = int(rng[len("bytes="):].split("-")[0] or 0)
        headers = {"ETag": f'"{repo.etag(path)}"', "X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream", "Content-Length": str(len(data) - start)}
        if "sha256" in entry:
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(len(data))})
        status = 200
        if start:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        endless = next((n for suffix, n in self.endless.items() if name.endswith(suffix)), None)
        if endless is not None and not head:  # a body that never ends: no length, closed only at the cap
            headers.pop("Content-Length")
            headers["Connection"] = "close"
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        if head:
            self._record(kind="resolve", method="HEAD", file=name, status=status, bytes=0)
            return
        if endless is not None:
            self._endless(h, name, endless)
            return
        hold = next((n for suffix, n in self.holds.items() if name.endswith(suffix)), None)
        sent = 0
        self.sent[name] = 0
        try:
            pos = start
            while pos < len(data):
                if hold is not None and sent >= hold and not self.released.is_set():
                    self.released.wait(120)
                chunk = data[pos:pos + (min(CHUNK, hold - sent) if hold is not None and sent < hold else CHUNK)]
                h.wfile.write(chunk)
                h.wfile.flush()
                pos += len(chunk)
                sent += len(chunk)
                self.sent[name] = sent
        finally:
            self._record(kind="resolve", method="GET", file=name, status=status, bytes=sent)
