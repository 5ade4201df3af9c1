"""One benchmark run: the plain diffusers loop and our engine, same models, same sweep.

* two baselines, the family's diffusers pipeline (``StableDiffusion(XL)ControlNetPipeline``,
  ``FluxControlNetPipeline``, ``ZImageControlNetPipeline`` whose one ``controlnet`` is then
  diffusers' multi-ControlNet rule around its nets) with a list of ControlNets: ``loop``, called once per (style,
  seed) as in the seed documents' ArchVizPipeline, and ``batched``, one call per sampling
  group with the lists of prompts and generators, the way a diffusers user batches a sweep
  (fp16 + SDPA on CUDA, fp32 on CPU; CPU ``torch.Generator`` s so every side draws the same
  noise);
* ours: :class:`~..backend.engine.Engine` with its default options, then one row per
  option with that option alone flipped, measured the same way;
* matching images are compared pixel by pixel (max absolute difference, 0-1 scale);
* on CUDA: FLOPs of the UNet and ControlNet forwards counted with ``FlopCounterMode``,
  divided by the time spent in the denoising loop, as a fraction of a bf16 matmul peak
  measured in the same run.

Everything is printed as it is measured (a run cut short still shows what it got) and the
whole report is returned as a dict (``--json``). Timings are measurements, never checks.
"""

from __future__ import annotations

import io
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..backend.engine.families import registry
from ..core import families
from . import timing
from .configs_small import SMALL

#: The issue's cases: depth 0.9 on the whole run + lines 0.6 from 20 %, and the seeds'
#: temporal schedule (depth only for the first half).
CASES = {
    "full": (("depth", 0.9, 0.0, 1.0), ("lines", 0.6, 0.2, 1.0)),
    "early-depth": (("depth", 0.9, 0.0, 0.5), ("lines", 0.6, 0.2, 1.0)),
}
#: The instruction-edit models' one case: no ControlNet, one edit text of a picture per style.
EDIT_CASE, EDIT_TEXT = "edit", "make it a snowy winter evening"
CASES[EDIT_CASE] = ()
#: FLUX.2 Klein reads its control images as reference images; diffusers' pipeline has no
#: window for them, so its one case is both units over the whole run (the same pixels on
#: every side; the engine's windows, which leave a unit's tokens out of a step, have no
#: diffusers counterpart to compare with).
WHOLE_WINDOW_CASE = "whole-window"
CASES[WHOLE_WINDOW_CASE] = (("depth", 0.9, 0.0, 1.0), ("lines", 0.6, 0.0, 1.0))

#: One row per engine option: (name, changes from the defaults; a callable gets the defaults).
#: ``*`` in the label marks options that change the images.
ROWS = {
    "window-skip": lambda o: {"skip_inactive": not o.skip_inactive},
    "batching": lambda o: {"batch": not o.batch},
    "embeds-once": lambda o: {"embeds_once": not o.embeds_once},
    "cond-once": lambda o: {"cond_once": not o.cond_once},
    "channels-last": lambda o: {"channels_last": not o.channels_last},
    "sdpa-flash": lambda o: {"sdpa_backend": "flash"},
    "sdpa-efficient": lambda o: {"sdpa_backend": "efficient"},
    "sdpa-cudnn": lambda o: {"sdpa_backend": "cudnn"},
    "sdpa-math": lambda o: {"sdpa_backend": "math"},
    "fused-qkv": lambda o: {"fused_qkv": not o.fused_qkv},
    "vae-batch-1": lambda o: {"vae_batch": 1},
    "vae-batch-all": lambda o: {"vae_batch": 64},
    "compile": lambda o: {"compile": not o.compile, "cuda_graphs": False},
    "compile+cuda-graphs": lambda o: {"compile": True, "cuda_graphs": True},
    "guess-mode*": lambda o: {"guess_mode": not o.guess_mode},
    "int8*": lambda o: {"quantize": "int8"},
    "int8-weight*": lambda o: {"quantize": "int8-weight"},
    "fp8*": lambda o: {"quantize": "fp8"},
    "fp8-weight*": lambda o: {"quantize": "fp8-weight"},
    "token-merging-0.5*": lambda o: {"token_merging": 0.5},
}
#: Rows that are not engine options: previews every 4 steps (the PNGs made and dropped; the
#: images must stay the same), and the family's fast mode (labelled: its own steps and
#: sampler; the ratio is per image against the exact path).
JOB_ROWS = ("previews-every-4", "fast*")
CPU_ROWS = ("window-skip", "batching", "embeds-once", "cond-once", "channels-last", "sdpa-math", "fused-qkv",
            "vae-batch-1", "guess-mode*", "int8*", "int8-weight*", "fp8-weight*", "token-merging-0.5*")
CUDA_ONLY = ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "compile+cuda-graphs", "fp8*")
CUDA_ROWS = tuple(r for r in ROWS if r != "sdpa-math")  # the math kernel only shows what the others save


@dataclass
class Spec:
    config: str = "tiny"  # tiny | tiny-sdxl | sd15 | sdxl (CONFIGS)
    device: str = "auto"
    styles: tuple = ("modern", "industrial", "scandinavian", "japandi")
    seeds: tuple = (0, 1, 2, 3)
    size: int = 512
    steps: int = 30
    cfg: float = 7.5
    scheduler: str = "unipc"
    cases: tuple = ("full", "early-depth")
    rows: tuple | None = None  # None: the device's default list
    row_case: str = "full"
    baseline: bool = True
    capture: bool = False
    capture_long_side: int = 512
    threads: int | None = None
    repeats: int = 1  # timed runs per side (after its warm-up); the median counts, min and max are shown
    serve: bool = False  # also the job end to end through the HTTP API (the ``serve`` side)
    overhead: bool = True  # the overhead row: time per step outside the forwards, from a profile
    flops: bool | None = None  # None: on CUDA only
    extra: dict = field(default_factory=dict)


def say(line: str = "") -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------


