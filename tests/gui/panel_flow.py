"""The panel flow in a real Blender window, with screenshots: run by tests/gui/screenshots.sh
inside a Blender binary (4.2 or later) on a virtual screen. Not part of CI: CI has no Blender
binary, only the bpy module, which has no window to draw.

    blender --factory-startup --python tests/gui/panel_flow.py -- --zip ZIP --scene BLEND --out DIR

Steps, each followed by a screenshot once the window has drawn it (a timer drives them, so
Blender's event loop runs between steps):
1. install the extension zip into the user repository and enable it (as a user would);
2. open the scene, show the 3D View's sidebar on the ArchViz tab: ``sidebar.png``;
3. Render Control Passes: ``passes.png`` (the four previews in the panel);
4. the preferences, on the add-on: ``preferences.png``;
5. Generate with the backend the environment names (ARCHVIZ_MODEL=tiny and ARCHVIZ_PYTHON
   pointing at the project venv work offline), the result in an Image Editor: ``result.png``.
Blender quits when done; the exit status is 1 when a step failed (its error is printed).
"""

import argparse
import os
import sys
import traceback

import bpy

MODULE = "bl_ext.user_default.archviz_controlnet"


def parse_args():
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="panel_flow.py")
    parser.add_argument("--zip", required=True, help="the extension zip (make extension)")
    parser.add_argument("--scene", required=True, help="a .blend with a camera (examples/interior.blend)")
    parser.add_argument("--out", required=True, help="folder for the screenshots")
    return parser.parse_args(argv)


ARGS = parse_args()
os.makedirs(ARGS.out, exist_ok=True)


def view3d():
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                return window, area
    raise RuntimeError("no 3D View in the window")


def screenshot(name):
    window, _area = view3d()
    with bpy.context.temp_override(window=window):
        bpy.ops.screen.screenshot(filepath=os.path.join(ARGS.out, name))
    print(f"panel_flow: {os.path.join(ARGS.out, name)}")


def step_install():
    result = bpy.ops.extensions.package_install_files(filepath=os.path.abspath(ARGS.zip), repo="user_default",
                                                      enable_on_install=True)
    assert result == {"FINISHED"} and MODULE in bpy.context.preferences.addons, result


def step_sidebar():
    bpy.ops.wm.open_mainfile(filepath=os.path.abspath(ARGS.scene))
    window, area = view3d()
    space = area.spaces.active
    space.show_region_ui = True
    for region in area.regions:
        if region.type == "UI":
            with bpy.context.temp_override(window=window, area=area, region=region):
                region.active_panel_category = "ArchViz"
    bpy.context.scene.archviz.long_side = 256


def shot_sidebar():
    screenshot("sidebar.png")


def step_passes():
    window, area = view3d()
    with bpy.context.temp_override(window=window, area=area):
        assert bpy.ops.archviz.render_controls() == {"FINISHED"}


def shot_passes():
    screenshot("passes.png")


def step_preferences():
    bpy.ops.screen.userpref_show(section="ADDONS")
    bpy.context.preferences.active_section = "ADDONS"
    bpy.context.window_manager.addon_search = "ArchViz"


def shot_preferences():
    for window in bpy.context.window_manager.windows:
        if any(area.type == "PREFERENCES" for area in window.screen.areas):
            with bpy.context.temp_override(window=window):
                bpy.ops.screen.screenshot(filepath=os.path.join(ARGS.out, "preferences.png"))
            print(f"panel_flow: {os.path.join(ARGS.out, 'preferences.png')}")
            return
    raise RuntimeError("the preferences window did not open")


def step_generate():
    window, area = view3d()
    settings = bpy.context.scene.archviz
    settings.style, settings.seed, settings.steps = "modern", 0, 4
    with bpy.context.temp_override(window=window, area=area):
        bpy.ops.archviz.generate()  # runs in a worker thread; the panel shows progress


def wait_generate():
    from importlib import import_module

    task = import_module(MODULE + ".blender.tasks").Task.current
    if task is not None and task.state == "running":
        return "again"
    assert task is not None and task.state == "done", task and task.message
    window, area = view3d()
    area.type = "IMAGE_EDITOR"
    area.spaces.active.image = bpy.data.images[task.images[-1]]
    return None


def shot_result():
    screenshot("result.png")


STEPS = [step_install, step_sidebar, shot_sidebar, step_passes, shot_passes, step_preferences, shot_preferences,
         step_generate, wait_generate, shot_result]


def run_next():
    """One step per timer call; a step answering "again" is called again later."""
    if not STEPS:
        bpy.ops.wm.quit_blender()
        return None
    step = STEPS[0]
    try:
        again = step() == "again"
    except Exception:  # printed whole: this is a developer's tool, run by hand
        print(f"panel_flow: {step.__name__} failed")
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
    if not again:
        STEPS.pop(0)
    return 1.0  # let the window draw what the step changed before the next one


bpy.app.timers.register(run_next, first_interval=2.0)
