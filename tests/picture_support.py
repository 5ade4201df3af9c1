"""The detectors' repositories for tests/fake_hub.py, under their real ids: a tiny DPT
hybrid (ViT on a BiT backbone, like Intel/dpt-hybrid-midas) built from a small config with
seeded random weights, and lllyasviel/Annotators' MLSD and lineart files (controlnet_aux's
own architectures, whose sizes its loaders fix; seeded random weights). Each repository
also has what the real one has and the backend must not fetch: a ``.bin`` pickle and a
preprocessor config for the DPT, other annotators' files for Annotators."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

DEPTH_REPO = "Intel/dpt-hybrid-midas"
ANNOTATOR_REPO = "lllyasviel/Annotators"


def tiny_dpt():
    """A DPT-hybrid of about 100k parameters (64 px input, 16 px patches)."""
    import torch
    from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

    bit = BitConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 32], depths=[1, 1, 1],
                    layer_type="bottleneck", global_padding="same", out_features=["stage1", "stage2", "stage3"],
                    embedding_dynamic_padding=True, num_groups=4)
    cfg = DPTConfig(is_hybrid=True, backbone_config=bit, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                    intermediate_size=37, image_size=64, patch_size=16, neck_hidden_sizes=[8, 16, 32, 32],
                    fusion_hidden_size=16, backbone_out_indices=[0, 1, 2, 3], reassemble_factors=[1, 1, 1, 0.5],
                    head_in_index=-1, readout_type="project", backbone_featmap_shape=[1, 32, 4, 4],
                    neck_ignore_stages=[0, 1])
    torch.manual_seed(0)
    return DPTForDepthEstimation(cfg).eval()


def build_picture_repos(root: Path) -> dict[str, Path]:
    """{repo id: folder} of the detectors' repositories, built once under ``root``."""
    import torch

    from archviz_controlnet.backend.models import preprocess as P

    dpt, ann = root / DEPTH_REPO, root / ANNOTATOR_REPO
    if not (root / ".built").exists():
        shutil.rmtree(root, ignore_errors=True)
        model = tiny_dpt()
        model.save_pretrained(dpt)
        torch.save(model.state_dict(), dpt / "pytorch_model.bin")
        (dpt / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True, "image_mean": [0.5] * 3,
                                                                  "image_std": [0.5] * 3, "size": 64}))
        (dpt / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny stand-in\n")
        P._aux("mlsd")
        from controlnet_aux.lineart import Generator
        from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

        ann.mkdir(parents=True)
        torch.manual_seed(1)
        torch.save(MobileV2_MLSD_Large().state_dict(), ann / "mlsd_large_512_fp32.pth")
        torch.save(Generator(3, 1, 3).state_dict(), ann / "sk_model.pth")
        torch.save(Generator(3, 1, 3).state_dict(), ann / "sk_model2.pth")
        torch.save({"w": torch.zeros(1000)}, ann / "ControlNetHED.pth")  # another detector's: never fetched
        torch.save({"w": torch.zeros(1000)}, ann / "scannet.pt")
        (ann / "README.md").write_text("---\nlicense: other\n---\n# tiny stand-in\n")
        (root / ".built").write_text("")
    return {DEPTH_REPO: dpt, ANNOTATOR_REPO: ann}
