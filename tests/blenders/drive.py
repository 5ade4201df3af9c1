"""One check of the add-on inside one Blender: run by tests/blenders/test_blender_versions.py
with the interpreter of a venv that holds only that Blender's bpy (and what bpy brings),
as Blender's own Python would: no pytest, no torch, no project venv.

    VENV/bin/python tests/blenders/drive.py CHECK

The add-on is the extension zip that ``make extension`` builds, installed the way Blender
installs it (``extensions.package_install_files`` into the ``user_default`` repository of
``BLENDER_USER_RESOURCES``), so it imports as ``bl_ext.user_default.archviz_controlnet``
like in a real Blender. The check ``install`` does that; the others enable the installed
extension as Blender does at start-up. Operators that generate talk to the backend the
test started from the project venv on loopback (``ARCHVIZ_TEST_URL``, tiny models), as a
remote backend; ``local_backend`` starts and stops one with ``ARCHVIZ_PYTHON``.

Environment: ``ARCHVIZ_TEST_ZIP`` (the extension zip), ``ARCHVIZ_TEST_URL`` and
``ARCHVIZ_TEST_TOKEN`` (the backend), ``ARCHVIZ_TEST_WORK`` (a folder for this Blender:
the scene and outputs), ``ARCHVIZ_TEST_README`` (README.md, for ``headless``).

Prints ``CHECK OK`` and exits 0, or prints the failure and exits 1. It leaves with
``os._exit``: the bpy module can hang in its own teardown, which is not what is tested.
"""

import json
import os
import sys
import time
import traceback

import bpy

MODULE = "bl_ext.user_default.archviz_controlnet"
WORK = os.environ.get("ARCHVIZ_TEST_WORK", "")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests"))  # blender_support: bpy and numpy only, like this Blender

from blender_support import RecordingLayout, draw, movie_roundtrip  # noqa: E402


# ---------------------------------------------------------------- set-up helpers

def addon():
    """The installed extension, enabled as Blender enables it at start-up."""
    import addon_utils

    if MODULE not in sys.modules or not hasattr(bpy.types.Scene, "archviz"):
        addon_utils.enable(MODULE, default_set=True, handle_error=_raise)
    return sys.modules[MODULE]


def _raise(exc):
    raise exc


def prefs():
    return bpy.context.preferences.addons[MODULE].preferences


def scene(long_side=64):
    """The example interior built by this Blender (examples/build_interior.py), opened."""
    path = os.path.join(WORK, "interior.blend")
    if not os.path.exists(path):
        sys.argv = [sys.argv[0], "--out", path]
        import runpy

        runpy.run_path(os.path.join(REPO, "examples", "build_interior.py"), run_name="__main__")
    bpy.ops.wm.open_mainfile(filepath=path)
    addon()
    settings = bpy.context.scene.archviz
    settings.long_side = long_side
    settings.supersample = 1
    settings.steps = 2
    return settings


def remote(model="tiny"):
    """The preferences pointed at the test's backend as a remote one."""
    p = prefs()
    p.backend_mode = "REMOTE"
    p.url = os.environ["ARCHVIZ_TEST_URL"]
    p.token = os.environ.get("ARCHVIZ_TEST_TOKEN", "")
    p.model = model
    return p


def result_names():
    pkg = addon()
    return sorted(img.name for img in sys.modules[pkg.__name__ + ".blender.results"].result_images())


# ---------------------------------------------------------------- the checks

def check_install():
    """The zip installs and enables as an extension; disabling leaves nothing behind."""
    import addon_utils

    zip_path = os.environ["ARCHVIZ_TEST_ZIP"]
    result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                      enable_on_install=True)
    assert result == {"FINISHED"}, result
    assert MODULE in sys.modules, sorted(m for m in sys.modules if "archviz" in m)
    assert hasattr(bpy.types.Scene, "archviz") and hasattr(bpy.ops.archviz, "sweep")
    assert MODULE in bpy.context.preferences.addons  # preferences keyed by the extension's package
    ours = [c for c in dir(bpy.types) if c.startswith(("ARCHVIZ_", "VIEW3D_PT_archviz"))]
    assert len(ours) >= 10, ours
    addon_utils.disable(MODULE, default_set=True)
    assert not hasattr(bpy.types.Scene, "archviz")
    left = [c for c in dir(bpy.types) if c.startswith(("ARCHVIZ_", "VIEW3D_PT_archviz"))]
    assert not left, left
    addon_utils.enable(MODULE, default_set=True, handle_error=_raise)
    assert hasattr(bpy.types.Scene, "archviz")


