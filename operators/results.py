"""Operators on generated images: "Apply as texture", "Add to compositor", "Upscale" and
"Show region mask".

Thin: they pick the images, camera and objects from the context and call ``results``.
"""

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from ..blender import results


def _shown_image(context):
    """The image in the Image Editor the operator runs in, else in any on the screen."""
    space = getattr(context, "space_data", None)
    if space is not None and space.type == "IMAGE_EDITOR" and space.image is not None:
        return space.image
    screen = getattr(context, "screen", None)
    for area in (screen.areas if screen else ()):
        if area.type == "IMAGE_EDITOR" and area.spaces.active.image is not None:
            return area.spaces.active.image
    return None


def _default_image(context):
    image = _shown_image(context)
    if image is not None:
        return image
    found = results.result_images()
    return found[-1] if found else None


class ARCHVIZ_OT_apply_texture(bpy.types.Operator):
    """Project a generated image from its camera onto the selected mesh objects"""

    bl_idname = "archviz.apply_texture"
    bl_label = "Apply as Texture"
    bl_options = {"REGISTER", "UNDO"}

    image: StringProperty(name="Image", default="",
                          description="Image to project (default: the one in the Image Editor, else the latest ArchViz result)")
    camera: StringProperty(name="Camera", default="",
                           description="Camera to project from (default: the camera the image was generated from)")

    @classmethod
    def poll(cls, context):
        if not any(obj.type == "MESH" for obj in getattr(context, "selected_objects", ())):
            cls.poll_message_set("Select the mesh objects to project the image onto")
            return False
        return True

    def execute(self, context):
        if self.image:
            image = bpy.data.images.get(self.image)
            if image is None:
                self.report({"ERROR"}, f"No image named {self.image!r}")
                return {"CANCELLED"}
        else:
            image = _default_image(context)
            if image is None:
                self.report({"ERROR"}, "No image to apply: generate one or show it in the Image Editor")
                return {"CANCELLED"}
        camera_name = self.camera or image.get("archviz_camera", "")
        if camera_name:
            camera = bpy.data.objects.get(camera_name)
            if camera is None:
                self.report({"ERROR"}, f"No camera named {camera_name!r} to project {image.name!r} from")
                return {"CANCELLED"}
        else:
            camera = context.scene.camera
            if camera is None:
                self.report({"ERROR"}, f"Image {image.name!r} names no camera and the scene has none")
                return {"CANCELLED"}
        objects = [obj for obj in context.selected_objects if obj.type == "MESH"]
        skipped = [obj.name for obj in context.selected_objects if obj.type != "MESH"]
        try:
            material = results.apply_projection(image, camera, objects)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if skipped:
            self.report({"WARNING"}, f"Not a mesh, left as it was: {', '.join(skipped)}")
        self.report({"INFO"}, f"{material.name!r} projected from {camera.name!r} onto {len(objects)} object(s)")
        return {"FINISHED"}


class ARCHVIZ_OT_add_to_compositor(bpy.types.Operator):
    """Bring generated variants into the compositor: a switch over them, over the render layers"""

    bl_idname = "archviz.add_to_compositor"
    bl_label = "Add to Compositor"
    bl_options = {"REGISTER", "UNDO"}

    images: StringProperty(name="Images", default="",
                           description="Comma-separated image names (default: every ArchViz result)")
    active: IntProperty(name="Active", default=0, min=0,
                        description="Index of the variant the switch shows")

    @classmethod
    def poll(cls, context):
        if context.scene is None:
            return False
        if not bpy.data.images:
            cls.poll_message_set("No images: generate variants first")
            return False
        return True

    def execute(self, context):
        if self.images.strip():
            names = [name.strip() for name in self.images.split(",") if name.strip()]
            missing = [name for name in names if name not in bpy.data.images]
            if missing:
                self.report({"ERROR"}, f"No image named {', '.join(repr(n) for n in missing)}")
                return {"CANCELLED"}
            images = [bpy.data.images[name] for name in names]
        else:
            images = sorted(results.result_images(), key=lambda img: img.name)
            if not images:
                self.report({"ERROR"}, "No ArchViz results to add: generate variants first or name the images")
                return {"CANCELLED"}
        try:
            tree = results.add_to_compositor(context.scene, images, active=self.active)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"{len(images)} variant(s) in compositor {tree.name!r}, showing {images[self.active].name!r}")
        return {"FINISHED"}


