"""Files a user hands us, as a user runs the commands (the installed ``archviz`` in a
subprocess, the bpy module, real files, a real backend on loopback): broken .blend files,
``--out`` that cannot be a folder, a renderer crash (a real SIGSEGV of the render child),
a full disk (RLIMIT_FSIZE on the command), a refused token, resume and ``--remake``."""

import json
import os
import resource
import subprocess
import sys

import pytest

bpy = pytest.importorskip("bpy")

from backend_support import base_env, read_only_folder, running_server  # noqa: E402
from blender_support import box, camera, fresh_scene  # noqa: E402

ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("blends")
    fresh_scene(320, 240)
    box("Chair", (0, 0, 0), (1, 1, 1))
    box("Wall", (0, 3, 0), (8, 0.2, 6))
    camera("Main", location=(2, -6, 1.5))
    bpy.ops.wm.save_as_mainfile(filepath=str(d / "room.blend"), compress=False)
    data = (d / "room.blend").read_bytes()
    (d / "empty.blend").write_bytes(b"")
    (d / "truncated.blend").write_bytes(data[: len(data) // 3])
    (d / "picture.blend").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    (d / "folder.blend").mkdir()
    newer = bytearray(data)
    at = newer.index(b"v0500")
    newer[at:at + 5] = b"v0507"  # what Blender 5.7 writes in the header
    (d / "newer.blend").write_bytes(bytes(newer))
    return d


def run(*args, env=None, limit_fsize=None, timeout=600):
    def pre():
        if limit_fsize:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, limit_fsize))
    return subprocess.run([ARCHVIZ, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env or base_env(), preexec_fn=pre)


def our_lines(proc, command):
    return [ln for ln in proc.stderr.splitlines() if ln.startswith(f"archviz {command}: ")]


BROKEN = {
    "empty.blend": "is empty (0 bytes), not a .blend file",
    "truncated.blend": "cannot open {path}: it is truncated or damaged (Missing DNA block)",
    "picture.blend": "is not a .blend file (it is a PNG image)",
    "folder.blend": "is a folder, not a .blend file",
}


@pytest.mark.parametrize("command", ["passes", "sweep"])
def test_broken_blend_files_are_one_line_and_exit_2(files, tmp_path, command):
    for name, words in BROKEN.items():
        path = files / name
        extra = ["--styles", "modern", "--seeds", "0", "--model", "tiny"] if command == "sweep" else []
        proc = run(command, path, "--out", tmp_path / "out", *extra)
        lines = our_lines(proc, command)
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        assert len(lines) == 1 and str(path) in lines[0] and words.format(path=path) in lines[0], (name, lines)


def test_a_blend_from_a_newer_blender_says_so_on_the_terminal(files, tmp_path):
    proc = run("passes", files / "newer.blend", "--out", tmp_path / "out", "--long-side", "64")
    assert proc.returncode == 0, proc.stderr
    assert (f"archviz passes: warning: {files / 'newer.blend'} was saved by Blender 5.7, newer than this "
            f"Blender {bpy.app.version_string}") in proc.stderr


def test_sweep_out_that_is_a_file_or_read_only_answers_like_passes(files, tmp_path):
    (tmp_path / "taken").write_text("x")
    cleanup = read_only_folder(tmp_path / "ro")
    try:
        for out, words in ((tmp_path / "taken", f"--out {tmp_path / 'taken'} is a file, not a folder"),
                           (tmp_path / "ro", f"--out {tmp_path / 'ro'} is not writable"),
                           (tmp_path / "ro" / "sub", f"cannot be created: {tmp_path / 'ro'} is not writable")):
            for command, extra in (("sweep", ["--styles", "modern", "--seeds", "0"]), ("passes", [])):
                proc = run(command, files / "room.blend", "--out", out, *extra)
                assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
                assert our_lines(proc, command) == [f"archviz {command}: {words}"] or \
                    words in our_lines(proc, command)[0], proc.stderr
    finally:
        cleanup()


def test_a_renderer_crash_is_survived_and_names_camera_and_scene(files, tmp_path):
    """The render child is killed by a real SIGSEGV (the test hook makes it send the signal
    to itself where the render starts); the command lives on and says where it happened."""
    env = {**base_env(), "ARCHVIZ_TEST_CRASH_RENDER_WITH": "SIGSEGV"}
    proc = run("passes", files / "room.blend", "--out", tmp_path / "p", "--long-side", "64", env=env)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert our_lines(proc, "passes") == [
        f"archviz passes: the renderer crashed (SIGSEGV) while rendering camera 'Main' of scene 'Scene' in "
        f"{files / 'room.blend'}; nothing of this render was kept. A damaged mesh can do this: find it by hiding "
        "objects, or run Mesh > Clean Up in Blender"]
    with running_server(["--output-root", str(tmp_path)]) as server:
        proc = run("sweep", files / "room.blend", "--out", tmp_path / "s", "--styles", "modern", "--seeds", "0",
                   "--model", "tiny", "--long-side", "64", "--backend", server.url, env=env)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert "the renderer crashed (SIGSEGV) while rendering camera 'Main' of scene 'Scene'" in proc.stderr


def test_passes_into_a_full_disk_is_one_line_and_leaves_no_cut_file(files, tmp_path):
    out = tmp_path / "full"
    proc = run("passes", files / "room.blend", "--out", out, "--long-side", "128", limit_fsize=20_000)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert f"archviz passes: disk full while writing {out / 'passes.exr'}" in proc.stderr
    assert not (out / "passes.exr").exists() and not list(out.glob(".*.tmp"))


def test_sweep_resume_remake_full_disk_and_refused_token(files, tmp_path):
    out = tmp_path / "sweep"
    common = ["--styles", "modern", "--seeds", "0,1", "--model", "tiny", "--long-side", "64", "--steps", "1",
              "--controls", "depth"]
    # A local backend (started by each run) shares the disk: the second run resumes.
    first = run("sweep", files / "room.blend", "--out", out, *common)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 new image(s), 0 already on disk" in first.stdout
    again = run("sweep", files / "room.blend", "--out", out, *common)
    assert "0 new image(s), 2 already on disk" in again.stdout, again.stdout + again.stderr[-2000:]
    remade = run("sweep", files / "room.blend", "--out", out, *common, "--remake")
    assert "2 new image(s), 0 already on disk" in remade.stdout, remade.stdout + remade.stderr[-2000:]

    # One image per UNet batch: images come one by one, so the client's first EXR fails
    # while the job still runs.
    with running_server(["--output-root", str(tmp_path), "--token", "right-token-0123456789",
                         "--max-batch", "1"]) as server:
        env = {**base_env(), "ARCHVIZ_TOKEN": "right-token-0123456789"}

        for token, words in (("", "none was given"), ("wrong", "it is not the server's")):
            proc = run("sweep", files / "room.blend", "--out", tmp_path / "t", *common, "--backend", server.url,
                       env={**base_env(), "ARCHVIZ_TOKEN": token})
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
            assert our_lines(proc, "sweep") == [
                f"archviz sweep: the backend at {server.url} refused the token (401 unauthorized): {words}; give the "
                "server's token with --token TOKEN or ARCHVIZ_TOKEN"]

        # The images (downloaded, ~10 KB) and the passes (largest: passes.exr, ~15 KB rendered
        # without supersampling) fit; the multilayer EXR of the first variant (AI image +
        # passes, ~43 KB) does not.
        full = tmp_path / "full"
        longer = [("0-7" if a == "0,1" else "20" if a == "1" else a) for a in common]  # 8 seeds, 20 steps
        longer += ["--supersample", "1"]
        proc = run("sweep", files / "room.blend", "--out", full, *longer, "--backend", server.url,
                   env=env, limit_fsize=FULL_LIMIT)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        lines = our_lines(proc, "sweep")
        assert lines and lines[0].startswith(f"archviz sweep: disk full while writing {full}/Main_modern_s"), lines
        assert lines[0].endswith(" bytes; the file size limit, ulimit -f, was reached); the files finished before it "
                                 "are kept; its jobs were stopped on the backend"), lines
        assert ".exr (" in lines[0], lines
        import httpx

        listing = httpx.get(server.url + "/v1/jobs", headers={"Authorization": "Bearer right-token-0123456789"}).json()
        last = httpx.get(server.url + f"/v1/jobs/{listing['jobs'][-1]['id']}",
                         headers={"Authorization": "Bearer right-token-0123456789"}).json()
        last = _wait_state(server, last["id"])
        assert last["state"] == "failed" and "disk full while writing" in last["error"]["message"]
        manifest = json.loads(open(last["manifest"]).read())
        assert manifest["state"] == "failed" and "disk full while writing" in manifest["error"]["message"]
        assert not list(full.glob(".*.tmp"))


FULL_LIMIT = 20_000


def _wait_state(server, job_id):
    import time

    import httpx

    for _ in range(600):
        status = httpx.get(server.url + f"/v1/jobs/{job_id}",
                           headers={"Authorization": "Bearer right-token-0123456789"}).json()
        if status["state"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.1)
    return status
