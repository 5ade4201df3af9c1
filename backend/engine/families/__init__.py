"""One module per model family, each read top to bottom like its diffusers pipeline
(encode prompt -> prepare controls -> prepare latents -> one denoising step -> decode).
The sweep core in :mod:`..engine` runs them all the same way.

Adding a family: one module here with a :class:`.base.Family` subclass, its row in
:mod:`.registry` (module, ControlNets, components, dtype, flow rules, memory profiles, tiny
builder) and its tiny config (README, "Adding a family").
"""

from __future__ import annotations

import importlib

from .registry import ENGINES

#: arch -> module in this package (a module's ``FAMILIES`` maps its arches to instances)
MODULES = {arch: e.module for arch, e in ENGINES.items()}


def family_for(arch: str):
    """The :class:`.base.Family` that runs models of ``arch``."""
    if arch not in MODULES:
        raise ValueError(f"no engine family for arch {arch!r} (known: {', '.join(MODULES)})")
    return importlib.import_module(f".{MODULES[arch]}", __name__).FAMILIES[arch]
