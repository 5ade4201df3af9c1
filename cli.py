"""The ``archviz`` command. Each subcommand lives next to the code it drives and is
imported only when chosen, so ``archviz serve`` never loads bpy and ``archviz passes``
never loads torch."""

import argparse
import importlib
import sys

# name -> (module, one-line help). Each module defines add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "passes": ("archviz_controlnet.blender.capture.cli", "render exact control passes from a .blend camera"),
    "sweep": ("archviz_controlnet.blender.cli_sweep", "render passes and sweep styles x seeds x cameras through the backend"),
    "serve": ("archviz_controlnet.backend.cli.serve", "start the generation backend (HTTP on loopback)"),
    "upscale": ("archviz_controlnet.backend.cli.upscale", "exact tiled upscaling of a generated image (passes re-rendered at the target size)"),
    "presets": ("archviz_controlnet.backend.cli.presets", "list the style presets"),
    "bench": ("archviz_controlnet.bench.cli", "time our engine against the plain diffusers loop, side by side"),
    "doctor": ("archviz_controlnet.core.doctor", "can a real generation run here? torch, GPU, models, cache, and fixes"),
    "models": ("archviz_controlnet.backend.cli.models", "list, download, verify or remove hub models (HF cache)"),
    "dataset": ("archviz_controlnet.blender.capture.dataset", "render paired ControlNet training data (target + controls per view) from .blend scenes"),
    "train-controlnet": ("archviz_controlnet.backend.train.controlnet", "train a ControlNet on pairs from archviz dataset (frozen base, zero convs)"),
    "texture": ("archviz_controlnet.blender.texture", "texture a scene from several cameras (inpainting view by view) and bake it into textured.blend"),
    "walkthrough": ("archviz_controlnet.blender.walkthrough", "render a camera's animation (e.g. of textured.blend) to PNG frames and an MP4"),
    "video": ("archviz_controlnet.blender.cli_video", "walkthrough video from a camera path: per-frame passes into Wan VACE, PNG frames + MP4"),
}


def build_parser(argv):
    parser = argparse.ArgumentParser(prog="archviz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen command's module is imported to add its arguments.
        if argv and argv[0] == name:
            module = importlib.import_module(module_name)
            module.add_arguments(sp)
            sp.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    args._argv = argv  # as given, for a command that runs part of its work in a child
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
