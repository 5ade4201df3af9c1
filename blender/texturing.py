"""Texture Scene and Walkthrough from the panel: settings, and the run in a child process.

The panel's flow is ``archviz texture`` itself, in a child process on a copy of the open
file (``DIR/source.blend``, saved with ``copy=True``: unsaved changes go in, the open file
and its path stay as they are). The child's progress lines ("view 2/3 Side: generating
51% of what it sees") drive the panel's progress per view; Cancel interrupts it the way
Ctrl+C does (the finished views stay on disk and a new run goes on from them). When it is
done, the textured scene of ``DIR/textured.blend`` is appended (objects, meshes, materials
and images as new datablocks: nothing of the user's data changes) and made the window's
scene. Stdlib + bpy only.
"""

import os
import queue
import re
import signal
import subprocess
import sys
import threading

import bpy
from bpy.props import EnumProperty, FloatProperty, IntProperty, StringProperty

VIEW_LINE = re.compile(r"^view (\d+)/(\d+) (.+?): (.*)$")


class ARCHVIZ_PG_texture(bpy.types.PropertyGroup):
    cameras: StringProperty(name="Cameras", default="",
                            description="Comma-separated cameras to texture from, in order (empty: the selected "
                                        "cameras by name)")
    style: StringProperty(name="Style", default="modern", description="The style preset every view shares")
    seed: IntProperty(name="Seed", default=0, min=0, description="The seed of every view")
    long_side: IntProperty(name="View Size", default=0, min=0, max=4096, step=64,
                           description="Long side of each view in pixels (0: the model family's)")
    steps: IntProperty(name="Steps", default=0, min=0, max=500, description="Denoising steps (0: the style's)")
    texture_size: IntProperty(name="Texture Size", default=1024, min=16, max=8192,
                              description="Largest texture side per object")
    output_dir: StringProperty(name="Output", default="//archviz/texture/", subtype="DIR_PATH",
                               description="Folder of textured.blend, textures/, views/ and texture.json")
    walk_camera: StringProperty(name="Walk Camera", default="", description="Camera of the walkthrough "
                                "(empty: the scene camera)")
    walk_frames: StringProperty(name="Frames", default="", description="FIRST-LAST (empty: the scene's range)")
    walk_engine: EnumProperty(name="Engine", default="CYCLES",
                              items=[("CYCLES", "Cycles", ""), ("EEVEE", "EEVEE", "")])
    walk_samples: IntProperty(name="Samples", default=16, min=1, max=4096)
    # what the panel shows while a run goes and after it
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    status: StringProperty(name="Status", default="")
    report: StringProperty(name="Coverage", default="", description="Per object: share of the visible surface "
                           "the bake covers (texture.json)")
    result_scene: StringProperty(name="Result Scene", default="")


def output_dir(props):
    path = props.output_dir or "//archviz/texture/"
    if path.startswith("//") and not bpy.data.filepath:
        import tempfile

        return os.path.join(tempfile.gettempdir(), "archviz", path[2:].strip("/") or "texture")
    return os.path.abspath(bpy.path.abspath(path))


