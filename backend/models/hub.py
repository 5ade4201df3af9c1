"""Models from the Hugging Face hub: whole snapshots, only the files the pipeline loads.

A model repository is resolved as one snapshot folder of the Hugging Face cache:

1. **Cache first.** The cache's ref (``refs/main``) and tree listing (``trees/<commit>.json``,
   written by huggingface_hub when it lists a repo) say which files the snapshot has on the
   hub; when every file we load is in the snapshot folder, that folder is used and nothing
   goes online. A snapshot without a listing, or with files missing, is not trusted.
2. **Otherwise list and download.** The hub's listing (``snapshot_download`` with no file
   selected: repo info + recursive tree, which also writes the tree listing into the cache)
   gives every file and its size. :func:`select_files` keeps what the loaders read: the
   ``model_index.json``, each loaded component's ``config.json`` and its safetensors weights
   (the ``fp16`` variant when the device runs fp16, else the full-precision files; never
   both, never ``.bin``), tokenizer files and the scheduler config. Folders the pipeline does
   not load (``safety_checker``, ``feature_extractor``, the base VAE when a separate VAE is
   used) and single-file checkpoints at the root are left on the hub.
3. **Disk check**, before the first byte: the sizes of the missing files against
   ``shutil.disk_usage`` of the cache. A shortfall is an error naming both numbers.
4. **Download** each missing file with ``hf_hub_download`` at the listed commit, one after
   the other, reporting bytes per file and overall through a callback; the count of bytes
   fetched is returned and logged. A download that died (process killed) leaves an
   ``<etag>.<id>.incomplete`` file in the blobs folder; once the blob is complete such files
   are deleted, so a finished snapshot has no litter.

Errors are one line each: :class:`GatedModelError` (401/403: accept the licence and give a
token), :class:`ModelOfflineError` (not cached and downloads are off), :class:`DiskSpaceError`
and :class:`HubError` for anything else the hub said. The token comes from ``HF_TOKEN`` (or
the token huggingface_hub stored); it is never logged.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

log = logging.getLogger("archviz.backend")

#: Components of a diffusers pipeline folder that :mod:`.models` loads (SD 1.5 / SDXL).
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")  # diffusers models, transformers models
LORA_FILE = "pytorch_lora_weights.safetensors"  # a LoRA repository: this file at its root, no config
TOKENIZER_FILES = ("vocab.json", "merges.txt")  # CLIP's BPE files; tokenizer.json alone also loads
_SHARD_RE = re.compile(r"^(?P<stem>[^.]+?)(?:\.(?P<variant>[A-Za-z0-9_]+))?-\d{5}-of-\d{5}\.safetensors$")
_INDEX_RE = re.compile(r"^(?P<stem>[^.]+)\.safetensors\.index(?:\.(?P<variant>[A-Za-z0-9_]+))?\.json$")
_SINGLE_RE = re.compile(r"^(?P<stem>[^.]+)(?:\.(?P<variant>[A-Za-z0-9_]+))?\.safetensors$")
_BIN_RE = re.compile(r"^(?P<stem>[^.]+)(?:\.(?P<variant>[A-Za-z0-9_]+))?\.bin$")

Progress = Callable[[dict], None]

#: A commit id as the hub answers it (and as the cache's folders are named): 40 hex digits.
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
#: Seconds one hub request may take to connect, or wait between two reads, before it is
#: tried again (``ARCHVIZ_HUB_TIMEOUT``), and how many times a listing is tried
#: (``ARCHVIZ_HUB_TRIES``; a download resumes by huggingface_hub's own retries).
DEFAULT_HUB_TIMEOUT = 30.0
DEFAULT_HUB_TRIES = 3
#: Free disk space kept while bytes arrive (the check before the download is not enough:
#: another program may fill the disk meanwhile).
MIN_FREE_WHILE_DOWNLOADING = 64 * 2**20


class HubError(RuntimeError):
    """A model could not be had from the hub; the message is one line that says why."""


class GatedModelError(HubError):
    pass


class ModelOfflineError(HubError):
    pass


class DiskSpaceError(HubError):
    pass


class DownloadCancelled(HubError):
    """The job that asked for the download was cancelled."""


class OversizeDownload(HubError):
    """A file's body went on past the size the hub's listing gave for it."""


class HubTimeout(HubError):
    """The hub accepted the connection (or not) and did not answer in time."""


def _env_number(name: str, default: float, lo: float, hi: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise HubError(f"{name}={raw!r} is not a number of seconds") from None
    if not lo <= value <= hi:
        raise HubError(f"{name}={raw!r} must be between {lo:g} and {hi:g}")
    return value


def hub_timeout() -> float:
    return _env_number("ARCHVIZ_HUB_TIMEOUT", DEFAULT_HUB_TIMEOUT, 0.1, 3600)


def hub_tries() -> int:
    return int(_env_number("ARCHVIZ_HUB_TRIES", DEFAULT_HUB_TRIES, 1, 20))


_configured: float | None = None


def configure_client() -> float:
    """Give every request of huggingface_hub's shared HTTP client connect, read, write and
    pool timeouts. Its API calls (the repo info, the tree listing) pass ``timeout=None``, so
    a hub that accepts the connection and never answers would hold the caller forever: a
    request hook of the client (installed through huggingface_hub's own
    ``set_client_factory``) fills each timeout the call left open. Downloads use its
    ``HF_HUB_DOWNLOAD_TIMEOUT`` / ``HF_HUB_ETAG_TIMEOUT``, set to the same value. Returns
    the timeout in seconds (``ARCHVIZ_HUB_TIMEOUT``)."""
    global _configured
    seconds = hub_timeout()
    if _configured == seconds:
        return seconds
    import httpx2
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils._http import hf_request_event_hook

    def bounded(request):
        given = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {key: given.get(key) if given.get(key) is not None else seconds
                                         for key in ("connect", "read", "write", "pool")}

    def factory():
        return httpx2.Client(event_hooks={"request": [hf_request_event_hook, bounded]}, follow_redirects=True,
                             timeout=httpx2.Timeout(seconds))

    set_client_factory(factory)
    constants.HF_HUB_DOWNLOAD_TIMEOUT = seconds
    constants.HF_HUB_ETAG_TIMEOUT = seconds
    _configured = seconds
    return seconds


def _interruptible(call: Callable, cancelled: Callable[[], bool]):
    """``call()`` in a helper thread, given up the moment ``cancelled()`` is true (a hub
    that stopped answering must not hold a cancelled job: the helper ends at its timeout)."""
    box: dict = {}
    done = threading.Event()

    def run():
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="hub-call", daemon=True).start()
    while not done.wait(0.1):
        if cancelled():
            raise DownloadCancelled("the download was cancelled")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _timed_out(exc: BaseException) -> bool:
    import httpx2

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (httpx2.TimeoutException, TimeoutError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _valid_commit(sha, repo_id: str, label: str) -> str:
    """The commit id a hub answered, when it is one (40 hex digits): it names folders in
    the cache, so anything else (``../../x``) is refused before a byte is written."""
    if not isinstance(sha, str) or not COMMIT_RE.match(sha):
        raise HubError(f"{label} {repo_id}: the hub at {_endpoint()} answered a commit id that is not 40 hex "
                       f"digits ({sha!r:.60}); nothing was written")
    return sha


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def _under(path: Path, root: Path) -> Path:
    """``path`` resolved, when it lies inside ``root``; a HubError otherwise."""
    real, base = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if real != base and base not in real.parents:
        raise HubError(f"{path} is outside the Hugging Face cache {root}; nothing was written")
    return real


# ---------------------------------------------------------------------------------------
# What to fetch
# ---------------------------------------------------------------------------------------


def _weight_sets(names: list[str], allow_bin: bool = False) -> dict[str | None, list[str]]:
    """Weight files of one folder grouped by variant (None = full precision)."""
    sets: dict[str | None, list[str]] = {}
    for name in names:
        for regex in (_INDEX_RE, _SHARD_RE, _SINGLE_RE):
            m = regex.match(name)
            if m and m.group("stem") in WEIGHT_STEMS:
                sets.setdefault(m.group("variant"), []).append(name)
                break
    if not sets and allow_bin:
        for name in names:
            m = _BIN_RE.match(name)
            if m and m.group("stem") in ("diffusion_pytorch_model", "pytorch_model"):
                sets.setdefault(m.group("variant"), []).append(name)
    return sets


def choose_variant(names: list[str], fp16: bool, allow_bin: bool = False) -> tuple[str | None, list[str]]:
    """(variant, files) of the weights to load from one folder's file ``names``: the fp16
    variant on an fp16 device when the repo has it, else the full-precision files (or the
    fp16 ones when they are all there is). ``(None, [])`` when there are none."""
    sets = _weight_sets(names, allow_bin)
    if fp16 and "fp16" in sets:
        return "fp16", sorted(sets["fp16"])
    if None in sets:
        return None, sorted(sets[None])
    if "fp16" in sets:
        return "fp16", sorted(sets["fp16"])
    return None, []


class Files(tuple):
    """``components`` of a repository of loose files, of which the loaders read exactly
    these paths (e.g. two ``.pth`` files of lllyasviel/Annotators, out of several GB, or the
    one checkpoint of a single-file ControlNet)."""


def select_files(paths: list[str], components: tuple[str, ...] | None, fp16: bool,
                 allow_bin: bool = False) -> list[str]:
    """The repo files the loaders read. ``components``: pipeline folders to load (``unet``,
    ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``...), None for a repo that is
    one model at its root (a ControlNet, a VAE), or :class:`Files` (exactly those files).
    Raises HubError when a component is missing from the repo or has no safetensors
    weights."""
    if isinstance(components, Files):
        absent = [f for f in components if f not in paths]
        if absent:
            raise HubError(f"the repository has no {absent[0]!r}")
        return list(components)
    by_folder: dict[str, list[str]] = {}
    for p in paths:
        parent = str(PurePosixPath(p).parent)
        by_folder.setdefault("" if parent == "." else parent, []).append(PurePosixPath(p).name)
    if components is None and LORA_FILE in by_folder.get("", []) and "config.json" not in by_folder.get("", []):
        return [LORA_FILE]  # a LoRA (fast mode): the one weights file diffusers' load_lora_weights reads
    out = []
    folders = [""] if components is None else list(components)
    if components is not None and "model_index.json" in by_folder.get("", []):
        out.append("model_index.json")
    for folder in folders:
        names = by_folder.get(folder)
        prefix = f"{folder}/" if folder else ""
        if not names:
            raise HubError(f"the repository has no {folder!r} folder")
        if folder.startswith(("tokenizer", "processor")):  # processor: Qwen2-VL's tokenizer + image processor
            out += [prefix + n for n in sorted(names) if not n.startswith(".")]
        elif folder == "scheduler":
            out += [prefix + n for n in sorted(names) if n.endswith(".json")]
        else:
            _variant, weights = choose_variant(names, fp16, allow_bin)
            if "config.json" not in names:
                raise HubError(f"{prefix or 'the repository root '}has no config.json")
            if not weights:
                raise HubError(f"{prefix or 'the repository root '}has no safetensors weights "
                               f"(only {', '.join(sorted(names))})")
            out += [prefix + "config.json"] + [prefix + w for w in weights]
    return out


def check_loadable(folder: Path, components: tuple[str, ...] | None, fp16: bool, allow_bin: bool = False) -> str:
    """Why the local ``folder`` cannot be loaded as these components ('' when it can): each
    model folder has its config and weights, each tokenizer its vocabulary."""
    if isinstance(components, Files):
        return next((f"{f} is missing" for f in components if not (folder / f).is_file()), "")
    if components is None and (folder / LORA_FILE).is_file() and not (folder / "config.json").exists():
        return ""  # a LoRA folder
    for comp in ([""] if components is None else components):
        sub = folder / comp if comp else folder
        if not sub.is_dir():
            return f"{comp or folder.name!r} is missing"
        names = [p.name for p in sub.iterdir() if p.is_file()]
        if comp.startswith(("tokenizer", "processor")):
            if not (all(n in names for n in TOKENIZER_FILES) or "tokenizer.json" in names):
                return f"{comp}/ has no vocab.json + merges.txt (or tokenizer.json)"
        elif comp == "scheduler":
            if "scheduler_config.json" not in names:
                return "scheduler/ has no scheduler_config.json"
        else:
            if "config.json" not in names:
                return f"{comp + '/' if comp else ''}config.json is missing"
            if not choose_variant(names, fp16, allow_bin)[1]:
                return f"{comp + '/' if comp else ''}has no safetensors weights"
    return ""


def weights_variant(folder: Path, fp16: bool, allow_bin: bool = False) -> str | None:
    """The ``variant`` argument for ``from_pretrained`` of a local model folder."""
    names = [p.name for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    return choose_variant(names, fp16, allow_bin)[0]


# ---------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def offline_reason() -> str:
    return os.environ.get("ARCHVIZ_OFFLINE_REASON", "").strip() or "HF_HUB_OFFLINE=1"


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def storage_folder(repo_id: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="model")


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (its nearest existing parent)."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return shutil.disk_usage(path.anchor or ".").free


def human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


@dataclass
class RepoState:
    """One repository: its commit, the files we load with their sizes, and which are missing."""

    repo_id: str
    components: tuple[str, ...] | None
    label: str
    commit: str | None = None
    files: dict[str, int] = field(default_factory=dict)  # path -> size, only what we load
    missing: dict[str, int] = field(default_factory=dict)
    listed: bool = False  # the listing came from the hub in this run

    @property
    def snapshot(self) -> Path | None:
        return storage_folder(self.repo_id) / "snapshots" / self.commit if self.commit else None

    @property
    def complete(self) -> bool:
        return bool(self.commit and self.files) and not self.missing

    @property
    def cached_bytes(self) -> int:
        return sum(size for path, size in self.files.items() if path not in self.missing)


def cached_state(repo_id: str, components, fp16: bool, label: str = "", allow_bin: bool = False) -> RepoState:
    """What the cache alone says about a repository (no network)."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    state = RepoState(repo_id, components, label or repo_id)
    ref = storage_folder(repo_id) / "refs" / "main"
    if not ref.is_file() or not COMMIT_RE.match(ref.read_text().strip()):
        return state  # not cached, or a ref that is no commit id (never used as a path)
    try:
        tree = get_cached_repo_tree(repo_id, revision="main")
    except CachedRepoTreeNotFoundError:
        return state  # a snapshot with no listing: we cannot tell what it lacks
    state.commit = ref.read_text().strip()
    _fill(state, {f.path: f.size for f in tree}, fp16, allow_bin)
    return state


