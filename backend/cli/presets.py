"""``archviz presets``: list the style presets, or check preset files.

Exit status 1 when a preset file is bad; the message names the file and the key.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", action="append", default=[], metavar="DIR",
                        help="extra preset folder to read after the built-in one (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the presets as JSON")
    parser.add_argument("--check", nargs="*", metavar="FILE", help="only validate these preset files")


def run(args: argparse.Namespace) -> int:
    from ...core.presets import PresetError, builtin_dir, load_preset_file, load_presets, user_dir

    try:
        if args.check:
            for path in args.check:
                preset = load_preset_file(path)
                print(f"ok  {preset.name}  ({path})")
            return 0
        dirs = [builtin_dir(), *args.dir]
        presets = load_presets(dirs)
    except PresetError as exc:
        print(f"archviz presets: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([p.to_dict() for p in presets.values()], indent=2))
        return 0
    print(f"{len(presets)} presets (built-in: {builtin_dir()}; user: {user_dir()})")
    for name in sorted(presets):
        p = presets[name]
        controls = ", ".join(f"{k} {v.scale:g}" for k, v in p.controls.items() if v.scale is not None)
        print(f"  {name:24s} {p.label or name:26s} steps {p.steps or '-':>3}  cfg {p.cfg or '-':>4}  "
              f"{p.scheduler or '-':16s} {controls}")
    return 0
