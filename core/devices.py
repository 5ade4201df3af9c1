"""Which torch build a machine needs, which device a backend runs on, and when to warn.

Everything here is a pure function of facts about the machine: the OS and CPU
architecture (``platform.system()`` / ``platform.machine()``), the NVIDIA GPUs and driver
as ``nvidia-smi`` reports them, and what torch says it can use. The only function that
looks at the machine itself is :func:`query_nvidia_smi`. Stdlib only: the add-on runs this
inside Blender's Python, the backend inside its own.

The torch choice (:func:`choose_torch`):

==============================  =========================================================
machine                         torch build
==============================  =========================================================
Windows/Linux + NVIDIA driver   the newest CUDA build of PyTorch's wheel index whose
                                toolkit the driver supports (:data:`CUDA_BUILDS`)
Windows/Linux + driver too old  CPU build, with a warning naming the driver and the minimum
macOS arm64 (Apple Silicon)     the registry's (PyPI) build: it has MPS
macOS x86_64 (Intel)            the registry's last Intel build (torch 2.2.2), CPU
anything else                   CPU build from PyTorch's CPU index
==============================  =========================================================
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
from dataclasses import dataclass

PYTORCH_INDEX = "https://download.pytorch.org/whl"
TORCH_SPEC = "torch>=2.4"
#: PyTorch stopped publishing macOS x86_64 wheels after 2.2.2.
TORCH_SPEC_MAC_INTEL = "torch==2.2.2"


@dataclass(frozen=True)
class CudaBuild:
    tag: str  # the PyTorch wheel index suffix: cu128 -> https://download.pytorch.org/whl/cu128
    cuda: tuple[int, int]
    linux_driver: tuple[int, ...]  # the toolkit's minimum driver (NVIDIA's CUDA release notes)
    windows_driver: tuple[int, ...]
    aarch64: bool  # PyTorch publishes Linux aarch64 (sbsa) wheels for this build


#: CUDA builds PyTorch publishes wheel indexes for, oldest first, with the driver each
#: toolkit (GA release) needs on Linux x86_64 and Windows ("CUDA Toolkit and Corresponding
#: Driver Versions" in NVIDIA's CUDA release notes).
CUDA_BUILDS: tuple[CudaBuild, ...] = (
    CudaBuild("cu118", (11, 8), (520, 61, 5), (520, 6), False),
    CudaBuild("cu121", (12, 1), (530, 30, 2), (531, 14), False),
    CudaBuild("cu124", (12, 4), (550, 54, 14), (551, 61), False),
    CudaBuild("cu126", (12, 6), (560, 28, 3), (560, 76), True),
    CudaBuild("cu128", (12, 8), (570, 26), (570, 65), True),
    CudaBuild("cu129", (12, 9), (575, 51, 3), (576, 2), True),
    CudaBuild("cu130", (13, 0), (580, 65, 6), (580, 88), True),
)


@dataclass(frozen=True)
class GpuInfo:
    """One NVIDIA GPU as ``nvidia-smi`` reports it."""

    name: str
    driver: str  # "560.94"
    memory_mib: int | None = None
    cuda: str | None = None  # the banner's "CUDA Version: 12.6" (the newest CUDA the driver runs)

    def describe(self) -> str:
        vram = f", {self.memory_mib / 1024:.1f} GB" if self.memory_mib else ""
        return f"{self.name} (driver {self.driver}{vram})"


@dataclass(frozen=True)
class NvidiaSmi:
    """What asking ``nvidia-smi`` gave: the GPUs, or why there are none (``error``)."""

    gpus: tuple[GpuInfo, ...] = ()
    error: str = ""  # "nvidia-smi not found", "nvidia-smi failed (exit 9): ..."


@dataclass(frozen=True)
class TorchChoice:
    build: str  # "cu128" | "cpu" | "mps" (the registry build with MPS) | "registry-cpu"
    spec: str  # the pip requirement for torch
    index_url: str | None  # None: the default registry (PyPI)
    reason: str  # one line: why this build
    warning: str = ""  # loud: a GPU that this build will not use, and why
    gpu: GpuInfo | None = None
    why_not_cuda: str = ""  # with a GPU: why no CUDA build runs on it (the driver)

    def pip_args(self) -> list[str]:
        return [self.spec, *(["--index-url", self.index_url] if self.index_url else [])]


# ---------------------------------------------------------------------------- nvidia-smi

NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]


def parse_version(text: str) -> tuple[int, ...]:
    """``"560.94"`` -> (560, 94); ``"570.86.10"`` -> (570, 86, 10). ValueError names the text."""
    parts = text.strip().split(".")
    if not text.strip() or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a driver version: {text!r}")
    return tuple(int(p) for p in parts)


def _memory_mib(text: str) -> int | None:
    match = re.match(r"\s*(\d+)\s*(MiB)?\s*$", text)
    return int(match.group(1)) if match else None


def parse_nvidia_smi(text: str) -> tuple[GpuInfo, ...]:
    """GPUs from ``nvidia-smi`` output: the query form (``--query-gpu=name,driver_version,
    memory.total --format=csv,noheader[,nounits]``) or the banner that plain ``nvidia-smi``
    prints. Unknown text gives no GPUs."""
    if "Driver Version" in text:
        return _parse_banner(text)
    gpus = []
    for row in csv.reader(io.StringIO(text)):
        row = [c.strip() for c in row]
        if len(row) < 2 or not row[0] or row[0].lower() == "name":
            continue
        try:
            parse_version(row[1])
        except ValueError:
            continue
        gpus.append(GpuInfo(row[0], row[1], _memory_mib(row[2]) if len(row) > 2 else None))
    return tuple(gpus)


def _parse_banner(text: str) -> tuple[GpuInfo, ...]:
    driver = re.search(r"Driver Version:\s*([\d.]+)", text)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", text)
    if not driver:
        return ()
    # GPU rows: "|   0  NVIDIA GeForce RTX 4090      WDDM  |   00000000:01:00.0  On |"
    # followed by a row with the memory: "...  1234MiB / 24564MiB ..."
    lines = text.split("Processes:")[0].splitlines()  # the process table below has GPU numbers too
    gpus = []
    for i, line in enumerate(lines):
        row = re.match(r"\|\s+(\d+)\s+(.+?)\s{2,}(On|Off|WDDM|TCC|MCDM)?\s*(On|Off|WDDM|TCC|MCDM)?\s*\|", line)
        if not row:
            continue
        name = row.group(2).strip()
        memory = None
        if i + 1 < len(lines):
            mem = re.search(r"/\s*(\d+)\s*MiB", lines[i + 1])
            memory = int(mem.group(1)) if mem else None
        gpus.append(GpuInfo(name, driver.group(1), memory, cuda.group(1) if cuda else None))
    if not gpus:  # a banner whose table we could not read: the driver is still a fact
        gpus.append(GpuInfo("NVIDIA GPU", driver.group(1), None, cuda.group(1) if cuda else None))
    return tuple(gpus)


def query_nvidia_smi(timeout: float = 10.0, run=subprocess.run) -> NvidiaSmi:
    """Ask ``nvidia-smi`` for the GPUs. A missing or failing ``nvidia-smi`` is not an
    error here: it means no usable NVIDIA GPU, and ``error`` says which case it was."""
    try:
        proc = run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return NvidiaSmi(error="nvidia-smi not found (no NVIDIA driver installed)")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return NvidiaSmi(error=f"nvidia-smi could not run: {exc}")
    if proc.returncode != 0:
        said = " ".join((proc.stdout + " " + proc.stderr).split())[:200]
        return NvidiaSmi(error=f"nvidia-smi failed (exit {proc.returncode}): {said}")
    gpus = parse_nvidia_smi(proc.stdout)
    if not gpus:
        return NvidiaSmi(error=f"nvidia-smi listed no GPU: {proc.stdout.strip()[:200]!r}")
    return NvidiaSmi(gpus)


# ---------------------------------------------------------------------------- the torch build

def normalize_os(system: str) -> str:
    """``platform.system()`` / ``sys.platform`` -> "windows" | "linux" | "macos" | the name lowercased."""
    s = system.strip().lower()
    if s.startswith(("win", "cygwin", "msys")):
        return "windows"
    if s.startswith("linux"):
        return "linux"
    if s in ("darwin", "macos", "mac"):
        return "macos"
    return s


def normalize_arch(machine: str) -> str:
    """``platform.machine()`` -> "x86_64" | "arm64" | the name lowercased."""
    m = machine.strip().lower()
    if m in ("amd64", "x86_64", "x64"):
        return "x86_64"
    if m in ("arm64", "aarch64", "armv8l"):
        return "arm64"
    return m


def driver_minimum(build: CudaBuild, system: str) -> tuple[int, ...]:
    return build.windows_driver if normalize_os(system) == "windows" else build.linux_driver


def _fmt(version: tuple[int, ...]) -> str:
    """(520, 6) -> "520.06", (575, 51, 3) -> "575.51.03": how NVIDIA writes driver versions."""
    return ".".join([str(version[0]), *(f"{v:02d}" for v in version[1:])])


def cuda_builds_for(system: str, machine: str, driver: str, driver_cuda: str | None = None) -> list[CudaBuild]:
    """The CUDA builds this driver runs, oldest first. ``driver_cuda`` (the banner's "CUDA
    Version") caps them when known; else the driver version is compared with each
    toolkit's minimum."""
    arm = normalize_arch(machine) == "arm64"
    version = parse_version(driver)
    cap = parse_version(driver_cuda)[:2] if driver_cuda else None
    out = []
    for build in CUDA_BUILDS:
        if arm and not build.aarch64:
            continue
        if cap is not None:
            if build.cuda <= cap:
                out.append(build)
        elif version >= driver_minimum(build, system):
            out.append(build)
    return out


def cpu_index(index_override: str = "") -> str:
    return index_override or f"{PYTORCH_INDEX}/cpu"


def choose_torch(system: str, machine: str, nvidia: NvidiaSmi | tuple[GpuInfo, ...] = (),
                 index_override: str = "") -> TorchChoice:
    """The torch build for a machine (the table in this module's docstring).

    ``index_override`` replaces the index URL that would be used (a mirror of the PyTorch
    index, or a fixed ``.../whl/cu124``); the registry builds (macOS) take it too."""
    os_name, arch = normalize_os(system), normalize_arch(machine)
    if isinstance(nvidia, NvidiaSmi):
        gpus, smi_error = nvidia.gpus, nvidia.error
    else:
        gpus, smi_error = tuple(nvidia), ""
    if os_name == "macos":
        index = index_override or None
        if arch == "arm64":
            return TorchChoice("mps", TORCH_SPEC, index, "macOS on Apple Silicon: the registry's torch, "
                                                           "which runs on the GPU through MPS")
        return TorchChoice("registry-cpu", TORCH_SPEC_MAC_INTEL, index,
                           "macOS on Intel: PyTorch's last Intel Mac build (2.2.2) runs on the CPU only")
    if os_name in ("windows", "linux") and gpus:
        gpu = gpus[0]
        try:
            builds = cuda_builds_for(os_name, arch, gpu.driver, gpu.cuda)
        except ValueError:
            builds = None
        if builds:
            build = builds[-1]
            return TorchChoice(build.tag, TORCH_SPEC, index_override or f"{PYTORCH_INDEX}/{build.tag}",
                               f"{gpu.name} with driver {gpu.driver}: the newest CUDA build it supports is "
                               f"{build.tag} (CUDA {build.cuda[0]}.{build.cuda[1]})", gpu=gpu)
        if builds is None:
            why = f"nvidia-smi reported a driver version that cannot be read ({gpu.driver!r})"
        else:
            eligible = [b for b in CUDA_BUILDS if b.aarch64 or arch != "arm64"]
            oldest = eligible[0]
            why = (f"driver {gpu.driver} is older than {_fmt(driver_minimum(oldest, os_name))}, the minimum for "
                   f"PyTorch's oldest CUDA build ({oldest.tag}); update the NVIDIA driver and run Set up Backend "
                   "again")
        return TorchChoice("cpu", TORCH_SPEC, cpu_index(index_override), f"{gpu.name}: CPU build, {why}",
                           warning=f"The GPU {gpu.name} will NOT be used: {why}", gpu=gpu, why_not_cuda=why)
    where = {"windows": "Windows", "linux": "Linux"}.get(os_name, system)
    why = smi_error or "no NVIDIA GPU"
    return TorchChoice("cpu", TORCH_SPEC, cpu_index(index_override), f"{where} {arch}, {why}: the CPU build")


# ---------------------------------------------------------------------------- the device

def gpu_present(system: str, machine: str, gpus: tuple[GpuInfo, ...] = ()) -> str:
    """A GPU torch could use on this machine, described in a few words ("" when none):
    an NVIDIA GPU that ``nvidia-smi`` lists, or the GPU of an Apple Silicon Mac."""
    if gpus:
        return gpus[0].name
    if normalize_os(system) == "macos" and normalize_arch(machine) == "arm64":
        return "the Apple Silicon GPU (MPS)"
    return ""


def choose_device(requested: str, cuda_available: bool, mps_available: bool) -> tuple[str, str]:
    """(device, dtype) for ``requested`` ("auto" | "cuda" | "mps" | "cpu").

    ``auto`` takes cuda, then mps, then cpu; the dtype follows the device: float16 on
    cuda and mps, float32 on the CPU. Asking for a device torch cannot use is a ValueError
    that names it."""
    if requested not in ("auto", "cuda", "mps", "cpu"):
        raise ValueError(f"device: expected auto, cuda, mps or cpu, got {requested!r}")
    if requested == "auto":
        requested = "cuda" if cuda_available else "mps" if mps_available else "cpu"
    elif requested == "cuda" and not cuda_available:
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    elif requested == "mps" and not mps_available:
        raise ValueError("--device mps was asked for but torch sees no MPS device (Apple Silicon, macOS 12.3+)")
    return requested, ("float32" if requested == "cpu" else "float16")


def cpu_warning(device: str, requested: str, system: str, machine: str, gpus: tuple[GpuInfo, ...] = (),
                torch_cuda: str | None = None, torch_version: str = "") -> str:
    """The warning to show when the backend runs on the CPU although the machine has a GPU,
    saying why when that can be known ("" when there is nothing to warn about).

    ``torch_cuda``: ``torch.version.cuda`` (None for a CPU or MPS build)."""
    if device != "cpu":
        return ""
    gpu = gpu_present(system, machine, gpus)
    if not gpu:
        return ""
    head = f"running on the CPU although this machine has {gpu}"
    if requested == "cpu":
        return f"{head}: the CPU was asked for (--device cpu / the Device preference); expect minutes per image"
    os_name = normalize_os(system)
    if os_name == "macos":
        why = (f"torch {torch_version} cannot use MPS (it needs macOS 12.3 or newer and an arm64 Python)"
               if torch_version else "torch cannot use MPS")
        return f"{head}: {why}; expect minutes per image"
    g = gpus[0]
    if not torch_cuda:
        build = f"torch {torch_version}" if torch_version else "torch"
        choice = choose_torch(system, machine, gpus)
        if choice.build == "cpu":  # no CUDA build runs on this driver: the driver is the reason
            return f"{head}: {build} is a CPU-only build because {choice.why_not_cuda}"
        return (f"{head}: {build} is a CPU-only build. Run Set up Backend again (it installs the {choice.build} "
                f"build for driver {g.driver}) or install torch from {choice.index_url}; expect minutes per image")
    try:
        cuda = tuple(int(p) for p in torch_cuda.split(".")[:2])
        build = next((b for b in CUDA_BUILDS if b.cuda == cuda), None)
        needed = driver_minimum(build, os_name) if build else None
        too_old = needed is not None and parse_version(g.driver) < needed
    except ValueError:
        too_old, needed = False, None
    if too_old:
        return (f"{head}: torch is built for CUDA {torch_cuda}, which needs driver {_fmt(needed)} or newer, and "
                f"this driver is {g.driver}. Update the NVIDIA driver, or run Set up Backend again for a build "
                "this driver supports")
    return (f"{head}: torch (CUDA {torch_cuda}) sees no CUDA device although driver {g.driver} is installed "
            "(CUDA_VISIBLE_DEVICES, a GPU in use by another program, or a broken driver install)")