def control_png(kind: str, size: int) -> bytes:
    """A room-like inverse depth (near floor bright, dark back wall) or its white-on-black
    lines, as the capture would give them."""
    from PIL import Image

    w = h = size
    if kind == "depth":
        y = np.linspace(0, 1, h)[:, None] * np.ones((1, w))
        d = (40 + 200 * y).astype(np.uint8)
        d[h // 4: h // 2, w // 4: 3 * w // 4] = 30
        img = np.stack([d] * 3, axis=-1)
    else:
        img = np.zeros((h, w, 3), np.uint8)
        img[h // 4, w // 4: 3 * w // 4] = 255
        img[h // 2, :] = 255
        img[h // 4: h // 2, w // 4] = 255
        img[h // 4: h // 2, 3 * w // 4] = 255
        for i in range(h // 2, h):
            img[i, max(0, w // 4 - (i - h // 2))] = 255
            img[i, min(w - 1, 3 * w // 4 + (i - h // 2))] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


#: --config: the tiny families load like any model; the full-size ones are built from the
#: real configs with random weights (bench/configs.py).
CONFIGS = {
    "tiny": "the offline tiny SD 1.5 models (CPU, CI)",
    "tiny-sdxl": "the offline tiny SDXL models (CPU, CI)",
    "tiny-flux": "the offline tiny FLUX.1 models (CPU, CI)",
    "tiny-zimage": "the offline tiny Z-Image-Turbo models (CPU, CI)",
    "sd15": "SD 1.5 UNet, 2 ControlNets v1.1, VAE, CLIP text encoder from the real configs, random weights (GPU)",
    "sdxl": "SDXL UNet, 2 SDXL ControlNets, fp16-fix VAE, both text encoders from the real configs, random "
            "weights (GPU)",
    "zimage": "Z-Image-Turbo transformer, its union ControlNet 2.1, FLUX VAE, Qwen3-4B encoder from the real "
              "configs (bench/configs_zimage.py), random weights (GPU)",
    "flux": "FLUX.1-dev transformer, the Union-Pro 2.0 ControlNet for both units, VAE, CLIP and T5-XXL from the "
            "real configs, random weights (GPU)",
}
CONFIGS.update({"tiny-qwen": "the offline tiny Qwen-Image models (CPU, CI)",
                "tiny-klein": "the offline tiny FLUX.2 Klein models (CPU, CI)",
                "qwen": "Qwen-Image transformer, InstantX union ControlNet, VAE, Qwen2.5-VL text encoder from the "
                        "real configs, random weights (GPU)"})
#: 64 px for the tiny families, the family's default long side for the others (core/families.py)
DEFAULT_SIZE = {c: 64 if families.FAMILIES[c].tiny else families.long_side(c) for c in CONFIGS}
DEFAULT_STEPS = {"flux": 28, "zimage": 8, "tiny-zimage": 8}  # the others: Spec.steps
#: The small configs (bench/configs_small.py): the real architectures cut to tens of
#: milliseconds per forward at 256 px, so a CPU run times compute; 2 styles x 2 seeds.
CONFIGS.update({name: f"the {name.removeprefix('small-')} denoiser{' and ControlNet' if s.net else ''} cut to "
                      f"~30-100 ms per forward at 256 px, the {s.tiny} text encoders and VAE, random weights (CPU)"
                for name, s in SMALL.items()})
DEFAULT_SIZE.update({name: 256 for name in SMALL})
CONFIGS.update({f: f"the offline tiny {families.FAMILIES[f].label} instruction-edit models (CPU, CI)"
                for f in families.names(tiny=True, edit=True)})
DEFAULT_SIZE.update({f: 64 for f in families.names(tiny=True, edit=True)})
DEFAULT_STEPS.update({name: s.steps for name, s in SMALL.items()})
DEFAULT_SWEEP = {name: (("modern", "industrial"), (0, 1)) for name in SMALL}  # the others: Spec's
#: The flow-matching transformer families: cfg and steps from their presets' sections, one sampler.
FLOW_ARCHES = tuple(arch for arch, e in registry.ENGINES.items() if e.flow)  # backend/engine/families/registry.py


def is_edit(config: str) -> bool:
    """An instruction-edit model (no ControlNet): its one case is ``edit``."""
    from ..core.edit import EDIT_ARCHES

    return config_arch(config) in EDIT_ARCHES


def cases_of(config: str) -> tuple:
    """The cases a config runs: an edit model's ``edit``, FLUX.2 Klein's ``whole-window``,
    the ControlNet families' ``full`` and ``early-depth``."""
    if is_edit(config):
        return (EDIT_CASE,)
    if registry.ENGINES[config_arch(config)].resolve == "references":
        return (WHOLE_WINDOW_CASE,)
    return ("full", "early-depth")


def picture_png(size: int) -> bytes:
    """The picture an edit config edits: a floor, a wall and a window, with some texture."""
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = (150, 150, 145)
    img[y > size * 0.6] = (160, 110, 70)
    img[(x > size * 0.55) & (x < size * 0.85) & (y > size * 0.15) & (y < size * 0.5)] = (90, 140, 220)
    img = (img.astype(np.int16) + ((x * 7 + y * 13) % 9 - 4)[..., None]).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def config_arch(config: str) -> str:
    """The engine arch a --config runs: ``tiny`` -> sd15, ``tiny-flux`` -> flux, ``sdxl`` -> sdxl."""
    return families.arch_of(config, config.removeprefix("tiny-").removeprefix("small-"))


def model_refs(config: str) -> dict:
    """References the random full-size models are registered under (never real ids)."""
    return {"base": f"archviz-bench/{config}-random-weights", "vae": f"archviz-bench/{config}-vae-random-weights",
            "depth": f"archviz-bench/{config}-controlnet-depth-random-weights",
            "lines": f"archviz-bench/{config}-controlnet-lines-random-weights",
            "union": f"archviz-bench/{config}-controlnet-union-random-weights"}


def make_plan(spec: Spec, case: str, steps: int | None = None, scales: dict | None = None, fast: bool = False):
    from ..backend.engine.sweep import build_plan
    from ..core import jobs as J
    from ..core.presets import load_presets

    job = job_dict(spec, case, steps, scales, fast)
    return build_plan(J.Job.from_dict(job), load_presets(include_user=False), "float32")


def job_dict(spec: Spec, case: str, steps: int | None = None, scales: dict | None = None, fast: bool = False) -> dict:
    """The job of one case as a client sends it (the plan's source, and the serve side's body)."""
    import base64

    if spec.config not in CONFIGS:
        raise ValueError(f"--config: unknown {spec.config!r} (choose from {', '.join(CONFIGS)})")
    if case not in cases_of(spec.config):
        raise ValueError(f"--cases: {case!r} does not apply to {spec.config} (its cases: "
                         f"{', '.join(cases_of(spec.config))})")
    if is_edit(spec.config):
        from ..core.edit import edit_styles

        model = {"family": spec.config} if spec.config.startswith("tiny") else {
            "family": config_arch(spec.config), "base": model_refs(spec.config)["base"]}
        return {"model": model, "controls": [], "styles": edit_styles([EDIT_TEXT], list(spec.styles)),
                "seeds": list(spec.seeds), "width": spec.size, "height": spec.size, "steps": steps or spec.steps,
                "init_image": base64.b64encode(picture_png(spec.size)).decode()}
    controls = []
    for kind, scale, start, end in CASES[case]:
        scale = (scales or {}).get(kind, scale)
        controls.append({"type": kind, "image": base64.b64encode(control_png(kind, spec.size)).decode(),
                         "scale": scale, "start": start, "end": end})
    if spec.config.startswith("tiny"):
        model = {"family": spec.config}
    else:
        refs, arch = model_refs(spec.config), config_arch(spec.config)  # small-<family>: that family's arch
        model = {"family": arch, "base": refs["base"], "controlnets": {"depth": refs["depth"],
                                                                       "lines": refs["lines"]}}
        if spec.config == "sdxl":
            model["vae"] = refs["vae"]
        if arch == "qwen":  # every unit runs the one union net
            model["controlnets"] = {"union": f"archviz-bench/{spec.config}-controlnet-union-random-weights"}
        if arch == "zimage":  # one union net for every unit
            model["controlnets"] = {"union": refs["depth"]}
        if arch == "flux":  # one union net (no modes) serves both units
            model["controlnets"] = {"depth": refs["union"], "lines": refs["union"]}
        if registry.ENGINES[arch].resolve == "references":  # no ControlNet: the controls are references
            del model["controlnets"]
    sampling = {"cfg": spec.cfg, "scheduler": spec.scheduler, "steps": steps or spec.steps}
    if config_arch(spec.config) in FLOW_ARCHES:  # cfg from the presets' family sections, one sampler
        sampling = {"steps": steps or spec.steps}
    if fast:  # the fast mode's own steps, cfg and sampler
        sampling = {"steps": steps} if steps else {}
    return {"model": model, "controls": controls, "styles": list(spec.styles), "seeds": list(spec.seeds),
            "width": spec.size, "height": spec.size, "fast": fast, **sampling}


# ---------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device) -> float:
    """Peak CUDA memory allocated since the last reset; on CPU the process' peak RSS."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def matmul_peak_tflops(device, n: int = 8192, iters: int = 50) -> float:
    """bf16 n x n x n matrix products on random data, timed with CUDA events."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    seconds = start.elapsed_time(end) / 1000
    del a, b
    return 2 * n**3 * iters / seconds / 1e12


def count_flops(engine, plan) -> dict:
    """FLOPs per row (one image, one CFG half) of one forward: UNet, ControlNet without
    its conditioning embedding, and the embedding of one control image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..backend.engine.runner import accept_precomputed_cond

    if plan.models.arch == "flux":
        from .configs_flux import count_flux_flops

        return count_flux_flops(engine, plan)
    base, nets = engine.load(plan.models)
    unet, net = base.value["unet"], nets[0].value
    dev, dtype = engine.device, unet.dtype
    x = torch.randn(2, 4, plan.height // 8, plan.width // 8, device=dev, dtype=dtype)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, device=dev, dtype=dtype)
    image = torch.rand(1, 3, plan.height, plan.width, device=dev, dtype=dtype)
    t = torch.tensor(500, device=dev)
    added = None
    if plan.models.arch == "sdxl":  # pooled text embedding + the six size/crop time ids
        pooled = base.value["text_encoder_2"].config.projection_dim
        added = {"text_embeds": torch.randn(2, pooled, device=dev, dtype=dtype),
                 "time_ids": torch.tensor([[plan.height, plan.width, 0, 0, plan.height, plan.width]] * 2,
                                          device=dev, dtype=dtype)}

    def flops(fn):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = fn()
        return counter.get_total_flops(), out

    accept_precomputed_cond(net)
    f_emb, cond = flops(lambda: net.controlnet_cond_embedding(image))
    f_cn, (down, mid) = flops(lambda: net(x, t, encoder_hidden_states=ctx, controlnet_cond=cond.expand(2, -1, -1, -1),
                                          added_cond_kwargs=added, return_dict=False))
    f_unet, _ = flops(lambda: unet(x, t, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                                   mid_block_additional_residual=mid, added_cond_kwargs=added, return_dict=False))
    return {"unet": f_unet / 2, "controlnet": f_cn / 2, "cond_embedding": f_emb}


def counted_flops(fn) -> float:
    """FLOPs of every op ``fn`` runs (torch's FlopCounterMode: matmuls, convolutions and
    attention, the CPU's flash-attention kernel counted as the GPU's), in one untimed run."""
    import torch
    from torch.utils import flop_counter

    def attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    cpu_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    extra = {cpu_attention: attention} if cpu_attention is not None else {}
    with torch.no_grad(), flop_counter.FlopCounterMode(display=False, custom_mapping=extra) as counter:
        fn()
    return float(counter.get_total_flops())


def use_layout(engine, modules, side: str) -> None:
    """Put the shared warm models in the layout ``side`` runs them in: as diffusers loads
    them for its sides (``loop``, ``batched``), the engine options' (channels_last, fused
    QKV) for ours and serve, as a server that keeps its models would have them."""
    if side in ("loop", "batched"):
        engine.restore_models(modules)
    else:
        engine._prepare_models(modules)


def side_flops(engine, plan, modules) -> dict:
    """The compute each side does for the case's images, counted (untimed): on a machine that
    is compute-bound, ``batched / ours`` bounds the ratio vs batched that doing less can give."""
    out = {}
    for name, batched in (("loop", False), ("batched", True)):
        use_layout(engine, modules, name)
        out[name] = counted_flops(lambda b=batched: run_baseline(engine, plan, batched=b))
    use_layout(engine, modules, "ours")
    out["ours"] = counted_flops(lambda: engine.generate(plan, plan.images))
    return out


def engine_flops(engine, fl: dict, n_nets: int) -> float:
    stats = engine.stats
    cn_rows = sum(v for k, v in stats.items() if k.startswith("controlnet"))
    embeds = n_nets if engine.options.cond_once else cn_rows
    denoiser_rows = stats["unet"] + stats["transformer"]
    return denoiser_rows * fl["unet"] + cn_rows * fl["controlnet"] + embeds * fl["cond_embedding"]


def baseline_flops(plan, images, fl: dict) -> float:
    rows = 1 if plan.models.arch == "flux" else 2  # FLUX.1: distilled guidance, no CFG halves
    per_step = rows * (fl["unet"] + len(plan.controls) * (fl["controlnet"] + fl["cond_embedding"]))
    return sum(plan.styles[i.style].steps * per_step for i in images)


def max_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def finite(images: dict) -> bool:
    return all(np.isfinite(v).all() for v in images.values())


# ---------------------------------------------------------------------------------------
# The two sides
# ---------------------------------------------------------------------------------------


def baseline_pipeline(engine, plan):
    """The family's diffusers pipeline over the same warm models, with the list of
    ControlNets (StableDiffusion(XL)ControlNetPipeline wraps it in a MultiControlNetModel,
    FluxControlNetPipeline gets a FluxMultiControlNetModel)."""
    from ..backend.engine.runner import make_scheduler

    base, nets = engine.load(plan.models)
    c = base.value
    denoiser = c["unet"] if "unet" in c else c["transformer"]
    engine.restore_models([denoiser, *[n.value for n in nets]])
    pipe = engine.helper_pipeline(plan.models.arch, c, [n.value for n in nets])
    pipe._archviz_nets = nets  # the zimage baseline builds its multi-net per call from them
    if registry.ENGINES[plan.models.arch].module == "sd":
        pipe.scheduler = make_scheduler(plan.styles[0].scheduler, c["scheduler_config"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipe_call(pipe, plan, items):
    """One pipeline call for ``items`` (all of one sampling): one prompt and one generator
    per image, the way a diffusers user batches a sweep."""
    import torch

    style = plan.styles[items[0].style]
    prompts = [plan.styles[i.style].prompt for i in items]
    generators = [torch.Generator("cpu").manual_seed(i.seed) for i in items]
    common = dict(num_inference_steps=style.steps, guidance_scale=style.cfg, height=plan.height, width=plan.width,
                  controlnet_conditioning_scale=[u.scale for u in style.units],
                  control_guidance_start=[u.start for u in style.units],
                  control_guidance_end=[u.end for u in style.units],
                  generator=generators if len(items) > 1 else generators[0], output_type="np")
    images = [c.image for c in plan.controls]
    if plan.init is not None and plan.styles[0].edit is not None:  # instruction edits: the picture, no nets
        from ..backend.engine.families.flux import Flux

        common = {k: v for k, v in common.items() if not k.startswith(("control", "guidance"))}
        one = len(items) == 1
        if plan.models.arch == "kontext":
            out = pipe(prompt=prompts[0] if one else prompts, image=plan.init.image, guidance_scale=style.cfg,
                       max_area=plan.width * plan.height, _auto_resize=False,
                       max_sequence_length=Flux.max_sequence_length({"tokenizer_2": pipe.tokenizer_2}), **common)
        else:
            # QwenImageEditPipeline reads one picture per prompt (its processor puts the picture's
            # tokens in each prompt): a batch passes the picture once per prompt
            negatives = [plan.styles[i.style].negative for i in items]
            out = pipe(prompt=prompts[0] if one else prompts, image=plan.init.image if one else [plan.init.image] * len(items),
                       negative_prompt=negatives[0] if one else negatives, true_cfg_scale=style.cfg, **common)
    elif registry.ENGINES[plan.models.arch].resolve == "references":  # FLUX.2 Klein: the controls as its images
        common = {k: v for k, v in common.items() if not k.startswith(("control", "guidance"))}
        out = pipe(prompt=prompts if len(items) > 1 else prompts[0], image=images, guidance_scale=1.0, **common)
    elif plan.models.arch == "qwen":  # true CFG with the negative prompts (" " for an empty one)
        common.pop("guidance_scale")
        negatives = [plan.styles[i.style].negative or " " for i in items]
        out = pipe(prompts if len(items) > 1 else prompts[0], negative_prompt=negatives if len(items) > 1 else negatives[0],
                   true_cfg_scale=style.cfg, control_image=images, **common)
    elif plan.models.arch == "zimage":
        # ZImageControlNetPipeline takes one net and one image: several units (and windows)
        # through diffusers' multi-ControlNet rule around its own nets, made per call.
        from ..backend.engine.families.zimage import PipelineMultiNet, pipeline_control_latents

        nets = [n.value for n in pipe._archviz_nets]
        latents = [pipeline_control_latents(pipe, image, plan.width, plan.height, net)
                   for image, net in zip(images, nets)]
        pipe.controlnet = PipelineMultiNet(nets, latents, style.units, style.steps, pipe.transformer)
        common = {k: v for k, v in common.items() if not k.startswith(("control", "guidance"))}
        out = pipe(prompts if len(items) > 1 else prompts[0], control_image=images[0], guidance_scale=0.0,
                   controlnet_conditioning_scale=1.0, **common)
    elif plan.models.arch == "flux":
        from ..backend.engine.families.flux import Flux

        out = pipe(prompts if len(items) > 1 else prompts[0], control_image=images,
                   control_mode=[r.union_mode for r in plan.models.controlnets],
                   max_sequence_length=Flux.max_sequence_length({"tokenizer_2": pipe.tokenizer_2}), **common)
    else:
        negatives = [plan.styles[i.style].negative or "" for i in items]
        out = pipe(prompts if len(items) > 1 else prompts[0],
                   negative_prompt=(negatives if len(items) > 1 else negatives[0]) or None, image=images, **common)
    return [np.asarray(a, dtype=np.float32) for a in out.images]


def run_baseline(engine, plan, images=None, batched: bool = False) -> dict:
    """The seeds' loop (one pipeline call per (style, seed)) or diffusers batched (one call
    per sampling group with the lists of prompts and generators)."""
    pipe = baseline_pipeline(engine, plan)
    items = list(images or plan.images)
    out = {}
    if not batched:
        for item in items:
            out[item.index] = _pipe_call(pipe, plan, [item])[0]
        return out
    groups: dict[tuple, list] = {}
    for item in items:
        groups.setdefault(plan.styles[item.style].sampling_key(), []).append(item)
    for group in groups.values():
        for item, array in zip(group, _pipe_call(pipe, plan, group)):
            out[item.index] = array
    return out


def timed(device, fn, repeats: int = 1):
    """(value, fastest seconds of ``repeats`` runs, peak memory GB)."""
    best = None
    for _ in range(max(1, repeats)):
        sync(device)
        reset_peak(device)
        t0 = time.perf_counter()
        value = fn()
        sync(device)
        seconds = time.perf_counter() - t0
        best = seconds if best is None else min(best, seconds)
    return value, best, peak_gb(device)


def dynamo_graphs() -> int:
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return 0
    return int(counters["stats"]["unique_graphs"])


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def build_engine(spec: Spec):
    import torch

    from ..backend.engine.runner import Engine

    engine = Engine(spec.device)
    plan = make_plan(spec, spec.cases[0], steps=1)  # also refuses an unknown config
    if spec.config in SMALL:
        build_small_config(spec, engine, plan)
    elif not spec.config.startswith("tiny"):
        from . import configs_flux, configs_qwen, configs_zimage
        from .configs import build_random

        t0 = time.perf_counter()
        if spec.config == "qwen":
            comps, nets = configs_qwen.build_random(engine.device, engine.cache.dtype_for("qwen"))
            nets = nets * len(plan.models.controlnets)  # the same union net for every unit
        elif spec.config == "zimage":
            comps, nets = configs_zimage.build_random(engine.device, engine.cache.dtype_for("zimage"))
        elif spec.config == "flux":
            comps, nets = configs_flux.build_random_flux(engine.device, engine.cache.dtype_for("flux"))
            nets = nets * len(plan.controls)  # the same union net for every unit
        else:
            comps, nets = build_random(spec.config, engine.device, engine.dtype)
        engine.adopt(plan.models, comps, nets)
        say(f"built {CONFIGS[spec.config].split(', random')[0]} (random weights) in {time.perf_counter() - t0:.1f}s")
    torch.manual_seed(0)
    return engine


def build_small_config(spec: Spec, engine, plan) -> None:
    """small-<family>: the family's tiny text encoders, tokenizers, VAE and scheduler (loaded
    from the tiny store like any tiny model), the small denoiser and nets built in memory."""
    from dataclasses import replace

    from .configs_small import build_small, forward_ms

    t0 = time.perf_counter()
    small = SMALL[spec.config]
    tiny_plan = make_plan(replace(spec, config=small.tiny, size=64), spec.cases[0], steps=1)
    base, nets = engine.load(tiny_plan.models)
    arch = config_arch(spec.config)
    comps, small_nets = build_small(spec.config, base.value, [n.value for n in nets], len(plan.controls),
                                    engine.device, engine.cache.dtype_for(arch))
    engine.adopt(plan.models, comps, small_nets)
    denoiser = comps["unet" if "unet" in comps else "transformer"]
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    info = {"denoiser": type(denoiser).__name__, "denoiser_params_m": count(denoiser),
            "net": type(small_nets[0]).__name__ if small_nets else None,
            "net_params_m": count(small_nets[0]) if small_nets else 0.0,
            "forward_ms": forward_ms(denoiser, spec.size) if engine.device.type != "meta" else None}
    engine._bench_small = info
    fwd = f"; one denoiser forward of one image at {spec.size} px: {info['forward_ms']:.1f} ms" \
        if info["forward_ms"] is not None else ""
    net = f"{info['net']} {info['net_params_m']:.1f} M" if small_nets else "no ControlNet"
    say(f"built {spec.config}: {info['denoiser']} {info['denoiser_params_m']:.1f} M, {net} "
        f"parameters (random weights), {small.tiny} text encoders and VAE, in "
        f"{time.perf_counter() - t0:.1f}s{fwd}")


def header(spec: Spec, engine) -> dict:
    import diffusers
    import torch

    dev = engine.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    info = {"config": spec.config, "device": dev.type, "device_name": name, "dtype": engine.dtype_name,
            "torch": torch.__version__, "diffusers": diffusers.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "repeats": spec.repeats, "styles": list(spec.styles), "seeds": list(spec.seeds), "size": spec.size,
            "steps": spec.steps, "cfg": spec.cfg, "scheduler": spec.scheduler,
            "images": len(spec.styles) * len(spec.seeds), "defaults": engine.options.as_dict()}
    say(f"archviz bench: config {spec.config}, {dev.type} ({name}), {engine.dtype_name}, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, {info['threads']} torch threads, median of {spec.repeats} timed run(s) "
        f"per side (each side warmed up untimed; order alternates)")
    if getattr(engine, "_bench_small", None):
        info["small"] = engine._bench_small
    info["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if info["load_average"]:
        say("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in info["load_average"]))
    sampling = {"flux": "flow_euler, distilled guidance from the presets' [flux] sections",
                "qwen": "flow_euler, true CFG with the negative prompts from the presets' [qwen] sections",
                "zimage": "flow_euler, no CFG (Z-Image-Turbo), the presets' [zimage] prompts",
                "klein": "flow_euler, step- and guidance-distilled (no CFG), the control images as its reference "
                         "images"}.get(
        config_arch(spec.config), f"{spec.scheduler}, cfg {spec.cfg}")
    if is_edit(spec.config):
        sampling = "flow_euler, the edit model's own steps and guidance (core/edit.py)"
    say(f"sweep: {len(spec.styles)} styles x {len(spec.seeds)} seeds = {info['images']} images, "
        f"{spec.size}x{spec.size}, {spec.steps} steps, {sampling}")
    for case in spec.cases:
        say(f"case {case}: " + (", ".join(f"{k} {s:g} window {a:g}-{b:g}" for k, s, a, b in CASES[case]) or
                                f"no ControlNet: the picture edited by {EDIT_TEXT!r} in each style"))
    on = [k for k, v in engine.options.as_dict().items() if v is True]
    say(f"engine defaults: {', '.join(on)}; sdpa {engine.options.sdpa_backend}; "
        f"vae_batch {engine.options.vae_batch or 'auto'}")
    return info


def run(spec: Spec) -> dict:
    with edit_picture_area(spec):
        return _run(spec)


@contextmanager
def edit_picture_area(spec: Spec):
    """``small-qwen-edit``: Qwen-Image-Edit reads the picture at about 1 MP whatever the
    output size (diffusers' pipeline and ours both size it with diffusers'
    ``calculate_dimensions(1024 * 1024, ratio)``), so at 256 px the picture's 4096 tokens,
    not the 256 of the output, set the cost, and a CPU run takes minutes. For this config
    both sides read it at the output's area instead, through that one function, so they
    stay like for like. Nothing changes outside the bench run."""
    if spec.config != "small-qwen-edit":
        yield
        return
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit

    real = edit.calculate_dimensions
    edit.calculate_dimensions = lambda target_area, ratio: real(spec.size * spec.size, ratio)
    say(f"the picture is read at {spec.size}x{spec.size} by both sides (the model's own 1024x1024 is a "
        "minutes-long CPU run; bench/runner.py edit_picture_area)")
    try:
        yield
    finally:
        edit.calculate_dimensions = real


def _run(spec: Spec) -> dict:
    import torch

    if spec.threads:
        torch.set_num_threads(spec.threads)
    quiet_libraries()
    report: dict = {"rows": [], "sides": [], "cases": {}}
    engine = build_engine(spec)
    report["header"] = header(spec, engine)
    dev = engine.device
    use_flops = spec.flops if spec.flops is not None else dev.type == "cuda"
    if use_flops and config_arch(spec.config) in ("qwen", "zimage"):  # count_flops knows the UNet families and FLUX
        say(f"FLOPs: not counted for {spec.config} (no %-of-peak column)")
        use_flops = False

    if dev.type == "cuda":
        report["matmul_peak_tflops"] = matmul_peak_tflops(dev)
        say(f"measured bf16 matmul peak (8192^3, random data): {report['matmul_peak_tflops']:.1f} TFLOP/s")
    peak = report.get("matmul_peak_tflops")

    plans = {case: make_plan(spec, case) for case in spec.cases}
    warm = {case: make_plan(spec, case, steps=2) for case in spec.cases}
    fl = None
    if use_flops:
        fl = count_flops(engine, plans[spec.cases[0]])
        report["flops_per_row"] = fl
        say(f"FLOPs per image row per forward: {'transformer' if 'flux' in spec.config else 'UNet'} "
            f"{fl['unet'] / 1e9:.1f} G, ControlNet {fl['controlnet'] / 1e9:.1f} G "
            f"+ conditioning embedding {fl['cond_embedding'] / 1e9:.1f} G")

    def rate_fields(flops, seconds):
        if flops is None:
            return {}
        tf = flops / seconds / 1e12
        return {"tflops": tf, "peak_fraction": (tf / peak) if peak else None}

    say()
    say(f"{'side':<9} {'case':<12} {'images':>6} {'median s':>8} {'min s':>7} {'max s':>7} {'images/s':>9} "
        f"{'peak GB':>8} {'TFLOP/s':>8} {'%peak':>6} {'max diff':>9}")

    def side_line(entry, diff):
        tf = f"{entry['tflops']:8.1f}" if entry.get("tflops") is not None else f"{'-':>8}"
        pf = f"{100 * entry['peak_fraction']:5.1f}%" if entry.get("peak_fraction") is not None else f"{'-':>6}"
        d = f"{diff:9.2e}" if diff is not None else f"{'-':>9}"
        say(f"{entry['side']:<9} {entry['case']:<12} {entry['images']:>6} {entry['seconds']:8.2f} "
            f"{entry['seconds_min']:7.2f} {entry['seconds_max']:7.2f} {entry['images_per_s']:9.3f} "
            f"{entry['peak_gb']:8.2f} {tf} {pf} {d}")

    baseline_images = {"loop": {}, "batched": {}}
    ours_images = {}
    server = None
    if spec.serve:
        from .serve_side import LocalServer

        server = LocalServer(engine)
    try:
        for case in spec.cases:
            measure_case(spec, engine, case, plans[case], warm[case], server, fl, rate_fields, baseline_images,
                         ours_images, report, side_line)
    finally:
        if server is not None:
            server.close()

    say()
    for case in spec.cases:
        o = next(s for s in report["sides"] if s["side"] == "ours" and s["case"] == case)
        summary = {"images_per_s": o["images_per_s"]}
        parts = [f"ours {o['images_per_s']:.3f} images/s"]
        for side in ("loop", "batched"):
            b = next((s for s in report["sides"] if s["side"] == side and s["case"] == case), None)
            if b:
                ratio = o["images_per_s"] / b["images_per_s"]
                summary[f"ratio_vs_{side}"] = ratio
                summary[f"max_diff_vs_{side}"] = o["max_diff_vs"][side]
                parts.append(f"ratio vs {side} {ratio:.2f}x (max pixel diff {o['max_diff_vs'][side]:.2e})")
        serve = next((s for s in report["sides"] if s["side"] == "serve" and s["case"] == case), None)
        if serve:
            summary["serve_ratio"] = serve["images_per_s"] / o["images_per_s"]
            summary["serve_max_diff_8bit"] = serve["max_diff"]
            summary["serve_outside_share"] = serve["outside_share"]
            summary["serve_paired_ratio"] = serve["paired_ratio"]
            summary["worker_engine_ratio"] = serve["worker_ratio"]
            parts.append(f"serve vs in-process {summary['serve_ratio']:.2f}x (medians; in the same serve run the "
                         f"engine's own work took {100 * (1 - serve['outside_share']):.1f}% of the job, HTTP, "
                         f"planning, PNG and metadata {100 * serve['outside_share']:.1f}% ({serve['images_s']:.2f} s of "
                         f"it writing the images); 8-bit pixel diff "
                         f"{serve['max_diff']:.2e}); round by round: serve vs in-process {serve['paired_ratio']:.2f}x "
                         f"({min(serve['paired_ratios']):.2f}-{max(serve['paired_ratios']):.2f}), the engine's call in "
                         f"the server's worker vs in-process {serve['worker_ratio']:.2f}x "
                         f"({min(serve['worker_ratios']):.2f}-{max(serve['worker_ratios']):.2f})")
        counted = report.get("flops_counted", {}).get(case)
        if counted:
            summary["flops_counted"] = counted
            bound = ", ".join(f"{side} {counted[side] / 1e9:.1f} G ({counted[side] / counted['ours']:.2f}x ours)"
                              for side in ("loop", "batched"))
            parts.append(f"compute counted: ours {counted['ours'] / 1e9:.1f} GFLOP, {bound}")
        if "ratio_vs_loop" in summary:  # the names earlier reports used
            summary.update(speed_ratio=summary["ratio_vs_loop"], max_diff=o["max_diff"])
        if o.get("tflops") is not None:
            summary.update(tflops=o["tflops"], peak_fraction=o.get("peak_fraction"))
            pct = f" = {100 * o['peak_fraction']:.1f}% of matmul peak" if o.get("peak_fraction") else ""
            parts.append(f"UNet+ControlNet {o['tflops']:.1f} TFLOP/s in the denoising loop{pct}")
        parts.append(f"denoise {o['denoise_s']:.2f}s, decode {o['decode_s']:.2f}s, prompts {o['encode_s']:.2f}s")
        report["cases"][case] = summary
        say(f"{case}: " + "; ".join(parts))

    if spec.overhead and dev.type != "meta":
        case = spec.row_case if spec.row_case in plans else spec.cases[0]
        report["overhead"] = overhead_row(spec, engine, case, plans[case])

    rows = spec.rows if spec.rows is not None else (CUDA_ROWS if dev.type == "cuda" else CPU_ROWS)
    if rows:
        run_rows(spec, engine, rows, plans, warm, ours_images, report, fl, peak)

    if spec.capture:
        report["capture"] = capture_timing(spec.capture_long_side)
    return report

def measure_case(spec, engine, case, plan, warm_plan, server, fl, rate_fields, baseline_images, ours_images,
                 report, side_line):
    """One case: loop, batched, ours (and serve) each warmed up untimed, then ``spec.repeats``
    rounds with the order of the sides reversed every other round (bench/timing.py)."""
    from ..backend.engine.families import family_for

    dev = engine.device
    peaks: dict[str, float] = {}
    base, nets = engine.load(plan.models)
    modules = family_for(plan.models.arch).modules(base.value, [n.value for n in nets])

    def side(name, warm, run):
        def before():  # the sides share the warm models: each in its own layout (untimed)
            use_layout(engine, modules, name)
            sync(dev)
            reset_peak(dev)

        def after():
            sync(dev)
            peaks[name] = max(peaks.get(name, 0.0), peak_gb(dev))
        return timing.Side(name, warm, run, before=before, after=after)

    sides = []
    if spec.baseline:
        for name, batched in (("loop", False), ("batched", True)):  # warm-up: kernels, allocator
            sides.append(side(name, lambda b=batched: run_baseline(engine, warm_plan, warm_plan.images[:2], b),
                              lambda b=batched: run_baseline(engine, plan, batched=b)))

    def ours():
        images = engine.generate(plan, plan.images)
        return images, dict(engine.timings), dict(engine.stats)

    sides.append(side("ours", lambda: engine.generate(warm_plan, warm_plan.images), ours))
    if server is not None:
        job, warm_job = job_dict(spec, case), job_dict(spec, case, steps=warm_plan.styles[0].steps)
        sides.append(side("serve", lambda: server.run(warm_job), lambda: server.run(job)))
    got = timing.measure(sides, spec.repeats)
    report.setdefault("orders", {})[case] = timing.orders([s.name for s in sides], spec.repeats)
    if spec.baseline and spec.config in SMALL:  # compute-bound CPU configs: the work behind the ratios
        report.setdefault("flops_counted", {})[case] = side_flops(engine, plan, modules)

    def entry(name, n, **extra):
        t = got[name]
        e = {"side": name, "case": case, "images": n, **t.summary(), "images_per_s": n / t.median,
             "peak_gb": peaks.get(name, 0.0), **extra}
        report["sides"].append(e)
        return e

    for name in ("loop", "batched"):
        if name in got:
            images = got[name].value
            baseline_images[name][case] = images
            e = entry(name, len(images), finite=finite(images),
                      **rate_fields(baseline_flops(plan, plan.images, fl) if fl else None, got[name].median))
            side_line(e, None)
            if not e["finite"]:
                say(f"  warning: the {name} baseline's images hold NaN/inf")
    images, timings, stats = got["ours"].value
    ours_images[case] = images
    diffs = {name: max_diff(images, baseline_images[name][case])
             for name in ("loop", "batched") if case in baseline_images[name]}
    engine.stats = Counter(stats)  # engine_flops reads the forwards of the last ours run
    e = entry("ours", len(images), denoise_s=timings["denoise"], decode_s=timings["decode"],
              encode_s=timings["encode"], forwards=stats, max_diff=max(diffs.values()) if diffs else None,
              max_diff_vs=diffs, finite=finite(images),
              **rate_fields(engine_flops(engine, fl, len(plan.controls)) if fl else None, timings["denoise"]))
    side_line(e, e["max_diff"])
    if not e["finite"]:
        say("  warning: our images hold NaN/inf")
    if "serve" in got:
        from ..backend.engine.runner import to_uint8

        pngs = server.images(plan, got["serve"].value)
        diff = max(float(np.abs(pngs[k].astype(np.int16) - to_uint8(images[k]).astype(np.int16)).max()) / 255
                   for k in images)
        status = got["serve"].value  # the last serve run: the engine's call against the job's wall time
        # Round by round (the two sides ran next to each other, bench/timing.py): the job's
        # wall time and the engine's call inside the server's worker, each against the
        # in-process call of the same round. A shared machine's slow spells move both sides
        # of a round alike, so these medians are steadier than the ratio of the medians.
        ours_t, serve_t = got["ours"].times, got["serve"].times
        worker_t = server.generate_times[-len(serve_t):]
        paired = [o / s for o, s in zip(ours_t, serve_t)]
        worker = [o / g for o, g in zip(ours_t, worker_t)]
        side_line(entry("serve", len(pngs), max_diff=diff, wall_s=status["wall_s"], generate_s=status["generate_s"],
                        images_s=status["images_s"], outside_share=1 - status["generate_s"] / status["wall_s"],
                        paired_ratios=paired, paired_ratio=statistics.median(paired),
                        worker_ratios=worker, worker_ratio=statistics.median(worker)), diff)


def overhead_row(spec, engine, case, plan) -> dict:
    """Time per denoising step outside the denoiser and ControlNet forwards, as a share of
    the step (forward hooks), and where it goes (torch.profiler on a 3-step run)."""
    from . import overhead

    row = overhead.measure(engine, plan, make_plan(spec, case, steps=min(3, spec.steps)))
    row["case"] = case
    say()
    say(f"overhead ({case}, previews off): {100 * row['share']:.1f}% of each step outside the denoiser and "
        f"ControlNet forwards ({row['outside_ms_per_step']:.2f} ms of {row['step_ms']:.1f} ms per step; "
        f"{row['steps']} steps, {row['forwards']} forwards)")
    say("  where (profile): " + ", ".join(f"{w['what']} {100 * w['share']:.0f}%" for w in row["where"]))
    return row


def run_rows(spec, engine, rows, plans, warm, ours_images, report, fl, peak):
    """Each option flipped alone from the defaults, on one case."""
    dev = engine.device
    case = spec.row_case if spec.row_case in plans else spec.cases[0]
    plan, ref = plans[case], ours_images[case]
    defaults = engine.options
    base = next(s for s in report["sides"] if s["side"] == "ours" and s["case"] == case)
    say()
    say(f"optimisation rows (case {case}; each row flips one option from the defaults; * changes images):")
    say(f"{'row':<20} {'setting':<36} {'images/s':>9} {'vs default':>10} {'denoise s':>9} {'TFLOP/s':>8} "
        f"{'warm-up s':>9} {'max diff':>9}  note")
    say(f"{'defaults':<20} {'':<36} {base['images_per_s']:9.3f} {1.0:9.2f}x {base['denoise_s']:9.2f} "
        f"{_tf(base.get('tflops'))} {base['warmup_s']:9.1f} {0.0:9.2e}")
    for name in rows:
        if name in JOB_ROWS:
            report["rows"].append(job_row(spec, engine, name, case, plan, warm, ref, base))
            continue
        if name not in ROWS:
            say(f"{name:<20} unknown row (known: {', '.join((*ROWS, *JOB_ROWS))})")
            continue
        if name in CUDA_ONLY and dev.type != "cuda":
            continue
        changes = ROWS[name](defaults)
        setting = ", ".join(f"{k}={v}" for k, v in changes.items())
        entry = {"row": name, "changes": changes}
        try:
            engine.options = defaults.replace(**changes)
            entry["changes_images"] = list(engine.options.image_changes())
            graphs0 = dynamo_graphs()
            t0 = time.perf_counter()
            engine.generate(warm[case], warm[case].images)
            warmup = time.perf_counter() - t0
            images, seconds, mem = timed(dev, lambda: engine.generate(plan, plan.images), spec.repeats)
            entry.update(images_per_s=len(images) / seconds, seconds=seconds, warmup_s=warmup, peak_gb=mem,
                         denoise_s=engine.timings["denoise"], vs_default=(len(images) / seconds) / base["images_per_s"],
                         max_diff=max_diff(images, ref), finite=finite(images))
            if fl:
                entry["tflops"] = engine_flops(engine, fl, len(plan.controls)) / engine.timings["denoise"] / 1e12
            note = []
            if engine.options.compile:
                # Other windows and scales must reuse the compiled graphs.
                graphs1 = dynamo_graphs()
                other = next((c for c in plans if c != case), None)
                if other:
                    engine.generate(plans[other], plans[other].images)
                engine.generate(make_plan(spec, case, steps=3, scales={"depth": 0.7, "lines": 0.35}), plan.images)
                entry["compiled_graphs"] = graphs1 - graphs0
                entry["recompiles_on_window_or_scale_change"] = dynamo_graphs() - graphs1
                note.append(f"{entry['compiled_graphs']} graphs, {entry['recompiles_on_window_or_scale_change']} "
                            "recompiles when windows/scales change")
            if not entry["finite"]:
                note.append("NaN/inf in images")
            entry["note"] = "; ".join(note)
            say(f"{name:<20} {setting[:36]:<36} {entry['images_per_s']:9.3f} {entry['vs_default']:9.2f}x "
                f"{entry['denoise_s']:9.2f} {_tf(entry.get('tflops'))} {warmup:9.1f} {entry['max_diff']:9.2e}  "
                f"{entry['note']}")
        except Exception as exc:  # noqa: BLE001 - one option failing must not lose the other rows
            entry["error"] = f"{type(exc).__name__}: {exc}"
            say(f"{name:<20} {setting[:36]:<36} failed: {entry['error'][:200]}")
        finally:
            engine.options = defaults
            if dev.type == "cuda":
                import torch

                torch.cuda.empty_cache()
        report["rows"].append(entry)


def job_row(spec, engine, name, case, plan, warm, ref, base) -> dict:
    """``previews-every-4``: the sweep with a preview of every image every 4 steps (PNG made
    and dropped), its images/s against the defaults and its max pixel difference (must be
    0). ``fast*``: the family's fast mode (labelled: other steps, sampler, LoRA or base),
    its time per image against the exact path's."""
    dev = engine.device
    entry = {"row": name}
    try:
        if name == "previews-every-4":
            setting = "a preview PNG every 4 steps"
            seen = []
            engine.generate(warm[case], warm[case].images, on_preview=lambda *a: None, preview_every=4)
            images, seconds, mem = timed(dev, lambda: engine.generate(
                plan, plan.images, on_preview=lambda item, step, steps, png: seen.append(len(png)),
                preview_every=4), spec.repeats)
            t = engine.timings  # of the last timed run; the previews run inside the denoising loop
            share = t["preview"] / max(1e-9, t["denoise"] + t["decode"] + t["encode"])
            entry.update(changes_images=[], previews=len(seen) // max(1, spec.repeats),
                         preview_s=t["preview"], preview_share=share, preview_method=engine._last_preview_method)
            note = (f"{entry['previews']} previews ({entry['preview_method']}): {entry['preview_s']:.3f} s, "
                    f"{100 * share:.1f}% of the run")
        else:
            setting = "fast mode, per image vs exact"
            fast_plan = make_plan(spec, case, fast=True)
            fast_warm = make_plan(spec, case, steps=1, fast=True)
            if not spec.config.startswith("tiny"):
                adopt_fast(spec, engine, fast_plan)
                adopt_fast(spec, engine, fast_warm)
            style = fast_plan.styles[0]
            setting = f"fast: {fast_plan.fast['mode']}, {style.steps} steps, cfg {style.cfg:g}"
            engine.generate(fast_warm, fast_warm.images)
            images, seconds, mem = timed(dev, lambda: engine.generate(fast_plan, fast_plan.images), spec.repeats)
            entry.update(changes_images=["fast"], fast=fast_plan.fast, steps=style.steps, cfg=style.cfg)
            note = f"{fast_plan.fast['mode']}: {style.steps} steps vs {plan.styles[0].steps}"
        per_image, exact_per_image = seconds / len(images), 1.0 / base["images_per_s"]
        entry.update(images_per_s=len(images) / seconds, seconds=seconds, peak_gb=mem,
                     denoise_s=engine.timings["denoise"], vs_default=exact_per_image / per_image,
                     max_diff=max_diff(images, ref), finite=finite(images), note=note)
        say(f"{name:<20} {setting[:36]:<36} {entry['images_per_s']:9.3f} {entry['vs_default']:9.2f}x "
            f"{entry['denoise_s']:9.2f} {_tf(None)} {'-':>9} {entry['max_diff']:9.2e}  {note}")
    except Exception as exc:  # noqa: BLE001 - one row failing must not lose the other rows
        entry["error"] = f"{type(exc).__name__}: {exc}"
        say(f"{name:<20} {'':<36} failed: {entry['error'][:200]}")
    return entry


def adopt_fast(spec, engine, plan) -> None:
    """Full-size random-weight configs: a random LoRA of the LCM-LoRA's shape on the random
    UNet (SD 1.5 / SDXL) under the plan's LoRA id; FLUX.1 fast needs a random schnell base,
    which the bench does not build yet (the row says so)."""
    import tempfile
    from pathlib import Path

    from ..backend.models import tiny
    from ..backend.models.tiny import fast as tiny_fast

    if plan.models.arch == "flux":
        raise RuntimeError("fast mode on the full-size random FLUX.1 config needs a random schnell base (not built "
                           "by the bench); measure it with --config tiny-flux or with the real FLUX.1-schnell")
    base, _nets = engine.load(replace_lora(plan.models, None))
    folder = getattr(engine, "_bench_lora", None)
    if folder is None:
        folder = engine._bench_lora = tempfile.mkdtemp(prefix="archviz-bench-lora-")
        tiny_fast.build_lcm_lora(Path(folder), plan.models.arch, tiny, unet=base.value["unet"], rank=64, std=0.01)
    plan.models = replace_lora(plan.models, folder)


def replace_lora(models, lora):
    from dataclasses import replace

    return replace(models, lora=lora)


def _tf(value) -> str:
    return f"{value:8.1f}" if value is not None else f"{'-':>8}"


def quiet_libraries() -> None:
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


# ---------------------------------------------------------------------------------------
# Capture side
# ---------------------------------------------------------------------------------------


def capture_timing(long_side: int = 512, timeout: float = 300) -> dict:
    """Control passes of the example scene, timed in a child process (bpy and torch stay
    apart; Cycles gets the machine's cores). Not run when bpy is not installed."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("bpy") is None:
        say("capture: skipped (bpy is not installed in this interpreter)")
        return {"skipped": "bpy not installed"}
    cmd = [sys.executable, "-m", "archviz_controlnet.bench.capture_timing", "--long-side", str(long_side)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    line = next((l for l in out.stdout.splitlines() if l.startswith("{")), None)
    if out.returncode != 0 or line is None:
        say(f"capture: failed ({out.stderr.strip()[-500:]})")
        return {"error": out.stderr.strip()[-2000:]}
    result = json.loads(line)
    say(f"capture: control passes (depth, lines, normal, seg) of the example interior at {result['width']}x"
        f"{result['height']}: first {result['first_s']:.2f}s, then {result['warm_s']:.2f}s (median of "
        f"{result['repeats']}) on {result['threads']} render threads; target <= 3 s")
    return result


def dump(report: dict, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1, default=str)

