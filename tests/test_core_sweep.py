"""Client-side sweep planning without a backend: units, job building, error text."""

import base64

import numpy as np
import pytest

from archviz_controlnet.core import jobs as J
from archviz_controlnet.core.client import BackendProcess, BackendUnreachable, Client, _error_text
from archviz_controlnet.core.png import write_png
from archviz_controlnet.core.sweep import ControlUnit, camera_job


def test_control_unit_parse():
    assert ControlUnit.parse("depth") == ControlUnit("depth")
    assert ControlUnit.parse("lines:0.6:0.2:1") == ControlUnit("lines", 0.6, 0.2, 1.0)
    with pytest.raises(J.JobError, match="'albedo'"):
        ControlUnit.parse("albedo:1")
    with pytest.raises(J.JobError, match="'depth:x'"):
        ControlUnit.parse("depth:x")


def _passes(tmp_path, size=(64, 48)):
    w, h = size
    write_png(str(tmp_path / "depth.png"), np.full((h, w), 128, np.uint8))
    write_png(str(tmp_path / "lines.png"), np.zeros((h, w), np.uint8))
    return str(tmp_path)


def test_camera_job_carries_images_and_only_set_values(tmp_path):
    job = camera_job(_passes(tmp_path), [ControlUnit("depth", 0.9), ControlUnit("lines", None, 0.2, 1.0)],
                     ["modern"], [0, 1], model="tiny", output_dir="/tmp/o", name_prefix="Cam", steps=2)
    assert job["controls"][0]["scale"] == 0.9 and "scale" not in job["controls"][1]
    assert job["controls"][1]["start"] == 0.2
    assert base64.b64decode(job["controls"][0]["image"]) == (tmp_path / "depth.png").read_bytes()
    assert job["model"] == {"family": "tiny"} and job["name_prefix"] == "Cam" and job["skip_existing"] is True
    assert J.Job.from_dict(job).width == 64


def test_camera_job_names_the_bad_field(tmp_path):
    passes = _passes(tmp_path)
    with pytest.raises(J.JobError, match=r"controls\[1\]\.image: cannot read .*normal\.png"):
        camera_job(passes, [ControlUnit("depth"), ControlUnit("normal")], ["modern"], [0])
    with pytest.raises(J.JobError, match=r"controls\[0\]\.scale"):
        camera_job(passes, [ControlUnit("depth", 5.0)], ["modern"], [0])
    with pytest.raises(J.JobError, match="seeds"):
        camera_job(passes, [ControlUnit("depth")], ["modern"], [])


def test_error_text_reads_backend_bodies():
    assert _error_text(b'{"detail": "steps: must be between 1 and 500, got 0"}') == "steps: must be between 1 and 500, got 0"
    assert _error_text(b'{"error": {"type": "X", "message": "boom"}}') == "boom"
    assert _error_text(b"plain text") == "plain text"


def test_unreachable_backend_is_a_clear_error():
    with pytest.raises(BackendUnreachable, match="127.0.0.1:9 is not reachable"):
        Client("http://127.0.0.1:9", timeout=2, retry_for=1.0).health()  # the wait itself: test_hardening2_client


def test_backend_process_that_cannot_start_says_why(tmp_path):
    proc = BackendProcess(python=str(tmp_path / "no-python"))
    with pytest.raises(Exception, match="cannot start the backend"):
        proc.start(timeout=5)
