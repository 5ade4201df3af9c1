"""Memory profiles for the big transformer families (FLUX.1, Z-Image) on real GPUs (no torch here: the choice
is a pure function of the card's free memory, so it is tested without one).

FLUX.1-dev in bf16 needs about 24 GB for the transformer alone (11.9 B parameters), and its
T5-XXL text encoder another 9.5 GB; architects have 8-24 GB cards. A profile says what stays
resident on the GPU and in which precision:

* ``quantize``: the transformer's and the ControlNets' Linear weights in 8 bits with torchao
  (the engine's ``quantize`` option: ``fp8-weight`` on compute capability 8.9+, else
  ``int8-weight``): half the bytes. Changes pixels a little, so it is labelled and recorded;
* ``text_encoders_on_cpu``: T5 and CLIP run on the CPU (once per style, the embeddings are
  moved to the GPU): 9.7 GB less on the card, seconds more per style;
* ``stream``: diffusers' block-level group offloading: the blocks of the ControlNets
  (``controlnets``) or of the transformer too (``all``) live in CPU memory and are brought
  in one at a time.

Weights below are bf16 figures from the parameter counts (FLUX.1-dev transformer 11.9 B,
T5-XXL encoder 4.76 B, CLIP-L 0.12 B, VAE 0.08 B; a FLUX ControlNet taken as about 1.5 B, 3 GB
in bf16, 1.5 GB in 8 bits). Activations at 1024x1024 for a batch of a few images come on top:
the thresholds keep about 3 GB for them. None of this was measured on a GPU here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GB = 2**30


@dataclass(frozen=True)
class MemoryProfile:
    name: str
    quantize: str  # "none" | "8bit" (fp8-weight or int8-weight, by the GPU)
    text_encoders_on_cpu: bool
    stream: str  # "" | "controlnets" | "all"
    min_free_gb: float  # chosen when the card has at least this much free
    note: str

    @property
    def changes_images(self) -> bool:
        """Options that give other pixels than the plain bf16 pipeline (quantized weights;
        text encoders on the CPU compute in another precision order)."""
        return self.quantize != "none" or self.text_encoders_on_cpu

    def as_dict(self) -> dict:
        return asdict(self)


#: Largest first. Resident bf16/8-bit weights: full ~40 GB (transformer 23.8 + T5 9.5 +
#: two nets 6), 24gb ~15 GB (transformer 11.9 + two nets 3 in 8 bits, T5 on the CPU),
#: 16gb ~12 GB (8-bit transformer; the nets streamed by group offload), 12gb ~2-3 GB
#: (everything streamed block by block).
FLUX_PROFILES = (
    MemoryProfile("full", "none", False, "", 44.0, "bf16, everything on the GPU (exact)"),
    MemoryProfile("24gb", "8bit", True, "", 20.0,
                  "8-bit weight-only transformer and ControlNets, text encoders on the CPU"),
    MemoryProfile("16gb", "8bit", True, "controlnets", 14.0,
                  "8-bit transformer resident, ControlNets streamed (group offload), text encoders on the CPU"),
    MemoryProfile("12gb", "8bit", True, "all", 0.0,
                  "8-bit transformer and ControlNets streamed block by block, text encoders on the CPU"),
)
#: Z-Image-Turbo, the same names (bf16: transformer 12.3 GB, Qwen3-4B 8.0 GB, union net 2.1
#: 6.7 GB, VAE 0.2 GB; 8 bits: transformer 6.2 GB, net 3.4 GB plus 0.8 GB for its copy of the
#: transformer's refiners, which the net shares and its quantized copy duplicates). full ~27 GB
#: resident; 24gb and 16gb alike ~11 GB (8-bit transformer and net, Qwen3 on the CPU: a bf16
#: transformer with the encoder on the CPU would fit 24 GB, but the engine moves only quantized
#: or streamed models from CPU memory to the GPU); 12gb ~7 GB (the net streamed).
ZIMAGE_PROFILES = (
    MemoryProfile("full", "none", False, "", 31.0, "bf16, everything on the GPU (exact)"),
    MemoryProfile("24gb", "8bit", True, "", 20.0,
                  "8-bit weight-only transformer and ControlNet, the Qwen3 encoder on the CPU"),
    MemoryProfile("16gb", "8bit", True, "", 13.0,
                  "8-bit weight-only transformer and ControlNet, the Qwen3 encoder on the CPU"),
    MemoryProfile("12gb", "8bit", True, "controlnets", 0.0,
                  "8-bit transformer resident, the ControlNet streamed (group offload), the Qwen3 encoder on the CPU"),
)

#: Qwen-Image (bf16: transformer 20.4 B = 40.9 GB, Qwen2.5-VL text encoder 8.3 B = 16.6 GB,
#: union ControlNet 1.77 B = 3.5 GB, VAE 0.25 GB; activations at 1328x1328 with true CFG about
#: 4 GB for a few images). The same names as FLUX.1's, other thresholds: the 8-bit transformer
#: alone is 20.4 GB, so it stays resident only on cards with about 26 GB free (32 GB and up);
#: 24 GB and smaller cards stream it block by block.
QWEN_PROFILES = (
    MemoryProfile("full", "none", False, "", 66.0, "bf16, everything on the GPU (exact)"),
    MemoryProfile("24gb", "8bit", True, "", 26.0,
                  "8-bit weight-only transformer and ControlNet resident, text encoder on the CPU"),
    MemoryProfile("16gb", "8bit", True, "all", 0.0,
                  "8-bit transformer and ControlNet streamed block by block, text encoder on the CPU"),
    MemoryProfile("12gb", "8bit", True, "all", 0.0,
                  "8-bit transformer and ControlNet streamed block by block, text encoder on the CPU"),
)


def profiles_for(arch: str) -> tuple:
    """An arch's profiles, largest first (its row in backend/engine/families/registry.py names the
    table; empty for the families small enough to need none)."""
    from .families.registry import ENGINES

    engine = ENGINES.get(arch)
    return globals()[engine.memory_profiles] if engine and engine.memory_profiles else ()


PROFILE_NAMES = ("auto",) + tuple(p.name for p in FLUX_PROFILES)

#: The profile of a device that is not a CUDA GPU, or of a family small enough to need none.
NONE = MemoryProfile("none", "none", False, "", 0.0, "no memory profile (CPU, MPS, or SD 1.5/SDXL)")


def choose_profile(arch: str, device_type: str, free_bytes: int | None, requested: str = "auto") -> MemoryProfile:
    """The memory profile for a family on a device with ``free_bytes`` of free memory.

    ``requested`` is ``auto`` (FLUX.1, Z-Image and Qwen-Image on CUDA: by free memory; anything else:
    :data:`NONE`) or a profile name, kept as asked for those families on any device. Raises ValueError naming a bad
    ``requested``."""
    if requested not in PROFILE_NAMES:
        raise ValueError(f"memory profile: unknown {requested!r} (choose from {', '.join(PROFILE_NAMES)})")
    profiles = profiles_for(arch)
    if not profiles:
        return NONE
    if requested != "auto":
        return next(p for p in profiles if p.name == requested)
    return by_free_memory(profiles, device_type, free_bytes)


def by_free_memory(profiles: tuple, device_type: str, free_bytes: int | None) -> MemoryProfile:
    """The largest of ``profiles`` (largest first) that fits ``free_bytes`` on a CUDA device;
    :data:`NONE` on any other device or without profiles."""
    if not profiles or device_type != "cuda":
        return NONE
    free_gb = (free_bytes or 0) / GB
    return next(p for p in profiles if free_gb >= p.min_free_gb)


def quantize_mode(profile: MemoryProfile, fp8_capable: bool) -> str:
    """The engine's ``quantize`` value for a profile's 8-bit weights on this GPU."""
    if profile.quantize == "none":
        return "none"
    return "fp8-weight" if fp8_capable else "int8-weight"
