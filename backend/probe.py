"""What the backend's Python can do, as one JSON object on stdout (``archviz doctor`` runs
``python -m archviz_controlnet.backend.probe`` in the backend's interpreter).

torch and the device ``auto`` picks, the backend packages, the Hugging Face cache (folder,
free space, which model families' snapshots are complete, via huggingface_hub's cache
scan), whether a token is set (yes/no only: the token itself is never read out) and
whether the hub may be reached. Every part is reported even when another fails.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import sys

from . import models as M

#: What each real family needs for the default controls (depth + lines), as
#: (repo id, kind): "base-sd15" / "base-sdxl" pipelines, "controlnet", "vae".
FAMILY_REPOS = {
    "sd15": [(M.SD15_BASE, "base-sd15"), (M.SD15_CONTROLNETS["depth"], "controlnet"),
             (M.SD15_CONTROLNETS["lines"], "controlnet")],
    "sdxl": [(M.SDXL_BASE, "base-sdxl"), (M.SDXL_VAE, "vae"), (M.SDXL_CONTROLNETS["depth"], "controlnet"),
             (M.SDXL_CONTROLNETS["lines"], "controlnet")],
}

_COMPONENTS = {
    "base-sd15": ("unet", "vae", "text_encoder"),
    "base-sdxl": ("unet", "vae", "text_encoder", "text_encoder_2"),
}
_TOKENIZERS = {"base-sd15": ("tokenizer",), "base-sdxl": ("tokenizer", "tokenizer_2")}


def snapshot_missing(files: set[str], kind: str) -> list[str]:
    """What a snapshot (its files as repo-relative paths) lacks for the loader: each
    model folder's ``config.json`` and safetensors weights, the tokenizers' vocab and
    merges, the scheduler config. Empty when complete."""
    def has_weights(folder: str) -> bool:
        prefix = f"{folder}/" if folder else ""
        return any(f.startswith(prefix) and "/" not in f[len(prefix):] and f.endswith(".safetensors") for f in files)

    missing = []
    folders = _COMPONENTS.get(kind, ("",))
    for folder in folders:
        config = f"{folder}/config.json" if folder else "config.json"
        if config not in files:
            missing.append(config)
        if not has_weights(folder):
            missing.append(f"{folder or '.'}/*.safetensors")
    for tok in _TOKENIZERS.get(kind, ()):
        missing += [f"{tok}/{name}" for name in ("vocab.json", "merges.txt") if f"{tok}/{name}" not in files]
    if kind.startswith("base") and "scheduler/scheduler_config.json" not in files:
        missing.append("scheduler/scheduler_config.json")
    return missing


def cached_repos(cache_dir: str) -> dict:
    """repo id -> {"files": set of paths of its most complete revision, "bytes": size on disk}."""
    from huggingface_hub import scan_cache_dir

    out = {}
    if not os.path.isdir(cache_dir):
        return out
    info = scan_cache_dir(cache_dir)
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        best: set[str] = set()
        for rev in repo.revisions:
            files = {os.path.relpath(f.file_path, rev.snapshot_path).replace(os.sep, "/") for f in rev.files}
            if len(files) > len(best):
                best = files
        out[repo.repo_id] = {"files": best, "bytes": repo.size_on_disk}
    return out


def families(cache_dir: str) -> dict:
    """Per real family: each repo's state and whether the family can generate offline."""
    repos = cached_repos(cache_dir)
    out = {}
    for family, needed in FAMILY_REPOS.items():
        states = []
        for repo_id, kind in needed:
            found = repos.get(repo_id)
            missing = snapshot_missing(found["files"], kind) if found else ["(not in the cache)"]
            states.append({"repo": repo_id, "cached": found is not None, "complete": not missing,
                           "missing": missing[:4], "bytes": found["bytes"] if found else 0})
        out[family] = {"ready": all(s["complete"] for s in states), "repos": states}
    return out


def _version(name: str) -> str | None:
    try:
        module = importlib.import_module(name)
    except Exception:  # a package that is missing or broken cannot serve either
        return None
    return getattr(module, "__version__", "?")


def probe() -> dict:
    out: dict = {"python": sys.version.split()[0], "executable": sys.executable}
    try:
        import torch

        cuda = torch.cuda.is_available()
        mps_backend = getattr(torch.backends, "mps", None)
        mps = bool(mps_backend is not None and mps_backend.is_available())
        t = {"ok": True, "torch": torch.__version__, "cuda_build": torch.version.cuda}
        if cuda:
            props = torch.cuda.get_device_properties(0)
            t.update(device="cuda", device_name=props.name, vram_mib=props.total_memory // 2**20)
        elif mps:
            t.update(device="mps", device_name="Apple GPU (MPS)")
        else:
            t.update(device="cpu", device_name=platform.processor() or platform.machine())
    except Exception as exc:  # torch missing or broken: say so, keep probing
        t = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    out["torch"] = t
    out["modules"] = {name: _version(name) for name in ("diffusers", "transformers", "huggingface_hub",
                                                        "safetensors", "fastapi", "uvicorn")}
    try:
        from huggingface_hub import constants, get_token

        cache = constants.HF_HUB_CACHE
        out["hf_cache"] = cache
        existing = cache
        while existing and not os.path.exists(existing):
            existing = os.path.dirname(existing)
        out["hf_free_bytes"] = shutil.disk_usage(existing or ".").free
        out["token"] = get_token() is not None  # presence only
        out["offline"] = bool(constants.HF_HUB_OFFLINE)
        out["families"] = families(cache)
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        out["hub_error"] = f"{type(exc).__name__}: {exc}"
    from . import tiny

    out["tiny"] = {"root": str(tiny.tiny_root()), "built": tiny.tiny_root().is_dir(),
                   "buildable": bool(t.get("ok") and out["modules"]["diffusers"] and out["modules"]["transformers"])}
    return out


def main() -> int:
    print(json.dumps(probe()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
