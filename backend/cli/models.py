"""``archviz models list | download NAME... | verify [NAME...] | remove NAME...``: the hub
models each family needs, what of them is in the Hugging Face cache, and fetching or
dropping them ahead of a sweep.

Names (``archviz models list`` shows them): ``sd15`` and ``sdxl`` are what a default sweep of
that family loads (base model, VAE, depth and line ControlNets); ``sd15-base``,
``sd15-depth``, ``sdxl-union``... are single repositories. Downloads are whole snapshots of
only the files the backend loads (:mod:`.hub`), in the precision the backend uses on this
machine (``--precision`` to choose). Exit codes: 0 done, 1 failed (the message says why), 2
an unknown name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="what each family needs, what is cached, the sizes")
    p.add_argument("--remote", action="store_true",
                   help="ask the hub for the sizes of what is not cached yet (online only)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = sub.add_parser("download", help="fetch models into the Hugging Face cache, with progress")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--progress", choices=("bar", "json"), default="bar",
                   help="a progress bar (default) or one JSON line per update (for the add-on)")
    p = sub.add_parser("verify", help="check cached models against the hub's listing and their sha256")
    p.add_argument("names", nargs="*", metavar="NAME", help="default: every cached model")
    p = sub.add_parser("remove", help="delete models from the Hugging Face cache")
    p.add_argument("names", nargs="+", metavar="NAME")
    for p in sub.choices.values():
        p.add_argument("--precision", choices=("auto", "fp16", "fp32"), default="auto",
                       help="weights to fetch or check: auto = what the backend runs on this machine's device")


def run(args):
    from ..models import hub
    from ..models import registry as M

    names = getattr(args, "names", None) or []
    unknown = [n for n in names if n not in M.CATALOG]
    if unknown:
        print(f"archviz models: unknown model {unknown[0]!r} (known: {', '.join(M.CATALOG)})", file=sys.stderr)
        return EXIT_BAD_INPUT
    fp16 = fp16_for(args.precision)
    try:
        return {"list": _list, "download": _download, "verify": _verify, "remove": _remove}[args.action](
            args, names, fp16, hub, M)
    except hub.HubError as exc:
        print(f"archviz models: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except M.ModelNotFoundError as exc:
        print(f"archviz models: {exc}", file=sys.stderr)
        return EXIT_FAILED


def fp16_for(precision: str) -> bool:
    """fp16 weights for ``precision`` (auto: what the backend runs on this machine's device)."""
    if precision != "auto":
        return precision == "fp16"
    from ..engine.runner import Engine

    return "float16" in str(Engine("auto").dtype)


def _repos(names, M):
    """Unique (repo, components, label) of ``names`` in catalog order."""
    seen, out = set(), []
    for name in names:
        for entry in M.CATALOG[name]:
            if entry[0] not in seen:
                seen.add(entry[0])
                out.append(entry)
    return out


def _describe(state, hub) -> str:
    if state.complete:
        return f"cached, {hub.human(state.cached_bytes)}"
    if state.commit and len(state.missing) == len(state.files):
        return f"not cached: {len(state.files)} file(s), {hub.human(sum(state.missing.values()))} to download"
    if state.commit and state.missing:
        return (f"incomplete: {len(state.missing)} of {len(state.files)} file(s) missing "
                f"({hub.human(sum(state.missing.values()))} to download)")
    if hub.storage_folder(state.repo_id).is_dir():
        return "in the cache without a file listing (a download completes and checks it)"
    return "not cached"


def _list(args, names, fp16, hub, M):
    rows = []
    for name, entries in M.CATALOG.items():
        for repo_id, components, label in entries:
            state = hub.cached_state(repo_id, components, fp16, label)
            remote_error = ""
            if args.remote and not state.complete and not hub.offline():
                try:
                    hub.list_remote(state, fp16)
                except hub.HubError as exc:  # one repo the hub refuses does not hide the others
                    remote_error = str(exc).replace(f"{label} {repo_id} ", "")
            status = _describe(state, hub) + (f" (hub: {remote_error})" if remote_error else "")
            rows.append({"name": name, "repo": repo_id, "label": label, "complete": state.complete,
                         "cached_bytes": state.cached_bytes if state.commit else 0,
                         "missing_bytes": sum(state.missing.values()) if state.commit else None,
                         "status": status})
    if args.json:
        print(json.dumps({"cache": str(hub.cache_dir()), "fp16": fp16, "offline": hub.offline(), "models": rows}))
        return 0
    print(f"Hugging Face cache: {hub.cache_dir()} ({hub.human(hub.free_bytes(hub.cache_dir()))} free); "
          f"weights: {'fp16' if fp16 else 'fp32'}{'; offline' if hub.offline() else ''}")
    current = None
    for row in rows:
        if row["name"] != current:
            current = row["name"]
            parts = [r for r in rows if r["name"] == current]
            ready = "ready" if all(r["complete"] for r in parts) else "not ready"
            print(f"{current}: {ready}")
        print(f"  {row['label']:<26} {row['repo']:<48} {row['status']}")
    return 0


def _download(args, names, fp16, hub, M):
    needs = _repos(names, M)
    bar, last = None, {"t": 0.0, "file": None}

    def progress(d):
        nonlocal bar
        if args.progress == "json":
            now = time.monotonic()
            if d["file"] != last["file"] or now - last["t"] > 0.2 or d["done"] == d["total"]:
                last.update(t=now, file=d["file"])
                print(json.dumps({"download": d}), flush=True)
            return
        from tqdm import tqdm

        if bar is None:
            bar = tqdm(total=d["total"], unit="B", unit_scale=True, desc="downloading")
        bar.set_description_str(f"downloading {d['component']}", refresh=False)
        bar.set_postfix_str(f"{d['file']} {hub.human(d['file_done'])}/{hub.human(d['file_total'])}, "
                            f"file {d['file_index']}/{d['files_total']}", refresh=False)
        bar.update(d["done"] - bar.n)

    try:
        result = M.fetch(needs, "float16" if fp16 else "float32", progress)
    finally:
        if bar is not None:
            bar.close()
    if args.progress == "json":
        print(json.dumps({"done": {"bytes_fetched": result["bytes_fetched"], "files_fetched": result["files_fetched"],
                                   "names": names}}), flush=True)
        return 0
    for repo_id, folder in result["snapshots"].items():
        print(f"{repo_id}: {folder}")
    print(f"fetched {result['bytes_fetched']} bytes ({hub.human(result['bytes_fetched'])}) in "
          f"{result['files_fetched']} file(s); {', '.join(names)} ready"
          + ("" if result["files_fetched"] else " (everything was cached already)"))
    return 0


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(args, names, fp16, hub, M):
    entries = _repos(names or list(M.CATALOG), M)
    checked, problems = 0, []
    for repo_id, components, label in entries:
        state = hub.cached_state(repo_id, components, fp16, label)
        if not names and not state.commit:
            if hub.storage_folder(repo_id).is_dir():
                problems.append(f"{repo_id}: no file listing in the cache; run archviz models download "
                                f"{M.catalog_name(repo_id)} to complete and check it")
            continue
        if not state.commit:
            problems.append(f"{repo_id}: not cached")
            continue
        checked += 1
        for path in state.missing:
            problems.append(f"{repo_id}: {path} is missing")
        for path, size in state.files.items():
            if path in state.missing:
                continue
            local = state.snapshot / path
            real = os.path.realpath(local)
            if os.path.getsize(real) != size:
                problems.append(f"{repo_id}: {path} is {os.path.getsize(real)} bytes, the hub lists {size}")
                continue
            blob = os.path.basename(real)
            if len(blob) == 64 and all(c in "0123456789abcdef" for c in blob) and _sha256(real) != blob:
                problems.append(f"{repo_id}: {path} does not match its sha256 (corrupt); run archviz models "
                                f"remove {M.catalog_name(repo_id)} and download it again")
        hub.remove_litter(repo_id)
    for line in problems:
        print(f"archviz models verify: {line}", file=sys.stderr)
    print(f"{checked} model(s) checked, {len(problems)} problem(s)")
    return EXIT_FAILED if problems else 0


def _remove(args, names, fp16, hub, M):
    freed = 0
    for repo_id, _components, _label in _repos(names, M):
        folder = hub.storage_folder(repo_id)
        if not folder.is_dir():
            print(f"{repo_id}: not cached")
            continue
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
        shutil.rmtree(folder)
        freed += size
        print(f"{repo_id}: removed ({hub.human(size)})")
    print(f"freed {freed} bytes ({hub.human(freed)})")
    return 0
