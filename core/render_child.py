"""Render passes in a child process, so that a renderer crash is a message, not the end.

Cycles is native code: a corrupt mesh can make it segfault, and a segfault ends the
process that called it. ``archviz passes`` and ``archviz sweep`` therefore run each
render in a child (``archviz passes ... --render-child STATUS``). The child writes the
scene and camera it is about to render into STATUS first; when it dies by a signal, the
parent reads them back and says which camera of which scene crashed the renderer.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile

#: Test hook only: when set (to a signal name such as SIGSEGV) in a render child's
#: environment, the child sends itself that signal just before it renders, as a renderer
#: crash would end it. The parent's handling of the dead child is the real one.
TEST_CRASH_ENV = "ARCHVIZ_TEST_CRASH_RENDER_WITH"


class RenderCrash(RuntimeError):
    """The render child died by a signal; the message names the camera and the scene."""


def write_status(path, **info):
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(info, fh)


def crash_for_test():
    """The test hook (see :data:`TEST_CRASH_ENV`); does nothing unless it is set."""
    name = os.environ.get(TEST_CRASH_ENV, "")
    if name:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), getattr(signal, name))


def _env():
    env = dict(os.environ)
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.basename(package_dir) == "archviz_controlnet":  # an installed extension: put it on the path
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(package_dir), env.get("PYTHONPATH")]))
    return env


def crash_message(returncode, status_path, scene_path):
    """The line for a child that died by signal ``-returncode``."""
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    try:
        with open(status_path, encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        info = {}
    where = (f"camera {info['camera']!r} of scene {info['scene']!r}" if info.get("camera")
             else f"{scene_path} (before it reached a camera)")
    return (f"the renderer crashed ({name}) while rendering {where} in {scene_path}; nothing of this render was "
            "kept. A damaged mesh can do this: find it by hiding objects, or run Mesh > Clean Up in Blender")


def run_passes_child(argv, scene_path, capture_output=False):
    """Run ``archviz passes ARGV`` in a child. Returns (exit status, stderr text or None).
    Raises RenderCrash when the child died by a signal."""
    fd, status = tempfile.mkstemp(prefix="archviz-render-", suffix=".json")
    os.close(fd)
    try:
        cmd = [sys.executable, "-m", "archviz_controlnet.cli", "passes", *argv, "--render-child", status]
        proc = subprocess.run(cmd, env=_env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL if capture_output else None,
                              stderr=subprocess.PIPE if capture_output else None, text=True)
        if proc.returncode < 0:
            raise RenderCrash(crash_message(proc.returncode, status, scene_path))
        return proc.returncode, proc.stderr
    finally:
        os.unlink(status)


def options_argv(scene_path, out_dir, options):
    """``archviz passes`` arguments for one camera's CaptureOptions."""
    argv = [os.path.abspath(scene_path), "--out", os.path.abspath(out_dir), "--long-side", str(options.long_side),
            "--multiple", str(options.multiple),
            "--passes", ",".join(options.passes), "--near", repr(float(options.near)), "--far", repr(float(options.far)),
            "--crease-angle", repr(float(options.crease_angle)), "--background-class", options.background_class,
            "--fallback-class", options.fallback_class]
    if options.camera:
        argv += ["--camera", options.camera]
    if options.frame is not None:
        argv += ["--frame", str(options.frame)]
    if options.class_table:
        argv += ["--class-table", options.class_table]
    if options.depth_range:
        argv += ["--depth-range", options.depth_range]
    argv += ["--line-style", options.line_style, "--supersample", str(options.supersample)]
    if options.line_styles:
        argv += ["--line-styles", ",".join(options.line_styles)]
    if options.beauty:
        argv += ["--beauty", "--beauty-engine", options.beauty_engine, "--beauty-samples", str(options.beauty_samples)]
    return argv
