"""The torch build and the device as pure functions of the machine's facts (core/devices.py).

A Windows PC, an NVIDIA driver or a Mac cannot exist on this machine, so each case feeds
the function what ``platform`` and ``nvidia-smi`` would say there; the text below is in
the formats ``nvidia-smi`` prints."""

import subprocess

import pytest

from archviz_controlnet.core import devices as D

# nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
QUERY_RTX4090_WIN = "NVIDIA GeForce RTX 4090, 572.83, 24564 MiB\n"
QUERY_TWO_H100 = "NVIDIA H100 80GB HBM3, 570.124.06, 81559 MiB\nNVIDIA H100 80GB HBM3, 570.124.06, 81559 MiB\n"
QUERY_OLD_WIN = "NVIDIA GeForce GTX 1060 6GB, 472.12, 6144 MiB\n"
QUERY_GH200 = "NVIDIA GH200 480GB, 560.35.03, 97871 MiB\n"
# the same with --format=csv (a header) and nounits
QUERY_HEADER_NOUNITS = "name, driver_version, memory.total [MiB]\nNVIDIA RTX A4000, 535.183.01, 16376\n"

# plain nvidia-smi (Windows, driver 560.94)
BANNER_WIN = """\
Tue Dec  1 21:02:11 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 560.94                 Driver Version: 560.94         CUDA Version: 12.6     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                  Driver-Model | Bus-Id          Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |
|                                         |                        |               MIG M. |
|=========================================+========================+======================|
|   0  NVIDIA GeForce RTX 3060      WDDM  |   00000000:01:00.0  On |                  N/A |
|  0%   41C    P8             13W /  170W |     812MiB /  12288MiB |      4%      Default |
|                                         |                        |                  N/A |
+-----------------------------------------+------------------------+----------------------+

+-----------------------------------------------------------------------------------------+
| Processes:                                                                              |
|  GPU   GI   CI        PID   Type   Process name                              GPU Memory |
|        ID   ID                                                               Usage      |
|=========================================================================================|
|    0   N/A  N/A      1234    C+G   C:\\Windows\\explorer.exe                    N/A      |
+-----------------------------------------------------------------------------------------+
"""

# plain nvidia-smi (Linux, older table layout)
BANNER_LINUX_OLD = """\
+-----------------------------------------------------------------------------+
| NVIDIA-SMI 525.85.12    Driver Version: 525.85.12    CUDA Version: 12.0     |
|-------------------------------+----------------------+----------------------+
| GPU  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncorr. ECC |
| Fan  Temp  Perf  Pwr:Usage/Cap|         Memory-Usage | GPU-Util  Compute M. |
|===============================+======================+======================|
|   0  Tesla T4            Off  | 00000000:00:04.0 Off |                    0 |
| N/A   40C    P8     9W /  70W |      0MiB / 15360MiB |      0%      Default |
+-------------------------------+----------------------+----------------------+
"""


def smi(text):
    return D.NvidiaSmi(D.parse_nvidia_smi(text))


# ------------------------------------------------------------------ parsing nvidia-smi

def test_parse_query_form():
    (gpu,) = D.parse_nvidia_smi(QUERY_RTX4090_WIN)
    assert gpu == D.GpuInfo("NVIDIA GeForce RTX 4090", "572.83", 24564)
    assert len(D.parse_nvidia_smi(QUERY_TWO_H100)) == 2
    (a4000,) = D.parse_nvidia_smi(QUERY_HEADER_NOUNITS)
    assert (a4000.name, a4000.driver, a4000.memory_mib) == ("NVIDIA RTX A4000", "535.183.01", 16376)
    assert D.parse_nvidia_smi("") == () and D.parse_nvidia_smi("No devices were found\n") == ()


def test_parse_banner_forms():
    (gpu,) = D.parse_nvidia_smi(BANNER_WIN)  # the process table's "0" row is not a GPU
    assert gpu == D.GpuInfo("NVIDIA GeForce RTX 3060", "560.94", 12288, "12.6")
    (t4,) = D.parse_nvidia_smi(BANNER_LINUX_OLD)
    assert t4 == D.GpuInfo("Tesla T4", "525.85.12", 15360, "12.0")


