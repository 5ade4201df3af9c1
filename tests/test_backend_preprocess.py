"""Preprocessors for photos and sketches: adaptive Canny, controlnet_aux detectors and a
DPT depth model (random weights built here), and the errors when weights are missing."""

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from archviz_controlnet.backend.models import preprocess as P


@pytest.fixture()
def annotators(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHVIZ_ANNOTATORS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    P._DETECTORS.clear()
    yield tmp_path
    P._DETECTORS.clear()


def photo(w=100, h=60):
    img = np.full((h, w, 3), 90, np.uint8)
    img[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 220  # a bright window in a wall
    return Image.fromarray(img)


def test_adaptive_canny_keeps_aspect_and_pads():
    out = P.adaptive_canny(photo(100, 60), 64, 64)
    a = np.asarray(out)
    assert out.size == (64, 64) and out.mode == "RGB"
    assert set(np.unique(a)) == {0, 255}  # white edges on black
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()
    rows = np.flatnonzero(a[..., 0].any(axis=1))
    # 100x60 scaled to 64x38, centred: 13 px of padding above and below stay black
    assert rows.min() >= 13 and rows.max() <= 64 - 13
    cols = np.flatnonzero(a[..., 0].any(axis=0))
    assert abs(cols.min() - 64 / 3) <= 3 and abs(cols.max() - 2 * 64 / 3) <= 3  # the window's sides


def test_canny_thresholds_follow_the_median():
    flat = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    assert np.asarray(P.adaptive_canny(flat, 64, 64)).max() == 0  # nothing to find
    noisy = np.clip(np.random.default_rng(0).normal(60, 3, (64, 64, 3)), 0, 255).astype(np.uint8)
    noisy[:, 32:] = 220
    edges = np.asarray(P.adaptive_canny(Image.fromarray(noisy), 64, 64))[..., 0]
    assert edges[:, 30:35].any() and not edges[:, :20].any()  # the step edge, not the noise


@pytest.mark.parametrize("kind, files", [("mlsd", ["mlsd_large_512_fp32.pth"]), ("lineart", ["sk_model.pth"]),
                                         ("normal", ["scannet.pt"])])
def test_missing_weights_name_the_file_and_where_to_put_it(annotators, kind, files):
    with pytest.raises(P.PreprocessorError) as err:
        P.run_preprocessor(kind, photo(), 64, 64)
    msg = str(err.value)
    assert files[0] in msg and str(annotators / files[0]) in msg and "lllyasviel/Annotators" in msg


def test_missing_depth_model_is_named(annotators):
    with pytest.raises(P.PreprocessorError) as err:
        P.run_preprocessor("depth", photo(), 64, 64)
    assert "Intel/dpt-hybrid-midas" in str(err.value) and str(annotators / "dpt-hybrid-midas") in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("controlnet_aux") is None,
                    reason="controlnet_aux not installed (pip install --no-deps -r backend/setup/requirements-nodeps.txt)")
def test_controlnet_aux_detectors_run_with_local_weights(annotators):
    P._aux("mlsd")  # imports the submodules without controlnet_aux/__init__ (no torchvision here)
    from controlnet_aux.lineart import Generator
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    torch.manual_seed(0)
    torch.save(MobileV2_MLSD_Large().state_dict(), annotators / "mlsd_large_512_fp32.pth")
    torch.save(Generator(3, 1, 3).state_dict(), annotators / "sk_model.pth")
    torch.save(Generator(3, 1, 3).state_dict(), annotators / "sk_model2.pth")
    for kind in ("mlsd", "lineart"):
        out = P.run_preprocessor(kind, photo(), 64, 48)
        a = np.asarray(out)
        assert out.size == (64, 48) and out.mode == "RGB" and a.dtype == np.uint8, kind
        assert (a[..., 0] == a[..., 2]).all(), kind  # gray copied into R, G, B


def test_depth_detector_runs_a_local_dpt_and_puts_near_white(annotators):
    from transformers import DPTConfig, DPTForDepthEstimation

    cfg = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=32,
                    patch_size=8, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                    backbone_out_indices=[0, 1, 2, 3], reassemble_factors=[4, 2, 1, 0.5], head_in_index=-1)
    torch.manual_seed(0)
    DPTForDepthEstimation(cfg).save_pretrained(annotators / "dpt-hybrid-midas")
    out = np.asarray(P.run_preprocessor("depth", photo(), 64, 48))
    assert out.shape == (48, 64, 3) and out.min() == 0 and out.max() == 255  # min-max normalised
