"""``archviz bench --config tiny-wan | wan``: the video engine (backend/engine/video.py) against
diffusers' ``WanVACEPipeline``, and the full-size Wan2.1 VACE FLOPs.

``tiny-wan`` (CPU, CI): every (style, seed) clip of one window made three ways, back to back
in one process, each the best of ``--repeats`` runs:

* ``loop``: the pipeline called once per (style, seed), a ``torch.Generator`` per seed;
* ``batched``: the pipeline's own batching: one call with the list of prompts, given the
  initial noise of the per-seed generators (``latents=``, from the pipeline's own
  ``prepare_latents`` with the list of generators; its ``generator`` argument takes no list
  for VACE). ``WanVACEPipeline`` in diffusers 0.42.1 refuses it ("Passing a list of prompts is
  not yet supported"; ``num_videos_per_prompt`` > 1 is refused too): the bench says so and
  shows no batched row, and runs it as soon as a diffusers takes it;
* ``ours``: the engine's window runner (embeddings once per style, the control video encoded
  once, the seeds batched), as a video job runs it.

It prints each side's time and the ratios, with the largest pixel difference (0..255, the
uint8 frames the clips are written as) of ours against each baseline.

``wan``: the Wan2.1-VACE-1.3B transformer (and the 14B's, for its memory profiles) built from
the published configs on the meta device (no memory, no weights), its parameters counted and
the FLOPs of one forward at a stated clip size counted with ``FlopCounterMode``: 81 frames at
832x480 by default (``--size`` sets the long side), 512 text tokens. A GPU timing of the full
model needs a GPU and the weights; this says what it would have to move.
"""

from __future__ import annotations

import json
import time

#: --config values this module runs (bench/cli.py hands them here)
VIDEO_CONFIGS = {
    "tiny-wan": "the offline tiny Wan VACE video models: engine vs WanVACEPipeline per seed and batched (CPU, CI)",
    "wan": "Wan2.1-VACE-1.3B (and 14B) transformer from the real configs on the meta device: parameters and FLOPs "
           "per step of an 81-frame 832x480 clip (no GPU needed)",
}

#: Wan-AI/Wan2.1-VACE-1.3B-diffusers transformer/config.json (the values diffusers' conversion
#: of the original checkpoint writes): 30 blocks of width 1536 (12 heads of 128), a VACE block
#: on every second one, 96 VACE input channels (2 x 16 video latents + the 8x8 mask folded into 64).
WAN_VACE_1_3B = {
    "patch_size": [1, 2, 2], "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-06, "added_kv_proj_dim": None,
    "vace_layers": list(range(0, 30, 2)), "vace_in_channels": 96,
}
#: Wan-AI/Wan2.1-VACE-14B-diffusers: 40 blocks of width 5120 (40 heads), VACE blocks on every fifth.
WAN_VACE_14B = dict(WAN_VACE_1_3B, num_attention_heads=40, ffn_dim=13824, num_layers=40,
                    vace_layers=list(range(0, 40, 5)))
TEXT_TOKENS = 512  # the pipeline's max_sequence_length


def add_video_configs(parser) -> None:
    """Add this module's configs to ``archviz bench --config`` (its choices and help)."""
    for action in parser._actions:
        if "--config" in action.option_strings:
            action.choices = (*action.choices, *VIDEO_CONFIGS)
            action.help = "; ".join(filter(None, [action.help, *(f"{k}: {v}" for k, v in VIDEO_CONFIGS.items())]))