def test_query_nvidia_smi_missing_failing_and_working():
    def missing(*a, **k):
        raise FileNotFoundError("nvidia-smi")

    def failing(cmd, **k):
        return subprocess.CompletedProcess(cmd, 9, "NVIDIA-SMI has failed because it couldn't communicate with "
                                                   "the NVIDIA driver.", "")

    def working(cmd, **k):
        assert cmd == D.NVIDIA_SMI_QUERY
        return subprocess.CompletedProcess(cmd, 0, QUERY_RTX4090_WIN, "")

    assert D.query_nvidia_smi(run=missing).error.startswith("nvidia-smi not found")
    failed = D.query_nvidia_smi(run=failing)
    assert failed.gpus == () and "exit 9" in failed.error and "couldn't communicate" in failed.error
    assert D.query_nvidia_smi(run=working).gpus[0].driver == "572.83"
    # and the real one on this machine, which has no NVIDIA driver
    real = D.query_nvidia_smi()
    assert real.gpus == () and real.error


# ------------------------------------------------------------------ the torch choice, one test per platform

def test_windows_nvidia_new_driver_gets_newest_cuda_build():
    choice = D.choose_torch("Windows", "AMD64", smi(QUERY_RTX4090_WIN))
    assert choice.build == "cu128"  # 572.83 >= 570.65 (12.8) but < 576.02 (12.9)
    assert choice.index_url == "https://download.pytorch.org/whl/cu128"
    assert choice.pip_args() == ["torch>=2.4", "--index-url", "https://download.pytorch.org/whl/cu128"]
    assert not choice.warning and "RTX 4090" in choice.reason
    # the banner's "CUDA Version" caps the choice the same way
    assert D.choose_torch("Windows", "AMD64", smi(BANNER_WIN)).build == "cu126"


def test_windows_nvidia_driver_too_old_falls_back_to_cpu_loudly():
    choice = D.choose_torch("Windows", "AMD64", smi(QUERY_OLD_WIN))
    assert choice.build == "cpu" and choice.index_url == "https://download.pytorch.org/whl/cpu"
    assert "GTX 1060" in choice.warning and "NOT be used" in choice.warning
    assert "472.12" in choice.warning and "520.06" in choice.warning and "cu118" in choice.warning
    assert "update the NVIDIA driver" in choice.warning


def test_linux_nvidia_driver_minimums_differ_from_windows():
    h100 = D.choose_torch("Linux", "x86_64", smi(QUERY_TWO_H100))
    assert h100.build == "cu128" and h100.index_url.endswith("/cu128")
    assert D.choose_torch("Linux", "x86_64", smi(QUERY_HEADER_NOUNITS)).build == "cu121"  # 535 < 550.54.14
    assert D.choose_torch("Linux", "x86_64", smi(BANNER_LINUX_OLD)).build == "cu118"  # CUDA Version: 12.0
    # 576.02 is Windows' 12.9 minimum and more than Linux' 575.51.03: the same driver differs
    driver = D.NvidiaSmi((D.GpuInfo("GPU", "575.57.08"),))
    assert D.choose_torch("Linux", "x86_64", driver).build == "cu129"
    assert D.choose_torch("Windows", "AMD64", driver).build == "cu128"
    assert D.choose_torch("Linux", "x86_64", D.NvidiaSmi((D.GpuInfo("GPU", "580.95.05"),))).build == "cu130"


def test_linux_without_gpu_uses_cpu_index():
    choice = D.choose_torch("Linux", "x86_64", D.NvidiaSmi(error="nvidia-smi not found"))
    assert (choice.build, choice.index_url) == ("cpu", "https://download.pytorch.org/whl/cpu")
    assert not choice.warning and "nvidia-smi not found" in choice.reason


def test_nvidia_smi_missing_or_failing_means_cpu_without_a_gpu_warning():
    for error in ("nvidia-smi not found (no NVIDIA driver installed)", "nvidia-smi failed (exit 9): no driver"):
        for system in ("Windows", "Linux"):
            choice = D.choose_torch(system, "x86_64", D.NvidiaSmi(error=error))
            assert choice.build == "cpu" and error in choice.reason and not choice.warning


def test_macos_arm64_uses_registry_build_with_mps():
    choice = D.choose_torch("Darwin", "arm64")
    assert (choice.build, choice.index_url, choice.spec) == ("mps", None, "torch>=2.4")
    assert choice.pip_args() == ["torch>=2.4"] and "MPS" in choice.reason