def check_passes_and_panels():
    """Render Control Passes through the operator, the images and their previews, every
    panel and the preferences drawn, the path and Set up Backend fixes."""
    settings = scene()
    pkg = addon()
    panels = sys.modules[pkg.__name__ + ".panels"]
    out = os.path.join(WORK, "passes")
    assert bpy.ops.archviz.render_controls(output_dir=out) == {"FINISHED"}
    for name in ("depth", "lines", "normal", "seg"):
        assert os.path.getsize(os.path.join(out, f"{name}.png")) > 0, name
        image = bpy.data.images["archviz_" + name]
        assert image.preview is not None, f"no preview made for {image.name}: the panel's thumbnail stays blank"
    info = json.load(open(os.path.join(out, "passes.json")))
    assert info["blender"] == bpy.app.version_string, info["blender"]

    # The panels, drawn against this Blender's RNA.
    settings.depth_mode = "MANUAL"
    bpy.ops.archviz.control_preset(preset="early_depth_late_lines")
    for cls in panels.classes:
        if issubclass(cls, bpy.types.Panel):
            assert draw(cls, bpy.context), cls.__name__
    main = draw(panels.VIEW3D_PT_archviz, bpy.context)
    assert sum(1 for c in main if c[0] == "template_icon") == 4  # the four pass previews
    generate = draw(panels.VIEW3D_PT_archviz_generate, bpy.context)
    stop = [c for c in generate if c[0] == "operator" and c[1][0] == "archviz.backend_stop"]
    assert stop and stop[0][2]["icon"] != "SNAP_FACE", stop  # SNAP_FACE is drawn as an empty checkbox
    style_rows = [c for c in generate if c[0] == "prop" and c[1][1] == "style"]
    assert style_rows and style_rows[0][2].get("text") == "", style_rows
    settings.cfg = 0.0
    units = draw(panels.VIEW3D_PT_archviz_units, bpy.context)
    cfg = next(c for c in units if c[0] == "prop" and c[1][1] == "cfg")
    assert cfg[2]["text"].startswith("CFG (style: "), cfg  # 0 means the style's value: say which
    settings.cfg = 5.0
    cfg = next(c for c in draw(panels.VIEW3D_PT_archviz_units, bpy.context) if c[0] == "prop" and c[1][1] == "cfg")
    assert cfg[2]["text"] == "CFG", cfg

    # Path properties that take // say so (4.5+ draws them in red otherwise).
    props = bpy.types.Scene.bl_rna.properties["archviz"].fixed_type.properties
    if "is_path_supports_blend_relative" in bpy.types.Property.bl_rna.properties:
        assert props["output_dir"].is_path_supports_blend_relative
        assert props["class_table"].is_path_supports_blend_relative

    # Preferences: drawn; Set up Backend follows Blender's Allow Online Access.
    prefs_module = sys.modules[pkg.__name__ + ".blender.preferences"]
    calls = []
    prefs_module.draw_preferences(prefs(), bpy.context, RecordingLayout(calls))
    assert any(c[0] == "operator" and c[1][0] == "archviz.setup_backend" for c in calls)
    system = bpy.context.preferences.system
    system.use_online_access = False
    assert not bpy.ops.archviz.setup_backend.poll()
    system.use_online_access = True
    assert bpy.ops.archviz.setup_backend.poll()

    # Doctor before any setup: this Blender's Python has no torch and no Pillow. The report
    # says so line by line (not "cannot run the check"), with the requirements' full path.
    python = os.environ.pop("ARCHVIZ_PYTHON")
    try:
        prefs().backend_mode = "LOCAL"
        prefs().python = sys.executable
        assert bpy.ops.archviz.doctor() == {"FINISHED"}
    finally:
        os.environ["ARCHVIZ_PYTHON"] = python
        prefs().python = ""
    runs = sys.modules[pkg.__name__ + ".blender.runs"]
    report = "\n".join(runs.doctor.lines)
    assert "torch does not import" in report and "cannot run the backend check" not in report, report
    requirements = os.path.join(os.path.dirname(pkg.__file__), "backend", "setup", "requirements.txt")
    assert f"-m pip install -r {requirements}" in report, report


