"""core.jobs: the job schema both sides validate with (stdlib only)."""

import base64
import json
import math
import struct
import subprocess
import sys
import zlib

import pytest

from archviz_controlnet.core import jobs as J


def _png(w, h):
    """A minimal valid PNG built with the stdlib (as Blender's side would)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + b"\x80" * (w * 3) for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


IMG64 = J.encode_png(_png(64, 64))


def job(**over):
    data = {"controls": [{"type": "depth", "image": IMG64}], "styles": ["modern"], "seeds": [0]}
    data.update(over)
    return data


def test_minimal_job_takes_size_from_controls_and_defaults():
    j = J.Job.from_dict(job())
    assert (j.width, j.height) == (64, 64)
    assert j.model.family == "sd15" and j.steps is None and j.cfg is None and j.scheduler is None
    assert j.styles[0].name == "modern" and j.styles[0].preset == "modern"
    assert [i.file for i in j.items()] == ["modern_s0.png"]


def test_round_trip_json_is_identical():
    j = J.Job.from_dict(job(seeds=[3, 1], styles=["modern", {"name": "mine", "prompt": "a loft", "negative": "x"}],
                            steps=12, cfg=5.5, scheduler="DPM++ 2M Karras", name_prefix="Cam.001",
                            skip_existing=True, model={"family": "tiny-sdxl", "union": True}))
    again = J.Job.from_json(j.to_json())
    assert again.to_dict() == j.to_dict()
    assert again.scheduler == "dpmpp_2m_karras"
    assert [i.file for i in again.items()] == ["Cam.001_modern_s3.png", "Cam.001_modern_s1.png",
                                               "Cam.001_mine_s3.png", "Cam.001_mine_s1.png"]
    assert [i.index for i in again.items()] == [0, 1, 2, 3]


@pytest.mark.parametrize("over, field", [
    ({"steps": 0}, "steps"),
    ({"steps": -4}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"cfg": math.nan}, "cfg"),
    ({"cfg": math.inf}, "cfg"),
    ({"cfg": "7"}, "cfg"),
    ({"scheduler": "heun"}, "scheduler"),
    ({"width": 60}, "width"),
    ({"width": 128}, "controls[0].image"),
    ({"seeds": []}, "seeds"),
    ({"seeds": [1, 1]}, "seeds"),
    ({"seeds": [-1]}, "seeds[0]"),
    ({"seeds": [True]}, "seeds[0]"),
    ({"seeds": "0-3"}, "seeds"),
    ({"styles": []}, "styles"),
    ({"styles": [{"name": "x"}]}, "styles[0].prompt"),
    ({"styles": ["modern", "modern"]}, "styles[1].name"),
    ({"styles": [{"name": "bad name!", "prompt": "p"}]}, "styles[0].name"),
    ({"controls": []}, "controls"),
    ({"controls": [{"type": "pose", "image": IMG64}]}, "controls[0].type"),
    ({"controls": [{"type": "depth"}]}, "controls[0].image"),
    ({"controls": [{"type": "depth", "image": "%%%"}]}, "controls[0].image"),
    ({"controls": [{"type": "depth", "image": base64.b64encode(b"GIF89a....").decode()}]}, "controls[0].image"),
    ({"controls": [{"type": "depth", "image": IMG64, "scale": 2.5}]}, "controls[0].scale"),
    ({"controls": [{"type": "depth", "image": IMG64, "start": 0.6, "end": 0.4}]}, "controls[0].end"),
    ({"controls": [{"type": "depth", "image": IMG64, "start": 1.0}]}, "controls[0].start"),
    ({"controls": [{"type": "depth", "image": IMG64, "mode": "loud"}]}, "controls[0].mode"),
    ({"controls": [{"type": "depth", "image": IMG64, "bogus": 1}]}, "controls[0].bogus"),
    ({"controls": [{"type": "depth", "image": IMG64}, {"type": "lines", "image": J.encode_png(_png(64, 48))}]},
     "controls[1].image"),
    ({"model": {"family": "sd3"}}, "model.family"),
    ({"model": {"family": "sd15", "union": True}}, "model.union"),
    ({"model": {"controlnets": {"pose": "x"}}}, "model.controlnets.pose"),
    ({"name_prefix": "../evil"}, "name_prefix"),
    ({"skip_existing": "yes"}, "skip_existing"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_fields_are_named(over, field):
    with pytest.raises(J.JobError) as err:
        J.Job.from_dict(job(**over))
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")


def test_required_fields_and_non_object_body():
    for missing in ("controls", "styles", "seeds"):
        data = job()
        del data[missing]
        with pytest.raises(J.JobError) as err:
            J.Job.from_dict(data)
        assert err.value.field == missing
    with pytest.raises(J.JobError) as err:
        J.Job.from_json(b"{not json")
    assert err.value.field == "body"
    with pytest.raises(J.JobError):
        J.Job.from_dict([1, 2])


def test_preprocessed_photo_may_have_any_size_but_needs_job_size():
    photo = J.encode_png(_png(100, 60))
    with pytest.raises(J.JobError) as err:
        J.Job.from_dict(job(controls=[{"type": "canny", "image": photo, "preprocess": "canny"}]))
    assert err.value.field == "width"
    j = J.Job.from_dict(job(controls=[{"type": "canny", "image": photo, "preprocess": "canny"}], width=64, height=32))
    assert (j.width, j.height) == (64, 32)


def test_png_size_reads_ihdr():
    assert J.png_size(_png(40, 24)) == (40, 24)
    with pytest.raises(J.JobError):
        J.png_size(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)


def test_parse_seeds_and_names():
    assert J.parse_seeds("0-3,7, 10-11,2") == [0, 1, 2, 3, 7, 10, 11]
    for bad in ("", "a", "5-2"):
        with pytest.raises(J.JobError):
            J.parse_seeds(bad)
    assert J.image_filename("Camera 2", "modern", 5) == "Camera_2_modern_s5.png"
    assert J.image_filename("", "japandi", 0) == "japandi_s0.png"
    assert J.sidecar_filename("Cam", "manifest.json") == "Cam_manifest.json"


def test_core_jobs_imports_without_torch_or_bpy():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['bpy'] = None; sys.modules['PIL'] = None\n"
            "from archviz_controlnet.core import jobs, presets; print(len(presets.load_presets()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) >= 10


# ---------------------------------------------------------------- hardening (issue 6)

def _ihdr_only(w, h):
    """A PNG header claiming w x h with almost no data (a decompression-bomb shape)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_seeds_are_unsigned_32_bit():
    assert J.Job.from_dict(job(seeds=[0, 2**32 - 1])).seeds == [0, 2**32 - 1]
    for bad in (2**32, 2**63 - 1, -1, 1e400, float("nan"), 3.0):
        with pytest.raises(J.JobError) as err:
            J.Job.from_dict(job(seeds=[bad]))
        assert err.value.field == "seeds[0]"
    with pytest.raises(J.JobError, match="0..4294967295"):
        J.parse_seeds("4294967290-4294967300")
    with pytest.raises(J.JobError, match="more than 1024"):
        J.parse_seeds("0-99999999")