def run(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    _quiet()
    report = bench_tiny_wan(args) if args.config == "tiny-wan" else count_wan(args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1, default=str)
    return 0


def _say(line: str = "") -> None:
    print(line, flush=True)


def _quiet() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()


# ------------------------------------------------------------------------------ tiny-wan
def control_video(n: int, size: int):
    """``n`` frames of a room-like inverse depth seen by a camera that dollies sideways (the
    back wall's box slides, the floor stays): PIL RGB images."""
    import numpy as np
    from PIL import Image

    y = np.linspace(0, 1, size)[:, None] * np.ones((1, size))
    frames = []
    for i in range(n):
        d = (40 + 200 * y).astype(np.uint8)
        x0 = size // 4 + (i * size) // (4 * max(1, n - 1))
        d[size // 4: size // 2, x0: x0 + size // 2] = 30
        frames.append(Image.fromarray(np.stack([d] * 3, axis=-1)))
    return frames


def _styles(names, family):
    from ..core.presets import load_presets

    presets = load_presets()
    out = []
    for name in names:
        if name not in presets:
            raise SystemExit(f"archviz bench: --styles: unknown preset {name!r}")
        p = presets[name].for_family("flux")  # Wan reads the natural-language prompts, as the video jobs do
        out.append({"name": name, "prompt": p.prompt, "negative": p.negative or "", "steps": family.steps,
                    "cfg": family.cfg})
    return out


def _timed(device, fn, repeats):
    import torch

    best, value = None, None
    for _ in range(max(1, repeats)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        value = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        best = seconds if best is None else min(best, seconds)
    return value, best


def bench_tiny_wan(args) -> dict:
    import diffusers
    import numpy as np
    import torch
    from PIL import Image

    from ..backend.engine import video as VE
    from ..backend.engine.runner import Engine
    from ..core import video as V

    family = V.video_family("tiny-wan")
    engine = VE.VideoEngine(Engine(device=args.device))
    dev = engine.device
    pipe = engine.pipeline(family)
    size = args.size or family.long_side
    steps = args.steps if args.steps is not None else 10
    n = family.window
    styles = _styles(args.styles, family)
    for s in styles:
        s["steps"] = steps
    seeds = list(args.seeds)
    controls = control_video(n, size)
    white = Image.new("RGB", (size, size), (255, 255, 255))
    mask = [white] * n
    text_len = engine.text_length(family)
    clips = [(s, seed) for s in styles for seed in seeds]
    _say(f"archviz bench: config tiny-wan, {dev.type}, {str(engine.dtype).replace('torch.', '')}, torch "
         f"{torch.__version__}, diffusers {diffusers.__version__}, {torch.get_num_threads()} torch threads, best of "
         f"{args.repeats} timed run(s)")
    _say(f"video: {len(styles)} styles x {len(seeds)} seeds = {len(clips)} clips of {n} frames, {size}x{size}, "
         f"{steps} steps, cfg {family.cfg:g}, UniPC flow shift {family.flow_shift:g}, control video: depth")

    def call(prompt, negative, **kw):
        return pipe(prompt=prompt, negative_prompt=negative, video=controls, mask=mask, height=size, width=size,
                    num_frames=n, num_inference_steps=steps, guidance_scale=family.cfg, max_sequence_length=text_len,
                    output_type="np", **kw).frames

    def loop():
        return [call(s["prompt"], s["negative"], generator=torch.Generator("cpu").manual_seed(seed))[0]
                for s, seed in clips]

    def batched():
        gens = [torch.Generator("cpu").manual_seed(seed) for _s, seed in clips]
        noise = pipe.prepare_latents(len(clips), pipe.transformer.config.in_channels, size, size, n, torch.float32,
                                     dev, gens, None)
        return list(call([s["prompt"] for s, _ in clips], [s["negative"] for s, _ in clips], latents=noise))

    job = V.VideoJob(family=family.name, styles=[s["name"] for s in styles], seeds=seeds, control_types=["depth"],
                     frames=list(range(n)), width=size, height=size, steps=steps, max_batch=args.max_batch
                     if getattr(args, "max_batch", None) else None)

    def ours():
        engine.stats.clear()
        engine._cond_cache = None  # each run encodes its control video, as a new job does
        out = []
        for s in styles:
            embeds = engine.encode_prompt(pipe, family, s["prompt"], s["negative"], s["cfg"])
            out.extend(engine.run_window(pipe, family, job, s, embeds, seeds, (0, n), {}, controls, None, None,
                                         lambda: False))
        return out

    loop_out = batched_out = None
    rows = []
    _say(f"{'side':<9} {'clips':>5} {'seconds':>8} {'clips/s':>8} {'frames/s':>9} {'max diff vs loop':>17}")
    call(styles[0]["prompt"], styles[0]["negative"], generator=torch.Generator("cpu").manual_seed(0))  # warm-up
    u8 = VE.to_uint8
    if not args.no_baseline:
        loop_out, t_loop = _timed(dev, loop, args.repeats)
        loop_u8 = [u8(np.asarray(c)) for c in loop_out]
        rows.append({"side": "loop", "clips": len(clips), "seconds": t_loop})
        _say(f"{'loop':<9} {len(clips):>5} {t_loop:8.2f} {len(clips) / t_loop:8.3f} {len(clips) * n / t_loop:9.2f} "
             f"{'-':>17}")
        try:
            batched_out, t_batched = _timed(dev, batched, args.repeats)
        except ValueError as exc:  # the pipeline cannot batch clips (see the module's docstring)
            refused = f"WanVACEPipeline (diffusers {diffusers.__version__}) refuses a batch: {exc}"
            rows.append({"side": "batched", "clips": 0, "unsupported": refused})
            _say(f"{'batched':<9} {'-':>5} {'-':>8} {'-':>8} {'-':>9} {'-':>17}  ({refused})")
        else:
            batched_u8 = [u8(np.asarray(c)) for c in batched_out]
            d = _max_diff(batched_u8, loop_u8)
            rows.append({"side": "batched", "clips": len(clips), "seconds": t_batched, "max_diff_vs_loop": d})
            _say(f"{'batched':<9} {len(clips):>5} {t_batched:8.2f} {len(clips) / t_batched:8.3f} "
                 f"{len(clips) * n / t_batched:9.2f} {d:17d}")
    engine.timings.clear()
    ours_out, t_ours = _timed(dev, ours, args.repeats)
    ours_u8 = [np.stack(c) for c in ours_out]
    entry = {"side": "ours", "clips": len(clips), "seconds": t_ours}
    line = f"{'ours':<9} {len(clips):>5} {t_ours:8.2f} {len(clips) / t_ours:8.3f} {len(clips) * n / t_ours:9.2f} "
    if loop_out is not None:
        entry["max_diff_vs_loop"] = _max_diff(ours_u8, loop_u8)
        entry["ratio_vs_loop"] = t_loop / t_ours
        line += f"{entry['max_diff_vs_loop']:17d}"
        if batched_out is not None:
            entry["max_diff_vs_batched"] = _max_diff(ours_u8, batched_u8)
            entry["ratio_vs_batched"] = t_batched / t_ours
    rows.append(entry)
    _say(line)
    if loop_out is not None:
        vs_batched = (f"ratio vs batched {entry['ratio_vs_batched']:.2f}x (max pixel diff "
                      f"{entry['max_diff_vs_batched']}/255)" if batched_out is not None
                      else "no ratio vs batched (the pipeline cannot batch clips; its best is the loop)")
        _say(f"tiny-wan: ours {len(clips) / t_ours:.3f} clips/s ({t_ours / (len(clips) * n):.4f} s per frame); ratio "
             f"vs loop {entry['ratio_vs_loop']:.2f}x (max pixel diff {entry['max_diff_vs_loop']}/255); {vs_batched}; "
             f"per run: {engine.stats['prompt_encodes']} prompt encodes, {engine.stats['vae_encodes'] // 2} control "
             f"video encode(s), {engine.stats['transformer_rows']} transformer rows")
    return {"header": {"config": "tiny-wan", "device": dev.type, "torch": torch.__version__,
                       "diffusers": diffusers.__version__, "threads": torch.get_num_threads(), "styles": list(args.styles),
                       "seeds": seeds, "size": size, "frames": n, "steps": steps, "cfg": family.cfg,
                       "repeats": args.repeats},
            "sides": rows}


def _max_diff(a, b) -> int:
    import numpy as np

    return int(max(np.abs(x.astype(np.int16) - y.astype(np.int16)).max() for x, y in zip(a, b)))


# ------------------------------------------------------------------------------ wan (meta device)
def transformer_on_meta(config: dict, vace: bool = True):
    """The Wan (VACE) transformer of ``config`` on the meta device (shapes only: its FLOPs and
    parameter count do not depend on the dtype)."""
    import torch
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    with torch.device("meta"):
        if vace:
            return WanVACETransformer3DModel(**config)
        base = {k: v for k, v in config.items() if k not in ("vace_layers", "vace_in_channels")}
        return WanTransformer3DModel(**base)


def forward_flops(model, frames: int, width: int, height: int, vace: bool = True) -> int:
    """FLOPs of one forward (one clip, one CFG half) at ``frames`` x ``height`` x ``width``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    c = model.config
    t, h, w = (frames - 1) // 4 + 1, height // 8, width // 8  # Wan's VAE: 4x in time after the first, 8x in space
    meta = dict(device="meta", dtype=torch.float32)
    kwargs = dict(hidden_states=torch.empty(1, c.in_channels, t, h, w, **meta),
                  timestep=torch.empty(1, device="meta", dtype=torch.long),
                  encoder_hidden_states=torch.empty(1, TEXT_TOKENS, c.text_dim, **meta), return_dict=False)
    if vace:
        kwargs.update(control_hidden_states=torch.empty(1, c.vace_in_channels, t, h, w, **meta),
                      control_hidden_states_scale=torch.ones(len(c.vace_layers), **meta))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**kwargs)
    return counter.get_total_flops()


def count_wan(args) -> dict:
    import diffusers
    import torch

    from ..core import video as V

    frames = 81
    long_side = args.size or 832
    width, height = long_side, (long_side * 480 // 832) // 16 * 16
    steps = args.steps if args.steps is not None else V.video_family("wan").steps
    _say(f"archviz bench: config wan, meta device (no GPU, no weights), torch {torch.__version__}, diffusers "
         f"{diffusers.__version__}")
    _say(f"clip: {frames} frames at {width}x{height} ({(frames - 1) // 4 + 1} latent frames of {height // 16}x"
         f"{width // 16} tokens = {((frames - 1) // 4 + 1) * (height // 16) * (width // 16)} tokens), "
         f"{TEXT_TOKENS} text tokens, {steps} steps with CFG (2 forwards per step)")
    out = {"header": {"config": "wan", "frames": frames, "width": width, "height": height, "steps": steps,
                      "text_tokens": TEXT_TOKENS, "torch": torch.__version__, "diffusers": diffusers.__version__},
           "models": []}
    for name, config in (("Wan2.1-VACE-1.3B", WAN_VACE_1_3B), ("Wan2.1-VACE-14B", WAN_VACE_14B)):
        model = transformer_on_meta(config)
        params = sum(p.numel() for p in model.parameters())
        vace_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("vace_"))
        total = forward_flops(model, frames, width, height)
        base = forward_flops(transformer_on_meta(config, vace=False), frames, width, height, vace=False)
        per_clip = total * 2 * steps
        row = {"model": name, "params": params, "vace_params": vace_params, "forward_flops": total,
               "forward_flops_without_vace": base, "step_flops_cfg": 2 * total, "clip_flops": per_clip}
        out["models"].append(row)
        _say(f"{name}: transformer {params / 1e9:.2f} B parameters ({vace_params / 1e9:.2f} B in the VACE blocks, "
             f"{params * 2 / 1e9:.1f} GB in bf16); one forward {total / 1e12:.1f} TFLOP (the VACE blocks "
             f"{(total - base) / 1e12:.1f} of it); one step with CFG {2 * total / 1e12:.1f} TFLOP; the {steps}-step "
             f"clip {per_clip / 1e15:.2f} PFLOP")
    return out
