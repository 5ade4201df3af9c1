"""A video job's finished clips in the local output folder (``archviz video`` and the Video
operator). A backend on this machine writing into that folder has put them there already;
a remote one wrote them into its own output folder, so each clip's files are downloaded
(``GET /v1/jobs/{id}/clips`` lists them, ``GET /v1/jobs/{id}/clips/{clip}/{file}`` serves
each) by the sweeps' rule (core/sweep.py :func:`local_file`). No bpy, no torch.
"""

import os

from .client import BackendError
from .png import read_text
from .sweep import local_file


def _plain_name(name, what):
    """``name`` when it is one plain file or folder name, else BackendError naming it (a
    backend that answers with a path is not followed out of the output folder)."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or "\0" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise BackendError(f"the backend named a {what} {str(name)[:80]!r}, which is not a plain file name; "
                           "nothing was written for it")
    return name


def local_clips(client, status, out_dir, on_file=None):
    """``status`` (a video job's, any state) with each finished clip's ``folder`` set to
    ``out_dir/<clip>``, its PNG frames and then its ``metadata.json`` there. A frame already
    in that folder with the clip's parameters hash is kept (a rerun downloads nothing new).
    Clips not finished are left out. ``on_file(clip, i, n)`` follows the downloads.
    BackendError names the clip and file a backend refused; OSError a local write."""
    listing = client.video_clips(status["id"])
    remote_folders = {os.path.basename(c["folder"]): c["folder"] for c in status.get("clips", [])}
    by_name = {}
    for clip in listing.get("clips", []):
        name = _plain_name(clip.get("name"), "clip")
        if not clip.get("done"):
            continue
        if clip.get("problem"):
            raise BackendError(f"clip {name}: {clip['problem']}")
        files = [_plain_name(f, "file") for f in clip.get("files") or []]
        if "metadata.json" not in files:
            raise BackendError(f"clip {name}: the backend lists no metadata.json for it")
        remote = remote_folders.get(name)
        folder = os.path.join(out_dir, name)
        frames = [f for f in files if f != "metadata.json"]
        for i, file in enumerate([*frames, "metadata.json"]):
            local = os.path.join(folder, file)
            if file != "metadata.json" and read_text(local).get("params_sha256") == clip["params_sha256"]:
                continue  # this clip's frame from an earlier download
            try:
                local_file(local, remote and os.path.join(remote, file),
                           lambda f=file: client.clip_file(status["id"], name, f))
            except BackendError as exc:
                raise BackendError(f"clip {name}: {file} could not be fetched: {exc}", status=exc.status) from None
            if on_file:
                on_file(name, i + 1, len(frames) + 1)
        by_name[name] = folder
    clips = []
    for clip in status.get("clips", []):
        name = os.path.basename(clip["folder"])
        if name in by_name:
            clips.append(dict(clip, folder=by_name[name], backend_folder=clip["folder"]))
    return dict(status, clips=clips)