def _named_or_shown(op, context):
    """The image the operator names, else the one shown, else the latest result; None after
    reporting why."""
    if op.image:
        image = bpy.data.images.get(op.image)
        if image is None:
            op.report({"ERROR"}, f"No image named {op.image!r}")
        return image
    image = _default_image(context)
    if image is None:
        op.report({"ERROR"}, "No image: generate one or show it in the Image Editor")
    return image


class ARCHVIZ_OT_upscale(bpy.types.Operator):
    """Upscale a result 2x or 4x: its passes rendered again at the target size, the image refined tile by tile (archviz upscale)"""

    bl_idname = "archviz.upscale"
    bl_label = "Upscale"

    image: StringProperty(name="Image", default="",
                          description="Result to upscale (default: the one in the Image Editor, else the latest result)")
    scale: EnumProperty(name="Scale", default="2", items=[("2", "2x", "Twice each side"),
                                                          ("4", "4x", "Four times each side")])
    tile: IntProperty(name="Tile", default=0, min=0, max=4096,
                      description="Tile side in px (0: the model's default, 512; 1024 for SDXL and FLUX.1)")
    overlap: IntProperty(name="Overlap", default=0, min=0, max=1024,
                         description="Overlap of neighbouring tiles in px (0: the default, 64)")

    @classmethod
    def poll(cls, context):
        from ..blender.upscaling import running

        if running() is not None:
            cls.poll_message_set("An upscale is running")
            return False
        return True

    def execute(self, context):
        from ..blender import upscaling
        from ..blender.backend import BackendSettings

        image = _named_or_shown(self, context)
        if image is None:
            return {"CANCELLED"}
        if not bpy.data.filepath:
            self.report({"ERROR"}, "Save the .blend first: the upscale renders its passes again from the saved file")
            return {"CANCELLED"}
        settings = BackendSettings(context)
        if settings.url:
            self.report({"ERROR"}, f"Upscale runs in this machine's backend Python; the backend is remote ({settings.url})")
            return {"CANCELLED"}
        try:
            argv = upscaling.upscale_argv(image, self.scale, bpy.data.filepath, settings.device, self.tile, self.overlap)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if bpy.data.is_dirty:
            self.report({"WARNING"}, "Unsaved changes are not in the upscale (it renders the saved .blend)")
        run = upscaling.UpscaleRun(settings.python, settings.backend_env(), image.name, argv)
        background = bpy.app.background or context.window is None
        upscaling.start(run, with_timer=not background)
        if not background:
            self.report({"INFO"}, f"Upscaling {image.name!r} {self.scale}x")
            return {"FINISHED"}
        upscaling.run_until_done(run)
        if run.state != "done":
            self.report({"ERROR"}, f"Upscale of {image.name!r}: {run.message}")
            return {"CANCELLED"}
        self.report({"INFO"}, run.message)
        return {"FINISHED"}


class ARCHVIZ_OT_upscale_cancel(bpy.types.Operator):
    """Stop the running upscale"""

    bl_idname = "archviz.upscale_cancel"
    bl_label = "Cancel Upscale"

    @classmethod
    def poll(cls, context):
        from ..blender.upscaling import running

        return running() is not None

    def execute(self, context):
        from ..blender.upscaling import running

        running().cancel()
        return {"FINISHED"}


class ARCHVIZ_OT_show_region_mask(bpy.types.Operator):
    """Show a region edit with its mask over it (the region tinted, its feather band fading)"""

    bl_idname = "archviz.show_region_mask"
    bl_label = "Show Region Mask"

    image: StringProperty(name="Image", default="",
                          description="Region edit to preview (default: the one in the Image Editor, else the latest result)")

    def execute(self, context):
        image = _named_or_shown(self, context)
        if image is None:
            return {"CANCELLED"}
        if image.get("archviz_region_of"):  # the preview itself is shown: preview its source again
            image = bpy.data.images.get(image["archviz_region_of"]) or image
        try:
            preview = results.region_preview(image)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        results.show_in_image_editor(context, preview)
        self.report({"INFO"}, f"{preview.name!r}: the region of {image.name!r} tinted")
        return {"FINISHED"}


classes = (ARCHVIZ_OT_apply_texture, ARCHVIZ_OT_add_to_compositor, ARCHVIZ_OT_upscale, ARCHVIZ_OT_upscale_cancel,
           ARCHVIZ_OT_show_region_mask)
