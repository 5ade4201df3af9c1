"""Models from the hub, against a hub on loopback (tests/fake_hub.py) with the real
huggingface_hub client: cold-cache sweep with progress, offline rerun from the cache,
a killed download, gated repositories, a disk shortfall, offline with nothing cached, and
``archviz models``. The hub serves the tiny models under the real SD 1.5 repo ids, laid
out like the real repos (fp32 + fp16 variants, ``.bin`` pickles, unused folders)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from archviz_controlnet.backend.models import registry as M
from backend_support import TEST_HOME, b64, depth_image, read_png
from blender_support import SCENE_SCRIPT
from fake_hub import FakeHub

ROOT = Path(__file__).resolve().parent.parent
ARCHVIZ = os.path.join(os.path.dirname(sys.executable), "archviz")
BASE, DEPTH, LINEART = M.SD15_BASE, M.SD15_CONTROLNETS["depth"], M.SD15_CONTROLNETS["lineart"]
UNET = "unet/diffusion_pytorch_model.safetensors"

#: What the SD 1.5 loaders read (backend/models/registry.py load_base / load_controlnet) on an fp32
#: device: written out here, independently of the selection code under test.
LOADED_FP32 = {
    BASE: ["model_index.json", "unet/config.json", UNET, "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
           "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/merges.txt",
           "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
           "scheduler/scheduler_config.json"],
    DEPTH: ["config.json", "diffusion_pytorch_model.safetensors"],
    LINEART: ["config.json", "diffusion_pytorch_model.safetensors"],
}



@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "room.blend"
    subprocess.run([sys.executable, "-c", SCENE_SCRIPT, str(ROOT / "tests"), str(path)], check=True,
                   capture_output=True, timeout=120)
    return str(path)


def _loaded(repos, table=LOADED_FP32):
    return {f"{repo}/{p}": (repos[repo] / p).stat().st_size for repo, paths in table.items() for p in paths}


def _env(hub, home, **extra):
    return hub.env(home, ARCHVIZ_HOME=str(TEST_HOME), **extra)


def _models(env, *args, timeout=300):
    return subprocess.run([ARCHVIZ, "models", *args], env=env, capture_output=True, text=True, timeout=timeout)


class Live:
    """A child process whose stdout and stderr are read as they come (tqdm writes \\r)."""

    def __init__(self, cmd, env):
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out, self.err = [], []
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _pump(stream, sink):
        for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
            sink.append(chunk.decode("utf-8", "replace"))

    def stdout(self):
        return "".join(self.out)

    def stderr(self):
        return "".join(self.err)

    def wait_for(self, check, what, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"never saw {what}; rc {self.proc.poll()}\nstdout:\n{self.stdout()[-3000:]}\n"
                             f"stderr:\n{self.stderr()[-3000:]}")

    def finish(self, timeout=300):
        self.proc.wait(timeout=timeout)
        time.sleep(0.2)  # the pump threads drain the pipes
        return self.proc.returncode


def _incomplete(home: Path):
    return sorted(p.name for p in home.rglob("*.incomplete"))


def test_cold_cache_sweep_fetches_what_loads_with_progress_then_offline_same_images(repos, scene, tmp_path):
    import httpx

    home, out1, out2 = tmp_path / "hf", tmp_path / "out1", tmp_path / "out2"
    sweep = [ARCHVIZ, "sweep", scene, "--model", "sd15", "--styles", "modern", "--seeds", "0", "--long-side", "64",
             "--steps", "2"]
    with FakeHub(repos) as hub:
        hub.holds[UNET] = 1_000_000  # the UNet's weights stop there until the test has looked
        run = Live(sweep + ["--out", str(out1)], _env(hub, home))
        run.wait_for(lambda: "started a backend at " in run.stdout(), "the backend starting")
        url = run.stdout().split("started a backend at ")[1].split()[0]
        run.wait_for(lambda: hub.sent.get(f"{BASE}/{UNET}", 0) >= 1_000_000, "the UNet download under way")
        jobs = httpx.get(f"{url}/v1/jobs").json()["jobs"]
        status = httpx.get(f"{url}/v1/jobs/{jobs[0]['id']}").json()
        # The job status the backend serves: a downloading phase with bytes per file and overall.
        assert status["state"] == "running" and status["phase"] == "downloading", status
        d = status["download"]
        loaded = _loaded(repos)
        assert d["file"] == UNET and d["component"] == "unet" and d["repo"] == BASE
        # huggingface_hub hands bytes over in 10 MB chunks: this 5.7 MB file shows 0 until it is
        # whole; the files before it (model_index.json, unet/config.json) are counted overall.
        assert d["file_done"] < d["file_total"] == loaded[f"{BASE}/{UNET}"] and d["file_index"] == 3
        before = loaded[f"{BASE}/model_index.json"] + loaded[f"{BASE}/unet/config.json"]
        assert d["total"] == sum(loaded.values()) and d["done"] == before + d["file_done"]
        assert d["files_total"] == 16 and d["files_done"] == 2
        # ... and the terminal shows it (tqdm, from the same job status).
        run.wait_for(lambda: "downloading unet" in run.stderr(), "the download bar in the terminal")
        hub.released.set()
        assert run.finish() == 0, run.stderr()[-3000:]
        fetched = hub.fetched()
        requests = len(hub.log)
    stdout, stderr = run.stdout(), run.stderr()
    assert "1 new image(s), 0 already on disk" in stdout
    assert "downloading unet" in stderr and "unet/diffusion_pytorch_model.safetensors" in stderr
    # Bytes fetched are exactly the files the pipeline loads: no .bin, no fp16 duplicates,
    # no safety checker, feature extractor, single-file checkpoint, images or README.
    assert fetched == loaded, sorted(set(fetched) ^ set(loaded))
    total = sum(fetched.values())
    assert f"fetched {total} bytes" in stdout and "in 16 file(s)" in stdout
    assert not _incomplete(home)
    first = read_png(out1 / "Camera_modern_s0.png")[0]

    # A second run offline, with the cache alone (the hub is gone): the same image.
    second = subprocess.run(sweep + ["--out", str(out2)], env=_env(hub, home, HF_HUB_OFFLINE="1"),
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "fetched" not in second.stdout and len(hub.log) == requests
    assert np.array_equal(read_png(out2 / "Camera_modern_s0.png")[0], first)

    # Offline with nothing cached: the error names the model and how to get it.
    third = subprocess.run(sweep + ["--out", str(tmp_path / "out3")],
                           env=_env(hub, tmp_path / "empty-hf", HF_HUB_OFFLINE="1"),
                           capture_output=True, text=True, timeout=300)
    assert third.returncode == 1
    assert BASE in third.stderr and "archviz models download sd15-base" in third.stderr
    assert "downloads are off (HF_HUB_OFFLINE=1)" in third.stderr and "Traceback" not in third.stderr


def test_killed_download_restarts_cleanly_without_litter(repos, tmp_path):
    home = tmp_path / "hf"
    with FakeHub(repos) as hub:
        env = _env(hub, home)
        hub.holds[UNET] = 2_000_000
        run = Live([ARCHVIZ, "models", "download", "sd15"], env)
        run.wait_for(lambda: hub.sent.get(f"{BASE}/{UNET}", 0) >= 2_000_000, "the UNet download half way")
        os.kill(run.proc.pid, signal.SIGKILL)
        run.finish()
        assert run.proc.returncode == -signal.SIGKILL
        litter = _incomplete(home)
        assert len(litter) == 1 and litter[0].startswith(repos_etag(hub, BASE, UNET))
        hub.holds.clear()
        hub.released.set()  # the killed request's handler wakes to a closed socket and logs it
        deadline = time.monotonic() + 60
        while not any(e["file"] == f"{BASE}/{UNET}" for e in hub.log) and time.monotonic() < deadline:
            time.sleep(0.05)
        first_run = len(hub.log)
        again = _models(env, "download", "sd15")
        assert again.returncode == 0, again.stderr[-3000:]
        second = {e["file"]: e["bytes"] for e in hub.log[first_run:] if e["kind"] == "resolve" and e["method"] == "GET"}
    assert not _incomplete(home)
    # Files finished before the kill are not fetched again; the UNet is fetched whole.
    assert f"{BASE}/model_index.json" not in second and f"{BASE}/unet/config.json" not in second
    assert second[f"{BASE}/{UNET}"] == (repos[BASE] / UNET).stat().st_size
    assert f"fetched {sum(second.values())} bytes" in again.stdout
    verify = _models(env, "verify", "sd15", "--precision", "fp32")
    assert verify.returncode == 0 and "3 model(s) checked, 0 problem(s)" in verify.stdout, verify.stderr


def repos_etag(hub, repo_id, path):
    return hub.repos[repo_id].etag(path)


def test_gated_repo_needs_the_token_and_says_so(repos, tmp_path):
    secret = "hf_archviz_test_secret_token"
    with FakeHub(repos, gated={DEPTH: secret}) as hub:
        page = f"{hub.url}/{DEPTH}"
        without = _models(_env(hub, tmp_path / "hf"), "download", "sd15-depth")
        assert without.returncode == 1
        line = without.stderr.strip().splitlines()[-1]
        assert DEPTH in line and "gated (401)" in line and f"accept the licence on {page}" in line
        assert "HF_TOKEN" in line and "Hugging Face Token" in line and "Traceback" not in without.stderr
        wrong = _models(_env(hub, tmp_path / "hf", HF_TOKEN="hf_wrong"), "download", "sd15-depth")
        assert wrong.returncode == 1 and "(403)" in wrong.stderr and "token was refused" in wrong.stderr
        right = _models(_env(hub, tmp_path / "hf", HF_TOKEN=secret), "download", "sd15-depth")
        assert right.returncode == 0, right.stderr[-2000:]
        assert set(hub.fetched()) == {f"{DEPTH}/config.json", f"{DEPTH}/diffusion_pytorch_model.safetensors"}
    for proc in (without, wrong, right):
        assert secret not in proc.stdout + proc.stderr


def test_disk_shortfall_is_refused_before_any_byte(repos, tmp_path):
    import shutil

    home = tmp_path / "hf"
    with FakeHub(repos) as hub:
        hub.listed_sizes[(BASE, UNET)] = 10**15  # the listing claims a 1 PB UNet
        proc = _models(_env(hub, home), "download", "sd15")
        resolves = [e for e in hub.log if e["kind"] == "resolve"]
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    needed = 10**15 + sum(v for k, v in _loaded(repos).items() if not k.endswith(UNET))
    assert "not enough free disk space" in line and f"{needed} bytes" in line and "bytes" in line.split("needed")[1]
    assert str(home / "hub") in line and "free" in line
    assert shutil.disk_usage(tmp_path).free < needed
    assert resolves == []  # nothing was fetched
    # The hub gone (connection refused): one line that says the hub cannot be reached.
    dead = _models(_env(hub, home), "download", "sd15-depth")
    assert dead.returncode == 1 and "Traceback" not in dead.stderr
    assert f"the hub at {hub.url} cannot be reached (ConnectError" in dead.stderr.strip().splitlines()[-1]


def test_job_status_errors_gated_and_offline_through_the_backend(repos, tmp_path):
    from backend_support import running_server

    job = {"model": "sd15", "controls": [{"type": "depth", "image": b64(depth_image())}], "styles": ["modern"],
           "seeds": [0], "steps": 1, "width": 64, "height": 64, "output_dir": str(tmp_path / "out")}
    with FakeHub(repos, gated={DEPTH: "hf_secret"}) as hub:
        env = _env(hub, tmp_path / "hf", ARCHVIZ_OUTPUT_DIR=str(tmp_path))
        with running_server(["--output-root", str(tmp_path)], env=env) as server:
            # Cancel while downloading: the job ends cancelled, the partial file is gone.
            hub.holds[UNET] = 1_000_000
            job_id = server.submit({**job, "output_dir": str(tmp_path / "cancelled")})
            deadline = time.monotonic() + 120
            while server.get(f"/v1/jobs/{job_id}").json().get("phase") != "downloading":
                assert time.monotonic() < deadline, "the job never showed the downloading phase"
                time.sleep(0.05)
            assert server.delete(f"/v1/jobs/{job_id}").status_code == 200
            hub.released.set()
            assert server.wait(job_id)["state"] == "cancelled"
            assert not _incomplete(tmp_path / "hf")
            hub.holds.clear()
            status = server.wait(server.submit(job))
        assert status["state"] == "failed" and status["error"]["type"] == "GatedModel"
        assert DEPTH in status["error"]["message"] and "accept the licence" in status["error"]["message"]
        offline = _env(hub, tmp_path / "hf2", HF_HUB_OFFLINE="1", ARCHVIZ_OFFLINE_REASON="Blender's Allow Online "
                       "Access is off", ARCHVIZ_OUTPUT_DIR=str(tmp_path))
        with running_server(["--output-root", str(tmp_path)], env=offline) as server:
            status = server.wait(server.submit({**job, "output_dir": str(tmp_path / "out2")}))
        assert status["state"] == "failed" and status["error"]["type"] == "ModelNotFound"
        msg = status["error"]["message"]
        assert BASE in msg and "Blender's Allow Online Access is off" in msg
        assert "archviz models download sd15-base" in msg


FP16_LOAD = r"""
import sys, torch
from archviz_controlnet.backend.models import registry as M
comps = M.load_base(M.SD15_BASE, None, "sd15", torch.float16, "cpu")
net = M.load_controlnet(M.ControlNetRef(M.SD15_CONTROLNETS["depth"]), torch.float16, "cpu")
from safetensors.torch import load_file
ref = load_file(sys.argv[1] + "/unet/diffusion_pytorch_model.fp16.safetensors")
same = all(torch.equal(comps["unet"].state_dict()[k], v) for k, v in ref.items())
print("dtypes", comps["unet"].dtype, comps["text_encoder"].dtype, net.dtype, "same", same,
      "vocab", len(comps["tokenizer"]))
