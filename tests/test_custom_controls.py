"""Custom control units: ``--controls custom:PATH`` and the panel's Custom unit type use a
ControlNet folder made by ``archviz train-controlnet`` (its card names the pass)."""

import json

import numpy as np
import pytest

from archviz_controlnet.core import jobs as J
from archviz_controlnet.core.png import write_png
from archviz_controlnet.core.sweep import CUSTOM_CARD, ControlUnit, camera_job, check_custom_base


def _net(tmp_path, control="depth", name="mynet"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / CUSTOM_CARD).write_text(json.dumps({"kind": "archviz-controlnet", "control": control}))
    return folder


def test_custom_unit_reads_the_card(tmp_path, monkeypatch):
    folder = _net(tmp_path, "lines")
    unit = ControlUnit.parse(f"custom:{folder}")
    assert unit == ControlUnit("lines", model=str(folder))
    assert ControlUnit.parse(f"custom:{folder}:0.7:0.1:0.9") == ControlUnit("lines", 0.7, 0.1, 0.9, model=str(folder))
    assert ControlUnit.parse(f"custom:{folder}:0.5") == ControlUnit("lines", 0.5, model=str(folder))
    monkeypatch.chdir(tmp_path)  # a relative folder becomes absolute (the backend needs absolute paths)
    assert ControlUnit.parse("custom:mynet").model == str(folder)


def test_custom_unit_errors_name_the_folder(tmp_path):
    with pytest.raises(J.JobError, match="is not a folder"):
        ControlUnit.parse(f"custom:{tmp_path / 'nothing'}")
    (tmp_path / "plain").mkdir()
    with pytest.raises(J.JobError, match=f"has no {CUSTOM_CARD}"):
        ControlUnit.parse(f"custom:{tmp_path / 'plain'}")
    with pytest.raises(J.JobError, match="trained on 'albedo'"):
        ControlUnit.parse(f"custom:{_net(tmp_path, 'albedo', 'odd')}")
    with pytest.raises(J.JobError, match="needs its ControlNet folder"):
        ControlUnit.parse("custom:")


def test_a_custom_controlnet_must_fit_the_sweeps_base(tmp_path):
    folder = _net(tmp_path)
    (folder / CUSTOM_CARD).write_text(json.dumps({"control": "depth", "arch": "sd15", "family": "tiny"}))
    units = [ControlUnit("lines"), ControlUnit.custom(str(folder))]
    check_custom_base(units, "tiny")
    check_custom_base(units, "/models/my-sd15-base")  # a local base folder: only the architecture is known
    for family in ("sd15", "tiny-sdxl", "sdxl"):
        with pytest.raises(J.JobError, match=rf"controls\[1\]: custom ControlNet .* was trained on tiny "
                                             rf"\(sd15\); this sweep uses {family}"):
            check_custom_base(units, family)


def test_camera_job_sends_the_custom_model(tmp_path):
    folder = _net(tmp_path)
    passes = tmp_path / "passes"
    passes.mkdir()
    write_png(str(passes / "depth.png"), np.full((48, 64), 100, np.uint8))
    job = camera_job(str(passes), [ControlUnit.parse(f"custom:{folder}:0.8")], ["modern"], [0], model="tiny")
    assert job["controls"][0]["type"] == "depth" and job["controls"][0]["model"] == str(folder)
    assert job["controls"][0]["scale"] == 0.8
    assert J.Job.from_dict(job).controls[0].model == str(folder)


def test_panel_custom_unit(tmp_path):
    bpy = pytest.importorskip("bpy")
    import archviz_controlnet

    from archviz_controlnet.blender import sweeping
    from archviz_controlnet.blender.properties import units_of

    bpy.ops.wm.read_factory_settings(use_empty=True)
    archviz_controlnet.register()
    try:
        settings = bpy.context.scene.archviz
        unit = settings.units.add()
        unit.type = "custom"
        with pytest.raises(J.JobError, match="needs its ControlNet folder"):
            units_of(settings)
        unit.model_path = str(_net(tmp_path, "seg"))
        unit.scale = 0.5
        from blender_support import draw

        from archviz_controlnet import panels

        calls = draw(panels.VIEW3D_PT_archviz_units, bpy.context)
        assert "model_path" in [c[1][1] for c in calls if c[0] == "prop"]  # the folder of the Custom unit
        (got,) = units_of(settings)
        assert got.type == "seg" and got.model == unit.model_path and got.scale == 0.5
        job = {"model": {"family": "tiny"}, "controls": [{"type": "seg", "model": got.model}]}
        assert sweeping.job_model_roots(job) == [got.model]
        # A custom lines unit reads the line style its dataset had, whatever the family's own.
        lines_net = _net(tmp_path, "lines", "linesnet")
        (lines_net / CUSTOM_CARD).write_text(json.dumps({"control": "lines", "line_style": "lineart"}))
        custom = ControlUnit.parse(f"custom:{lines_net}")
        assert custom.line_style == "lineart"
        from archviz_controlnet.blender.capture.render import CaptureOptions

        _depth, styles = sweeping.control_choices([ControlUnit("lines"), custom], ["modern"], "sdxl",
                                                  CaptureOptions())
        assert styles == {0: "canny", 1: "lineart"}
    finally:
        archviz_controlnet.unregister()
