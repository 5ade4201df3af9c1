"""``archviz bench --config tiny-wan | wan`` (bench/configs_wan.py): the video engine against
WanVACEPipeline on the tiny model, side by side in one run, and the full-size Wan2.1 VACE
parameters and FLOPs counted on the meta device."""

import json

import pytest

pytestmark = pytest.mark.usefixtures("home")


def test_tiny_wan_bench_runs_both_baselines_and_matches_the_loop(tmp_path, capsys):
    from archviz_controlnet import cli

    out = tmp_path / "report.json"
    rc = cli.main(["bench", "--config", "tiny-wan", "--device", "cpu", "--styles", "modern,industrial", "--seeds",
                   "0-1", "--steps", "2", "--threads", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    sides = {s["side"]: s for s in report["sides"]}
    assert set(sides) == {"loop", "batched", "ours"}
    assert sides["loop"]["clips"] == sides["ours"]["clips"] == 4
    # the pipeline's batching: measured, or refused by this diffusers with its own words
    batched = sides["batched"]
    assert batched["clips"] == 4 or "not yet supported" in batched["unsupported"]
    assert sides["ours"]["max_diff_vs_loop"] <= 1  # uint8 frames: float rounding at most one level
    assert sides["ours"]["ratio_vs_loop"] > 0
    assert "ratio vs loop" in text and "max pixel diff" in text
    assert "per run: 2 prompt encodes, 1 control video encode(s), 16 transformer rows" in text  # 4 clips x 2 steps x CFG


def test_wan_bench_counts_the_full_size_models_on_the_meta_device(tmp_path, capsys):
    from archviz_controlnet import cli

    out = tmp_path / "wan.json"
    assert cli.main(["bench", "--config", "wan", "--size", "160", "--steps", "50", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    small, big = report["models"]
    assert report["header"]["frames"] == 81 and report["header"]["width"] == 160
    # Wan2.1 T2V 1.3B is 1.42 B parameters; VACE adds a block on every second of its 30
    assert 2.0e9 < small["params"] < 2.3e9 and 0.6e9 < small["vace_params"] < 0.8e9
    assert 17.0e9 < big["params"] < 17.6e9  # the 14B with its 8 VACE blocks (its memory profiles' figure)
    for row in (small, big):
        assert 0 < row["forward_flops_without_vace"] < row["forward_flops"]
        assert row["clip_flops"] == row["forward_flops"] * 2 * 50
    assert "PFLOP" in capsys.readouterr().out