"""


def test_archviz_models_list_download_verify_remove(repos, tmp_path):
    home = tmp_path / "hf"
    with FakeHub(repos) as hub:
        env = _env(hub, home)
        listed = _models(env, "list", "--json", "--precision", "fp16")
        assert listed.returncode == 0, listed.stderr
        rows = {(r["name"], r["repo"]): r for r in json.loads(listed.stdout)["models"]}
        assert rows[("sd15", BASE)]["status"] == "not cached" and not rows[("sd15", DEPTH)]["complete"]
        assert not [e for e in hub.log if e["kind"] == "resolve"]
        # --remote: the sizes to download from the hub's listing; a repo the hub lacks says so.
        remote = _models(env, "list", "--remote", "--json", "--precision", "fp16")
        rows = {(r["name"], r["repo"]): r for r in json.loads(remote.stdout)["models"]}
        assert rows[("sd15", BASE)]["status"].startswith("not cached: 12 file(s)")
        assert "was not found" in rows[("sdxl", M.SDXL_BASE)]["status"]
        down = _models(env, "download", "sd15", "--precision", "fp16")
        assert down.returncode == 0, down.stderr[-3000:]
        fetched = hub.fetched()
    # fp16 device: the fp16 variants only, never the fp32 duplicates or .bin.
    weights = [k for k in fetched if k.endswith(".safetensors")]
    assert len(weights) == 5 and all(k.endswith(".fp16.safetensors") for k in weights)
    fp16 = {repo: [p.replace("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
                   .replace("model.safetensors", "model.fp16.safetensors") for p in paths]
            for repo, paths in LOADED_FP32.items()}
    assert fetched == _loaded(repos, fp16)
    assert rows[("sd15", BASE)]["missing_bytes"] == sum(v for k, v in fetched.items() if k.startswith(BASE))
    assert f"fetched {sum(fetched.values())} bytes" in down.stdout and "sd15 ready" in down.stdout
    offline = dict(env, HF_HUB_OFFLINE="1")
    table = _models(offline, "list", "--precision", "fp16")
    assert table.returncode == 0 and "sd15: ready" in table.stdout and "sdxl: not ready" in table.stdout
    assert "sd15: not ready" in _models(offline, "list", "--precision", "fp32").stdout  # fp32 files not there
    # The fp16 weights load through the real loaders (variant fp16), tokenizer included.
    snap = next((home / "hub" / f"models--{BASE.replace('/', '--')}" / "snapshots").iterdir())
    loaded = subprocess.run([sys.executable, "-c", FP16_LOAD, str(repos[BASE])], env=offline, capture_output=True,
                            text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    line = next(l for l in loaded.stdout.splitlines() if l.startswith("dtypes"))
    assert line.split()[1:4] == ["torch.float16"] * 3 and "same True" in line and int(line.split()[-1]) > 300
    assert (snap / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    ok = _models(offline, "verify", "--precision", "fp16")
    assert ok.returncode == 0 and "3 model(s) checked, 0 problem(s)" in ok.stdout, ok.stderr
    # A corrupted blob is found by its sha256.
    cn = next((home / "hub" / f"models--{DEPTH.replace('/', '--')}" / "snapshots").iterdir())
    blob = (cn / "diffusion_pytorch_model.fp16.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.write_bytes(bytes(data))
    bad = _models(offline, "verify", "--precision", "fp16")
    assert bad.returncode == 1 and "diffusion_pytorch_model.fp16.safetensors does not match its sha256" in bad.stderr
    gone = _models(offline, "remove", "sd15-depth")
    assert gone.returncode == 0 and f"{DEPTH}: removed" in gone.stdout
    assert not (home / "hub" / f"models--{DEPTH.replace('/', '--')}").exists()
    after = _models(offline, "verify", "sd15", "--precision", "fp16")
    assert after.returncode == 1 and f"{DEPTH}: not cached" in after.stderr
    unknown = _models(offline, "download", "sd9")
    assert unknown.returncode == 2 and "unknown model 'sd9'" in unknown.stderr


def test_selection_rules_on_real_repo_layouts():
    """The listing rules on the file lists of the real repos (as the hub lists them)."""
    from archviz_controlnet.backend.models.hub import HubError, select_files

    sdxl_base = ["model_index.json", "sd_xl_base_1.0.safetensors", "sd_xl_offset_example-lora_1.0.safetensors",
                 "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "unet/diffusion_pytorch_model.fp16.safetensors", "unet/openvino_model.bin",
                 "text_encoder_2/config.json", "text_encoder_2/model.safetensors",
                 "text_encoder_2/model.fp16.safetensors", "text_encoder/config.json", "text_encoder/model.safetensors",
                 "text_encoder/model.fp16.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
                 "tokenizer_2/vocab.json", "tokenizer_2/merges.txt", "scheduler/scheduler_config.json",
                 "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors", "vae_1_0/config.json",
                 "vae_decoder/model.onnx"]
    got = select_files(sdxl_base, M.base_components("sdxl", True), fp16=True)
    assert "vae/config.json" not in got and "sd_xl_base_1.0.safetensors" not in got
    assert [p for p in got if p.endswith("safetensors")] == [
        "unet/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.fp16.safetensors",
        "text_encoder_2/model.fp16.safetensors"]
    union = ["config.json", "config_promax.json", "diffusion_pytorch_model.safetensors",
             "diffusion_pytorch_model_promax.safetensors", "images/000000.png"]
    assert select_files(union, None, fp16=True) == ["config.json", "diffusion_pytorch_model.safetensors"]
    sharded = ["config.json", "diffusion_pytorch_model.safetensors.index.json",
               "diffusion_pytorch_model-00001-of-00002.safetensors",
               "diffusion_pytorch_model-00002-of-00002.safetensors",
               "diffusion_pytorch_model.safetensors.index.fp16.json",
               "diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
               "diffusion_pytorch_model.fp16-00002-of-00002.safetensors"]
    assert select_files(sharded, None, fp16=False) == ["config.json"] + sorted(sharded[1:4])
    assert select_files(sharded, None, fp16=True) == ["config.json"] + sorted(sharded[4:])
    with pytest.raises(HubError, match="no safetensors weights"):
        select_files(["config.json", "diffusion_pytorch_model.bin"], None, fp16=False)


def test_add_on_passes_token_and_blender_offline_and_shows_download(repos, tmp_path):
    bpy = pytest.importorskip("bpy")
    import addon_utils

    from archviz_controlnet import panels
    from archviz_controlnet.blender import preferences, properties
    from archviz_controlnet.blender import runs as ops_models
    from archviz_controlnet.core.sweep import SweepEvent
    from archviz_controlnet.operators import generate as gen
    from blender_support import RecordingLayout

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("archviz_controlnet", default_set=True)
    try:
        prefs = properties.preferences()
        prefs.hf_token = "hf_from_prefs"
        backend = gen.BackendSettings(bpy.context)
        env = backend.backend_env()
        assert env["HF_TOKEN"] == "hf_from_prefs"
        # The bpy module says online access is off, as a Blender whose user declined it.
        assert bpy.app.online_access is False
        assert env["HF_HUB_OFFLINE"] == "1" and "Allow Online Access" in env["ARCHVIZ_OFFLINE_REASON"]
        assert not bpy.ops.archviz.models_download.poll()
        # Download progress from the job status reaches the panel and the status bar text.
        task = gen.Task("Scene", [("Camera", {"styles": ["a"], "seeds": [0]})], str(tmp_path), backend)
        d = {"repo": BASE, "component": "unet", "file": UNET, "file_done": 1_200_000_000,
             "file_total": 3_438_000_000, "done": 1_500_000_000, "total": 5_200_000_000, "files_done": 3,
             "file_index": 4, "files_total": 9}
        task.events.put(("event", SweepEvent("download", message="x", download=d)))
        gen.Task.current = task
        task.drain()
        calls = []
        panels.draw_progress(RecordingLayout(calls), task)
        texts = [c[2].get("text", "") for c in calls if c[0] == "progress"]
        assert texts and texts[0].startswith("Downloading unet: 1.2 / 3.4 GB")
        # The Download button's child (`archviz models download --progress json` from a
        # thread): progress lines parsed, the result, and a failure's one line.
        home = tmp_path / "hf"
        with FakeHub(repos, gated={LINEART: "hf_secret"}) as hub:
            run = ops_models.ModelsRun(sys.executable, _env(hub, home),
                                       ["download", "sd15-depth", "--progress", "json"])
            seen = []
            real_text = ops_models.download_text
            ops_models.download_text = lambda d: seen.append(dict(d)) or real_text(d)
            try:
                run.start()
                run.thread.join(300)
            finally:
                ops_models.download_text = real_text
            assert run.state == "done", run.message
            size = sum(v for k, v in _loaded(repos).items() if k.startswith(DEPTH))
            assert run.result["bytes_fetched"] == size and run.message.startswith("sd15-depth ready")
            assert seen and seen[-1]["done"] == seen[-1]["total"] == size
            gated = ops_models.ModelsRun(sys.executable, _env(hub, tmp_path / "hf-gated"),
                                         ["download", "sd15-lineart", "--progress", "json"])
            gated.start()
            gated.thread.join(300)
            assert gated.state == "failed" and gated.message.startswith(f"ControlNet (lineart) {LINEART} is gated")
        # The Models box: what the cache holds, from `archviz models list --json` in a child.
        prefs.hf_cache = str(home)
        assert bpy.ops.archviz.models_refresh() == {"FINISHED"}
        rows = {r["name"]: r for r in ops_models.listing.result["models"]}
        assert rows["sd15-depth"]["complete"] and not rows["sd15-base"]["complete"]
        calls = []
        preferences.draw_preferences(prefs, bpy.context, RecordingLayout(calls))
        labels = [c[2].get("text", "") for c in calls if c[0] == "label"]
        assert any(DEPTH in t and "cached" in t for t in labels), labels
        assert any("downloads are off" in t for t in labels)
    finally:
        gen.Task.current = None
        prefs.hf_token = ""
        addon_utils.disable("archviz_controlnet", default_set=True)


def test_a_cached_snapshot_without_its_tokenizer_is_completed_not_trusted(repos, tmp_path):
    """The first-contact bug: a cache with every component but the tokenizer's vocabulary.
    Offline it is an error that says so (never a 2-token tokenizer); online only the
    missing file is fetched."""
    import shutil

    home = tmp_path / "hf"
    with FakeHub(repos) as hub:
        commit = hub.repos[BASE].commit
        storage = home / "hub" / f"models--{BASE.replace('/', '--')}"
        shutil.copytree(repos[BASE], storage / "snapshots" / commit,
                        ignore=shutil.ignore_patterns("vocab.json", ".built", "*.bin", "*.fp16.*"))
        (storage / "refs").mkdir()
        (storage / "refs" / "main").write_text(commit)
        env = _env(hub, home)
        offline = _models(dict(env, HF_HUB_OFFLINE="1"), "download", "sd15-base", "--precision", "fp32")
        assert offline.returncode == 1 and "Traceback" not in offline.stderr
        line = offline.stderr.strip().splitlines()[-1]
        assert BASE in line and "tokenizer/ has no vocab.json" in line and "archviz models download sd15-base" in line
        online = _models(env, "download", "sd15-base", "--precision", "fp32")
        assert online.returncode == 0, online.stderr[-2000:]
        vocab = (repos[BASE] / "tokenizer" / "vocab.json").stat().st_size
        assert hub.fetched() == {f"{BASE}/tokenizer/vocab.json": vocab}
    assert (storage / "snapshots" / commit / "tokenizer" / "vocab.json").is_file()
