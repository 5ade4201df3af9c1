""""Set up backend": a real venv and a real pip install (offline, from a wheel made here),
the torch check in a real interpreter, where the venv lives, and what Generate says before
any setup."""

import os
import platform
import site
import subprocess
import sys
import zipfile

import pytest

from archviz_controlnet.core import backend_setup as S
from archviz_controlnet.core import devices as D
from archviz_controlnet.core.backend_setup import BackendSetup, venv_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A real venv with nothing installed (no pip, no torch, no uvicorn): a Python before
    any setup, like Blender's own."""
    folder = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    return venv_python(str(folder))


def venv_sharing_this_torch(folder):
    """A real venv whose site-packages also sees this interpreter's packages (a .pth file):
    it has the CPU torch installed here without copying a gigabyte of wheels."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = venv_python(str(folder))
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(own, "project-venv.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    return python


def make_wheel(folder):
    """A minimal pure-Python wheel: enough for pip to install without any index."""
    path = os.path.join(folder, "archviz_probe-1.0-py3-none-any.whl")
    files = {
        "archviz_probe/__init__.py": "VALUE = 42\n",
        "archviz_probe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: archviz-probe\nVersion: 1.0\n",
        "archviz_probe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "archviz_probe-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        zf.writestr("archviz_probe-1.0.dist-info/RECORD", record)
    return path


def test_setup_creates_venv_and_installs_requirements(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text(make_wheel(str(tmp_path)) + "\n")
    setup = BackendSetup(str(tmp_path / "venv"), requirements=str(req), pip_args="--no-index", install_torch=False)
    setup.start()
    setup.thread.join(timeout=300)
    # the venv is made and the package installed; then the check finds no torch in it and says so
    assert setup.state == "failed", setup.message
    assert setup.message.startswith(f"torch does not import in {venv_python(str(tmp_path / 'venv'))}")
    assert "No module named 'torch'" in setup.message and not setup.check.ok
    assert setup.packages_seen >= 1
    out = subprocess.run([venv_python(str(tmp_path / "venv")), "-c", "import archviz_probe; print(archviz_probe.VALUE)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "42"


def test_setup_failure_keeps_pips_words(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("definitely-not-a-package-archviz==9.9\n")
    setup = BackendSetup(str(tmp_path / "venv"), requirements=str(req), pip_args="--no-index", install_torch=False)
    setup.run()
    assert setup.state == "failed"
    assert "installing the backend requirements failed" in setup.message
    assert "definitely-not-a-package-archviz" in setup.message
    missing = BackendSetup(str(tmp_path / "v2"), requirements=str(tmp_path / "nope.txt"))
    missing.run()
    assert missing.state == "failed" and "requirements file not found" in missing.message


def test_setup_operator_reports_failure_through_blender(tmp_path, monkeypatch):
    bpy = pytest.importorskip("bpy")
    import addon_utils

    from archviz_controlnet.blender import properties

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("archviz_controlnet", default_set=True)
    system = bpy.context.preferences.system
    try:
        system.use_online_access = False  # Blender's Allow Online Access off: no pip downloads
        assert not bpy.ops.archviz.setup_backend.poll()
        system.use_online_access = True
        prefs = properties.preferences()
        prefs.venv_dir = str(tmp_path / "venv")
        prefs.pip_args = "--no-index"  # offline: torch cannot be found, pip says so
        monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # not even in this machine's local wheel folder
        with pytest.raises(RuntimeError, match=r"installing torch \(cpu from https://download.pytorch.org/whl/cpu\) "
                                               r"failed \(exit 1\): ERROR: .*torch"):
            bpy.ops.archviz.setup_backend()
        assert os.path.exists(venv_python(str(tmp_path / "venv")))  # the venv itself was made
    finally:
        system.use_online_access = False
        addon_utils.disable("archviz_controlnet", default_set=True)


# ------------------------------------------------------------------ torch in the new venv

def test_setup_installs_torch_for_this_machine_then_the_rest_and_checks_the_device(tmp_path):
    """The whole run on a venv that already sees this machine's CPU torch: pip is asked for
    torch from the index chosen for this machine (no NVIDIA GPU here: the CPU index), finds
    it installed, installs the rest, and the check imports torch in the venv: cpu."""
    venv = tmp_path / "venv"
    python = venv_sharing_this_torch(venv)
    req = tmp_path / "requirements.txt"
    req.write_text("numpy<2\ntorch>=2.4  # the GPU build comes first, from its own index\n"
                   + make_wheel(str(tmp_path)) + "\n")
    setup = BackendSetup(str(venv), requirements=str(req), pip_args="--no-index")
    setup.run()
    assert setup.state == "done", setup.message
    assert setup.torch_choice == D.choose_torch(platform.system(), platform.machine(), D.query_nvidia_smi())
    assert setup.torch_choice.build == "cpu"
    assert setup.torch_choice.index_url == "https://download.pytorch.org/whl/cpu"
    assert any(line.startswith("Requirement already satisfied: torch") for line in setup.log)
    import torch

    # the rest is installed with torch held at the build just installed
    assert any(line.startswith(f"Requirement already satisfied: torch=={torch.__version__}") for line in setup.log)
    assert setup.check.ok and setup.check.device == "cpu" and setup.check.cuda_build is None
    assert setup.message == f"backend venv ready: {python}; {setup.check.summary()}"
    assert "device cpu" in setup.message and setup.warning == ""  # no GPU here: nothing to warn about
    out = subprocess.run([python, "-c", "import archviz_probe; print(archviz_probe.VALUE)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "42"


def test_requirements_without_torch(tmp_path):
    req = tmp_path / "r.txt"
    req.write_text("numpy<2\ntorch>=2.4\ntorch  # plain\ntorchao>=0.16\ntorch[opt]==2.5; python_version>'3'\n")
    kept = open(S.requirements_without_torch(str(req), str(tmp_path))).read().split()
    assert kept == ["numpy<2", "torchao>=0.16"]
    pinned = open(S.requirements_without_torch(str(req), str(tmp_path), "2.7.1+cu118")).read().split()
    assert pinned == ["numpy<2", "torchao>=0.16", "torch==2.7.1+cu118"]


def test_installed_version_in_a_real_interpreter(bare_python):
    import torch

    assert S.installed_version(sys.executable, "torch") == torch.__version__
    assert S.installed_version(bare_python, "torch") == ""


def test_check_torch_in_this_machines_venv_reports_cpu():
    check = S.check_torch(sys.executable)
    assert check.ok, check.error
    import torch

    assert check.torch == torch.__version__ and check.cuda_build is None
    assert check.device == "cpu" and check.device_name
    assert check.summary().startswith(f"torch {torch.__version__} (no CUDA), device cpu")
    # a GPU that this torch would not use is said loudly (what the preferences show after setup)
    rtx = D.NvidiaSmi(D.parse_nvidia_smi("NVIDIA GeForce RTX 4090, 572.83, 24564 MiB\n"))
    warning = S.torch_warning(check, "Windows", "AMD64", rtx)
    assert "RTX 4090" in warning and "CPU-only build" in warning
    assert S.torch_warning(check, "Linux", "x86_64", D.NvidiaSmi()) == ""


def test_check_torch_in_a_python_without_torch(bare_python):
    check = S.check_torch(bare_python)
    assert not check.ok and "No module named 'torch'" in check.error
    assert check.summary().startswith(f"torch does not import in {bare_python}")
    missing = S.check_torch(os.path.join(os.path.dirname(bare_python), "no-such-python"))
    assert not missing.ok and "cannot run" in missing.error


# ------------------------------------------------------------------ where the venv lives

def test_venv_lives_in_a_folder_no_blender_version_owns():
    home = os.path.join(os.sep, "home", "ann")
    assert S.default_venv_dir("Linux", {}, home) == os.path.join(home, ".local", "share", "archviz", "backend-venv")
    assert S.default_venv_dir("Linux", {"XDG_DATA_HOME": "/data"}, home) == os.path.join(
        "/data", "archviz", "backend-venv")
    assert S.default_venv_dir("Windows", {"LOCALAPPDATA": "C:/Users/ann/AppData/Local"}, home) == os.path.join(
        "C:/Users/ann/AppData/Local", "archviz", "backend-venv")
    assert S.default_venv_dir("Darwin", {}, home) == os.path.join(
        home, "Library", "Application Support", "archviz", "backend-venv")


def test_a_previous_blender_versions_venv_is_found_and_reused(tmp_path):
    """Blender 4.4's add-on made its venv in 4.4's config folder; Blender 5.0 finds it."""
    blender = tmp_path / "blender"
    old = blender / "4.4" / "config" / "archviz" / "backend-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(old)], check=True)
    broken = blender / "4.2" / "config" / "archviz" / "backend-venv"  # its Blender was uninstalled
    os.makedirs(os.path.dirname(venv_python(str(broken))))
    os.symlink(str(tmp_path / "gone" / "python3"), venv_python(str(broken)))
    os.makedirs(os.path.dirname(venv_python(str(broken))) + "2", exist_ok=True)
    config_50 = blender / "5.0" / "config"
    data_venv = str(tmp_path / "data" / "archviz" / "backend-venv")
    assert S.previous_venvs(str(config_50)) == [str(old)]  # the broken one has no python file
    assert S.find_backend_venv(data_venv, str(config_50)) == str(old)
    # once the shared venv exists it wins
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", data_venv], check=True)
    assert S.find_backend_venv(data_venv, str(config_50)) == data_venv
    # nothing anywhere: the shared folder, where Set up Backend will make it
    assert S.find_backend_venv(str(tmp_path / "elsewhere"), str(tmp_path / "none" / "5.0" / "config")) == str(
        tmp_path / "elsewhere")


def test_a_previous_venv_whose_python_no_longer_runs_is_not_reused(tmp_path):
    blender = tmp_path / "blender"
    old = blender / "4.4" / "config" / "archviz" / "backend-venv"
    python = venv_python(str(old))
    os.makedirs(os.path.dirname(python))
    with open(python, "w") as f:
        f.write("#!/bin/sh\nexit 1\n")
    os.chmod(python, 0o755)
    assert S.previous_venvs(str(blender / "5.0" / "config")) == [str(old)]
    assert not S.python_runs(python)
    assert S.find_backend_venv(str(tmp_path / "data"), str(blender / "5.0" / "config")) == str(tmp_path / "data")


def test_blender_uses_the_shared_venv_folder(tmp_path, monkeypatch):
    pytest.importorskip("bpy")
    import archviz_controlnet
    from archviz_controlnet.blender.backend import backend_venv_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    archviz_controlnet.register()
    try:
        path = backend_venv_dir("")
        assert path == str(tmp_path / "data" / "archviz" / "backend-venv")
        import bpy

        assert bpy.app.version_string.split()[0][:3] not in path  # no Blender version in it
    finally:
        archviz_controlnet.unregister()


# ------------------------------------------------------------------ Generate before any setup

def test_missing_backend_message():
    msg = S.missing_backend_message("/x/python", "Traceback ... ModuleNotFoundError: No module named 'uvicorn'")
    assert msg.startswith("the backend's Python (/x/python) has no 'uvicorn' module: set up the backend first")
    assert "Set up Backend" in msg and "\n" not in msg
    assert S.missing_backend_message("/x/python", "address already in use") is None
    assert S.missing_modules("/some/other/python") == []  # only this interpreter can be asked in-process
    assert S.missing_modules() == []  # this one has the backend


def test_a_venv_of_the_same_python_is_another_interpreter(tmp_path, monkeypatch):
    """A venv's python links to the Python it was made from (a Blender 4.x Python and the
    project venv share one binary here): it is still another interpreter, never judged by
    what this one lacks or has."""
    import venv

    venv.EnvBuilder(with_pip=False, symlinks=True).create(tmp_path / "venv")
    python = str(tmp_path / "venv" / "bin" / "python")
    monkeypatch.setattr(S, "BACKEND_MODULES", (*S.BACKEND_MODULES, "archviz_no_such_module"))
    assert S.missing_modules() == ["archviz_no_such_module"]  # this interpreter is asked in-process
    assert S.missing_modules(python) == []  # the venv is not: the process it starts tells


@pytest.fixture
def package_path(tmp_path):
    """A folder where ``archviz_controlnet`` is importable by any Python (an installed extension)."""
    folder = tmp_path / "pkgpath"
    folder.mkdir()
    os.symlink(ROOT, folder / "archviz_controlnet")
    return str(folder)


def test_a_backend_python_without_the_backend_points_at_set_up(bare_python, package_path, tmp_path):
    from archviz_controlnet.blender import backend as blender_backend
    from archviz_controlnet.core.client import BackendError

    env = dict(os.environ, PYTHONPATH=package_path)
    with pytest.raises(BackendError) as err:
        blender_backend.connect(python=bare_python, log_path=str(tmp_path / "backend.log"), env=env)
    message = str(err.value)
    assert message.startswith(f"the backend's Python ({bare_python}) has no 'uvicorn' module")
    assert "Set up Backend" in message and "Traceback" not in message


def test_generate_before_any_setup_points_at_set_up_backend(bare_python, package_path, tmp_path, monkeypatch):
    bpy = pytest.importorskip("bpy")
    import archviz_controlnet
    from blender_support import box, camera, fresh_scene

    fresh_scene(64, 64)
    box("Wall", (0, 0, 0), (2, 0.2, 2))
    camera(location=(0, -6, 0))
    monkeypatch.setenv("ARCHVIZ_PYTHON", bare_python)  # what Blender's Python is before Set up Backend
    monkeypatch.setenv("PYTHONPATH", package_path)
    archviz_controlnet.register()
    try:
        settings = bpy.context.scene.archviz
        settings.long_side = 64
        settings.output_dir = str(tmp_path / "out")
        with pytest.raises(RuntimeError, match=r"has no 'uvicorn' module: set up the backend first: "
                                               r"Edit > Preferences > Add-ons > ArchViz ControlNet > Set up Backend"):
            bpy.ops.archviz.generate()
        assert os.path.exists(tmp_path / "out" / "passes")  # the control passes made before are kept
    finally:
        archviz_controlnet.unregister()


def test_preferences_show_the_check_and_a_gpu_torch_will_not_use(tmp_path):
    bpy = pytest.importorskip("bpy")
    import addon_utils

    from archviz_controlnet.blender import preferences, properties, runs

    check = S.check_torch(sys.executable)  # the real check of this machine's CPU torch
    rtx = D.NvidiaSmi(D.parse_nvidia_smi("NVIDIA GeForce RTX 4090, 572.83, 24564 MiB\n"))
    done = BackendSetup(str(tmp_path / "venv"))
    done.state, done.check = "done", check
    done.message = f"backend venv ready: {venv_python(done.venv_dir)}; {check.summary()}"
    done.warning = S.torch_warning(check, "Windows", "AMD64", rtx)  # as on a Windows PC with that GPU
    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("archviz_controlnet", default_set=True)
    previous, runs.setup = runs.setup, done
    try:
        labels = []

        class Layout:
            def __getattr__(self, name):
                def record(*args, **kwargs):
                    if name == "label":
                        labels.append((kwargs["text"], kwargs.get("icon")))
                    return Layout()
                return record

        preferences.draw_preferences(properties.preferences(), bpy.context, Layout())
        texts = " ".join(t for t, _ in labels)
        assert "device cpu" in texts and check.torch in texts
        red = [t for t, icon in labels if icon == "ERROR"]
        assert red and red[0].startswith("running on the CPU although this machine has NVIDIA GeForce RTX 4090")
    finally:
        runs.setup = previous
        addon_utils.disable("archviz_controlnet", default_set=True)