def _fill(state: RepoState, listing: dict[str, int], fp16: bool, allow_bin: bool) -> None:
    try:
        wanted = select_files(list(listing), state.components, fp16, allow_bin)
    except HubError as exc:
        raise HubError(f"{state.label} {state.repo_id}: {exc}") from None
    state.files = {p: listing[p] for p in wanted}
    snap = state.snapshot
    state.missing = {p: s for p, s in state.files.items() if not (snap / p).is_file()}


def list_remote(state: RepoState, fp16: bool, token=None, allow_bin: bool = False,
                cancelled: Callable[[], bool] = lambda: False) -> RepoState:
    """Fill ``state`` from the hub's listing: the repo info (whose commit id must be 40 hex
    digits before it names anything in the cache), then the recursive tree through
    ``snapshot_download`` at that commit with no file selected (it writes the listing into
    the cache; ``refs/main`` is written here, inside the cache, so the next run can check
    completeness offline). Each try has the hub timeout (:func:`configure_client`); a try
    that times out or cannot connect is repeated :func:`hub_tries` times with a growing
    pause, and ``cancelled`` interrupts it at once."""
    from huggingface_hub import HfApi, get_cached_repo_tree, snapshot_download

    seconds = configure_client()
    tries = hub_tries()
    quiet = logging.getLogger("huggingface_hub._snapshot_download")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "No files matched": on purpose, nothing is downloaded here

    def listing() -> str:
        info = HfApi().repo_info(state.repo_id, revision="main", token=token)
        commit = _valid_commit(info.sha, state.repo_id, state.label)
        _under(storage_folder(state.repo_id) / "snapshots" / commit, cache_dir())
        snapshot_download(state.repo_id, revision=commit, allow_patterns=["\0nothing"], token=token,
                          tqdm_class=_SilentBar)
        return commit

    try:
        for attempt in range(tries):
            try:
                commit = _interruptible(listing, cancelled)
                break
            except DownloadCancelled:
                raise
            except HubError:
                raise
            except Exception as exc:  # noqa: BLE001 - every hub failure becomes one clear line
                retry = _timed_out(exc) or _unreachable(exc)
                if not retry or attempt == tries - 1:
                    raise explain(exc, state.repo_id, state.label, token, seconds, tries) from None
                pause = min(8.0, 0.5 * 2 ** attempt)
                log.warning("%s %s: the hub at %s did not answer (try %d of %d); trying again in %g s", state.label,
                            state.repo_id, _endpoint(), attempt + 1, tries, pause)
                _pause(pause, cancelled)
    finally:
        quiet.setLevel(level)
    ref = _under(storage_folder(state.repo_id) / "refs" / "main", cache_dir())
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f".main.{os.getpid()}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref)
    state.commit = commit
    tree = get_cached_repo_tree(state.repo_id, revision=state.commit)
    _fill(state, {f.path: f.size for f in tree}, fp16, allow_bin)
    state.listed = True
    return state