def child_command(argv):
    """The command that runs ``archviz ARGV`` in a child: this Blender in the background (or,
    for the bpy module, its Python), with the add-on's package importable by its own folder's
    name, whether it is the project checkout or an installed extension
    (``bl_ext.user_default.archviz_controlnet``)."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; sys.path.insert(0, sys.argv[-1]); import importlib; "
            f"cli = importlib.import_module({os.path.basename(package_dir)!r} + '.cli'); "
            "sys.exit(cli.main(sys.argv[sys.argv.index('--') + 1:-1]))")
    binary = bpy.app.binary_path
    if binary and os.path.basename(binary).lower().startswith("blender"):
        head = [binary, "-b", "--factory-startup", "--python-exit-code", "1", "--python-expr", code]
    else:  # the bpy module: this process's Python
        head = [sys.executable, "-c", code]
    return [*head, "--", *argv, os.path.dirname(package_dir)]


class ChildRun:
    """One ``archviz texture`` (or ``walkthrough``) child: its lines read by a thread into a
    queue, drained on the main thread."""

    current = None

    def __init__(self, kind, argv, out_dir, scene_name, env=None):
        self.kind, self.out_dir, self.scene_name = kind, out_dir, scene_name
        self.lines = queue.Queue()
        self.errors = []
        self.state = "running"
        self.fraction = 0.0
        self.message = "starting"
        self.proc = subprocess.Popen(child_command(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, start_new_session=True,
                                     preexec_fn=_interruptible if os.name == "posix" else None)
        threading.Thread(target=self._pump, args=(self.proc.stdout, False), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, True), daemon=True).start()

    def _pump(self, stream, is_err):
        for line in stream:
            self.lines.put((is_err, line.rstrip("\n")))

    def cancel(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if hasattr(signal, "SIGINT") else signal.SIGTERM)

    def drain(self):
        """Read what the child said; True while it runs."""
        while True:
            try:
                is_err, line = self.lines.get_nowait()
            except queue.Empty:
                break
            if is_err:
                if line.startswith("archviz "):
                    self.errors.append(line.split(": ", 1)[-1])
                continue
            m = VIEW_LINE.match(line)
            if m:
                i, n = int(m.group(1)), int(m.group(2))
                done = m.group(4).startswith(("done", "kept"))
                self.fraction = (i - (0 if done else 1)) / n
                self.message = f"view {i}/{n} {m.group(3)}: {m.group(4)}"
            elif line.startswith("frame "):
                self.message = line
            elif line.startswith(("rendering", "baked", "rendered")):
                self.message = line
        if self.proc.poll() is None:
            return True
        if self.lines.qsize():
            return self.drain()
        code = self.proc.returncode
        self.state = "done" if code == 0 else ("cancelled" if code in (130, -signal.SIGINT) else "failed")
        if self.state == "failed":
            self.message = self.errors[-1] if self.errors else f"the child process ended with status {code}"
        elif self.state == "cancelled":
            self.message = f"cancelled; the finished views are kept in {os.path.join(self.out_dir, 'views')}"
        return False


def texture_argv(context, props, backend_url, token=""):
    """``archviz texture`` arguments for the panel's settings; the open file is saved as a
    copy first (``DIR/source.blend``)."""
    from ..core import jobs as J

    scene = context.scene
    names = [n.strip() for n in props.cameras.split(",") if n.strip()] or \
        sorted(o.name for o in context.selected_objects if o.type == "CAMERA")
    if not names:
        raise J.JobError("cameras", "no cameras: name them in Cameras or select them")
    for name in names:
        obj = scene.objects.get(name)
        if obj is None or obj.type != "CAMERA":
            raise J.JobError("cameras", f"no camera named {name!r} in scene {scene.name!r}")
    out = output_dir(props)
    os.makedirs(out, exist_ok=True)
    source = os.path.join(out, "source.blend")
    bpy.ops.wm.save_as_mainfile(filepath=source, copy=True)
    argv = ["texture", source, "--cameras", ",".join(names), "--styles", props.style, "--seed", str(props.seed),
            "--texture-size", str(props.texture_size), "--out", out]
    if props.long_side:
        argv += ["--long-side", str(props.long_side)]
    if props.steps:
        argv += ["--steps", str(props.steps)]
    if backend_url:
        argv += ["--backend", backend_url]
    if token:
        argv += ["--token", token]
    return argv, out


def coverage_text(out_dir):
    """One line per object from texture.json: its share covered and by which views."""
    import json

    try:
        with open(os.path.join(out_dir, "texture.json"), encoding="utf-8") as fh:
            report = json.load(fh)
    except (OSError, ValueError):
        return ""
    lines = []
    for name, entry in sorted(report.get("objects", {}).items()):
        views = ", ".join(f"{k} {v:.0%}" for k, v in entry.get("by_view", {}).items())
        lines.append(f"{name}: {entry.get('covered', 0):.0%} ({views})")
    return "\n".join(lines)


def open_result(context, out_dir, name_hint):
    """Append the scene of ``out_dir/textured.blend`` as a new scene and make it the
    window's scene. Returns the new scene's name."""
    path = os.path.join(out_dir, "textured.blend")
    with bpy.data.libraries.load(path, link=False) as (src, dst):
        dst.scenes = [src.scenes[0]] if src.scenes else []
    if not dst.scenes:
        raise RuntimeError(f"{path} holds no scene")
    scene = dst.scenes[0]
    scene.name = f"{name_hint} (textured)"
    window = getattr(context, "window", None)
    if window is not None:
        window.scene = scene
    return scene.name


def _interruptible():
    """In the child, before it starts: SIGINT at its default, so Cancel (a SIGINT) stops it
    even when Blender itself was started with SIGINT ignored (``blender &`` from a script),
    which a child would otherwise inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
