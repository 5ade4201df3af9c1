"""``archviz bench`` on the tiny models: it runs, both sides make the same images, and the
report has its rows. Timings are printed, never asserted."""

import json
import os

import pytest
import torch

from backend_support import bench_both_baselines, use_test_home


@pytest.fixture(scope="module", autouse=True)
def home():
    with pytest.MonkeyPatch.context() as mp:
        use_test_home(mp)
        threads = torch.get_num_threads()
        yield
        torch.set_num_threads(threads)


def test_bench_cli_tiny_sides_match_and_report_has_its_rows(tmp_path, capsys):
    from archviz_controlnet import cli

    out = tmp_path / "report.json"
    rc = cli.main(["bench", "--config", "tiny", "--device", "cpu", "--styles", "modern,industrial", "--seeds", "0-1",
                   "--steps", "5", "--threads", "1", "--rows", "window-skip,cond-once,batching,guess-mode*",
                   "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())

    # Three sides (the diffusers loop, diffusers batched, ours), both cases, the same 4 images each.
    sides = {(s["side"], s["case"]): s for s in report["sides"]}
    assert set(sides) == {(side, case) for side in ("loop", "batched", "ours") for case in ("full", "early-depth")}
    for case in ("full", "early-depth"):
        ours, base, batched = sides["ours", case], sides["loop", case], sides["batched", case]
        assert ours["images"] == base["images"] == batched["images"] == 4
        assert ours["finite"] and base["finite"] and batched["finite"]
        # same images as the per-(style, seed) diffusers loop and as one batched diffusers call
        assert ours["max_diff_vs"]["loop"] <= 1e-3 and ours["max_diff_vs"]["batched"] <= 1e-3
        assert ours["max_diff"] == max(ours["max_diff_vs"].values())
        summary = report["cases"][case]
        assert summary["ratio_vs_loop"] == pytest.approx(ours["images_per_s"] / base["images_per_s"])
        assert summary["ratio_vs_batched"] == pytest.approx(ours["images_per_s"] / batched["images_per_s"])
        assert summary["speed_ratio"] == summary["ratio_vs_loop"]
        assert summary["max_diff"] == ours["max_diff"]
        # the windows were applied: the early-depth case runs depth on half the steps only
    assert sides["ours", "early-depth"]["forwards"]["controlnet0"] < sides["ours", "full"]["forwards"]["controlnet0"]
    # 2 styles x 2 seeds in one batch: 5 steps x 4 images x 2 (CFG) UNet rows
    assert sides["ours", "full"]["forwards"]["unet"] == 5 * 4 * 2

    # The printed report: header, one line per side and case, the ratio lines, the rows.
    for needle in ("archviz bench: config tiny", "4 images, 64x64, 5 steps, unipc",
                   "case early-depth: depth 0.9 window 0-0.5", "ratio vs loop", "ratio vs batched", "max pixel diff",
                   "optimisation rows"):
        assert needle in text, needle
    lines = text.splitlines()
    for side in ("loop", "batched", "ours"):
        for case in ("full", "early-depth"):
            assert any(l.split()[:2] == [side, case] for l in lines), (side, case)
    rows = {r["row"]: r for r in report["rows"]}
    assert set(rows) == {"window-skip", "cond-once", "batching", "guess-mode*"}
    for name in ("window-skip", "cond-once", "batching"):  # exact options keep the images
        assert "error" not in rows[name], rows[name].get("error")
        assert rows[name]["max_diff"] <= 1e-3 and rows[name]["images_per_s"] > 0
        assert any(l.startswith(name) for l in lines)
    assert rows["guess-mode*"]["changes_images"] and rows["guess-mode*"]["max_diff"] > 1e-3  # labelled, and it does


def test_bench_tiny_flux_both_baselines(tmp_path, capsys):
    """FluxControlNetPipeline per (style, seed) and batched against the engine: same images."""
    text, report, sides = bench_both_baselines(tmp_path, capsys, "tiny-flux", 3, "window-skip")
    for case in ("full", "early-depth"):
        assert sides["ours", case]["forwards"]["transformer"] == 3 * 4  # guidance-distilled: one row per image and step
    assert sides["ours", "early-depth"]["forwards"]["controlnet0"] < sides["ours", "full"]["forwards"]["controlnet0"]
    assert "archviz bench: config tiny-flux" in text and "ratio vs batched" in text
    assert report["rows"][0]["max_diff"] <= 1e-3


def test_bench_rejects_unknown_case():
    from archviz_controlnet import cli

    with pytest.raises(SystemExit) as err:
        cli.main(["bench", "--cases", "full,nope"])
    assert "nope" in str(err.value)


def test_sd15_configs_are_the_real_architecture():
    """The shipped configs give the real SD 1.5 shapes (built on the meta device: no memory)."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from archviz_controlnet.bench import configs as C

    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    with torch.device("meta"):
        unet = UNet2DConditionModel(**strip(C.SD15_UNET))
        net = ControlNetModel(**strip(C.SD15_CONTROLNET_V11))
    assert 859e6 < sum(p.numel() for p in unet.parameters()) < 860e6  # SD 1.5 UNet: 859.5 M
    assert 361e6 < sum(p.numel() for p in net.parameters()) < 362e6  # ControlNet 1.1: 361.3 M
    text = CLIPTextConfig(**C.SD15_TEXT_ENCODER)
    assert (text.hidden_size, text.num_hidden_layers, text.max_position_embeddings) == (768, 12, 77)


def test_bench_tiny_sdxl_sides_match_and_labelled_rows_change_images(tmp_path, capsys):
    from archviz_controlnet import cli

    out = tmp_path / "report.json"
    rc = cli.main(["bench", "--config", "tiny-sdxl", "--device", "cpu", "--styles", "modern", "--seeds", "0-1",
                   "--steps", "4", "--threads", "1", "--cases", "full", "--rows",
                   "channels-last,int8-weight*,token-merging-0.5*,fp8*", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["header"]["config"] == "tiny-sdxl" and report["header"]["size"] == 64
    sides = {(s["side"], s["case"]): s for s in report["sides"]}
    assert sides["ours", "full"]["images"] == sides["loop", "full"]["images"] == sides["batched", "full"]["images"] == 2
    # the same images as StableDiffusionXLControlNetPipeline called per seed, and batched
    assert sides["ours", "full"]["max_diff"] <= 1e-3
    rows = {r["row"]: r for r in report["rows"]}
    assert set(rows) == {"channels-last", "int8-weight*", "token-merging-0.5*"}  # fp8 is CUDA-only
    assert rows["channels-last"]["changes_images"] == [] and rows["channels-last"]["max_diff"] <= 1e-3
    for name, option in (("int8-weight*", "quantize"), ("token-merging-0.5*", "token_merging")):
        assert "error" not in rows[name], rows[name].get("error")
        assert rows[name]["changes_images"] == [option] and rows[name]["max_diff"] > 0
        assert any(line.startswith(name) for line in text.splitlines())


def test_sdxl_configs_are_the_real_architecture():
    """SDXL base UNet 2.567 B, SDXL ControlNet 1.251 B, OpenCLIP bigG text tower 694.7 M,
    VAE 83.7 M parameters (built on the meta device: no memory)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from archviz_controlnet.bench import configs as C

    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):
        assert count(UNet2DConditionModel(**strip(C.SDXL_UNET))) == 2_567_463_684
        assert 1_250e6 < count(ControlNetModel(**strip(C.SDXL_CONTROLNET))) < 1_252e6
        assert count(CLIPTextModelWithProjection(CLIPTextConfig(**C.SDXL_TEXT_ENCODER_2))) == 694_659_840
        assert count(AutoencoderKL(**strip(C.SDXL_VAE_FP16_FIX))) == 83_653_863


def test_unknown_config_is_refused():
    from archviz_controlnet.bench import runner

    with pytest.raises(ValueError, match=r"--config: unknown 'sd3' \(choose from tiny, tiny-sdxl, tiny-flux, .*sdxl.*\)") \
            as err:
        runner.make_plan(runner.Spec(config="sd3"), "full")
    assert all(f", {name}" in str(err.value) for name in ("tiny-zimage", "zimage", "tiny-qwen", "qwen"))


@pytest.mark.parametrize("config, size, unet_tflop, controlnet_tflop", [
    ("sd15", 512, 0.80, 0.27),
    ("sdxl", 1024, 6.76, 2.96),
])
def test_full_size_models_build_and_their_flops_count_on_the_meta_device(monkeypatch, config, size, unet_tflop,
                                                                          controlnet_tflop):
    """The --config sd15/sdxl path (build from the real configs, adopt, count FLOPs, SDXL's
    pooled embedding and time ids) without a GPU or memory: meta tensors have shapes only."""
    from archviz_controlnet.bench import runner

    monkeypatch.setenv("ARCHVIZ_MEMORY_BUDGET_GB", "64")  # fp32 SDXL + 2 ControlNets: ~25 GB of shapes
    spec = runner.Spec(config=config, device="meta", size=size)
    engine = runner.build_engine(spec)
    flops = runner.count_flops(engine, runner.make_plan(spec, "full"))
    assert flops["unet"] / 1e12 == pytest.approx(unet_tflop, rel=0.01)  # per image row, per forward
    assert flops["controlnet"] / 1e12 == pytest.approx(controlnet_tflop, rel=0.01)


def test_adopting_models_larger_than_the_cache_budget_is_an_error(monkeypatch):
    from archviz_controlnet.bench import runner

    monkeypatch.setenv("ARCHVIZ_MEMORY_BUDGET_GB", "1")
    with pytest.raises(RuntimeError,
                       match=r"do not all fit the model cache's budget of 1.0 GB.*ARCHVIZ_MEMORY_BUDGET_GB"):
        runner.build_engine(runner.Spec(config="sd15", device="meta"))


def test_flux_configs_build_on_the_meta_device_with_the_published_sizes_and_flops(monkeypatch):
    """--config flux: FLUX.1-dev (transformer 11.9 B, T5-XXL 4.76 B, CLIP-L, VAE) and the
    Union-Pro 2.0 ControlNet from the shipped configs, on the meta device (shapes only, never
    materialised), adopted for both units; the FLOPs of one step at 1024 px."""
    from archviz_controlnet.bench import configs_flux as F
    from archviz_controlnet.bench import runner

    monkeypatch.setenv("ARCHVIZ_MEMORY_BUDGET_GB", "256")  # fp32 shapes: ~80 GB, none allocated
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    spec = runner.Spec(config="flux", device="meta", size=runner.DEFAULT_SIZE["flux"],
                       steps=runner.DEFAULT_STEPS["flux"])
    engine = runner.build_engine(spec)
    plan = runner.make_plan(spec, "full")
    assert (plan.width, plan.height, plan.styles[0].steps, len(plan.images)) == (1024, 1024, 28, 16)
    assert [(u.type, u.start, u.end) for u in plan.styles[0].units] == [("depth", 0.0, 1.0), ("lines", 0.2, 1.0)]
    base, nets = engine.load(plan.models)
    comps = base.value
    assert comps["transformer"].device.type == "meta" and nets[0].value is nets[1].value  # one union net
    assert count(comps["transformer"]) == 11_901_408_320  # FLUX.1-dev: "12 B"
    assert 4.76e9 < count(comps["text_encoder_2"]) < 4.77e9  # T5 v1.1 XXL encoder
    assert 123.0e6 < count(comps["text_encoder"]) < 123.1e6  # CLIP ViT-L text tower
    assert 83.8e6 < count(comps["vae"]) < 83.9e6  # the 16-channel FLUX VAE
    assert 2.0e9 < count(nets[0].value) < 2.2e9  # Union-Pro 2.0: 6 double blocks, about 4 GB in bf16
    assert comps["tokenizer_2"].model_max_length == F.FLUX_T5_MAX_LENGTH
    fl = runner.count_flops(engine, plan)
    # One image, one step at 1024 px: T = 4096 image + 512 text tokens of width d = 3072 through
    # 19 + 38 blocks, each 12 d^2 multiply-adds per token (a token meets one stream's weights
    # in a double block) plus attention's 4 T^2 d; the net: 6 double blocks plus its 6
    # residual projections over the image tokens.
    t, d = 4096 + 512, 3072
    block = 24 * d * d * t + 4 * t * t * d
    assert fl["unet"] == pytest.approx(57 * block, rel=0.01)  # 74.4 TFLOP
    assert fl["controlnet"] == pytest.approx(6 * block + 6 * 2 * 4096 * d * d, rel=0.01)  # 8.3 TFLOP
    per_image = runner.baseline_flops(plan, plan.images[:1], fl)
    assert per_image == 28 * (fl["unet"] + 2 * fl["controlnet"])  # no CFG halves