def check_generate_sweep_results():
    """Generate and Sweep against a remote backend; the results, the local manifest and
    contact sheet; the preview image; Apply as Texture; Add to Compositor."""
    settings = scene()
    remote()
    pkg = addon()
    results = sys.modules[pkg.__name__ + ".blender.results"]
    out = os.path.join(WORK, "generate")
    settings.output_dir = out
    settings.style, settings.seed = "japandi", 7
    settings.preview_every = 1
    assert bpy.ops.archviz.generate() == {"FINISHED"}
    image = bpy.data.images["Camera_japandi_s7"]
    assert image["archviz_seed"] == 7 and os.path.dirname(image["archviz_path"]) == out
    # Previews arrive while the image denoises; the preview image (if one arrived) has its preview made.
    preview = bpy.data.images.get(results.PREVIEW_IMAGE)
    if preview is not None:
        assert preview.preview is not None

    settings.styles, settings.seeds = "modern,industrial", "0-1"
    assert bpy.ops.archviz.sweep() == {"FINISHED"}
    names = result_names()
    for style in ("modern", "industrial"):
        for seed in (0, 1):
            assert f"Camera_{style}_s{seed}" in names, names
    # A remote backend wrote its manifest and sheet in its own folder: copies are here.
    manifest = json.load(open(os.path.join(out, "Camera_manifest.json")))
    assert sorted(manifest["done"]) == sorted(f"Camera_{s}_s{n}.png" for s in ("modern", "industrial") for n in (0, 1))
    assert os.path.getsize(os.path.join(out, "Camera_contact_sheet.png")) > 0
    assert "ArchViz Contact Sheet Camera_contact_sheet.png" in bpy.data.images

    table = bpy.data.objects["Table"]
    for obj in bpy.context.view_layer.objects:
        obj.select_set(obj == table)
    bpy.context.view_layer.objects.active = table
    materials_before = set(bpy.data.materials.keys())
    assert bpy.ops.archviz.apply_texture(image="Camera_modern_s1") == {"FINISHED"}
    material = table.material_slots[0].material
    assert material.name == "ArchViz Camera_modern_s1"
    assert any(n.type == "TEX_IMAGE" and n.image.name == "Camera_modern_s1" for n in material.node_tree.nodes)
    assert set(bpy.data.materials.keys()) - materials_before == {"ArchViz Camera_modern_s1"}

    assert bpy.ops.archviz.add_to_compositor(images="Camera_modern_s0,Camera_modern_s1", active=1) == {"FINISHED"}
    compat = sys.modules[pkg.__name__ + ".blender.compat"]
    tree = compat.compositor_tree(bpy.context.scene, create=False)
    assert results.active_variant(tree) == "Camera_modern_s1"
    variants = sorted(n.image.name for n in tree.nodes if n.bl_idname == "CompositorNodeImage" and n.image)
    assert variants == ["Camera_modern_s0", "Camera_modern_s1"], variants
    assert bpy.ops.archviz.add_to_compositor(images="Camera_modern_s0,Camera_modern_s1", active=0) == {"FINISHED"}
    assert results.active_variant(tree) == "Camera_modern_s0"


def check_cancel():
    """A sweep cancelled while it runs ends cancelled and keeps what was done."""
    settings = scene()
    remote()
    pkg = addon()
    tasks = sys.modules[pkg.__name__ + ".blender.tasks"]
    generate = sys.modules[pkg.__name__ + ".operators.generate"]
    settings.output_dir = os.path.join(WORK, "cancel")
    settings.styles, settings.seeds, settings.steps = "modern", "0-7", 20
    op = generate.ARCHVIZ_OT_sweep
    task = op._prepare(type("Op", (), {"plan": op.plan, "report": lambda *a: None})(), bpy.context)
    tasks.start(task, with_timer=False)
    deadline = time.monotonic() + 120
    while task.drain() and task.fraction <= 0.0:
        assert time.monotonic() < deadline, "the sweep never started"
        time.sleep(0.05)
    assert bpy.ops.archviz.cancel() == {"FINISHED"}
    tasks.run_until_done(task)
    assert task.state == "cancelled", (task.state, task.message)
    assert task.images_done < 8 and task.message.startswith("cancelled"), task.message


def check_upscale():
    """Upscale a result: ``archviz upscale`` in the backend's Python (ARCHVIZ_PYTHON)."""
    settings = scene()
    remote()
    settings.output_dir = os.path.join(WORK, "upscale")
    settings.style, settings.seed = "modern", 3
    bpy.ops.wm.save_mainfile()  # the upscale renders the saved file's passes again
    assert bpy.ops.archviz.generate() == {"FINISHED"}
    prefs().backend_mode = "LOCAL"  # the upscale runs in the local backend Python
    assert bpy.ops.archviz.upscale(image="Camera_modern_s3", scale="2") == {"FINISHED"}
    big = bpy.data.images["Camera_modern_s3_x2"]
    assert tuple(big.size) == tuple(2 * s for s in bpy.data.images["Camera_modern_s3"].size), tuple(big.size)