@pytest.mark.parametrize("png, message", [
    (_ihdr_only(100_000, 100_000), "10000 megapixels, over the limit of 36"),
    (_ihdr_only(0, 64), "zero size (0x64)"),
    (_ihdr_only(0, 0), "zero size (0x0)"),
    (_png(64, 64)[:20], "truncated PNG (20 bytes"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * (J.MAX_PNG_BYTES), "larger than the limit of 16 MiB"),
    (b"GIF89a" + b"\0" * 40, "bad signature"),
])
def test_bad_pngs_are_refused_before_decoding(png, message):
    with pytest.raises(J.JobError) as err:
        J.Job.from_dict(job(controls=[{"type": "depth", "image": J.encode_png(png)}]))
    assert err.value.field == "controls[0].image" and message in str(err.value)


@pytest.mark.parametrize("over, field, message", [
    ({"steps": 10**9}, "steps", "between 1 and 500"),
    ({"steps": -3}, "steps", "between 1 and 500"),
    ({"steps": 2.5}, "steps", "expected an integer"),
    ({"cfg": float("inf")}, "cfg", "finite"),
    ({"cfg": float("-inf")}, "cfg", "finite"),
    ({"controls": [{"type": "depth", "image": IMG64, "scale": float("nan")}]}, "controls[0].scale", "finite"),
    ({"width": 0}, "width", "between 32 and 4096"),
    ({"width": 63}, "width", "multiple of 8, got 63"),
    ({"height": 100}, "height", "multiple of 8"),
    ({"styles": [{"name": "x", "prompt": "a\ud800b"}]}, "styles[0].prompt", "lone surrogate"),
    ({"styles": [{"name": "x", "prompt": "a\0b"}]}, "styles[0].prompt", "NUL"),
    ({"styles": [{"name": "x", "prompt": "x" * 5000}]}, "styles[0].prompt", "longer than 4000"),
    ({"output_dir": "/tmp/a\0b"}, "output_dir", "NUL"),
    ({"scheduler": "x" * 10_000}, "scheduler", "characters)"),
])
def test_absurd_values_are_named(over, field, message):
    with pytest.raises(J.JobError) as err:
        J.Job.from_dict(job(**over))
    assert err.value.field == field and message in str(err.value)
    assert len(str(err.value)) < 300  # the bad value is not echoed whole


def test_bodies_that_are_not_utf8_json():
    for raw, message in [(b'{"seeds": "\xff\xfe"}', "not UTF-8"), (b"[" * 100_000, "nested too deeply"),
                         (b'{"seeds": [1' + b"0" * 5000 + b"]}", "not valid JSON"), (b"", "not valid JSON")]:
        with pytest.raises(J.JobError) as err:
            J.Job.from_json(raw)
        assert err.value.field == "body" and message in str(err.value), raw[:20]
    # NaN is a JSON extension Python accepts: it is still refused where a number goes
    with pytest.raises(J.JobError, match="cfg: must be a finite number"):
        J.Job.from_json(json.dumps(job(cfg=float("nan"))))
