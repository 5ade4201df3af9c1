"""The ``small-<family>`` bench configs: each family's real denoiser and ControlNet classes
with the real configs (bench/configs*.py) cut in width and depth until one denoiser forward
of one image at 256 px takes tens of milliseconds on a 2-core CPU, so a CPU bench times the
compute of the forwards and the engine's overhead as a share of it, not Python alone.

What is cut is listed per family in :data:`SMALL` (one line per family): block widths,
heads, layer counts. What has to fit the rest of the pipeline (latent channels, the text
encoders' widths) is read from the family's tiny models (backend/models/tiny/), whose text
encoders, tokenizers, VAE and scheduler config the small config takes as they are: loaded
through ``from_pretrained`` from the tiny store, like every tiny model. Denoiser and nets
get seeded random weights built in memory; nothing is downloaded. A ControlNet's
zero-initialised output projections get small seeded weights, so the nets steer the images
and a wrong window or scale shows in the pixel difference.

Adding a family: one :class:`Small` line in :data:`SMALL` (its tiny family, the real
configs, the cuts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import configs as _sd
from . import configs_flux as _flux
from . import configs_qwen as _qwen
from . import configs_zimage as _zimage


@dataclass(frozen=True)
class Small:
    tiny: str  # the tiny family whose text encoders, tokenizers, VAE and scheduler config it uses
    denoiser: dict  # the real denoiser config (bench/configs*.py)
    net: dict | None  # the real ControlNet config (None: an instruction-edit model, no ControlNet)
    cuts: dict  # denoiser widths / depths
    net_cuts: dict = field(default_factory=dict)  # the net's (its shared keys follow ``cuts``)
    shared_net: bool = False  # one (union) net for every unit, as the full-size config runs it
    steps: int = 8


#: Keys that must match the family's tiny text encoders and VAE: taken from its tiny models.
INTERFACE = ("in_channels", "out_channels", "cross_attention_dim", "addition_time_embed_dim",
             "projection_class_embeddings_input_dim", "joint_attention_dim", "pooled_projection_dim",
             "cap_feat_dim", "control_in_dim")

#: config -> what it cuts. Widths about 1/5 to 1/12 of the real ones, the real block types,
#: head sizes 32-64, and layer counts in about the real denoiser : net proportion.
SMALL = {
    "small-sd15": Small("tiny", _sd.SD15_UNET, _sd.SD15_CONTROLNET_V11,
                        {"block_out_channels": [64, 128, 256, 256], "attention_head_dim": 4, "layers_per_block": 1}),
    "small-sdxl": Small("tiny-sdxl", _sd.SDXL_UNET, _sd.SDXL_CONTROLNET,
                        {"block_out_channels": [64, 128, 256], "attention_head_dim": [2, 4, 8],
                         "transformer_layers_per_block": [1, 1, 2], "layers_per_block": 1}),
    "small-flux": Small("tiny-flux", _flux.FLUX_TRANSFORMER, _flux.FLUX_CONTROLNET_UNION_PRO_2,
                        {"num_attention_heads": 4, "attention_head_dim": 64, "axes_dims_rope": [8, 28, 28],
                         "num_layers": 3, "num_single_layers": 6}, {"num_layers": 1}, shared_net=True),
    "small-zimage": Small("tiny-zimage", _zimage.ZIMAGE_TRANSFORMER, _zimage.ZIMAGE_CONTROLNET_2_1,
                          {"dim": 256, "n_heads": 4, "n_kv_heads": 4, "axes_dims": [16, 24, 24], "n_layers": 6},
                          {"control_layers_places": [0, 2, 4]}, shared_net=True),
    "small-qwen": Small("tiny-qwen", _qwen.QWEN_TRANSFORMER, _qwen.QWEN_CONTROLNET_UNION,
                        {"num_attention_heads": 4, "attention_head_dim": 64, "axes_dims_rope": [8, 28, 28],
                         "num_layers": 8}, {"num_layers": 1}, shared_net=True),
    # Instruction edits: FLUX.1 Kontext is FLUX.1-dev's transformer, Qwen-Image-Edit Qwen-Image's.
    "small-kontext": Small("tiny-kontext", _flux.FLUX_TRANSFORMER, None,
                           {"num_attention_heads": 4, "attention_head_dim": 64, "axes_dims_rope": [8, 28, 28],
                            "num_layers": 3, "num_single_layers": 6}),
    "small-qwen-edit": Small("tiny-qwen-edit", _qwen.QWEN_TRANSFORMER, None,
                             {"num_attention_heads": 4, "attention_head_dim": 64, "axes_dims_rope": [8, 28, 28],
                              "num_layers": 8}),
    # FLUX.2 Klein: no ControlNet; the control images join its reference images (tokens in
    # every step), so its nets' share of the compute is in the denoiser's sequence.
    "small-klein": Small("tiny-klein", _flux.KLEIN_TRANSFORMER, None,
                         {"num_attention_heads": 2, "attention_head_dim": 64, "axes_dims_rope": [16, 16, 16, 16],
                          "num_layers": 1, "num_single_layers": 4}, steps=4),
}

#: keys of ``cuts`` that are the denoiser's depth, not shared with its net
_DEPTH_ONLY = ("num_layers", "num_single_layers", "n_layers")


def _strip(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def small_config(name: str, which: str, tiny_config: dict) -> dict:
    """The constructor keywords of the small denoiser (``which`` "denoiser") or net ("net"):
    the real config, its cuts, and the interface keys of the family's tiny model."""
    s = SMALL[name]
    if which == "denoiser":
        config = {**_strip(s.denoiser), **s.cuts}
    else:
        shared = {k: v for k, v in s.cuts.items() if k not in _DEPTH_ONLY and k in _strip(s.net)}
        config = {**_strip(s.net), **shared, **s.net_cuts}
    config.update({k: tiny_config[k] for k in INTERFACE if k in tiny_config and k in config})
    return config


