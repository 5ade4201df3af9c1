"""The .blend file and output folder a command is given: checked before Blender opens
them, so a bad one is one line naming the file and the problem (exit status 2), never a
traceback. Nothing here imports bpy at module level."""

import os
import stat

#: How a file starts -> what it is, for files handed to us that are not .blend files.
_NOT_BLEND = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"PK\x03\x04", "a ZIP archive"),
    (b"%PDF", "a PDF document"), (b"glTF", "a binary glTF file"), (b"ISO-10303", "an IFC/STEP file"),
    (b"v/1\x01", "an OpenEXR image"), (b"Rar!", "a RAR archive"), (b"\x7fELF", "a program"),
)
#: How a .blend starts: plain, gzip-compressed (before 3.0), zstd-compressed (3.0 and later).
_BLEND_MAGIC = (b"BLENDER", b"\x1f\x8b", b"\x28\xb5\x2f\xfd")


class BlendFileError(ValueError):
    """A .blend file that cannot be opened; the message names it and says why."""


def check_blend_file(path):
    """BlendFileError unless ``path`` is a readable file that starts like a .blend."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BlendFileError(f"no such .blend file: {path}") from None
    except OSError as exc:
        raise BlendFileError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise BlendFileError(f"{path} is a folder, not a .blend file")
    if not stat.S_ISREG(st.st_mode):
        raise BlendFileError(f"{path} is not a regular file (a pipe or a device), not a .blend file")
    if st.st_size == 0:
        raise BlendFileError(f"{path} is empty (0 bytes), not a .blend file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise BlendFileError(f"cannot read {path}: {exc.strerror}") from None
    if not head.startswith(_BLEND_MAGIC):
        what = next((name for magic, name in _NOT_BLEND if head.startswith(magic)), None)
        raise BlendFileError(f"{path} is not a .blend file" + (f" (it is {what})" if what else
                                                                 " (it does not start like one)"))


def open_blend(path):
    """Open ``path`` in Blender. Returns a warning line or None (a file saved by a newer
    Blender opens, but data may be lost or wrong: the terminal must say so). Raises
    BlendFileError for a file Blender cannot read (truncated, damaged)."""
    import bpy

    from .. import compat

    check_blend_file(path)
    try:
        bpy.ops.wm.open_mainfile(filepath=os.path.abspath(path))
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        for prefix in ("Error:",):
            detail = detail.removeprefix(prefix).strip()
        if "not supported" in detail:
            reason = "Blender does not recognise its format"
        elif "failed" in detail.lower() or "missing" in detail.lower():
            reason = "it is truncated or damaged (" + detail.rsplit(":", 1)[-1].strip() + ")"
        else:
            reason = detail
        raise BlendFileError(f"cannot open {path}: {reason}") from None
    saved = tuple(bpy.data.version[:2])
    if compat.newer_than_running(saved):
        running = compat.VERSION
        return (f"warning: {path} was saved by Blender {saved[0]}.{saved[1]}, newer than this Blender "
                f"{compat.VERSION_STRING}: data may be lost or read wrong; open it with Blender "
                f"{saved[0]}.{saved[1]} or later, or save it from there for {running[0]}.{running[1]}")
    return None


def check_out_dir(path, option="--out"):
    """Why ``path`` cannot be an output folder (an existing file, not writable, inside a
    file), or None. It need not exist yet: the nearest existing folder must be writable."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{option} {path} is a file, not a folder"
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return f"{option} {path} cannot be created: {probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return (f"{option} {path} is not writable" if probe == path
                else f"{option} {path} cannot be created: {probe} is not writable")
    return None


def input_problem(scene, out):
    """The one-line problem with a command's .blend file or its ``--out`` folder, or None
    (what ``archviz passes`` and ``archviz sweep`` check before anything else)."""
    try:
        check_blend_file(scene)
    except BlendFileError as exc:
        return str(exc)
    return check_out_dir(out)
