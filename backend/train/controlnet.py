"""Train a ControlNet on pairs rendered by ``archviz dataset``, the way the seed documents
outline it:

1. load the base model (SD 1.5 / SDXL / a local folder) and freeze it: UNet, VAE and text
   encoder(s) never get gradients and are never changed;
2. initialise the ControlNet from the base UNet's encoder (``ControlNetModel.from_unet``):
   a trainable copy whose zero convolutions start at zero, so at step 0 it adds nothing;
3. per batch: encode the target image to latents, add noise at random timesteps, embed
   the captions, run the ControlNet on the control image and the frozen UNet with its
   residuals, and take the MSE between the predicted and the actual noise (or velocity);
4. backpropagate through the ControlNet only.

accelerate places the models and runs mixed precision (fp16/bf16 on a GPU) and gradient
accumulation; gradient checkpointing and an 8-bit AdamW (bitsandbytes, CUDA only) are
options. Checkpoints (ControlNet, optimizer, lr schedule, RNG, step) can be resumed; every
K steps held-out views are generated into a contact sheet; loss and learning rate go to a
log and a progress bar. The result is a diffusers ControlNet folder (safetensors) with a
small card, loadable by the backend like any other ControlNet.

The backend side: torch and diffusers, never bpy.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

CARD_NAME = "archviz_card.json"
STATE_DIR = "training"  # inside the output folder: checkpoints, validation, log
METADATA = "metadata.jsonl"
#: the control types a trained ControlNet may be used for (what ``archviz dataset`` renders).
CONTROL_TYPES = ("depth", "lines", "normal", "seg")


class TrainError(ValueError):
    """Bad training input; the message is one line that names the bad value."""


@dataclass
class TrainConfig:
    data: str
    out: str
    base: str = "sd15"
    steps: int = 1000
    batch: int = 4
    lr: float = 1e-5
    resume: bool = False
    control: str = ""  # which control of the dataset; empty = the dataset's first
    resolution: int = 0  # long side; 0 = the dataset's own size
    grad_accum: int = 1
    mixed_precision: str = "auto"  # auto | no | fp16 | bf16
    gradient_checkpointing: bool = False
    optimizer: str = "auto"  # auto | adamw | adamw8bit
    warmup: int = 0
    max_grad_norm: float = 1.0
    validate_every: int = 500
    val_views: int = 2
    val_steps: int = 20
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    empty_prompt_fraction: float = 0.0  # train some steps without captions (the ControlNet paper uses 0.5)
    init: str = ""  # start from an existing ControlNet (folder or hub id) instead of the UNet's encoder


# ---------------------------------------------------------------------------------------
# The dataset (the layout ``archviz dataset`` writes)
# ---------------------------------------------------------------------------------------


@dataclass
class Pair:
    target: Path
    control: Path
    text: str
    seed: int
    name: str


def read_pairs(data_dir: str | os.PathLike, control: str = "") -> tuple[list[Pair], str]:
    """The (target, control, caption) pairs of a dataset folder and the control type they
    use. TrainError when the folder is empty or a pair does not match."""
    from PIL import Image

    root = Path(data_dir)
    meta = root / METADATA
    if not root.is_dir():
        raise TrainError(f"--data {str(data_dir)!r} is not a folder")
    if not meta.is_file():
        raise TrainError(f"--data {str(data_dir)!r} has no {METADATA} (make one with archviz dataset)")
    rows = []
    with open(meta, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainError(f"{meta} line {n} is not JSON: {exc.msg}") from None
            except RecursionError:
                raise TrainError(f"{meta} line {n} is nested too deeply") from None
            if not isinstance(row, dict):
                raise TrainError(f"{meta} line {n} is a JSON {type(row).__name__}, not an object "
                                 '({"file_name": ..., "controls": {...}, "text": ...})')
            if not isinstance(row.get("controls") or {}, dict):
                raise TrainError(f"{meta} line {n}: controls {_short(row['controls'])} is not an object")
            rows.append(row)
    if not rows:
        raise TrainError(f"--data {str(data_dir)!r} is empty: {METADATA} lists no pairs")
    available = list((rows[0].get("controls") or {}).keys())
    ctype = control or rows[0].get("control") or (available[0] if available else "")
    if ctype not in CONTROL_TYPES:
        raise TrainError(f"--control {ctype!r} is not a control type ({', '.join(CONTROL_TYPES)})")
    pairs = []
    base = Path(os.path.abspath(root))
    for n, row in enumerate(rows, start=1):
        controls = row.get("controls") or {}
        if ctype not in controls:
            raise TrainError(f"{meta} line {n} has no {ctype!r} control (it has {', '.join(controls) or 'none'})")
        if "file_name" not in row:
            raise TrainError(f"{meta} line {n} has no file_name (the target image)")
        target = _data_file(base, row["file_name"], f"{meta} line {n}: file_name")
        cond = _data_file(base, controls[ctype], f"{meta} line {n}: controls.{ctype}")
        sizes = [_check_image(path, f"{meta} line {n}: {what} {path.relative_to(base)}")
                 for path, what in ((target, "target"), (cond, f"{ctype} control"))]
        if sizes[0] != sizes[1]:
            raise TrainError(f"{meta} line {n}: target {row['file_name']} is {sizes[0][0]}x{sizes[0][1]} but its "
                             f"{ctype} control is {sizes[1][0]}x{sizes[1][1]} (pairs must be aligned)")
        seed = row.get("seed", n)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise TrainError(f"{meta} line {n}: seed {_short(seed)} is not a whole number from 0 to {2**32 - 1}")
        text, name = row.get("text", ""), row.get("name", target.stem)
        for key, value in (("text", text), ("name", name)):
            if not isinstance(value, str):
                raise TrainError(f"{meta} line {n}: {key} {_short(value)} is not a text")
        pairs.append(Pair(target, cond, text, seed, name))
    return pairs, ctype


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _data_file(base: Path, name, where: str) -> Path:
    """The dataset file ``name`` names: a relative path inside the dataset folder."""
    if not isinstance(name, str) or not name.strip():
        raise TrainError(f"{where} {_short(name)} is not a file name")
    path = Path(os.path.normpath(base / name))  # ".." and absolute names leave the folder; links may
    if base not in path.parents:
        raise TrainError(f"{where} {name!r} is outside the dataset folder {base}")
    if not path.is_file():
        raise TrainError(f"{where}: {path} is missing")
    return path


def _check_image(path: Path, where: str) -> tuple[int, int]:
    """The size of a dataset image, decoded whole once here (a cut or damaged file is found
    before any model loads); its header's pixel count is checked first."""
    from PIL import Image, UnidentifiedImageError

    from ...core.jobs import MAX_PNG_PIXELS

    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PNG_PIXELS:
                raise TrainError(f"{where} is {w}x{h} = {w * h / 1e6:.0f} megapixels, over the limit of "
                                 f"{MAX_PNG_PIXELS / 1e6:.0f} megapixels")
            im.load()
            return w, h
    except Image.DecompressionBombError:  # Pillow's own guard fired at open: the size from the header
        from ...core.png import png_size

        with open(path, "rb") as fh:
            size = png_size(fh.read(24))
        said = f" is {size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.0f} megapixels," if size else ""
        raise TrainError(f"{where}{said or ' is'} over the limit of {MAX_PNG_PIXELS / 1e6:.0f} megapixels") from None
    except UnidentifiedImageError:
        raise TrainError(f"{where} is not an image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise TrainError(f"{where} is damaged and cannot be decoded ({exc})") from None


def split_pairs(pairs: list[Pair], val_views: int) -> tuple[list[Pair], list[Pair]]:
    """Training pairs and held-out validation views (the last ``val_views``, never trained
    on; none when the dataset is too small to spare them)."""
    n = min(max(0, val_views), len(pairs) - 1)
    return (pairs[:len(pairs) - n], pairs[len(pairs) - n:]) if n else (pairs, [])


def training_size(pairs: list[Pair], long_side: int) -> tuple[int, int]:
    """(width, height) every pair is trained at: the first pair's size, scaled so its long
    side is ``long_side`` when given; multiples of 8."""
    from PIL import Image

    with Image.open(pairs[0].target) as im:
        w, h = im.size
    if long_side:
        s = long_side / max(w, h)
        w, h = round(w * s), round(h * s)
    w, h = max(8, w // 8 * 8), max(8, h // 8 * 8)
    return w, h


def load_pair(pair: Pair, size: tuple[int, int]):
    """Target in [-1, 1] and control in [0, 1] as CHW float tensors at ``size``."""
    import torch
    from PIL import Image

    with Image.open(pair.target) as im:
        target = im.convert("RGB")
        if target.size != size:
            target = target.resize(size, Image.BICUBIC)
    with Image.open(pair.control) as im:
        cond = im.convert("RGB")
        if cond.size != size:
            cond = cond.resize(size, Image.NEAREST)  # exact classes and 1 px lines stay exact
    t = torch.from_numpy(np.asarray(target, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    c = torch.from_numpy(np.asarray(cond, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return t, c


# ---------------------------------------------------------------------------------------
# Choices made from the machine (pure functions: tested with any inputs)
# ---------------------------------------------------------------------------------------


def choose_precision(requested: str, device_type: str, bf16_supported: bool) -> str:
    """accelerate's ``mixed_precision``: fp16/bf16 only on a GPU (bf16 where supported)."""
    if requested not in ("auto", "no", "fp16", "bf16"):
        raise TrainError(f"--mixed-precision {requested!r}: choose auto, no, fp16 or bf16")
    if device_type != "cuda":
        if requested in ("fp16", "bf16"):
            raise TrainError(f"--mixed-precision {requested} needs a CUDA GPU (this run is on {device_type})")
        return "no"
    if requested == "auto":
        return "bf16" if bf16_supported else "fp16"
    return requested


def choose_optimizer(requested: str, device_type: str, bnb_available: bool,
                     capability: tuple[int, int] | None = None) -> tuple[str, str]:
    """(``adamw`` | ``adamw8bit``, the sentence that says which and why)."""
    if requested not in ("auto", "adamw", "adamw8bit"):
        raise TrainError(f"--optimizer {requested!r}: choose auto, adamw or adamw8bit")
    why_not = ""
    if device_type != "cuda":
        why_not = f"the 8-bit AdamW (bitsandbytes) needs a CUDA GPU and this run is on {device_type}"
    elif not bnb_available:
        why_not = "the 8-bit AdamW needs the bitsandbytes package (pip install bitsandbytes)"
    elif capability is not None and capability < (7, 0):
        why_not = ("the 8-bit AdamW needs a GPU of compute capability 7.0 or newer "
                   f"(this one is {capability[0]}.{capability[1]})")
    if requested == "adamw8bit" and why_not:
        raise TrainError(f"--optimizer adamw8bit: {why_not}")
    if requested == "adamw" or why_not:
        return "adamw", "optimizer: AdamW (torch, 32-bit states)" + (f"; {why_not}" if why_not else "")
    return "adamw8bit", "optimizer: AdamW 8-bit (bitsandbytes): optimizer states take a quarter of the memory"


# ---------------------------------------------------------------------------------------
# Base model
# ---------------------------------------------------------------------------------------


def resolve_base(base: str) -> tuple[str, str | None, str]:
    """(base reference, separate VAE or None, arch) for ``sd15 | sdxl | tiny | tiny-sdxl |
    PATH`` through the model registry's own ids and tiny folders."""
    from ..models import registry as models, tiny

    names = {"sd15": (models.SD15_BASE, None, "sd15"), "sdxl": (models.SDXL_BASE, models.SDXL_VAE, "sdxl"),
             "tiny": (str(tiny.tiny_path("sd15", "base")), None, "sd15"),
             "tiny-sdxl": (str(tiny.tiny_path("sdxl", "base")), str(tiny.tiny_path("sdxl", "vae-fp16-fix")), "sdxl")}
    if base in names:
        return names[base]
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "unet").is_dir():
            raise TrainError(f"--base {base!r} has no unet/ folder: a ControlNet is trained on a base model's UNet "
                             "(give a diffusers pipeline folder, sd15 or sdxl)")
        arch = "sdxl" if (path / "text_encoder_2").is_dir() else "sd15"
        return str(path.resolve()), None, arch
    if path.is_file():
        raise TrainError(f"--base {base!r} is a single file; training needs a diffusers pipeline folder "
                         "(unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
    if models.is_hub_ref(base):
        return base, None, "sdxl" if "xl" in base.lower() else "sd15"
    raise TrainError(f"--base {base!r} is neither sd15, sdxl, tiny, tiny-sdxl nor an existing folder")


# ---------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------


def encode_text(comps: dict, arch: str, prompts: list[str], device):
    """Prompt embeddings (and SDXL's pooled embeddings) from the frozen text encoder(s)."""
    import torch

    def ids(tokenizer):
        return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(device)

    with torch.no_grad():
        if arch == "sd15":
            return comps["text_encoder"](ids(comps["tokenizer"]))[0], None
        out1 = comps["text_encoder"](ids(comps["tokenizer"]), output_hidden_states=True)
        out2 = comps["text_encoder_2"](ids(comps["tokenizer_2"]), output_hidden_states=True)
        embeds = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        return embeds, out2.text_embeds


def sdxl_added_cond(pooled, size: tuple[int, int], dtype):
    """SDXL's micro-conditioning: original size, crop (0, 0) and target size."""
    import torch

    w, h = size
    time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=dtype, device=pooled.device).repeat(pooled.shape[0], 1)
    return {"text_embeds": pooled, "time_ids": time_ids}


# ---------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    out: str
    steps: int
    start_step: int
    losses: list = field(default_factory=list)  # (step, loss) of the steps run now
    sheet: str = ""
    card: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def check_config(cfg: TrainConfig) -> None:
    if cfg.steps < 1:
        raise TrainError(f"--steps {cfg.steps}: train at least 1 step")
    if cfg.batch < 1:
        raise TrainError(f"--batch {cfg.batch}: must be at least 1")
    if cfg.grad_accum < 1:
        raise TrainError(f"--grad-accum {cfg.grad_accum}: must be at least 1")
    if not (math.isfinite(cfg.lr) and 0 < cfg.lr < 1):
        raise TrainError(f"--lr {cfg.lr}: must be a number between 0 and 1")
    if cfg.resolution and (cfg.resolution < 64 or cfg.resolution > 4096):
        raise TrainError(f"--resolution {cfg.resolution}: must be between 64 and 4096")
    if cfg.validate_every < 0 or cfg.checkpoint_every < 0:
        raise TrainError("--validate-every and --checkpoint-every must be 0 (only at the end) or more")
    if not 0.0 <= cfg.empty_prompt_fraction <= 1.0:
        raise TrainError(f"--empty-prompt-fraction {cfg.empty_prompt_fraction}: must be between 0 and 1")


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    root = out / STATE_DIR / "checkpoints"
    found = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith("step-") and (p / "state.json").is_file():
                try:
                    found.append((int(p.name[5:]), p))
                except ValueError:
                    continue
    return sorted(found)


def _batch_indices(n: int, batch: int, seed: int, step: int) -> list[int]:
    """The pairs of one step: a function of (seed, step) only, so a resumed run draws the
    same batches as an uninterrupted one."""
    rng = np.random.default_rng([seed, step])
    return rng.choice(n, size=batch, replace=n < batch).tolist()


class Trainer:
    def __init__(self, cfg: TrainConfig, log=print):
        check_config(cfg)
        self.cfg = cfg
        self.log = log
        self.out = Path(cfg.out).expanduser().resolve()
        for folder in (self.out, *self.out.parents):  # said now, not after the models load
            if folder.exists():
                if not folder.is_dir():
                    raise TrainError(f"--out {cfg.out!r}: {folder} is a file, not a folder")
                if not os.access(folder, os.W_OK | os.X_OK):
                    raise TrainError(f"--out {cfg.out!r}: {folder} cannot be written")
                break
        pairs, self.control = read_pairs(cfg.data, cfg.control)
        self.train_pairs, self.val_pairs = split_pairs(pairs, cfg.val_views)
        self.size = training_size(pairs, cfg.resolution)
        self.line_style = None
        settings = Path(cfg.data) / "dataset.json"
        if self.control == "lines" and settings.is_file():
            try:
                self.line_style = json.loads(settings.read_text()).get("line_style")
            except ValueError:
                raise TrainError(f"{settings} is not JSON") from None
        self.base_ref, self.vae_ref, self.arch = resolve_base(cfg.base)
        existing = checkpoints(self.out)
        if existing and not cfg.resume:
            raise TrainError(f"--out {cfg.out!r} already has training checkpoints (up to step {existing[-1][0]}): "
                             "add --resume to continue, or choose another --out")
        if cfg.resume and not existing:
            raise TrainError(f"--resume: no checkpoint in {self.out / STATE_DIR / 'checkpoints'} to continue from")
        self.resume_from = existing[-1] if cfg.resume else None

    # -- setup -------------------------------------------------------------------------

    def setup(self):
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from diffusers import ControlNetModel, DDPMScheduler

        from ..models import registry as models
        from ..engine.runner import pick_device

        cfg = self.cfg
        device = pick_device(cfg.device)
        cuda = device.type == "cuda"
        bf16 = cuda and torch.cuda.is_bf16_supported()
        precision = choose_precision(cfg.mixed_precision, device.type, bf16)
        try:
            import bitsandbytes  # noqa: F401

            bnb = True
        except ImportError:
            bnb = False
        capability = torch.cuda.get_device_capability(device) if cuda else None
        self.optimizer_name, optimizer_note = choose_optimizer(cfg.optimizer, device.type, bnb, capability)
        self.accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
                                       cpu=device.type == "cpu")
        set_seed(cfg.seed)
        self.device = self.accelerator.device
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        self.notes = [f"device: {self.device}, mixed precision: {precision}", optimizer_note,
                      f"gradient checkpointing: {'on' if cfg.gradient_checkpointing else 'off'}, "
                      f"accumulation: {cfg.grad_accum} step(s) per update"]
        try:
            comps = models.load_base(self.base_ref, self.vae_ref, self.arch, self.weight_dtype, self.device)
        except models.ModelNotFoundError as exc:
            raise TrainError(f"--base {cfg.base!r}: {str(exc).splitlines()[0]}") from None
        self.comps = comps
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            if name in comps:
                comps[name].requires_grad_(False).eval()
        self.noise_scheduler = DDPMScheduler.from_config(comps["scheduler_config"])
        if cfg.init:  # a smaller fine-tune: from a ControlNet that already reads a similar control
            try:
                folder = models.local_folder(cfg.init, None, "ControlNet", torch.float32)
                controlnet = ControlNetModel.from_pretrained(str(folder), torch_dtype=torch.float32,
                                                             use_safetensors=True)
            except (models.ModelNotFoundError, OSError, ValueError) as exc:
                raise TrainError(f"--init {cfg.init!r}: {str(exc).splitlines()[0]}") from None
            if controlnet.config.cross_attention_dim != comps["unet"].config.cross_attention_dim:
                raise TrainError(f"--init {cfg.init!r} was made for another base (cross-attention "
                                 f"{controlnet.config.cross_attention_dim}, the base has "
                                 f"{comps['unet'].config.cross_attention_dim})")
            self.notes.append(f"initialised from the ControlNet {cfg.init}")
        else:
            # The trainable copy of the UNet's encoder; zero convolutions start at zero.
            controlnet = ControlNetModel.from_unet(comps["unet"], conditioning_channels=3)
        # Trainable weights stay in float32 (mixed precision runs the maths in fp16/bf16
        # and scales the loss); the frozen base is held in the compute dtype.
        controlnet.to(dtype=torch.float32)
        if cfg.gradient_checkpointing:
            controlnet.enable_gradient_checkpointing()
        controlnet.train()
        params = [p for p in controlnet.parameters() if p.requires_grad]
        if self.optimizer_name == "adamw8bit":
            import bitsandbytes as bnb_mod

            optimizer = bnb_mod.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=1e-2)
        else:
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup) if cfg.warmup else 1.0)
        self.controlnet, self.optimizer, self.lr_scheduler = self.accelerator.prepare(controlnet, optimizer,
                                                                                      lr_scheduler)
        self.step = 0
        self.history: list = []
        if self.resume_from is not None:
            step, path = self.resume_from
            self.accelerator.load_state(str(path))
            state = json.loads((path / "state.json").read_text())
            self.step = int(state["step"])
            self.history = state.get("history", [])
            self.notes.append(f"resumed from {path} at step {self.step}")
            self._truncate_log(self.step)
        return self

    def _truncate_log(self, step: int) -> None:
        """``train_log.jsonl`` cut back to the checkpoint's ``step``: the steps a killed run
        logged after its last checkpoint are trained again, and logged once."""
        log_path = self.out / STATE_DIR / "train_log.jsonl"
        if not log_path.is_file():
            return
        kept = []
        for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                if int(json.loads(line)["step"]) <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by the kill
        tmp = log_path.with_name(f".train_log.{os.getpid()}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(tmp, log_path)

    # -- one step ----------------------------------------------------------------------

    def batch(self, step: int):
        import torch

        cfg = self.cfg
        idx = _batch_indices(len(self.train_pairs), cfg.batch, cfg.seed, step)
        loaded = [load_pair(self.train_pairs[i], self.size) for i in idx]
        targets = torch.stack([t for t, _c in loaded])
        controls = torch.stack([c for _t, c in loaded])
        texts = [self.train_pairs[i].text for i in idx]
        if cfg.empty_prompt_fraction:
            drop = np.random.default_rng([cfg.seed, step, 1]).random(len(texts)) < cfg.empty_prompt_fraction
            texts = ["" if d else t for d, t in zip(drop, texts)]
        return targets, controls, texts

    def loss(self, targets, controls, texts, step: int):
        """The seed's outline, steps a-f: latents, noise at random timesteps, text, the
        ControlNet, the frozen UNet with its residuals, MSE against the actual noise."""
        import torch
        import torch.nn.functional as F

        comps, dev, dtype = self.comps, self.device, self.weight_dtype
        gen = torch.Generator("cpu").manual_seed(self.cfg.seed * 1_000_003 + step)
        with torch.no_grad():
            vae = comps["vae"]
            latents = vae.encode(targets.to(dev, dtype=vae.dtype)).latent_dist.sample(
                generator=torch.Generator(vae.device).manual_seed(self.cfg.seed + step))
            latents = (latents * vae.config.scaling_factor).to(dtype)
        noise = torch.randn(latents.shape, generator=gen).to(dev, dtype)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=gen).to(dev)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        embeds, pooled = encode_text(comps, self.arch, texts, dev)
        embeds = embeds.to(dtype)
        added = sdxl_added_cond(pooled.to(dtype), self.size, dtype) if self.arch == "sdxl" else None
        down, mid = self.controlnet(noisy, timesteps, encoder_hidden_states=embeds,
                                    controlnet_cond=controls.to(dev, dtype), added_cond_kwargs=added,
                                    return_dict=False)
        pred = comps["unet"](noisy, timesteps, encoder_hidden_states=embeds, added_cond_kwargs=added,
                             down_block_additional_residuals=[r.to(dtype) for r in down],
                             mid_block_additional_residual=mid.to(dtype), return_dict=False)[0]
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    # -- the loop ----------------------------------------------------------------------

    def train(self, progress=True) -> TrainResult:
        from tqdm import tqdm

        cfg, acc = self.cfg, self.accelerator
        state_dir = self.out / STATE_DIR
        state_dir.mkdir(parents=True, exist_ok=True)
        log_path = state_dir / "train_log.jsonl"
        start = self.step
        result = TrainResult(out=str(self.out), steps=cfg.steps, start_step=start, notes=list(self.notes))
        if start >= cfg.steps:
            result.notes.append(f"already trained to step {start} (--steps {cfg.steps}); nothing to do")
        bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not progress,
                   mininterval=1.0)
        t0 = time.perf_counter()
        try:
            for step in range(start, cfg.steps):
                loss_value = 0.0
                for micro in range(cfg.grad_accum):
                    targets, controls, texts = self.batch(step * cfg.grad_accum + micro)
                    with acc.accumulate(self.controlnet):
                        loss = self.loss(targets, controls, texts, step * cfg.grad_accum + micro)
                        if not math.isfinite(loss.item()):
                            raise TrainError(f"the loss became {loss.item()} at step {step + 1}: lower --lr "
                                             f"(now {cfg.lr:g}) or use --mixed-precision bf16/no")
                        acc.backward(loss)
                        if acc.sync_gradients and cfg.max_grad_norm:
                            acc.clip_grad_norm_(self.controlnet.parameters(), cfg.max_grad_norm)
                        self.optimizer.step()
                        self.lr_scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    loss_value += loss.item() / cfg.grad_accum
                self.step = step + 1
                lr = self.lr_scheduler.get_last_lr()[0]
                self.history.append([self.step, loss_value])
                result.losses.append((self.step, loss_value))
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": self.step, "loss": loss_value, "lr": lr,
                                         "seconds": round(time.perf_counter() - t0, 3)}) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                last = self.step == cfg.steps
                if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0) or last:
                    self.save_checkpoint()
                if (cfg.validate_every and self.step % cfg.validate_every == 0) or last:
                    result.sheet = self.validate() or result.sheet
        finally:
            bar.close()
        result.card = self.save_model()
        if not result.sheet and (state_dir / "validation.png").exists():
            result.sheet = str(state_dir / "validation.png")
        return result

    # -- checkpoints -------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        root = self.out / STATE_DIR / "checkpoints"
        path = root / f"step-{self.step:07d}"
        tmp = root / f".step-{self.step:07d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # accelerate writes the ControlNet (safetensors), the optimizer, the lr schedule and
        # every RNG state; the step and the loss history go next to them.
        self.accelerator.save_state(str(tmp), safe_serialization=True)
        (tmp / "state.json").write_text(json.dumps({"step": self.step, "history": self.history,
                                                    "config": asdict(self.cfg)}))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        for _step, old in checkpoints(self.out)[:-max(1, self.cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    # -- output ------------------------------------------------------------------------

    def save_model(self) -> dict:
        model = self.accelerator.unwrap_model(self.controlnet)
        model.save_pretrained(str(self.out), safe_serialization=True)
        losses = [loss for _s, loss in self.history]
        k = max(1, min(10, len(losses) // 4)) if losses else 0
        card = {
            "kind": "archviz-controlnet",
            "control": self.control,
            "base": self.cfg.base,
            "line_style": self.line_style,
            "family": self.cfg.base if self.cfg.base in ("sd15", "sdxl", "tiny", "tiny-sdxl") else None,
            "base_ref": self.base_ref,
            "arch": self.arch,
            "data": str(Path(self.cfg.data).resolve()),
            "pairs": len(self.train_pairs),
            "validation_views": len(self.val_pairs),
            "resolution": list(self.size),
            "steps": self.step,
            "batch": self.cfg.batch,
            "grad_accum": self.cfg.grad_accum,
            "lr": self.cfg.lr,
            "optimizer": self.optimizer_name,
            "seed": self.cfg.seed,
            "init": self.cfg.init or "base UNet encoder (zero convolutions at zero)",
            "loss_first": float(np.mean(losses[:k])) if k else None,
            "loss_last": float(np.mean(losses[-k:])) if k else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (self.out / CARD_NAME).write_text(json.dumps(card, indent=2))
        (self.out / "README.md").write_text(
            f"# ArchViz ControlNet ({self.control})\n\n"
            f"A diffusers ControlNet trained with `archviz train-controlnet` on {card['pairs']} pairs of "
            f"{self.control} control images and Blender renders from `{card['data']}`.\n\n"
            f"- base: {self.cfg.base} ({self.base_ref}, {self.arch})\n"
            f"- steps: {self.step}, batch {self.cfg.batch} x {self.cfg.grad_accum}, lr {self.cfg.lr:g}, "
            f"{card['resolution'][0]}x{card['resolution'][1]}\n"
            f"- control type: {self.control} (use it with `archviz sweep --controls custom:{self.out}`)\n")
        return card

    def validate(self) -> str:
        """Generate the held-out views with the ControlNet as it is now, and rebuild the
        contact sheet (one row per validation step, one column per view)."""
        import torch
        from diffusers import (StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline,
                               UniPCMultistepScheduler)
        from PIL import Image

        from ..server.outputs import atomic_write, contact_sheet

        if not self.val_pairs:
            return ""
        comps = self.comps
        model = self.accelerator.unwrap_model(self.controlnet)
        model.eval()
        scheduler = UniPCMultistepScheduler.from_config(comps["scheduler_config"])
        kwargs = dict(vae=comps["vae"], text_encoder=comps["text_encoder"], tokenizer=comps["tokenizer"],
                      unet=comps["unet"], controlnet=model, scheduler=scheduler)
        if self.arch == "sdxl":
            pipe = StableDiffusionXLControlNetPipeline(text_encoder_2=comps["text_encoder_2"],
                                                       tokenizer_2=comps["tokenizer_2"], add_watermarker=False,
                                                       **kwargs)
        else:
            pipe = StableDiffusionControlNetPipeline(safety_checker=None, feature_extractor=None,
                                                     requires_safety_checker=False, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        folder = self.out / STATE_DIR / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = self.size
        try:
            for pair in self.val_pairs:
                _t, control = load_pair(pair, self.size)
                with torch.no_grad(), self.accelerator.autocast():
                    image = pipe(pair.text, image=control[None], num_inference_steps=self.cfg.val_steps,
                                 height=h, width=w, generator=torch.Generator("cpu").manual_seed(pair.seed),
                                 output_type="pil").images[0]
                image.save(folder / f"step-{self.step:07d}-{pair.name}.png")
        finally:
            model.train()
        steps = sorted({int(p.name[5:12]) for p in folder.glob("step-*.png")})
        rows = ["control", "target"] + [f"step {s}" for s in steps]
        tiles = {}
        for c, pair in enumerate(self.val_pairs):
            with Image.open(pair.control) as im:
                tiles[(0, c)] = im.convert("RGB").resize((w, h), Image.NEAREST)
            with Image.open(pair.target) as im:
                tiles[(1, c)] = im.convert("RGB").resize((w, h))
            for r, s in enumerate(steps, start=2):
                p = folder / f"step-{s:07d}-{pair.name}.png"
                if p.exists():
                    with Image.open(p) as im:
                        tiles[(r, c)] = im.convert("RGB")
        sheet, _boxes = contact_sheet(rows, [p.seed for p in self.val_pairs], tiles, w, h,
                                      title=f"{self.control} ControlNet on {self.cfg.base}, held-out views "
                                            "(columns: view seeds)")
        import io

        buf = io.BytesIO()
        sheet.save(buf, format="PNG")
        path = self.out / STATE_DIR / "validation.png"
        atomic_write(path, buf.getvalue())
        return str(path)


def train(cfg: TrainConfig, log=print, progress=True) -> TrainResult:
    trainer = Trainer(cfg, log=log).setup()
    for note in trainer.notes:
        log(note)
    return trainer.train(progress=progress)


# ---------------------------------------------------------------------------------------
# ``archviz train-controlnet``
# ---------------------------------------------------------------------------------------


def add_arguments(parser):
    d = TrainConfig(data="", out="")
    parser.add_argument("--data", required=True, help="dataset folder written by archviz dataset (metadata.jsonl)")
    parser.add_argument("--base", default=d.base, help="sd15 (default), sdxl, tiny, tiny-sdxl, or a diffusers "
                                                       "pipeline folder")
    parser.add_argument("--out", required=True, help="output: the trained ControlNet folder (diffusers, safetensors)")
    parser.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps in all (default {d.steps})")
    parser.add_argument("--batch", type=int, default=d.batch, help=f"pairs per step (default {d.batch})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr:g})")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--control", default="", help="which control of the dataset (default: its first)")
    parser.add_argument("--resolution", type=int, default=0, help="long side to train at (default: the dataset's)")
    parser.add_argument("--grad-accum", type=int, default=d.grad_accum, help="steps of gradients per update")
    parser.add_argument("--mixed-precision", default=d.mixed_precision,
                        help="auto (bf16/fp16 on a GPU), no, fp16, bf16")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="less memory, about 20%% slower")
    parser.add_argument("--optimizer", default=d.optimizer, help="auto (8-bit AdamW on a CUDA GPU with bitsandbytes), "
                                                                 "adamw, adamw8bit")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="learning-rate warm-up steps")
    parser.add_argument("--validate-every", type=int, default=d.validate_every,
                        help=f"generate the held-out views every K steps (default {d.validate_every}; 0 = at the end)")
    parser.add_argument("--val-views", type=int, default=d.val_views, help="views held out for validation")
    parser.add_argument("--val-steps", type=int, default=d.val_steps, help="denoising steps of validation images")
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                        help=f"save a resumable checkpoint every K steps (default {d.checkpoint_every})")
    parser.add_argument("--empty-prompt-fraction", type=float, default=d.empty_prompt_fraction,
                        help="share of captions dropped, so the net learns from the control alone")
    parser.add_argument("--init", default="", help="start from this ControlNet (folder or hub id) instead of the "
                                                  "base UNet's encoder: a smaller fine-tune of a similar control")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device, choices=("auto", "cuda", "mps", "cpu"))


def run(args) -> int:
    import sys

    fields = {f for f in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        result = train(cfg)
    except TrainError as exc:
        print(f"archviz train-controlnet: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("archviz train-controlnet: interrupted; continue with the same command and --resume", file=sys.stderr)
        return 130
    if result.losses:
        k = max(1, min(10, len(result.losses) // 4))
        first = np.mean([v for _s, v in result.losses[:k]])
        last = np.mean([v for _s, v in result.losses[-k:]])
        print(f"loss: mean of the first {k} steps {first:.4f}, of the last {k} steps {last:.4f}")
    print(f"ControlNet ({result.card.get('control')}): {result.out}")
    if result.sheet:
        print(f"validation contact sheet: {result.sheet}")
    print(f"use it: archviz sweep SCENE.blend --controls custom:{result.out} --styles ... --seeds ...")
    return 0