def check_local_backend():
    """Start Backend and Stop Backend with a local Python (ARCHVIZ_PYTHON)."""
    scene()
    pkg = addon()
    backend = sys.modules[pkg.__name__ + ".blender.backend"]
    assert bpy.ops.archviz.backend_start() == {"FINISHED"}
    assert backend._started, "no backend process was started"
    proc = next(iter(backend._started.values()))
    assert proc.alive()
    assert bpy.ops.archviz.backend_stop() == {"FINISHED"}
    assert not proc.alive()


def check_headless():
    """The README's headless script, exactly as written there, in this Blender with the
    extension installed and enabled: ARCHVIZ_MODEL=tiny must win over the preferences
    (whose model is sd15, which is not on this machine)."""
    text = open(os.environ["ARCHVIZ_TEST_README"], encoding="utf-8").read()
    start = text.index("<!-- headless-script -->")
    block = text[text.index("```python", start) + len("```python"):text.index("```", text.index("```python", start) + 9)]
    addon()  # what Blender does at start-up for an enabled extension
    assert prefs().model == "sd15"
    os.chdir(WORK)
    scene_path = os.path.join(WORK, "interior.blend")
    if not os.path.exists(scene_path):
        scene()
    os.makedirs(os.path.join(WORK, "examples"), exist_ok=True)
    if not os.path.exists(os.path.join(WORK, "examples", "interior.blend")):
        os.symlink(scene_path, os.path.join(WORK, "examples", "interior.blend"))
    # The script opens the file the way `blender -b examples/interior.blend` would have.
    bpy.ops.wm.open_mainfile(filepath=os.path.join(WORK, "examples", "interior.blend"))
    namespace = {"__name__": "__main__"}
    exec(compile(block, "README.md headless script", "exec"), namespace)
    done = [i for i in bpy.data.images if "archviz_style" in i]
    assert done and all('"family": "tiny"' in i["model"] for i in done), [(i.name, i.get("model")) for i in done]


def check_movie():
    """PNG frames into an MP4 by this Blender's FFmpeg, shown as a strip and a clip."""
    addon()
    movie_roundtrip(sys.modules[MODULE + ".blender.movie"] if MODULE + ".blender.movie" in sys.modules
                    else __import__(MODULE + ".blender.movie", fromlist=["movie"]), os.path.join(WORK, "movie"))


def check_video():
    """The Video operator against the remote backend: the passes of 5 frames of a moving
    camera, a tiny-wan clip, its MP4 copied here and shown as a sequencer strip and a clip."""
    settings = scene()
    remote()
    settings.output_dir = os.path.join(WORK, "video")
    sc = bpy.context.scene
    cam = sc.camera
    sc.frame_start, sc.frame_end = 1, 5
    cam.keyframe_insert("location", frame=1)
    cam.location.x += 0.5
    cam.keyframe_insert("location", frame=5)
    video = settings.video
    video.model, video.long_side, video.seeds = "tiny-wan", 64, "0"
    assert bpy.ops.archviz.video() == {"FINISHED"}
    folder = os.path.join(WORK, "video", "video", "Camera", "modern_s0")
    meta = json.load(open(os.path.join(folder, "metadata.json")))
    assert meta["frames"] == [1, 2, 3, 4, 5] and meta["model"] == "tiny-wan", meta
    assert os.path.getsize(os.path.join(folder, "video.mp4")) > 1000
    compat = sys.modules[MODULE + ".blender.compat"]
    strip = compat.sequencer_strips(sc.sequence_editor)["ArchViz modern_s0"]
    assert strip.type == "MOVIE" and strip.frame_final_duration == 5, (strip.type, strip.frame_final_duration)
    assert tuple(bpy.data.movieclips["ArchViz modern_s0"].size) == (64, 32)


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}


def main():
    name = sys.argv[1]
    started = time.perf_counter()
    try:
        CHECKS[name]()
    except Exception:  # the whole story goes to the test that reads this output
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    print(f"{name} OK in {time.perf_counter() - started:.1f} s (Blender {bpy.app.version_string})", flush=True)
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
