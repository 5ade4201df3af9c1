"""What the backend's Python can do, as one JSON object on stdout (``archviz doctor`` runs
``python -m archviz_controlnet.backend.setup.probe`` in the backend's interpreter).

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

def families(fp16: bool) -> dict:
    """Per real family (``archviz models`` names, :data:`.models.CATALOG`): each repo's state
    as :func:`.hub.cache_problem` judges it, the rule downloads and offline loads use, and
    whether the family can generate from the cache alone."""
    from ..models import hub
    from ..models import registry as M  # needs the backend's packages (Pillow...): imported here, so a bare
    # Python still gets its torch and packages reported

    out = {}
    for family in M.FAMILY_NAMES:
        states = []
        for repo_id, components, label in M.CATALOG[family]:
            state = hub.cached_state(repo_id, components, fp16, label)
            problem = hub.cache_problem(state, fp16)
            cached = hub.storage_folder(repo_id).is_dir()
            states.append({"repo": repo_id, "cached": cached, "complete": not problem,
                           "missing": [problem] if problem else [],
                           "bytes": _folder_bytes(hub.storage_folder(repo_id)) if cached else 0})
        out[family] = {"ready": all(s["complete"] for s in states), "repos": states}
    return out


def _folder_bytes(folder) -> int:
    """Bytes on disk under a cache folder (blobs are counted once; snapshots are links)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


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
        from ..cli.models import fp16_for

        out["families"] = families(fp16_for("auto"))
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        out["hub_error"] = f"{type(exc).__name__}: {exc}"
    buildable = bool(t.get("ok") and out["modules"]["diffusers"] and out["modules"]["transformers"])
    try:
        from ..models import tiny

        out["tiny"] = {"root": str(tiny.tiny_root()), "built": tiny.tiny_root().is_dir(), "buildable": buildable}
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        out["tiny"] = {"root": "", "built": False, "buildable": False, "error": f"{type(exc).__name__}: {exc}"}
    return out


def main() -> int:
    print(json.dumps(probe()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
