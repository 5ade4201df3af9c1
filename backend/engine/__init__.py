"""The engine: the sweep core every model family shares, and the families themselves.

* :mod:`.runner`: :class:`Engine` (batching, one generator per seed, text embeddings once
  per style, units outside their window not run, progress and cancel per step, the decode),
  :class:`EngineOptions`, devices and quantization.
* :mod:`.sweep`: a validated job -> a :class:`~.sweep.SweepPlan` (what fixes the pixels,
  and its hash).
* :mod:`.families`: one module per model family, read like its diffusers pipeline, and
  :mod:`.families.registry`, the backend's table of architectures (torch-free).
* :mod:`.memory`: memory profiles for consumer GPUs. :mod:`.previews`: previews while
  denoising. :mod:`.upscale`: exact tiled upscaling. :mod:`.pictures`: decoding a picture or
  reference image a job sends. :mod:`.video`: the video families (Wan VACE).

It loads weights through :mod:`..models` and knows nothing of HTTP, the queue or the
command line.

``archviz_controlnet.backend.engine`` was one module before; every name it had (``Engine``,
``EngineOptions``, ``to_uint8``, ``Cancelled``, ``pick_device``...) is still importable from
here. They are loaded on first use, so ``from archviz_controlnet.backend.engine import
sweep`` (or the registry) does not import torch.

May import: core, backend.models.
"""

from __future__ import annotations

#: this package's own modules: never looked up in :mod:`.runner`
_SUBMODULES = {"runner", "sweep", "families", "memory", "previews", "upscale"}


def __getattr__(name):
    if name.startswith("_") or name in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import runner

    try:
        return getattr(runner, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
