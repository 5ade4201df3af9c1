"""``archviz train-controlnet`` on the tiny SD 1.5 family and a tiny dataset rendered from
the example interior by ``archviz dataset``: zero residuals at the start, a loss that falls,
a frozen base, resume, the folder through the backend's normal model path, and one-line
errors for bad input."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from archviz_controlnet.backend.models import registry as M
from archviz_controlnet.backend.train import controlnet as T
from archviz_controlnet.core import jobs as J

from backend_support import REPO, quiet_test_home, torch_threads

STEPS = 24


@pytest.fixture(scope="module", autouse=True)
def home():
    with quiet_test_home():
        torch.set_num_threads(torch_threads())
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 views of the example interior at 64 px (depth + lines), rendered by the command."""
    root = tmp_path_factory.mktemp("train-data")
    blend = root / "interior.blend"
    subprocess.run([sys.executable, str(REPO / "examples" / "build_interior.py"), "--out", str(blend)], check=True,
                   capture_output=True)
    out = root / "data"
    proc = subprocess.run([sys.executable, "-m", "archviz_controlnet.cli", "dataset", str(blend), "--views", "8",
                           "--out", str(out), "--long-side", "64", "--controls", "depth,lines", "--samples", "4"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def config(data, out, **changes):
    base = dict(data=str(data), out=str(out), base="tiny", steps=STEPS, batch=4, lr=1e-3, validate_every=0,
                checkpoint_every=0, val_views=2, val_steps=2)
    return T.TrainConfig(**{**base, **changes})


def state_digest(module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def eval_loss(trainer) -> float:
    """The loss over every training pair with fixed noise and timesteps (low variance:
    before and after training compare the same draws)."""
    losses = []
    with torch.no_grad():
        for i, pair in enumerate(trainer.train_pairs):
            t, c = T.load_pair(pair, trainer.size)
            for step in (10_000 + i, 20_000 + i):
                losses.append(trainer.loss(t[None], c[None], [pair.text], step).item())
    return float(np.mean(losses))


def test_new_controlnet_adds_nothing_and_only_it_gets_gradients(data, tmp_path):
    trainer = T.Trainer(config(data, tmp_path / "net")).setup()
    net = trainer.controlnet
    zero_convs = [*net.controlnet_down_blocks, net.controlnet_mid_block]
    assert all(torch.count_nonzero(p) == 0 for conv in zero_convs for p in conv.parameters())
    comps = trainer.comps
    targets, controls, texts = trainer.batch(0)
    with torch.no_grad():
        latents = comps["vae"].encode(targets).latent_dist.mean * comps["vae"].config.scaling_factor
        t = torch.tensor([500] * len(texts))
        embeds, _ = T.encode_text(comps, "sd15", texts, "cpu")
        down, mid = net(latents, t, encoder_hidden_states=embeds, controlnet_cond=controls, return_dict=False)
        assert all(torch.count_nonzero(r) == 0 for r in [*down, mid])
        plain = comps["unet"](latents, t, encoder_hidden_states=embeds).sample
        steered = comps["unet"](latents, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                                mid_block_additional_residual=mid).sample
    assert torch.equal(plain, steered)

    # Whole images: the base pipeline alone and with the fresh ControlNet are the same.
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline, UniPCMultistepScheduler

    common = dict(vae=comps["vae"], text_encoder=comps["text_encoder"], tokenizer=comps["tokenizer"],
                  unet=comps["unet"], safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    w, h = trainer.size
    args = dict(prompt=texts[0], num_inference_steps=2, height=h, width=w, output_type="np")
    base = StableDiffusionPipeline(scheduler=UniPCMultistepScheduler.from_config(comps["scheduler_config"]),
                                   **common)(generator=torch.Generator().manual_seed(3), **args).images[0]
    with_net = StableDiffusionControlNetPipeline(
        controlnet=net, scheduler=UniPCMultistepScheduler.from_config(comps["scheduler_config"]), **common)(
        image=controls[:1], generator=torch.Generator().manual_seed(3), **args).images[0]
    assert np.array_equal(base, with_net)

    # One backward pass: gradients reach the ControlNet only.
    loss = trainer.loss(targets, controls, texts, 0)
    loss.backward()
    for name in ("unet", "vae", "text_encoder"):
        assert all(p.grad is None and not p.requires_grad for p in comps[name].parameters()), name
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads)
    assert any(torch.count_nonzero(g) > 0 for g in grads)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "controlnet"
    trainer = T.Trainer(config(data, out, validate_every=STEPS // 2)).setup()
    frozen = {name: state_digest(trainer.comps[name]) for name in ("unet", "vae", "text_encoder")}
    before = eval_loss(trainer)
    result = trainer.train(progress=False)
    after = eval_loss(trainer)
    return {"out": out, "trainer": trainer, "result": result, "frozen": frozen, "before": before, "after": after}


def test_training_lowers_the_loss_and_leaves_the_base_alone(trained):
    trainer, result = trained["trainer"], trained["result"]
    losses = [loss for _step, loss in result.losses]
    assert len(losses) == STEPS and all(np.isfinite(losses))
    first, last = np.mean(losses[:6]), np.mean(losses[-6:])
    assert last < first, (first, last)
    assert trained["after"] < trained["before"] * 0.97, (trained["before"], trained["after"])
    for name, digest in trained["frozen"].items():
        assert state_digest(trainer.comps[name]) == digest, f"the base {name} changed"
    log = [json.loads(line) for line in (trained["out"] / "training" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert all(r["lr"] == pytest.approx(1e-3) for r in log)


def test_output_folder_card_and_validation_sheet(trained):
    out = trained["out"]
    assert (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(out.glob("*.bin"))
    card = json.loads((out / "archviz_card.json").read_text())
    assert card["control"] == "depth" and card["base"] == "tiny" and card["steps"] == STEPS
    assert card["pairs"] == 6 and card["validation_views"] == 2
    from PIL import Image

    sheet = out / "training" / "validation.png"
    with Image.open(sheet) as im:
        assert im.width > 100 and im.height > 100
    shots = sorted(p.name for p in (out / "training" / "validation").glob("*.png"))
    assert len(shots) == 4
    assert shots[0].startswith(f"step-{STEPS // 2:07d}") and shots[-1].startswith(f"step-{STEPS:07d}")


def test_trained_folder_loads_through_the_model_path_and_changes_images(trained, data):
    from archviz_controlnet.backend.engine.runner import Engine
    from archviz_controlnet.backend.engine.sweep import build_plan
    from archviz_controlnet.core.presets import load_presets

    out = str(trained["out"])
    assert M.check_model_ref(out, "controls[0].model", [trained["out"].parent]) == out
    with pytest.raises(J.JobError, match="outside the server's model roots"):
        M.check_model_ref(out, "controls[0].model", [data])
    row = json.loads((data / "metadata.jsonl").read_text().splitlines()[-1])
    image = J.encode_png((data / row["controls"]["depth"]).read_bytes())
    presets = load_presets(include_user=False)
    engine = Engine("cpu")

    def generate(scale):
        job = J.Job.from_dict({"model": {"family": "tiny"}, "styles": ["modern"], "seeds": [1], "steps": 3,
                               "controls": [{"type": "depth", "image": image, "model": out, "scale": scale}]})
        plan = build_plan(job, presets, "float32")
        assert plan.models.controlnets[0].ref == out
        return engine.generate(plan, [plan.images[0]])[plan.images[0].index]

    steered, unsteered = generate(1.0), generate(0.0)
    assert steered.shape == unsteered.shape
    assert np.abs(steered.astype(float) - unsteered.astype(float)).mean() > 1e-3


def test_a_sweep_uses_the_trained_controlnet(trained, data):
    """The whole loop on the example interior: dataset -> train-controlnet -> archviz sweep
    with --controls custom:PATH, which starts its own backend allowed to read the folder."""
    from backend_support import base_env

    out = data.parent / "sweep"
    env = base_env()
    proc = subprocess.run([sys.executable, "-m", "archviz_controlnet.cli", "sweep", str(data.parent / "interior.blend"),
                           "--model", "tiny", "--controls", f"custom:{trained['out']}:1.0", "--styles", "modern",
                           "--seeds", "0", "--steps", "2", "--long-side", "64", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "Camera_manifest.json").read_text())
    assert manifest["state"] == "done" and manifest["model"]["controlnets"] == [str(trained["out"])]
    assert (out / "Camera_modern_s0.png").is_file()


def test_resume_continues_from_the_saved_step_with_the_same_optimizer_state(data, tmp_path):
    whole = T.Trainer(config(data, tmp_path / "whole", steps=4, checkpoint_every=2)).setup()
    whole.train(progress=False)
    first = T.Trainer(config(data, tmp_path / "split", steps=2, checkpoint_every=2)).setup()
    first.train(progress=False)
    saved_state = {k: v.clone() for k, v in first.optimizer.state_dict()["state"][0].items()}
    resumed = T.Trainer(config(data, tmp_path / "split", steps=4, checkpoint_every=2, resume=True)).setup()
    assert resumed.step == 2
    state = resumed.optimizer.state_dict()["state"][0]
    assert all(torch.equal(state[k].cpu(), v.cpu()) for k, v in saved_state.items())
    result = resumed.train(progress=False)
    assert [s for s, _l in result.losses] == [3, 4]
    a, b = whole.accelerator.unwrap_model(whole.controlnet), resumed.accelerator.unwrap_model(resumed.controlnet)
    for (name, pa), (_n, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa, pb, atol=1e-6, rtol=0), name
    with pytest.raises(T.TrainError, match="already has training checkpoints"):
        T.Trainer(config(data, tmp_path / "split", steps=6))


def _cli(capsys, *argv):
    from archviz_controlnet.cli import main

    code = main(["train-controlnet", *argv])
    err = capsys.readouterr().err.strip()
    return code, err


def test_bad_input_gets_one_line_errors(data, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.jsonl").write_text("")
    code, err = _cli(capsys, "--data", str(empty), "--base", "tiny", "--out", str(tmp_path / "o1"))
    assert code == 2 and "is empty" in err and len(err.splitlines()) == 1

    code, err = _cli(capsys, "--data", str(tmp_path / "nothing"), "--base", "tiny", "--out", str(tmp_path / "o1"))
    assert code == 2 and "is not a folder" in err and len(err.splitlines()) == 1

    # A pair whose control is not the size of its target.
    bad = tmp_path / "mismatched"
    import shutil

    shutil.copytree(data, bad)
    row = json.loads((bad / "metadata.jsonl").read_text().splitlines()[0])
    from PIL import Image

    Image.new("RGB", (32, 32)).save(bad / row["controls"]["depth"])
    code, err = _cli(capsys, "--data", str(bad), "--base", "tiny", "--out", str(tmp_path / "o2"))
    assert code == 2 and "pairs must be aligned" in err and row["file_name"] in err and len(err.splitlines()) == 1

    no_unet = tmp_path / "no-unet"
    (no_unet / "vae").mkdir(parents=True)
    code, err = _cli(capsys, "--data", str(data), "--base", str(no_unet), "--out", str(tmp_path / "o3"))
    assert code == 2 and "has no unet/ folder" in err and str(no_unet) in err and len(err.splitlines()) == 1

    code, err = _cli(capsys, "--data", str(data), "--base", "tiny", "--out", str(tmp_path / "o4"), "--steps", "0")
    assert code == 2 and "--steps 0" in err and len(err.splitlines()) == 1

    code, err = _cli(capsys, "--data", str(data), "--base", "tiny", "--out", str(tmp_path / "o5"), "--resume")
    assert code == 2 and "no checkpoint" in err and len(err.splitlines()) == 1

    code, err = _cli(capsys, "--data", str(data), "--base", "tiny", "--out", str(tmp_path / "o6"), "--control", "seg")
    assert code == 2 and "has no 'seg' control" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o4").exists() and not (tmp_path / "o6").exists()


def test_precision_and_optimizer_are_chosen_from_the_machine_and_said():
    assert T.choose_precision("auto", "cpu", False) == "no"
    assert T.choose_precision("auto", "cuda", True) == "bf16"
    assert T.choose_precision("auto", "cuda", False) == "fp16"
    with pytest.raises(T.TrainError, match="needs a CUDA GPU"):
        T.choose_precision("fp16", "cpu", False)
    name, note = T.choose_optimizer("auto", "cpu", True)
    assert name == "adamw" and "AdamW (torch" in note and "needs a CUDA GPU" in note
    name, note = T.choose_optimizer("auto", "cuda", False, (9, 0))
    assert name == "adamw" and "bitsandbytes" in note
    assert T.choose_optimizer("auto", "cuda", True, (9, 0))[0] == "adamw8bit"
    assert T.choose_optimizer("auto", "cuda", True, (6, 1))[0] == "adamw"
    with pytest.raises(T.TrainError, match="adamw8bit"):
        T.choose_optimizer("adamw8bit", "cpu", True)
    assert T.choose_optimizer("adamw", "cuda", True, (9, 0))[0] == "adamw"


def test_sdxl_with_checkpointing_and_accumulation(data, tmp_path):
    """The SDXL path (two text encoders, pooled embeddings and time ids), gradient
    checkpointing and accumulation over two micro-batches."""
    trainer = T.Trainer(config(data, tmp_path / "xl", base="tiny-sdxl", steps=2, batch=2, grad_accum=2,
                               gradient_checkpointing=True)).setup()
    assert trainer.arch == "sdxl" and trainer.controlnet.is_gradient_checkpointing
    assert "accumulation: 2 step(s) per update" in " ".join(trainer.notes)
    frozen = state_digest(trainer.comps["unet"])
    result = trainer.train(progress=False)
    assert len(result.losses) == 2 and all(np.isfinite([loss for _s, loss in result.losses]))
    assert state_digest(trainer.comps["unet"]) == frozen
    from diffusers import ControlNetModel

    net = ControlNetModel.from_pretrained(str(tmp_path / "xl"))
    assert net.config.addition_embed_type == "text_time"
    assert json.loads((tmp_path / "xl" / "archviz_card.json").read_text())["arch"] == "sdxl"


def test_init_from_an_existing_controlnet(trained, data, tmp_path):
    """--init: a smaller fine-tune starts from a ControlNet that already steers."""
    trainer = T.Trainer(config(data, tmp_path / "ft", init=str(trained["out"]), steps=1)).setup()
    start = trainer.controlnet.controlnet_mid_block.weight
    done = trained["trainer"].accelerator.unwrap_model(trained["trainer"].controlnet).controlnet_mid_block.weight
    assert torch.count_nonzero(start) > 0 and torch.equal(start, done.detach())
    from archviz_controlnet.backend.models import tiny

    with pytest.raises(T.TrainError, match="made for another base"):
        T.Trainer(config(data, tmp_path / "ft2", init=str(tiny.tiny_path("sdxl", "controlnet-depth")))).setup()
    with pytest.raises(T.TrainError, match="--init '/nonexistent/net'"):
        T.Trainer(config(data, tmp_path / "ft3", init="/nonexistent/net")).setup()


def test_cli_says_which_optimizer_and_where_the_net_is(data, tmp_path, capsys):
    from archviz_controlnet.cli import main

    out = tmp_path / "cli-net"
    code = main(["train-controlnet", "--data", str(data), "--base", "tiny", "--out", str(out), "--steps", "2",
                 "--batch", "2", "--val-views", "1", "--val-steps", "1", "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == 0
    assert ("optimizer: AdamW (torch, 32-bit states); the 8-bit AdamW (bitsandbytes) needs a CUDA GPU and this "
            "run is on cpu") in text
    assert "device: cpu, mixed precision: no" in text
    assert f"ControlNet (depth): {out}" in text and f"--controls custom:{out}" in text
    assert (out / "training" / "validation.png").is_file()
