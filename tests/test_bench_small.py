"""The bench's measuring machinery (issue 28): untimed warm-ups per side, alternating order,
min/median/max, the overhead share from a profile, the serve side, and the small-<family>
configs (real architecture classes, cut). Tiny models and 64 px only; timings are printed,
never asserted."""

import json
import statistics

import numpy as np
import pytest
import torch

from backend_support import use_test_home


@pytest.fixture(scope="module", autouse=True)
def home():
    with pytest.MonkeyPatch.context() as mp:
        use_test_home(mp)
        threads = torch.get_num_threads()
        yield
        torch.set_num_threads(threads)


def test_measure_warms_each_side_untimed_then_alternates_and_keeps_every_time():
    from archviz_controlnet.bench import timing

    now = [0.0]
    log = []

    def clock():
        return now[0]

    def work(seconds):
        def run():
            now[0] += seconds
            return seconds
        return run

    # warm-ups take 100 s each: none of that may show in a timed figure
    sides = [timing.Side(name, warm=work(100.0), run=work(cost)) for name, cost in (("a", 1.0), ("b", 2.0),
                                                                                    ("c", 3.0))]
    got = timing.measure(sides, 4, clock=clock, log=log)
    assert log[:3] == [("warm", "a"), ("warm", "b"), ("warm", "c")]  # each side its own warm-up, before any timing
    runs = [name for what, name in log[3:]]
    assert runs == ["a", "b", "c", "c", "b", "a", "a", "b", "c", "c", "b", "a"]  # the order alternates
    assert timing.orders(["a", "b", "c"], 3) == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]
    for name, cost in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        t = got[name]
        assert t.times == [cost] * 4 and t.warmup_s == 100.0 and t.value == cost
        assert (t.min, t.median, t.max) == (cost, cost, cost)


def test_min_median_max_of_uneven_runs():
    from archviz_controlnet.bench import timing

    t = timing.Timing("x", times=[3.0, 1.0, 10.0, 2.0])
    s = t.summary()
    assert (s["seconds_min"], s["seconds"], s["seconds_max"]) == (1.0, statistics.median([3.0, 1.0, 10.0, 2.0]),
                                                                  10.0)
    assert s["times"] == [3.0, 1.0, 10.0, 2.0]


def test_forward_clock_counts_outermost_forwards_only():
    from archviz_controlnet.bench.overhead import ForwardClock

    inner = torch.nn.Linear(8, 8)
    outer = torch.nn.Sequential(inner, torch.nn.ReLU())
    with ForwardClock([outer, inner, outer]) as clock:  # a module listed twice is hooked once
        for _ in range(3):
            outer(torch.ones(2, 8))
        inner(torch.ones(2, 8))
    assert clock.calls == 4 and clock.seconds > 0
    outer(torch.ones(2, 8))  # hooks removed on exit
    assert clock.calls == 4


