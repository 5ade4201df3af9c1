"""``archviz sweep --image PATH``: a sweep from a photo or a sketch.

The detectors' weights come from a hub on loopback (tests/fake_hub.py) through the real
huggingface_hub client, under the real repo ids: a tiny DPT hybrid built from a small
config (Intel/dpt-hybrid-midas) and random MLSD/lineart files (lllyasviel/Annotators),
next to the tiny SD 1.5 models under their real ids. The sweep runs on a real backend
started by the command, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from archviz_controlnet.backend.server import picture as BP
from archviz_controlnet.backend.models import preprocess as P
from archviz_controlnet.core import jobs as J
from archviz_controlnet.core import picture as CP
from backend_support import TEST_HOME, pixel_sha256, read_png
from fake_hub import FakeHub, build_repos
from picture_support import ANNOTATOR_REPO, DEPTH_REPO, build_picture_repos, tiny_dpt
from test_hub import Live

ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")


def sketch(w=300, h=200, box=(60, 50, 240, 150), line=3):
    """A hand-drawing stand-in: a dark rectangle outline on white paper."""
    img = np.full((h, w, 3), 245, np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y0 + line, x0:x1] = img[y1 - line:y1, x0:x1] = 20
    img[y0:y1, x0:x0 + line] = img[y0:y1, x1 - line:x1] = 20
    return img


def save(path, array, fmt="PNG"):
    Image.fromarray(array).save(path, format=fmt)
    return str(path)


# ---------------------------------------------------------------------------------------
# Pieces (no backend)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("src, long_side, multiple, want", [
    ((300, 200), 512, 8, (512, 344)), ((1600, 900), 512, 8, (512, 288)), ((1600, 900), 1024, 16, (1024, 576)),
    ((900, 1600), 1024, 16, (576, 1024)), ((300, 200), 128, 8, (128, 88)), ((4000, 100), 512, 8, (512, 32))])
def test_fit_size_keeps_the_aspect_at_the_families_multiple(src, long_side, multiple, want):
    w, h = BP.fit_size(*src, long_side, multiple)
    assert (w, h) == want and w % multiple == 0 and h % multiple == 0
    if min(want) > 32:
        assert abs(w / h - src[0] / src[1]) <= multiple / min(w, h) * (w / h)  # within one multiple's rounding


def test_canny_of_a_drawn_rectangle_has_its_edges_on_the_border():
    w, h = BP.fit_size(300, 200, 128, 8)
    pic = Image.fromarray(sketch()).resize((w, h), Image.LANCZOS)
    edges, settings = P.adaptive_canny_with_settings(pic, w, h)
    e = np.asarray(edges)[..., 0] > 0
    sx, sy = w / 300, h / 200
    x0, y0, x1, y1 = 60 * sx, 50 * sy, 240 * sx, 150 * sy
    ys, xs = np.nonzero(e)
    assert len(xs) > 100
    # every edge pixel lies within 4 px of the drawn rectangle's outline...
    near = ((np.abs(xs - x0) <= 4) | (np.abs(xs - x1) <= 4)) & (ys >= y0 - 4) & (ys <= y1 + 4) | \
           ((np.abs(ys - y0) <= 4) | (np.abs(ys - y1) <= 4)) & (xs >= x0 - 4) & (xs <= x1 + 4)
    assert near.all()
    # ...and each of its four sides has edges along most of its length
    for side in (e[int(y0) - 4:int(y0) + 5].any(axis=0), e[int(y1) - 4:int(y1) + 5].any(axis=0)):
        assert side[int(x0) + 3:int(x1) - 3].mean() > 0.9
    for side in (e[:, int(x0) - 4:int(x0) + 5].any(axis=1), e[:, int(x1) - 4:int(x1) + 5].any(axis=1)):
        assert side[int(y0) + 3:int(y1) - 3].mean() > 0.9
    assert settings["detector"] == "adaptive_canny" and settings["low"] < settings["high"]
    assert settings["low"] == int((1 - 0.33) * settings["median"])  # median-based thresholds


def test_depth_control_of_a_ramp_is_monotone_with_near_white():
    """MiDaS-style output is inverse depth (larger = nearer): a ramp that comes nearer
    towards the bottom becomes a control that brightens monotonically to white there."""
    pred = np.linspace(0.2, 7.5, 48)[:, None] * np.ones((1, 64))
    a = np.asarray(P.depth_control(pred))[..., 0].astype(int)
    assert a.shape == (48, 64) and a[0].max() == 0 and a[-1].min() == 255
    assert (np.diff(a[:, 10]) >= 0).all() and np.diff(a[:, 10]).sum() == 255


def test_tiny_dpt_runs_on_a_ramp_picture(tmp_path, monkeypatch):
    """The DPT path end to end from a local folder (random weights: the map is min-max
    normalised and the picture's size, not a meaningful depth)."""
    monkeypatch.setenv("ARCHVIZ_ANNOTATORS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    P._DETECTORS.clear()
    tiny_dpt().save_pretrained(tmp_path / "dpt-hybrid-midas")
    ramp = np.repeat(np.linspace(0, 255, 96, dtype=np.uint8)[:, None], 128, axis=1)
    try:
        out, settings = P.run_detector("depth", Image.fromarray(np.stack([ramp] * 3, -1)), 128, 96)
    finally:
        P._DETECTORS.clear()
    a = np.asarray(out)
    assert a.shape == (96, 128, 3) and a.min() == 0 and a.max() == 255
    assert settings["detector"] == "dpt" and settings["model"] == str(tmp_path / "dpt-hybrid-midas")


def test_open_picture_refuses_what_is_not_a_usable_picture(tmp_path):
    good = save(tmp_path / "s.jpg", sketch(), "JPEG")
    image, fmt = BP.open_picture(Path(good).read_bytes())
    assert fmt == "JPEG" and image.size == (300, 200) and image.mode == "RGB"
    cases = {
        b"": "empty",
        b"hello, this is text\n" * 10: "not an image",
        Path(good).read_bytes()[:400]: "damaged",  # a JPEG cut after its header
        (tmp_path / "small.png"): "too small",
    }
    save(tmp_path / "small.png", sketch(40, 30, (5, 5, 35, 25), 1))
    for data, want in cases.items():
        data = data.read_bytes() if isinstance(data, Path) else data
        with pytest.raises(J.JobError) as err:
            BP.open_picture(data)
        assert want in str(err.value) and err.value.field == "image" and "\n" not in str(err.value)


def test_pictures_are_read_as_they_are_seen(tmp_path):
    """A sketch on a transparent background is drawn on white paper, not black; a phone
    photo's EXIF rotation is applied; a 16-bit scan is scaled to 8 bits."""
    rgba = np.zeros((80, 100, 4), np.uint8)
    rgba[20:23, 10:90] = (0, 0, 0, 255)
    image, _ = BP.open_picture(Path(save(tmp_path / "t.png", rgba)).read_bytes())
    a = np.asarray(image)
    assert (a[0, 0] == 255).all() and (a[21, 50] == 0).all()
    photo = Image.fromarray(sketch(100, 80, (10, 10, 90, 70), 2))
    exif = photo.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    photo.save(tmp_path / "p.jpg", format="JPEG", exif=exif)
    assert BP.open_picture((tmp_path / "p.jpg").read_bytes())[0].size == (80, 100)
    scan = (np.linspace(0, 65535, 100 * 80).reshape(80, 100)).astype(np.uint16)
    gray = np.asarray(BP.open_picture(Path(save(tmp_path / "s16.png", scan)).read_bytes())[0])
    assert gray.min() == 0 and gray.max() == 255 and (np.diff(gray[:, :, 0].ravel().astype(int)) >= 0).all()


def test_picture_problem_and_detectors_per_unit(tmp_path):
    from archviz_controlnet.core.sweep import ControlUnit

    assert "no such file" in CP.picture_problem(str(tmp_path / "nope.png"))
    assert "is a folder" in CP.picture_problem(str(tmp_path))
    (tmp_path / "e.png").write_bytes(b"")
    assert "empty" in CP.picture_problem(str(tmp_path / "e.png"))
    (tmp_path / "t.png").write_text("not a picture")
    assert "is not an image" in CP.picture_problem(str(tmp_path / "t.png"))
    assert CP.picture_problem(save(tmp_path / "ok.webp", sketch(), "WEBP")) is None
    units = [ControlUnit("depth"), ControlUnit("lines")]
    assert CP.unit_detectors(units, {1: "lineart"}) == ["depth", "lineart"]
    assert CP.unit_detectors(units, {1: "canny"}) == ["depth", "canny"]
    with pytest.raises(J.JobError, match="'softedge' has no detector"):
        CP.unit_detectors(units, {1: "softedge"})
    with pytest.raises(J.JobError, match="'seg': a picture has no seg detector"):
        CP.unit_detectors([ControlUnit("seg")], {})


# ---------------------------------------------------------------------------------------
# The command, against a hub on loopback
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repos():
    old = os.environ.get("ARCHVIZ_HOME")
    os.environ["ARCHVIZ_HOME"] = str(TEST_HOME)
    try:
        return {**build_repos(TEST_HOME / "fake-hub" / "v1"),
                **build_picture_repos(TEST_HOME / "fake-hub" / "pictures-v1")}
    finally:
        if old is None:
            os.environ.pop("ARCHVIZ_HOME")
        else:
            os.environ["ARCHVIZ_HOME"] = old


def _env(hub, home, **extra):
    return hub.env(home, ARCHVIZ_HOME=str(TEST_HOME), ARCHVIZ_ANNOTATORS=str(home / "no-local-annotators"),
                   ARCHVIZ_PRESET_DIR=str(TEST_HOME / "no-user-presets"), **extra)


def _cmd(image, out, *extra, seeds="0-1", styles="modern,industrial", model="sd15"):
    return [ARCHVIZ, "sweep", "--image", str(image), "--model", model, "--styles", styles, "--seeds", seeds,
            "--long-side", "128", "--steps", "2", "--out", str(out), *extra]


def _sweep(image, out, env, *extra, **kw):
    return subprocess.run(_cmd(image, out, *extra, **kw), env=env, capture_output=True, text=True, timeout=600)


def test_sweep_from_a_sketch_end_to_end_then_resume_then_another_picture(repos, tmp_path):
    home, out = tmp_path / "hf", tmp_path / "out"
    pic = save(tmp_path / "sketch.png", sketch())
    with FakeHub(repos) as hub:
        # The DPT's weights are held after 2000 bytes until its download shows in the terminal.
        hub.holds[f"{DEPTH_REPO}/model.safetensors"] = 2000
        run = Live(_cmd(pic, out, "--line-style", "canny"), _env(hub, home))
        run.wait_for(lambda: hub.sent.get(f"{DEPTH_REPO}/model.safetensors", 0) >= 2000, "the DPT download under way",
                     timeout=300)
        run.wait_for(lambda: "downloading dpt-hybrid-midas" in run.stderr(), "the DPT download's bar")
        hub.released.set()
        run.finish()
        first = subprocess.CompletedProcess(run.proc.args, run.proc.returncode, run.stdout(), run.stderr())
        assert first.returncode == 0, first.stderr[-3000:]
        fetched = hub.fetched()
    assert "4 new image(s), 0 already on disk" in first.stdout
    assert "PNG 300x200 -> 128x88 for sd15; detectors: depth=depth, lines=canny" in first.stdout
    # The depth model came through the hub download: only what the loader reads.
    assert {k for k in fetched if k.startswith(DEPTH_REPO)} == {f"{DEPTH_REPO}/config.json",
                                                                 f"{DEPTH_REPO}/model.safetensors"}
    assert not any(k.startswith(ANNOTATOR_REPO) for k in fetched)  # canny needs no weights
    # The models' download, then the detector's with its own bar; the last line counts both.
    last = [ln for ln in first.stdout.splitlines() if "from the hub into the Hugging Face cache" in ln][-1]
    assert last.startswith(f"fetched {sum(fetched.values())} bytes") and f"in {len(fetched)} file(s)" in last

    passes = out / "passes" / "sketch"
    picture = np.asarray(Image.open(passes / "picture.png"))
    assert picture.shape == (88, 128, 3)
    lines = np.asarray(Image.open(passes / "lines_canny.png"))[..., 0] > 0
    assert lines.shape == (88, 128) and set(np.unique(np.asarray(Image.open(passes / "lines_canny.png")))) == {0, 255}
    x0, y0, x1, y1 = 60 * 128 / 300, 50 * 88 / 200, 240 * 128 / 300, 150 * 88 / 200
    ys, xs = np.nonzero(lines)
    border = ((np.abs(xs - x0) <= 4) | (np.abs(xs - x1) <= 4) | (np.abs(ys - y0) <= 4) | (np.abs(ys - y1) <= 4))
    assert len(xs) > 100 and border.all()  # the rectangle's outline, nothing else
    depth = np.asarray(Image.open(passes / "depth.png"))
    assert depth.shape == (88, 128, 3) and depth.min() == 0 and depth.max() == 255
    saved = json.loads((passes / "controls.json").read_text())
    kinds = {c["preprocess"]: c for c in saved["controls"]}
    assert set(kinds) == {"depth", "canny"} and kinds["depth"]["settings"]["model"].startswith(DEPTH_REPO + "@")
    assert kinds["canny"]["settings"]["sigma"] == 0.33 and kinds["canny"]["picture_sha256"] == pixel_sha256(picture)
    assert kinds["canny"]["control_sha256"] == pixel_sha256(np.asarray(Image.open(passes / "lines_canny.png")))

    images = sorted(out.glob("sketch_*_s[0-9].png"))
    assert [p.name for p in images] == ["sketch_industrial_s0.png", "sketch_industrial_s1.png",
                                        "sketch_modern_s0.png", "sketch_modern_s1.png"]
    hashes = {}
    for path in images:
        pixels, meta = read_png(path)
        assert pixels.shape[:2] == (88, 128)
        params = json.loads(meta["archviz"])["params"]
        assert [(c["type"], c["preprocess"], c["image_sha256"]) for c in params["controls"]] == \
            [("depth", "depth", pixel_sha256(picture)), ("lines", "canny", pixel_sha256(picture))]
        assert json.loads(meta["preprocessors"]) == saved["controls"]
        hashes[path.name] = meta["params_sha256"]
    manifest = json.loads((out / "sketch_manifest.json").read_text())
    assert manifest["picture_controls"] == saved["controls"] and len(manifest["done"]) == 4

    # Resume: the same picture again, offline (the DPT from the cache): nothing is made again.
    second = _sweep(pic, out, _env(hub, home, HF_HUB_OFFLINE="1"), "--line-style", "canny")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 new image(s), 4 already on disk" in second.stdout

    # Another picture under the same name: its hash is in the parameters, so every image is made again.
    save(tmp_path / "sketch.png", sketch(box=(30, 30, 150, 170)))
    third = _sweep(pic, out, _env(hub, home, HF_HUB_OFFLINE="1"), "--line-style", "canny")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "4 new image(s), 0 already on disk" in third.stdout
    assert all(read_png(p)[1]["params_sha256"] != hashes[p.name] for p in images)


def test_line_detectors_weights_come_from_annotators_through_the_hub(repos, tmp_path):
    """SD 1.5's default line style for a picture is lineart: its two files, and no other of
    lllyasviel/Annotators, are fetched; MLSD (--line-style mlsd) fetches its one file."""
    home, out = tmp_path / "hf", tmp_path / "out"
    pic = save(tmp_path / "plan.jpg", sketch(), "JPEG")
    with FakeHub(repos) as hub:
        run = _sweep(pic, out, _env(hub, home), "--controls", "lines", seeds="0", styles="modern")
        assert run.returncode == 0, run.stderr[-3000:]
        lineart = {k for k in hub.fetched() if k.startswith(ANNOTATOR_REPO)}
        run2 = _sweep(pic, tmp_path / "out2", _env(hub, home), "--controls", "lines", "--line-style", "mlsd",
                      seeds="0", styles="modern")
        assert run2.returncode == 0, run2.stderr[-3000:]
        both = {k for k in hub.fetched() if k.startswith(ANNOTATOR_REPO)}
    assert lineart == {f"{ANNOTATOR_REPO}/sk_model.pth", f"{ANNOTATOR_REPO}/sk_model2.pth"}
    assert both - lineart == {f"{ANNOTATOR_REPO}/mlsd_large_512_fp32.pth"}
    assert "JPEG 300x200 -> 128x88 for sd15; detectors: lines=lineart" in run.stdout
    a = np.asarray(Image.open(out / "passes" / "plan" / "lines_lineart.png"))
    assert a.shape == (88, 128, 3) and (a[..., 0] == a[..., 2]).all()
    assert (tmp_path / "out2" / "passes" / "plan" / "lines_mlsd.png").is_file()
    meta = json.loads(read_png(out / "plan_modern_s0.png")[1]["preprocessors"])
    weights = meta[0]["settings"]["weights"]
    assert [w.startswith(f"{ANNOTATOR_REPO}@") for w in weights] == [True, True]
    assert weights[0].endswith("/sk_model.pth") and meta[0]["settings"]["coarse"] is False


def test_offline_without_the_depth_model_is_one_line(repos, tmp_path):
    """The tiny base model is there; the DPT is neither in the cache nor downloadable."""
    pic = save(tmp_path / "sketch.png", sketch())
    with FakeHub(repos) as hub:
        run = _sweep(pic, tmp_path / "out", _env(hub, tmp_path / "hf", HF_HUB_OFFLINE="1"), "--line-style", "canny",
                     seeds="0", styles="modern", model="tiny")
    assert run.returncode == 1
    err = [ln for ln in run.stderr.splitlines() if ln.startswith("archviz sweep:")]
    assert len(err) == 1 and DEPTH_REPO in err[0] and "downloads are off" in err[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr


def test_bad_input_is_one_line_naming_the_value(tmp_path):
    blend = tmp_path / "room.blend"
    blend.write_bytes(b"BLENDER-v500" + bytes(100))
    (tmp_path / "notes.png").write_text("shopping list")
    good = save(tmp_path / "ok.png", sketch())
    small = save(tmp_path / "tiny.png", sketch(40, 30, (5, 5, 35, 25), 1))
    damaged = tmp_path / "cut.png"
    damaged.write_bytes(Path(good).read_bytes()[:300])
    base = ["--styles", "modern", "--seeds", "0", "--out", str(tmp_path / "out"), "--model", "tiny"]
    cases = [
        (["--image", str(tmp_path / "missing.png")], "missing.png: no such file"),
        (["--image", str(tmp_path / "notes.png")], "notes.png is not an image"),
        ([str(blend), "--image", good], f"not both (got {blend} and --image {good})"),
        ([good], f"is not a .blend file (it is a PNG image); to sweep from a photo or a sketch, give --image {good}"),
        (["--image", good, "--line-style", "crayon"], "unknown --line-style 'crayon'"),
        (["--image", good, "--line-style", "softedge"], "'softedge' has no detector for a picture"),
        (["--image", good, "--controls", "depth,seg"], "'seg': a picture has no seg detector"),
        (["--image", good, "--region", "floor"], "--region needs a scene's passes"),
        (["--image", str(damaged)], f"--image {damaged}: the PNG is cut short"),  # checked before any work
        (["--image", small], f"--image {small}: PNG of 40x30 px is too small"),
    ]
    env = {**os.environ, "ARCHVIZ_HOME": str(TEST_HOME), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for args, want in cases:
        run = subprocess.run([ARCHVIZ, "sweep", *args, *base], env=env, capture_output=True, text=True, timeout=300)
        lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
        assert run.returncode == 2, (args, run.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("archviz sweep: ") and want in lines[0], (args, run.stderr)


def test_archviz_models_download_preprocessors_fetches_only_the_detectors_files(repos, tmp_path):
    home = tmp_path / "hf"
    with FakeHub(repos) as hub:
        env = _env(hub, home)
        down = subprocess.run([ARCHVIZ, "models", "download", "preprocessors"], env=env, capture_output=True,
                              text=True, timeout=300)
        assert down.returncode == 0, down.stderr[-3000:]
        fetched = set(hub.fetched())
    assert fetched == {f"{DEPTH_REPO}/config.json", f"{DEPTH_REPO}/model.safetensors",
                       f"{ANNOTATOR_REPO}/mlsd_large_512_fp32.pth", f"{ANNOTATOR_REPO}/sk_model.pth",
                       f"{ANNOTATOR_REPO}/sk_model2.pth"}
    verify = subprocess.run([ARCHVIZ, "models", "verify", "preprocessors"], env=dict(env, HF_HUB_OFFLINE="1"),
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0 and "2 model(s) checked, 0 problem(s)" in verify.stdout, verify.stdout + verify.stderr


def test_remote_backend_runs_the_detectors_and_the_controls_come_back(repos, tmp_path):
    """With --backend URL the picture travels in the request; the server runs the detectors
    (its own hub download) and the command brings the controls into OUT/passes/<name>/."""
    from backend_support import running_server

    pic = save(tmp_path / "sketch.png", sketch())
    with FakeHub(repos) as hub:
        with running_server(env=_env(hub, tmp_path / "server-hf", ARCHVIZ_OUTPUT_DIR=str(tmp_path / "server-out"))) \
                as server:
            run = _sweep(pic, tmp_path / "out", _env(hub, tmp_path / "client-hf", HF_HUB_OFFLINE="1"),
                         "--line-style", "canny", "--backend", server.url, seeds="0", styles="modern", model="tiny")
    assert run.returncode == 0, run.stderr[-3000:]
    passes = tmp_path / "out" / "passes" / "sketch"
    assert sorted(p.name for p in passes.iterdir()) == ["controls.json", "depth.png", "lines_canny.png", "picture.png"]
    notes = json.loads((passes / "controls.json").read_text())["controls"]
    for note in notes:
        got = np.asarray(Image.open(passes / os.path.basename(note["file"])))
        assert pixel_sha256(got) == note["control_sha256"]
    assert json.loads(read_png(tmp_path / "out" / "sketch_modern_s0.png")[1]["preprocessors"]) == notes
    assert not (tmp_path / "client-hf" / "hub").exists()  # the client fetched nothing itself
    assert len(list((tmp_path / "server-out").glob("*/passes/sketch/depth.png"))) == 1  # made on the server


@pytest.mark.parametrize("model, size, line", [("tiny-sdxl", "128x88", "canny"), ("tiny-flux", "128x80", "canny")])
def test_sdxl_and_flux_take_canny_lines_at_their_multiple(tmp_path, model, size, line):
    """SDXL and FLUX.1 get canny lines (their nets' training); FLUX.1 sides are multiples of
    16. The DPT comes from the local annotators folder here, with the hub off."""
    annotators = tmp_path / "annotators"
    tiny_dpt().save_pretrained(annotators / "dpt-hybrid-midas")
    pic = save(tmp_path / "plan.png", sketch())
    env = {**os.environ, "ARCHVIZ_HOME": str(TEST_HOME), "ARCHVIZ_ANNOTATORS": str(annotators),
           "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1",
           "ARCHVIZ_PRESET_DIR": str(TEST_HOME / "no-user-presets")}
    run = _sweep(pic, tmp_path / "out", env, seeds="0", styles="modern", model=model)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"PNG 300x200 -> {size} for {model}; detectors: depth=depth, lines={line}" in run.stdout
    w, h = map(int, size.split("x"))
    pixels, meta = read_png(tmp_path / "out" / "plan_modern_s0.png")
    assert pixels.shape[:2] == (h, w)
    notes = json.loads(meta["preprocessors"])
    assert [n["file"] for n in notes] == ["passes/plan/depth.png", f"passes/plan/lines_{line}.png"]
    assert notes[0]["settings"]["model"] == str(annotators / "dpt-hybrid-midas")
