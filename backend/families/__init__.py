"""One module per model family, each read top to bottom like its diffusers pipeline
(encode prompt -> prepare controls -> prepare latents -> one denoising step -> decode).
The sweep core in :mod:`..engine` runs them all the same way.

Adding a family: one module here with a :class:`.base.Family` subclass registered in
:data:`MODULES`, and its tiny config in :mod:`..tiny`.
"""

from __future__ import annotations

import importlib

#: arch -> module in this package (a module's ``FAMILIES`` maps its arches to instances)
MODULES = {"sd15": "sd", "sdxl": "sd", "flux": "flux", "zimage": "zimage", "qwen": "qwen"}
MODULES.update({"kontext": "edit", "qwen-edit": "edit"})  # instruction edits


def family_for(arch: str):
    """The :class:`.base.Family` that runs models of ``arch``."""
    if arch not in MODULES:
        raise ValueError(f"no engine family for arch {arch!r} (known: {', '.join(MODULES)})")
    return importlib.import_module(f".{MODULES[arch]}", __name__).FAMILIES[arch]
