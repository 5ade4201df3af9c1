"""``archviz doctor``: can a real generation run here, and if not, what to do about it.

:func:`collect` gathers the facts: this machine (OS, ``nvidia-smi``), and what the
backend's Python says about itself (``python -m archviz_controlnet.backend.setup.probe``: torch
and its device, the backend packages, the Hugging Face cache and which families' weights
it holds, token present or not, offline or not). :func:`diagnose` is a pure function of
those facts: the problems, each with its fix, and whether a real generation can run.
:func:`report_lines` is the text that the command prints and the preferences show.

Stdlib only: the add-on's "Doctor" button runs this in Blender's Python.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass

from . import devices
from .backend_setup import PACKAGE_DIR, REQUIREMENTS, default_venv_dir, find_backend_venv, venv_python

EXIT_OK = 0
EXIT_CANNOT_GENERATE = 1
REAL_FAMILIES = ("sd15", "sdxl")
PROBE_MODULE = "archviz_controlnet.backend.setup.probe"


@dataclass(frozen=True)
class Finding:
    severity: str  # "error": no real generation can run | "warning": it runs, but not as it should
    problem: str
    fix: str


def _truthy(value):
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def _hf_cache(env):
    """Where huggingface_hub puts its cache, by its own rules (when it cannot say itself)."""
    if env.get("HF_HUB_CACHE"):
        return env["HF_HUB_CACHE"]
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                              "huggingface")
    return os.path.join(home, "hub")


def _free_bytes(path):
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path or ".").free
    except OSError:
        return None


def run_probe(python, env=None, timeout=300):
    """The backend probe's JSON from ``python``, or (None, why it could not run)."""
    env = dict(os.environ if env is None else env)
    if os.path.basename(PACKAGE_DIR) == "archviz_controlnet":  # an installed extension: put it on the path
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(PACKAGE_DIR), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run([python, "-m", PROBE_MODULE], capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"cannot run {python}: {exc}"
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        said = " | ".join(l.strip() for l in proc.stderr.splitlines()[-3:] if l.strip())
        return None, f"{python} -m {PROBE_MODULE} failed (exit {proc.returncode}): {said}"
    return json.loads(lines[-1]), ""


def collect(python=None, env=None, offline_switch=False, venv_dir=None, blender_online=None, nvidia=None,
            system=None, machine=None):
    """The facts :func:`diagnose` judges, as a JSON-able dict.

    ``python``: the backend's interpreter (default: this one, which is what ``archviz
    sweep`` starts backends with). ``env``: the environment the backend gets (the add-on
    adds HF_HOME and HF_HUB_OFFLINE from its preferences). ``offline_switch``: the add-on's
    Offline preference; ``blender_online``: ``bpy.app.online_access`` (None outside Blender)."""
    env = dict(os.environ if env is None else env)
    python = python or sys.executable
    nvidia = nvidia if nvidia is not None else devices.query_nvidia_smi()
    probe, probe_error = run_probe(python, env)
    venv_dir = venv_dir or find_backend_venv(default_venv_dir())
    cache = (probe or {}).get("hf_cache") or _hf_cache(env)
    return {
        "os": f"{platform.system()} {platform.release()}", "system": system or platform.system(),
        "machine": machine or platform.machine(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "backend_python": python,
        "probe": probe, "probe_error": probe_error,
        "gpus": [g.__dict__ for g in nvidia.gpus], "nvidia_error": nvidia.error,
        "hf_cache": cache,
        "hf_free_bytes": (probe or {}).get("hf_free_bytes", _free_bytes(cache)),
        "token": (probe or {}).get("token", bool(env.get("HF_TOKEN") or os.path.exists(
            os.path.join(os.path.dirname(cache), "token")))),
        "offline_env": _truthy(env.get("HF_HUB_OFFLINE")),
        "offline_switch": bool(offline_switch),
        "blender_online": blender_online,
        "venv_dir": venv_dir, "venv_exists": os.path.exists(venv_python(venv_dir)),
    }


def _gb(n):
    return f"{n / 1e9:.1f} GB" if n is not None else "unknown"


def diagnose(facts):
    """(findings, can_generate): the problems with their fixes, and whether a real (not
    ``tiny``) generation can run with what is here now. Pure."""
    out = []
    probe = facts.get("probe")
    gpus = tuple(devices.GpuInfo(**g) for g in facts.get("gpus") or ())
    setup = ("click Set up Backend in the add-on preferences (it makes a venv with the right torch), or "
             f"{facts['backend_python']} -m pip install -r {REQUIREMENTS}")
    offline = facts.get("offline_env") or facts.get("offline_switch") or facts.get("blender_online") is False
    torch = (probe or {}).get("torch") or {}
    if probe is None:
        out.append(Finding("error", f"the backend's Python cannot run the backend check: {facts.get('probe_error')}",
                           setup))
    else:
        if not torch.get("ok"):
            out.append(Finding("error", f"torch does not import in {facts['backend_python']}: {torch.get('error')}",
                               setup))
        lacking = [m for m, v in (probe.get("modules") or {}).items() if not v]
        if lacking:
            out.append(Finding("error", f"the backend's Python lacks {', '.join(lacking)}", setup))
        if probe.get("hub_error") and (probe.get("modules") or {}).get("huggingface_hub"):
            out.append(Finding("error", f"the Hugging Face cache cannot be read: {probe['hub_error']}",
                               "check HF_HOME / HF_HUB_CACHE (the HF Cache preference) and the folder's permissions"))
    fams = (probe or {}).get("families") or {}
    ready = [f for f in REAL_FAMILIES if (fams.get(f) or {}).get("ready")]
    if probe is not None and fams and not ready:
        partial = [f"{f}: {r['repo']}: {r['missing'][0]}" for f in REAL_FAMILIES
                   for r in (fams.get(f) or {}).get("repos", []) if r["cached"] and not r["complete"]]
        problem = "no real model family is cached (sd15 or sdxl, several GB each)"
        if partial:
            problem += "; incomplete: " + "; ".join(partial)
        fix = "archviz models download sd15 (or Download in the preferences' Models box)"
        if offline:
            fix = ("offline is on (" + ", ".join(w for w, on in (("HF_HUB_OFFLINE", facts.get("offline_env")),
                                                                 ("the add-on's Offline switch", facts.get("offline_switch")),
                                                                 ("Blender's Allow Online Access", facts.get("blender_online") is False))
                                                 if on) + "): allow going online, then " + fix
                   + f"; or copy a Hugging Face cache that has the models into {facts['hf_cache']}")
        out.append(Finding("error", problem, fix))
    if torch.get("ok"):
        warning = devices.cpu_warning(torch.get("device", ""), "auto", facts["system"], facts["machine"], gpus,
                                      torch.get("cuda_build"), torch.get("torch", ""))
        if warning:
            out.append(Finding("warning", warning, "run Set up Backend again (it picks the torch build for this "
                                                   "GPU and driver), or update the NVIDIA driver"))
    free = facts.get("hf_free_bytes")
    if free is not None and free < 15e9 and not ready:
        out.append(Finding("warning", f"only {_gb(free)} free in {facts['hf_cache']} (sd15 needs several GB, "
                                      "sdxl over 10 GB)",
                           "free space there, or point the HF Cache preference / HF_HOME at a larger disk"))
    can_generate = not any(f.severity == "error" for f in out) and bool(ready)
    return out, can_generate


def report_lines(facts, findings, can_generate):
    """The report, one line per fact, then the problems with their fixes, then the verdict."""
    probe = facts.get("probe") or {}
    torch = probe.get("torch") or {}
    gpus = facts.get("gpus") or []
    if torch.get("ok"):
        build = f"CUDA {torch['cuda_build']}" if torch.get("cuda_build") else "CPU-only build" \
            if not torch.get("device") == "mps" else "MPS build"
        torch_line = f"{torch['torch']} ({build}); device {torch['device']} ({torch.get('device_name', '')})"
    else:
        torch_line = f"not usable: {torch.get('error') or facts.get('probe_error')}"
    gpu = gpus[0] if gpus else None
    fams = probe.get("families") or {}

    def family_line(name):
        fam = fams.get(name)
        if not fam:
            return "unknown (the backend check did not run)"
        if fam["ready"]:
            return f"cached ({_gb(sum(r['bytes'] for r in fam['repos']))})"
        have = sum(r["complete"] for r in fam["repos"])
        return f"not cached ({have}/{len(fam['repos'])} repos complete)"

    tiny = probe.get("tiny") or {}
    if tiny.get("buildable"):
        tiny_line = ("works offline (--model tiny; random weights, images are noise; "
                     + ("built" if tiny.get("built") else "built on first use, no download") + ")")
    else:
        tiny_line = "cannot run (the backend packages are missing)"
    if gpu:
        gpu_line = gpu["name"] + (f" (and {len(gpus) - 1} more)" if len(gpus) > 1 else "")
    else:
        gpu_line = (devices.gpu_present(facts["system"], facts["machine"])
                    or f"none ({facts.get('nvidia_error') or 'no NVIDIA GPU'})")
    offline = [w for w, on in (("HF_HUB_OFFLINE=1", facts.get("offline_env")),
                               ("the add-on's Offline switch", facts.get("offline_switch")),
                               ("Blender's Allow Online Access is off", facts.get("blender_online") is False)) if on]
    venv = facts["venv_dir"] + ("" if facts.get("venv_exists") else " (not created yet)")  # Set up Backend's
    if os.path.realpath(facts["backend_python"]).startswith(os.path.realpath(facts["venv_dir"]) + os.sep):
        venv += " (the backend's Python)"
    rows = [
        ("OS", f"{facts['os']} {facts['machine']}"),
        ("Python", facts["python"]),
        ("Backend Python", facts["backend_python"]),
        ("torch", torch_line),
        ("GPU", gpu_line),
        ("Driver", gpu["driver"] if gpu else "-"),
        ("VRAM", f"{gpu['memory_mib'] / 1024:.1f} GB" if gpu and gpu.get("memory_mib") else "-"),
        ("HF cache", f"{facts['hf_cache']} ({_gb(facts.get('hf_free_bytes'))} free)"),
        *((f"Model {f}", family_line(f)) for f in REAL_FAMILIES),
        ("Model tiny", tiny_line),
        ("HF token", "yes" if facts.get("token") else "no"),
        ("Hub access", "offline: " + ", ".join(offline) if offline else "online allowed"),
        ("Backend venv", venv),
    ]
    lines = [f"{name + ':':<16}{value}" for name, value in rows]
    for f in findings:
        lines.append(f"{'ERROR' if f.severity == 'error' else 'WARNING'}: {f.problem}")
        lines.append(f"  fix: {f.fix}")
    if can_generate:
        lines.append("verdict: a real generation can run here")
    else:
        lines.append("verdict: a real generation cannot run here yet"
                     + ("; --model tiny works offline" if tiny.get("buildable") else ""))
    return lines


# ---------------------------------------------------------------------------- the command

def add_arguments(parser):
    parser.add_argument("--python", default=None,
                        help="the backend's Python to check (default: this one, which archviz sweep starts "
                             "backends with)")
    parser.add_argument("--json", action="store_true", help="print the facts and findings as JSON")


def run(args):
    facts = collect(python=args.python)
    findings, ok = diagnose(facts)
    if args.json:
        print(json.dumps({"facts": facts, "findings": [f.__dict__ for f in findings], "can_generate": ok},
                         indent=2, default=str))
    else:
        print("\n".join(report_lines(facts, findings, ok)))
    return EXIT_OK if ok else EXIT_CANNOT_GENERATE