def test_bench_cli_tiny_reports_warmups_alternation_spread_overhead_and_serve(tmp_path, capsys):
    from archviz_controlnet import cli

    out = tmp_path / "report.json"
    rc = cli.main(["bench", "--config", "tiny", "--device", "cpu", "--styles", "modern", "--seeds", "0-1",
                   "--steps", "3", "--threads", "1", "--cases", "full", "--rows", "none", "--repeats", "2",
                   "--serve", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    sides = {s["side"]: s for s in report["sides"]}
    assert set(sides) == {"loop", "batched", "ours", "serve"}
    for s in sides.values():
        assert len(s["times"]) == 2 and s["warmup_s"] is not None and s["warmup_s"] > 0
        assert s["seconds_min"] <= s["seconds"] <= s["seconds_max"]
        assert s["seconds"] == pytest.approx(statistics.median(s["times"]))
        assert s["images_per_s"] == pytest.approx(2 / s["seconds"])
    assert report["orders"]["full"] == [["loop", "batched", "ours", "serve"], ["serve", "ours", "batched", "loop"]]
    summary = report["cases"]["full"]
    assert summary["ratio_vs_batched"] == pytest.approx(sides["batched"]["seconds"] / sides["ours"]["seconds"])
    assert summary["serve_ratio"] == pytest.approx(sides["ours"]["seconds"] / sides["serve"]["seconds"])
    assert sides["ours"]["max_diff"] <= 1e-3
    assert sides["serve"]["max_diff"] <= 1 / 255  # the served PNGs are our images in 8 bits
    # round by round: each serve run against the in-process run of the same round, and the
    # engine's call inside the server's worker (less the PNG writes) against it too
    serve = sides["serve"]
    assert serve["paired_ratios"] == pytest.approx([o / s for o, s in zip(sides["ours"]["times"], serve["times"])])
    assert summary["serve_paired_ratio"] == pytest.approx(statistics.median(serve["paired_ratios"]))
    assert len(serve["worker_ratios"]) == 2 and all(w > 0 for w in serve["worker_ratios"])
    # the engine's call is part of the job: the worker's ratio is above the job's, round by round
    assert all(w > p for w, p in zip(serve["worker_ratios"], serve["paired_ratios"]))
    assert summary["worker_engine_ratio"] == pytest.approx(statistics.median(serve["worker_ratios"]))

    # The overhead row: hooks on the forwards against the engine's own loop time.
    o = report["overhead"]
    assert 0.0 <= o["share"] <= 1.0 and 0 < o["forwards_s"] < o["denoise_s"]
    assert o["share"] == pytest.approx((o["denoise_s"] - o["forwards_s"]) / o["denoise_s"])
    # 3 steps, one batch: the UNet every step, depth (0-1) every step, lines (0.2-1) on steps 1 and 2
    assert o["steps"] == 3 and o["forwards"] == 3 + 3 + 2
    assert o["where"] and all(0.0 <= w["share"] <= 1.0 for w in o["where"])
    assert o["where"][-1]["what"].startswith("Python between ops")

    for needle in ("median of 2 timed run(s) per side", "median s", "min s", "max s", "ratio vs loop",
                   "ratio vs batched", "serve vs in-process", "round by round", "overhead (full, previews off):", "where (profile):",
                   "load average"):
        assert needle in text, needle


def test_small_configs_are_the_real_classes_cut():
    """Every small config builds the family's real denoiser and ControlNet classes (the same
    as its tiny models' and the real config's), with the cut widths and depths and the tiny
    encoders' interface widths; parameter counts pinned (meta device: shapes only)."""
    from archviz_controlnet.backend.engine.runner import Engine
    from archviz_controlnet.bench import configs_small as S
    from archviz_controlnet.bench import runner

    expected = [
        ("small-sd15", "UNet2DConditionModel", 22836356, "ControlNetModel", 9834704),
        ("small-sdxl", "UNet2DConditionModel", 21253572, "ControlNetModel", 10339728),
        ("small-flux", "FluxTransformer2DModel", 13528128, "FluxControlNetModel", 2812160),
        ("small-zimage", "ZImageTransformer2DModel", 10605392, "ZImageControlNetModel", 5745792),
        ("small-qwen", "QwenImageTransformer2DModel", 19213856, "QwenImageControlNetModel", 2577680),
        ("small-kontext", "FluxTransformer2DModel", 13528128, None, 0),  # instruction edits: no ControlNet
        ("small-qwen-edit", "QwenImageTransformer2DModel", 19238480, None, 0),
        ("small-klein", "Flux2Transformer2DModel", 1620736, None, 0),  # controls as its reference images
    ]
    assert [e[0] for e in expected] == list(S.SMALL)
    assert all(runner.config_arch(name) == name.removeprefix("small-") for name in S.SMALL)
    engine = Engine("cpu")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    for name, den_cls, den_params, net_cls, net_params in expected:
        small = S.SMALL[name]
        plan = runner.make_plan(runner.Spec(config=small.tiny, size=64), runner.cases_of(name)[0], steps=1)
        base, nets = engine.load(plan.models)
        tiny_den = base.value["unet" if "unet" in base.value else "transformer"]
        assert small.denoiser["_class_name"] == type(tiny_den).__name__ == den_cls
        assert (small.net is None) == (net_cls is None) == (not nets)
        den_kw = S.small_config(name, "denoiser", dict(tiny_den.config))
        for key, value in small.cuts.items():
            assert den_kw[key] == value
        for key in S.INTERFACE:
            if key in tiny_den.config and key in den_kw:
                assert den_kw[key] == tiny_den.config[key], (name, key)
        with torch.device("meta"):
            assert count(type(tiny_den)(**den_kw)) == den_params, name
            if nets:
                tiny_net = nets[0].value
                assert small.net["_class_name"] == type(tiny_net).__name__ == net_cls
                net_kw = S.small_config(name, "net", dict(tiny_net.config))
                assert count(type(tiny_net)(**net_kw)) == net_params, name
        assert runner.DEFAULT_SIZE[name] == 256 and name in runner.CONFIGS


def test_small_config_runs_and_matches_diffusers_batched(capsys):
    """small-sd15 through the bench's build path (tiny encoders from the store, small UNet and
    nets adopted), at 64 px and 2 steps: same images as the diffusers pipeline batched."""
    from archviz_controlnet.bench import runner
    from archviz_controlnet.bench.configs_small import SMALL

    spec = runner.Spec(config="small-sd15", device="cpu", size=64, steps=2, styles=("modern",), seeds=(0, 1),
                       cases=("early-depth",))
    engine = runner.build_engine(spec)
    assert "built small-sd15: UNet2DConditionModel" in capsys.readouterr().out
    plan = runner.make_plan(spec, "early-depth")
    assert engine.fetch_models(plan.models) is None  # built in memory: nothing to download
    base, nets = engine.load(plan.models)
    assert list(base.value["unet"].config.block_out_channels) == SMALL["small-sd15"].cuts["block_out_channels"]
    assert nets[0].value is not nets[1].value and nets[0].value.controlnet_mid_block.weight.abs().sum() > 0
    ours = engine.generate(plan, plan.images)
    batched = runner.run_baseline(engine, plan, batched=True)
    assert runner.max_diff(ours, batched) <= 1e-3
    assert engine.stats["controlnet0"] == 2 * 2 * 1  # depth on the first of 2 steps only, 2 images x CFG
    # the compute behind the ratios, counted: ours skips depth's second step and lines' first
    from archviz_controlnet.backend.engine.families import family_for

    counted = runner.side_flops(engine, plan, family_for("sd15").modules(base.value, [n.value for n in nets]))
    assert counted["loop"] == pytest.approx(counted["batched"], rel=1e-6)
    assert 0.5 * counted["batched"] < counted["ours"] < 0.95 * counted["batched"], counted


def test_a_case_that_does_not_apply_is_refused_in_one_line():
    from archviz_controlnet.bench import runner

    with pytest.raises(ValueError, match=r"--cases: 'full' does not apply to small-kontext \(its cases: edit\)"):
        runner.make_plan(runner.Spec(config="small-kontext", size=64), "full")
    with pytest.raises(ValueError, match=r"--cases: 'edit' does not apply to small-flux \(its cases: full, early-depth\)"):
        runner.make_plan(runner.Spec(config="small-flux", size=64), "edit")
    # FLUX.2 Klein: diffusers has no window for its control images, so no partial window either
    with pytest.raises(ValueError, match=r"--cases: 'early-depth' does not apply to small-klein \(its cases: "
                                         r"whole-window\)"):
        runner.make_plan(runner.Spec(config="small-klein", size=64), "early-depth")


def test_small_klein_matches_diffusers_batched_with_the_controls_as_its_images(capsys):
    """small-klein through the bench's build path at 64 px, 2 steps: both control images
    over the whole run are Flux2KleinPipeline's ``image`` list, batched with lists of prompts
    and generators, and give the engine's pixels."""
    from archviz_controlnet.bench import runner

    spec = runner.Spec(config="small-klein", device="cpu", size=64, steps=2, styles=("modern", "industrial"),
                       seeds=(0,), cases=runner.cases_of("small-klein"))
    engine = runner.build_engine(spec)
    assert "built small-klein: Flux2Transformer2DModel" in capsys.readouterr().out
    plan = runner.make_plan(spec, "whole-window")
    assert not plan.models.controlnets and len(plan.controls) == 2
    ours = engine.generate(plan, plan.images)
    assert engine.stats["transformer"] == 2 * 2  # 2 images, 2 steps, one pass (no CFG)
    batched = runner.run_baseline(engine, plan, batched=True)
    loop = runner.run_baseline(engine, plan)
    assert runner.max_diff(ours, batched) <= 1e-3 and runner.max_diff(ours, loop) <= 1e-3
    assert np.abs(ours[0] - ours[1]).mean() > 1e-3  # two styles: two prompts, two images


def test_small_qwen_edit_reads_the_picture_at_the_output_size_on_both_sides_for_the_run_only():
    """Qwen-Image-Edit sizes the picture with diffusers' calculate_dimensions(1024 * 1024, ratio)
    in diffusers' pipeline and in ours; for small-qwen-edit the bench makes that the output's
    area while it runs, and puts the function back after. Other configs are left alone."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit

    from archviz_controlnet.bench import runner

    real = edit.calculate_dimensions
    with runner.edit_picture_area(runner.Spec(config="small-qwen-edit", size=256)):
        assert edit.calculate_dimensions(1024 * 1024, 1.0)[:2] == (256, 256)
        assert edit.calculate_dimensions(1024 * 1024, 2.0)[:2] == (352, 192)  # the aspect ratio kept
    assert edit.calculate_dimensions is real
    with runner.edit_picture_area(runner.Spec(config="small-qwen", size=256)):
        assert edit.calculate_dimensions is real