def test_macos_x86_64_gets_last_intel_build():
    choice = D.choose_torch("Darwin", "x86_64")
    assert (choice.build, choice.index_url, choice.spec) == ("registry-cpu", None, "torch==2.2.2")


def test_linux_aarch64():
    assert D.choose_torch("Linux", "aarch64").build == "cpu"
    # GH200: only the builds PyTorch publishes aarch64 wheels for
    assert D.choose_torch("Linux", "aarch64", smi(QUERY_GH200)).build == "cu126"
    old = D.choose_torch("Linux", "aarch64", D.NvidiaSmi((D.GpuInfo("GPU", "535.104.05"),)))
    assert old.build == "cpu" and "cu126" in old.warning  # cu118..cu124 have no aarch64 wheels


def test_index_url_is_overridable():
    mirror = "https://mirror.example/whl/cu124"
    assert D.choose_torch("Windows", "AMD64", smi(QUERY_RTX4090_WIN), mirror).index_url == mirror
    assert D.choose_torch("Linux", "x86_64", (), mirror).index_url == mirror
    assert D.choose_torch("Darwin", "arm64", (), mirror).pip_args() == ["torch>=2.4", "--index-url", mirror]


def test_unreadable_driver_version_is_cpu_with_reason():
    choice = D.choose_torch("Linux", "x86_64", D.NvidiaSmi((D.GpuInfo("GPU", "[N/A]"),)))
    assert choice.build == "cpu" and "'[N/A]'" in choice.warning


# ------------------------------------------------------------------ the device and the warning

@pytest.mark.parametrize("requested,cuda,mps,expected", [
    ("auto", True, False, ("cuda", "float16")),
    ("auto", True, True, ("cuda", "float16")),
    ("auto", False, True, ("mps", "float16")),
    ("auto", False, False, ("cpu", "float32")),
    ("cpu", True, True, ("cpu", "float32")),
    ("cuda", True, False, ("cuda", "float16")),
    ("mps", False, True, ("mps", "float16")),
])
def test_choose_device(requested, cuda, mps, expected):
    assert D.choose_device(requested, cuda, mps) == expected


def test_choose_device_refuses_what_torch_cannot_use():
    with pytest.raises(ValueError, match="--device cuda was asked for but torch sees no CUDA device"):
        D.choose_device("cuda", False, True)
    with pytest.raises(ValueError, match="--device mps"):
        D.choose_device("mps", True, False)
    with pytest.raises(ValueError, match="'tpu'"):
        D.choose_device("tpu", True, True)


def test_cpu_warning_cases():
    rtx = D.parse_nvidia_smi(QUERY_RTX4090_WIN)
    old = D.parse_nvidia_smi(QUERY_OLD_WIN)
    assert D.cpu_warning("cuda", "auto", "Windows", "AMD64", rtx, "12.8") == ""
    assert D.cpu_warning("cpu", "auto", "Linux", "x86_64", (), None) == ""  # no GPU: nothing to say
    cpu_build = D.cpu_warning("cpu", "auto", "Windows", "AMD64", rtx, None, "2.13.0+cpu")
    assert "RTX 4090" in cpu_build and "2.13.0+cpu is a CPU-only build" in cpu_build
    assert "installs the cu128 build for driver 572.83" in cpu_build and "/whl/cu128" in cpu_build
    old_cpu = D.cpu_warning("cpu", "auto", "Windows", "AMD64", old, None, "2.13.0+cpu")
    assert "CPU-only build because driver 472.12 is older than 520.06" in old_cpu
    assert "update the NVIDIA driver" in old_cpu
    too_old = D.cpu_warning("cpu", "auto", "Windows", "AMD64", old, "12.8", "2.13.0+cu128")
    assert "needs driver 570.65 or newer" in too_old and "472.12" in too_old
    asked = D.cpu_warning("cpu", "cpu", "Linux", "x86_64", rtx, "12.8")
    assert "asked for" in asked
    mac = D.cpu_warning("cpu", "auto", "Darwin", "arm64", (), None, "2.13.0")
    assert "Apple Silicon" in mac and "MPS" in mac
    hidden = D.cpu_warning("cpu", "auto", "Linux", "x86_64", rtx, "12.8", "2.13.0+cu128")
    assert "sees no CUDA device" in hidden