def _pause(seconds: float, cancelled: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cancelled():
            raise DownloadCancelled("the download was cancelled")
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def _unreachable(exc: BaseException) -> bool:
    import httpx2

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (httpx2.ConnectError, httpx2.RemoteProtocolError, httpx2.ReadError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _SilentBar:
    """A progress bar that shows nothing (the listing call's empty bars)."""

    def __init__(self, *args, **kwargs):
        self.n, self.total = 0, kwargs.get("total")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.n += n or 0

    def __getattr__(self, name):  # refresh, close, set_description...
        return lambda *a, **k: None

    @classmethod
    def get_lock(cls):
        return threading.RLock()

    @classmethod
    def set_lock(cls, lock):
        pass


def explain(exc: BaseException, repo_id: str, label: str, token=None, seconds: float | None = None,
            tries: int = 1) -> HubError:
    """One line for a hub failure: no answer in time, gated/private (accept the licence,
    give a token), not found, offline, or the hub's own message."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError)

    if _timed_out(exc) and not offline():
        seconds = seconds if seconds is not None else hub_timeout()
        times = f" ({tries} tries)" if tries > 1 else ""
        return HubTimeout(f"{label} {repo_id} could not be fetched: the hub at {constants.ENDPOINT} did not answer in "
                          f"{seconds:g} s{times}; check the network or proxy, set ARCHVIZ_HUB_TIMEOUT for a slow "
                          "link, or work offline from the cache (HF_HUB_OFFLINE=1)")
    page = f"{constants.ENDPOINT.rstrip('/')}/{repo_id}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    has_token = bool(token or _token_present())
    if isinstance(exc, GatedRepoError) or (isinstance(exc, HfHubHTTPError) and status in (401, 403)
                                           and not isinstance(exc, RepositoryNotFoundError)):
        if has_token:
            return GatedModelError(f"{label} {repo_id} is gated and the access token was refused ({status}): "
                                   f"accept the licence on {page} with the account of that token, or give a "
                                   "token of an account that has")
        return GatedModelError(f"{label} {repo_id} is gated ({status}): accept the licence on {page}, then give "
                               "an access token (HF_TOKEN, or the add-on's Hugging Face Token preference)")
    if isinstance(exc, RepositoryNotFoundError):
        hint = "" if has_token else " (a private repository needs an access token: HF_TOKEN)"
        return HubError(f"{label} {repo_id} was not found on {constants.ENDPOINT}{hint}")
    if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError)) and offline():
        return ModelOfflineError(f"{label} {repo_id} is not in the Hugging Face cache and downloads are off")
    import httpx2

    cause = exc if isinstance(exc, httpx2.TransportError) else exc.__cause__ or exc.__context__
    if cause is not None and (isinstance(exc, LocalEntryNotFoundError) or cause is exc):  # the hub could not be reached
        return HubError(f"{label} {repo_id} could not be fetched: the hub at {constants.ENDPOINT} cannot be "
                        f"reached ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}); "
                        "check the network or proxy, or work offline from the cache (HF_HUB_OFFLINE=1)")
    text = str(exc).strip().splitlines()
    return HubError(f"{label} {repo_id} could not be fetched from {constants.ENDPOINT}: "
                    f"{type(exc).__name__}: {text[0] if text else ''}")


def _token_present() -> bool:
    from huggingface_hub import get_token

    return bool(get_token())


# ---------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------


def ref_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder the cache's ``refs/main`` points at, when there is one."""
    ref = storage_folder(repo_id) / "refs" / "main"
    commit = ref.read_text().strip() if ref.is_file() else ""
    snap = storage_folder(repo_id) / "snapshots" / commit if COMMIT_RE.match(commit) else None
    return snap if snap is not None and snap.is_dir() else None


def cache_problem(state: RepoState, fp16: bool, allow_bin: bool = False) -> str:
    """Why the cache alone cannot serve ``state``'s repository ('' when it can): the files
    its listing says are missing, or, for a snapshot without a listing, what
    :func:`check_loadable` finds. The rule :func:`ensure` uses offline."""
    if state.complete:
        return ""
    if state.missing:
        return f"{len(state.missing)} file(s) missing, e.g. {next(iter(state.missing))}"
    snap = ref_snapshot(state.repo_id)
    if snap is None:
        return "not in the cache"
    return check_loadable(snap, state.components, fp16, allow_bin)


def _offline_snapshot(state: RepoState, fp16: bool, allow_bin: bool) -> Path:
    """Offline, for a repository the cache cannot show complete: a snapshot without a file
    listing (copied by hand, or written by an older huggingface_hub) is used when every file
    the loaders read is in it; anything else is a :class:`ModelOfflineError`."""
    label, repo_id = state.label, state.repo_id
    if state.missing:
        raise ModelOfflineError(f"{label} {repo_id} is incomplete in the Hugging Face cache ({cache_dir()}): "
                                f"{len(state.missing)} file(s) missing, e.g. {next(iter(state.missing))}; "
                                f"downloads are off ({offline_reason()})")
    snap = ref_snapshot(repo_id)
    if snap is None:
        raise ModelOfflineError(f"{label} {repo_id} is not in the Hugging Face cache ({cache_dir()}) and "
                                f"downloads are off ({offline_reason()})")
    problem = check_loadable(snap, state.components, fp16, allow_bin)
    if problem:
        raise ModelOfflineError(f"{label} {repo_id} is incomplete in the Hugging Face cache ({problem}) and "
                                f"downloads are off ({offline_reason()})")
    log.warning("%s %s: the cache has no file listing for it; using its snapshot, which has every file the "
                "loaders read", label, repo_id)
    return snap


class _Tally:
    """Bytes per file and overall for one :func:`ensure` call, sent to ``progress``."""

    def __init__(self, total: int, files_total: int, progress: Progress | None, cancelled: Callable[[], bool]):
        self.total, self.files_total, self.progress, self.cancelled = total, files_total, progress, cancelled
        self.done = 0
        self.files_done = 0
        self.current: dict = {}
        self.lock = threading.Lock()

    def start(self, repo_id: str, path: str, size: int) -> None:
        component = path.split("/")[0] if "/" in path else repo_id.split("/")[-1]
        self.current = {"repo": repo_id, "component": component, "file": path, "file_done": 0, "file_total": size,
                        "file_index": self.files_done + 1}
        self.emit()

    def add(self, n: int) -> None:
        """Count ``n`` bytes that arrived, before they are written: a file may not grow past
        the size its listing gave, and the disk must keep room for the rest."""
        if self.cancelled():
            raise DownloadCancelled("the download was cancelled")
        with self.lock:
            listed = self.current.get("file_total", 0)
            would = self.current.get("file_done", 0) + n
            if n > 0 and would > listed:
                raise OversizeDownload(
                    f"{self.current.get('repo')} {self.current.get('file')}: the hub sent more than the {listed} "
                    f"bytes ({human(listed)}) its listing gives for this file; the download was stopped and "
                    "the partial file removed")
            if n > 0:
                free = free_bytes(cache_dir())
                rest = self.total - self.done
                if free - n < rest + MIN_FREE_WHILE_DOWNLOADING:
                    raise DiskSpaceError(
                        f"not enough free disk space to go on downloading: {rest} bytes ({human(rest)}) still to "
                        f"write in {cache_dir()}, {free} bytes ({human(free)}) free now (another program is "
                        f"filling the disk); free some space or set HF_HOME to a larger disk")
            self.done += n
            self.current["file_done"] = would
        self.emit()

    def finish_file(self) -> None:
        self.files_done += 1

    def snapshot(self) -> dict:
        return {**self.current, "done": self.done, "total": self.total, "files_done": self.files_done,
                "files_total": self.files_total}

    def emit(self) -> None:
        if self.progress:
            self.progress(self.snapshot())

    def bar_class(self):
        tally = self

        class Bar:  # what hf_hub_download's http_get drives: update(n) with each chunk
            def __init__(self, *args, **kwargs):
                self.n = kwargs.get("initial", 0) or 0
                self.total = kwargs.get("total")

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def update(self, n=1):
                n = int(n or 0)
                self.n += n
                tally.add(n)

            def __getattr__(self, name):
                return lambda *a, **k: None

        return Bar


def remove_litter(repo_id: str) -> int:
    """Delete ``<etag>.<id>.incomplete`` files whose blob is complete (what a killed
    download leaves behind). Returns how many were deleted."""
    blobs = storage_folder(repo_id) / "blobs"
    removed = 0
    if not blobs.is_dir():
        return 0
    for path in blobs.glob("*.incomplete"):
        etag = path.name.split(".", 1)[0]
        if (blobs / etag).is_file():
            try:
                path.unlink()
                removed += 1
            except OSError as exc:
                log.warning("could not delete %s: %s", path, exc.strerror)
    return removed


def _remove_oversize(repo_id: str, listed: int) -> None:
    """Delete the repository's partial downloads that hold the listed size or more: the
    hub sent a body longer than its listing, and huggingface_hub would otherwise take such a
    file as finished on the next try."""
    blobs = storage_folder(repo_id) / "blobs"
    for path in blobs.glob("*.incomplete") if blobs.is_dir() else ():
        try:
            if path.stat().st_size >= listed:
                path.unlink()
        except OSError as exc:
            log.warning("could not delete %s: %s", path, exc.strerror)


def ensure(needs: list[tuple[str, tuple[str, ...] | None, str]], fp16: bool, progress: Progress | None = None,
           token=None, allow_bin: Callable[[str], bool] = lambda _ref: False,
           cancelled: Callable[[], bool] = lambda: False) -> dict:
    """Make every ``(repo_id, components, label)`` a complete snapshot in the cache.

    Returns ``{"snapshots": {repo_id: Path}, "bytes_fetched": int, "files_fetched": int,
    "bytes_total": int}``. Cached complete snapshots cost no network at all; offline, a
    missing or incomplete one is a :class:`ModelOfflineError`."""
    from huggingface_hub import hf_hub_download

    states, unlisted = [], {}
    for repo_id, components, label in needs:
        state = cached_state(repo_id, components, fp16, label, allow_bin(repo_id))
        if not state.complete:
            if offline():
                unlisted[repo_id] = _offline_snapshot(state, fp16, allow_bin(repo_id))
                continue
            list_remote(state, fp16, token, allow_bin(repo_id), cancelled)
        states.append(state)
    todo = [(s, p, size) for s in states for p, size in s.missing.items()]
    needed = sum(size for _s, _p, size in todo)
    result = {"snapshots": {**{s.repo_id: s.snapshot for s in states}, **unlisted}, "bytes_fetched": 0,
              "files_fetched": 0, "bytes_total": needed}
    if not todo:
        return result
    free = free_bytes(cache_dir())
    if needed > free:
        raise DiskSpaceError(f"not enough free disk space for the download: {needed} bytes ({human(needed)}) "
                             f"needed in {cache_dir()}, {free} bytes ({human(free)}) free; free some space or "
                             "set HF_HOME to a larger disk")
    log.info("downloading %d file(s), %s, into %s", len(todo), human(needed), cache_dir())
    tally = _Tally(needed, len(todo), progress, cancelled)
    for state, path, size in todo:
        if cancelled():
            raise DownloadCancelled("the download was cancelled")
        tally.start(state.repo_id, path, size)
        seconds = configure_client()
        try:
            _interruptible(lambda: hf_hub_download(state.repo_id, path, revision=state.commit, token=token,
                                                   tqdm_class=tally.bar_class(), etag_timeout=seconds), cancelled)
        except OversizeDownload:
            _remove_oversize(state.repo_id, size)
            raise
        except HubError:
            raise
        except Exception as exc:  # noqa: BLE001 - one clear line, whatever the hub did
            raise explain(exc, state.repo_id, state.label, token, seconds) from None
        tally.finish_file()
        tally.emit()
    for state in states:
        _fill(state, dict(state.files), fp16, allow_bin(state.repo_id))
        remove_litter(state.repo_id)
        if state.missing:
            raise HubError(f"{state.label} {state.repo_id}: still missing after the download: "
                           f"{', '.join(sorted(state.missing))}")
    result.update(bytes_fetched=tally.done, files_fetched=tally.files_done)
    log.info("fetched %d file(s), %d bytes (%s)", tally.files_done, tally.done, human(tally.done))
    return result