def _seeded(seed: int, make):
    import torch

    torch.manual_seed(seed)
    return make()


def steer(net, seed: int) -> int:
    """Small seeded weights for the zero-initialised Linear/Conv layers of a fresh net (its
    output projections; a trained net's are no longer zero). Returns how many."""
    import torch

    torch.manual_seed(seed)
    n = 0
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and not module.weight.any():
                module.weight.normal_(0.0, 0.02)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.01)
                n += 1
    return n


def build_small(name: str, tiny_comps: dict, tiny_nets: list, n_units: int, device, dtype, seed: int = 0):
    """(components, nets) of ``name``: the tiny family's components with the small denoiser in
    place of its own, and the small nets (one per unit, or one shared union net)."""
    import torch

    s = SMALL[name]
    comps = dict(tiny_comps)  # the tiny cache entry keeps its own denoiser
    key = "unet" if "unet" in comps else "transformer"
    tiny_den = comps[key]
    with torch.device(device):
        comps[key] = _seeded(seed, lambda: type(tiny_den)(**small_config(name, "denoiser", dict(tiny_den.config))))
        made = []
        if s.net is not None:
            tiny_net = tiny_nets[0]
            net_kwargs = small_config(name, "net", dict(tiny_net.config))
            count = 1 if s.shared_net else n_units
            made = [_seeded(seed + 1 + k, lambda: type(tiny_net)(**net_kwargs)) for k in range(count)]
    for k, net in enumerate(made):
        steer(net, seed + 100 + k)
    nets = made * n_units if s.shared_net and made else made
    for module in [comps[key], *made]:
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return comps, nets


def forward_ms(denoiser, size: int, repeats: int = 3) -> float:
    """Milliseconds of one forward of one image at ``size`` px (median of ``repeats`` after one
    untimed run), with random inputs of the shapes its pipeline gives it."""
    import statistics
    import time

    import torch

    inputs = forward_inputs(denoiser, size)
    times = []
    with torch.no_grad():
        denoiser(**inputs)
        for _ in range(repeats):
            t0 = time.perf_counter()
            denoiser(**inputs)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def forward_inputs(denoiser, size: int, text_tokens: int = 32) -> dict:
    """Random inputs of one image for ``denoiser`` at ``size`` px (latents 1/8, 2x2 tokens)."""
    import torch

    c = denoiser.config
    name = type(denoiser).__name__
    g = torch.Generator().manual_seed(0)
    h = size // 8
    dt = next(denoiser.parameters()).dtype
    t = torch.tensor([500.0])
    if name == "UNet2DConditionModel":
        out = {"sample": torch.randn(1, c.in_channels, h, h, generator=g, dtype=dt), "timestep": t,
               "encoder_hidden_states": torch.randn(1, 77, c.cross_attention_dim, generator=g, dtype=dt)}
        if c.addition_embed_type == "text_time":
            pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
            out["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g, dtype=dt),
                                        "time_ids": torch.tensor([[size, size, 0, 0, size, size]], dtype=dt)}
        return out
    tokens = (h // 2) ** 2
    if name == "FluxTransformer2DModel":
        ids = torch.zeros(tokens, 3)
        ids[:, 1] = torch.arange(tokens) // (h // 2)
        ids[:, 2] = torch.arange(tokens) % (h // 2)
        return {"hidden_states": torch.randn(1, tokens, c.in_channels, generator=g, dtype=dt),
                "encoder_hidden_states": torch.randn(1, text_tokens, c.joint_attention_dim, generator=g, dtype=dt),
                "pooled_projections": torch.randn(1, c.pooled_projection_dim, generator=g, dtype=dt),
                "timestep": t / 1000, "guidance": torch.tensor([3.5]) if c.guidance_embeds else None,
                "img_ids": ids, "txt_ids": torch.zeros(text_tokens, 3)}
    if name == "Flux2Transformer2DModel":
        # As the bench runs FLUX.2 Klein: Qwen3's prompt padded to 512 tokens, and the two
        # control images' tokens after the noise's (each at its own time coordinate).
        text_tokens, images = 512, 3
        ids = torch.zeros(1, images * tokens, 4)
        ids[0, :, 0] = 10 * (torch.arange(images * tokens) // tokens)
        ids[0, :, 1] = torch.arange(images * tokens) % tokens // (h // 2)
        ids[0, :, 2] = torch.arange(images * tokens) % (h // 2)
        return {"hidden_states": torch.randn(1, images * tokens, c.in_channels, generator=g, dtype=dt),
                "encoder_hidden_states": torch.randn(1, text_tokens, c.joint_attention_dim, generator=g, dtype=dt),
                "timestep": t / 1000, "guidance": None, "img_ids": ids, "txt_ids": torch.zeros(1, text_tokens, 4)}
    if name == "QwenImageTransformer2DModel":
        return {"hidden_states": torch.randn(1, tokens, c.in_channels, generator=g, dtype=dt),
                "encoder_hidden_states": torch.randn(1, text_tokens, c.joint_attention_dim, generator=g, dtype=dt),
                "encoder_hidden_states_mask": torch.ones(1, text_tokens, dtype=torch.long),
                "timestep": t / 1000, "img_shapes": [(1, h // 2, h // 2)]}
    if name == "ZImageTransformer2DModel":
        return {"x": [torch.randn(c.in_channels, 1, h, h, generator=g, dtype=dt)], "t": t / 1000,
                "cap_feats": [torch.randn(text_tokens, c.cap_feat_dim, generator=g, dtype=dt)]}
    raise ValueError(f"forward_inputs: no inputs known for {name}")
