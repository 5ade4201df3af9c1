"""What the backend knows about each architecture, in one table: which module of this
package runs it, how its ControlNets resolve, which base components and loader classes it
has, its dtype, its flow-matching rules, its memory profiles and its tiny builder.

The family modules import torch; this table does not, so ``backend/models/registry.py``,
``sweep.py``, ``memory.py``, ``server.py`` and ``tiny.py`` read it without loading torch.
What the add-on knows about a family (names, labels, sizes, preset sections) is in
core/families.py; every arch there has its :class:`Engine` here (tests/test_family_registry.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ....core import families as _core


@dataclass(frozen=True)
class FlowRules:
    """How a flow-matching (transformer) family takes a job: one sampler, sides multiples of
    16, cfg/steps from its preset section (``[flux]``, ``[qwen]``, ``[zimage]``)."""

    label: str
    defaults: dict
    no_negative: str = ""  # why it takes no negative prompt ('' = it takes one)
    fixed_cfg: float | None = None  # the one cfg it samples with
    restyle: bool = False  # takes an init image


#: How a job's control units find their nets (backend/models/registry.py resolve_models):
#: ``nets``: one net per control type, or a ControlNet-Union with a mode per type
#: (``model.union``; SD 1.5 / SDXL); ``nets-or-union-modes``: FLUX.1's, the union's modes
#: checked; ``union-only``: one union net for every unit, no mode (it reads the type from the
#: image); ``none``: no ControlNet (instruction edits); ``references``: no ControlNet, the
#: control images join the family's own reference images (FLUX.2 Klein).
RESOLVE_KINDS = ("nets", "nets-or-union-modes", "union-only", "none", "references")


@dataclass(frozen=True)
class Engine:
    arch: str
    module: str  # the module of this package that runs it (its ``FAMILIES[arch]``)
    resolve: str  # RESOLVE_KINDS
    components: tuple[str, ...]  # the pipeline folders the loaders read from a base repository
    #: transformer families: (name, {component: (library, class)}) their base loads with
    loaders: tuple | None = None
    bf16: bool = False  # published and run in bf16 (text encoders and transformers overflow fp16)
    flow: FlowRules | None = None  # flow-matching rules (None: the UNet families, and edits)
    #: its memory profiles: the name of their table in backend/engine/memory.py ('': small enough to need none)
    memory_profiles: str = ""
    tiny_module: str = ""  # the module of backend/models/tiny/ that builds its tiny models
    tiny_folders: tuple[str, ...] = ()  # more tiny model folders that module builds
    #: how the worker finds a prompt the text encoder cuts (backend/server/worker.py prompt_warnings):
    #: ``tokenizer`` its tokenizer's length, ``t5`` the T5 tokenizer's (at most 512), ``512``
    #: the tokenizer's at most 512, ``qwen`` Qwen-Image's template (families/qwen.py)
    prompt_reader: str = "tokenizer"


#: FLUX.1 defaults where neither the job nor the preset's [flux] section sets them: FLUX.1-dev's
#: distilled guidance and step count; it samples with flow-matching Euler only and has no
#: negative prompt.
FLUX_DEFAULTS = {"cfg": 3.5, "steps": 28}
#: Qwen-Image defaults where neither the job nor the preset's [qwen] section sets them: true CFG
#: with the negative prompt (two transformer passes per step) and the model card's 50 steps;
#: flow-matching Euler only.
QWEN_DEFAULTS = {"cfg": 4.0, "steps": 50}
#: Z-Image-Turbo defaults: 8 steps (its card: 8 function evaluations), no classifier-free
#: guidance (cfg 1; the pipeline's guidance_scale 0), no negative prompt, flow-matching Euler.
ZIMAGE_DEFAULTS = {"cfg": 1.0, "steps": 8}
#: FLUX.2 Klein (4B, 9B) defaults: step- and guidance-distilled, 4 steps (the model card's),
#: no classifier-free guidance (cfg 1), no negative prompt, flow-matching Euler.
KLEIN_DEFAULTS = {"cfg": 1.0, "steps": 4}

_SD15 = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_SDXL = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
_FLUX = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
_QWEN = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
_FLUX_CLASSES = {"transformer": ("diffusers", "FluxTransformer2DModel"), "vae": ("diffusers", "AutoencoderKL"),
                 "text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer"),
                 "text_encoder_2": ("transformers", "T5EncoderModel"),
                 "tokenizer_2": ("transformers", "T5TokenizerFast")}
_QWEN_CLASSES = {"transformer": ("diffusers", "QwenImageTransformer2DModel"),
                 "vae": ("diffusers", "AutoencoderKLQwenImage"),
                 "text_encoder": ("transformers", "Qwen2_5_VLForConditionalGeneration"),
                 "tokenizer": ("transformers", "Qwen2Tokenizer")}

_ENGINE_LIST = (
    Engine("sd15", "sd", "nets", _SD15, tiny_module="sd"),
    Engine("sdxl", "sd", "nets", _SDXL, tiny_module="sd"),
    Engine("flux", "flux", "nets-or-union-modes", _FLUX, loaders=("FLUX.1", _FLUX_CLASSES), bf16=True,
           flow=FlowRules("FLUX.1", FLUX_DEFAULTS, no_negative="guidance-distilled, no true CFG", restyle=True),
           memory_profiles="FLUX_PROFILES", tiny_module="flux", prompt_reader="t5"),
    Engine("qwen", "qwen", "union-only", _QWEN, loaders=("Qwen-Image", _QWEN_CLASSES), bf16=True,
           flow=FlowRules("Qwen-Image", QWEN_DEFAULTS), memory_profiles="QWEN_PROFILES",
           tiny_module="qwen", prompt_reader="qwen"),
    Engine("zimage", "zimage", "union-only", _QWEN,
           loaders=("Z-Image", {"transformer": ("diffusers", "ZImageTransformer2DModel"),
                                "vae": ("diffusers", "AutoencoderKL"), "text_encoder": ("transformers", "AutoModel"),
                                "tokenizer": ("transformers", "AutoTokenizer")}), bf16=True,
           flow=FlowRules("Z-Image-Turbo", ZIMAGE_DEFAULTS, no_negative="it samples without CFG", fixed_cfg=1.0),
           memory_profiles="ZIMAGE_PROFILES", tiny_module="zimage", prompt_reader="512"),
    # Instruction edits: FLUX.1 Kontext has FLUX.1's layout and classes; Qwen-Image-Edit has
    # Qwen-Image's and a processor for the picture (backend/models/qwen_processor.py).
    Engine("kontext", "edit", "none", _FLUX, loaders=("FLUX.1 Kontext", _FLUX_CLASSES), bf16=True,
           tiny_module="edit", prompt_reader="t5"),
    Engine("qwen-edit", "edit", "none", ("transformer", "vae", "text_encoder", "tokenizer", "processor", "scheduler"),
           loaders=("Qwen-Image-Edit", {**_QWEN_CLASSES, "processor": (".qwen_processor", None)}), bf16=True,
           tiny_module="edit", tiny_folders=("qwen-edit-plus",)),
    # FLUX.2 Klein: no ControlNet; its reference images (the user's and the control passes)
    # are read by the transformer itself. Restyle and region edits: Flux2KleinInpaintPipeline.
    Engine("klein", "klein", "references", _QWEN,
           loaders=("FLUX.2 Klein", {"transformer": ("diffusers", "Flux2Transformer2DModel"),
                                     "vae": ("diffusers", "AutoencoderKLFlux2"),
                                     "text_encoder": ("transformers", "Qwen3ForCausalLM"),
                                     "tokenizer": ("transformers", "Qwen2TokenizerFast")}), bf16=True,
           flow=FlowRules("FLUX.2 Klein", KLEIN_DEFAULTS, no_negative="step- and guidance-distilled, no CFG",
                          fixed_cfg=1.0, restyle=True),
           tiny_module="klein", prompt_reader="512"),
)
#: arch -> :class:`Engine`
ENGINES = {e.arch: e for e in _ENGINE_LIST}


def _check() -> None:
    assert set(ENGINES) == set(_core.ARCHES), "core/families.py and backend/engine/families/registry.py list other arches"
    for e in _ENGINE_LIST:
        assert e.resolve in RESOLVE_KINDS, f"{e.arch}: resolve {e.resolve!r}"
        assert (e.resolve == "none") == _core.ARCHES[e.arch].edit, f"{e.arch}: an edit arch has no ControlNet"


_check()


def engine(arch: str) -> Engine:
    return ENGINES[arch]


def arches(**facts) -> tuple[str, ...]:
    """The arches whose :class:`Engine` has each given fact, e.g. ``arches(bf16=True)``."""
    return tuple(e.arch for e in _ENGINE_LIST if all(getattr(e, k) == v for k, v in facts.items()))
