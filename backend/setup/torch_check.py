"""What the backend's Python says about torch, as one JSON line on stdout: its version, CUDA
build and the device ``auto`` picks (or the import error). Run by
:func:`archviz_controlnet.core.backend_setup.check_torch` in a fresh venv, as source text
with ``python -c``: it imports nothing of ours, because the package need not be installed
there yet."""

import json
import platform
import sys


def main():
    out = {"python": sys.version.split()[0]}
    try:
        import torch
    except Exception as exc:
        out["error"] = "%s: %s" % (type(exc).__name__, exc)
        print(json.dumps(out))
        raise SystemExit(0)
    out["torch"] = torch.__version__
    out["cuda_build"] = torch.version.cuda
    cuda = torch.cuda.is_available()
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    out["cuda_available"], out["mps_available"] = cuda, mps
    if cuda:
        props = torch.cuda.get_device_properties(0)
        out.update(device="cuda", device_name=props.name, vram_mib=props.total_memory // 2**20)
    elif mps:
        out.update(device="mps", device_name="Apple GPU (MPS)")
    else:
        out.update(device="cpu", device_name=platform.processor() or platform.machine() or "CPU")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
