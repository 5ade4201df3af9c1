#!/usr/bin/env bash
# Screenshots of the add-on in a real Blender window (the README's pictures): the extension
# zip installed into a fresh user folder, the sidebar, the passes, the preferences and a
# generated result. Needs a Blender binary (4.2 or later) and xvfb-run (Debian: xvfb).
#
#   tests/gui/screenshots.sh /path/to/blender [OUT_DIR]
#
# Offline, with the tiny model and the project venv as the backend's Python. Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
BLENDER=${1:?usage: tests/gui/screenshots.sh /path/to/blender [OUT_DIR]}
OUT=${2:-out/gui}
make setup extension examples/interior.blend >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The example scene saved by this Blender (a file from a newer Blender may not open in it).
"$BLENDER" -b --factory-startup --python examples/build_interior.py -- --out "$work/interior.blend" >/dev/null
BLENDER_USER_RESOURCES="$work/user" ARCHVIZ_MODEL=tiny ARCHVIZ_PYTHON="$PWD/.venv/bin/python" \
    xvfb-run -a -s "-screen 0 1600x1000x24" \
    "$BLENDER" --factory-startup --python tests/gui/panel_flow.py -- \
        --zip "$(ls dist/archviz_controlnet-*.zip | tail -1)" --scene "$work/interior.blend" --out "$OUT"
ls "$OUT"
