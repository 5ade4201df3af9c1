"""The ``tiny`` model families: the real architectures shrunk to a few hundred kilobytes,
with seeded random weights and generated tokenizers. This package holds the store (where
they live, building one on first use) and the pieces the families share (seeds, the
generated CLIP tokenizer and text encoder); one module per family builds its models, the
way ``engine/families/`` is laid out: :mod:`.sd` (SD 1.5, SDXL), :mod:`.flux`, :mod:`.qwen`,
:mod:`.zimage`, :mod:`.edit` (FLUX.1 Kontext, Qwen-Image-Edit) and :mod:`.fast` (fast
mode's LoRAs and FLUX.1-schnell base).

They are written with ``save_pretrained`` into ``$ARCHVIZ_HOME/tiny/<version>/`` and loaded
back with ``from_pretrained`` by the model registry exactly like a real model folder, so
tests and the offline demo exercise the real loading path. They are never used in place of
a real model: only the ``tiny-*`` families point at them.

Layout (one folder per model, as on the Hugging Face hub)::

    tiny/v1/sd15/...                   SD 1.5 base and ControlNets (sd.py)
    tiny/v1/sdxl/...                   SDXL base, VAE and ControlNets (sd.py)
    tiny/v1/flux/...                   FLUX.1 base and ControlNets (flux.py)
    tiny/v1/qwen/...                   Qwen-Image (qwen.py)
    tiny/v1/zimage/...                 Z-Image-Turbo and its union ControlNet (zimage.py)
    tiny/v1/kontext/..., qwen-edit/... instruction-edit models (edit.py)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import zlib
from pathlib import Path

from ...engine.families.registry import ENGINES

TINY_VERSION = "v1"
_BUILD_LOCK = threading.Lock()


def archviz_home() -> Path:
    return Path(os.environ.get("ARCHVIZ_HOME") or Path.home() / ".cache" / "archviz").expanduser()


def tiny_root() -> Path:
    return archviz_home() / "tiny" / TINY_VERSION


def tiny_path(family: str, name: str) -> Path:
    """Folder of one tiny model: family ``sd15``/``sdxl``, name ``base``, ``controlnet-depth``..."""
    return tiny_root() / family / name


def is_tiny_path(path: str | os.PathLike) -> bool:
    try:
        Path(path).resolve().relative_to(tiny_root().resolve())
        return True
    except ValueError:
        return False


class NotATinyModel(ValueError):
    """A path inside the tiny store that is not a tiny model's own folder."""


def ensure_tiny(path: str | os.PathLike) -> Path:
    """Build the tiny model that lives at ``path`` unless it is already on disk.

    Only a tiny model's own folder (``tiny/<version>/<family>/<name>`` of a model this
    module builds) is built, or replaced when a build died halfway; any other path in the
    tiny store (a folder inside a model, a family folder, an unknown name) is a
    :class:`NotATinyModel` and nothing there is touched: a job must never make the server
    delete or rewrite files it did not create for that job."""
    path = Path(os.path.realpath(Path(path).expanduser()))
    rel = path.relative_to(Path(os.path.realpath(tiny_root())))
    try:
        if len(rel.parts) != 2:
            raise ValueError("not a model folder")
        family, name = rel.parts
        builder = _builder(family, name)
    except ValueError:
        raise NotATinyModel(f"{path} is not one of the tiny models (they are the folders "
                                 f"{tiny_root()}/FAMILY/NAME the server builds, e.g. sd15/controlnet-depth); "
                                 "nothing in the tiny store was changed") from None
    with _BUILD_LOCK:
        if (path / ".complete").exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=path.parent))
        try:
            builder(tmp)
            (tmp / ".complete").write_text("built by archviz_controlnet.backend.models.tiny\n")
            if path.exists() and not (path / ".complete").exists():
                shutil.rmtree(path, ignore_errors=True)  # a build that died halfway
            try:
                os.replace(tmp, path)
            except OSError:
                if not (path / ".complete").exists():  # another process finished first otherwise
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return path


#: Each tiny family is built by a module of this package (its ``builder(family, name)``),
#: loaded by name like the engine's family modules (``families.MODULES``): they use this
#: module's helpers (seeds, the generated CLIP tokenizer and text encoder).
#: (backend/engine/families/registry.py: ``tiny_module``, ``tiny_folders``)
TINY_MODULES = {folder: e.tiny_module for e in ENGINES.values() if e.tiny_module
                for folder in (e.arch, *e.tiny_folders)}
TINY_MODULES["wan"] = "wan"  # the tiny-wan video family (core/video.py; not an image arch)


def _builder(family: str, name: str):
    import importlib
    import sys

    # the family modules import this one for its helpers: loaded by name, like them
    fast = importlib.import_module(".fast", __package__).builder(family, name, sys.modules[__name__])
    if fast is not None:  # fast mode's tiny LoRA / schnell base
        return fast
    refs = importlib.import_module(".references", __package__).builder(family, name)
    if refs is not None:  # reference images' tiny IP-Adapters and Redux (references.py)
        return refs
    if family not in TINY_MODULES:
        raise ValueError(f"no tiny family {family!r}")
    return importlib.import_module(f".{TINY_MODULES[family]}", __package__).builder(family, name)


# ---------------------------------------------------------------------------------------
# Shared components: seeds, the generated CLIP tokenizer and text encoder
# ---------------------------------------------------------------------------------------

_TEXT_DIM = 32  # CLIP's hidden size (SD 1.5 / SDXL cross-attention, FLUX.1's pooled projection)


def _seed(text: str) -> int:
    return zlib.crc32(text.encode())


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(
        range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _tokenizer_vocab(pad_token: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A generated CLIP byte-level BPE vocabulary: every byte symbol, every byte symbol as a
    word end, merges for a few common words, and the special tokens."""
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges = []
    for word in ("the", "an", "in", "on", "light", "wood", "wall", "concrete", "modern", "interior"):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            a, b = parts[0], parts[1]
            merges.append((a, b))
            parts = [a + b] + parts[2:]
            vocab.setdefault(a + b, len(vocab))
    merges = list(dict.fromkeys(merges))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    if pad_token not in vocab:
        vocab[pad_token] = len(vocab)
    return vocab, merges


def _write_tokenizer_files(folder: Path, pad_token: str) -> None:
    """The tokenizer as the real SD repos ship it: vocab.json + merges.txt (+ two small
    JSON configs) and no tokenizer.json, so loading takes the same path as for them."""
    vocab, merges = _tokenizer_vocab(pad_token)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with open(folder / "vocab.json", "w", encoding="utf-8") as fh:
        json.dump(vocab, fh, ensure_ascii=False)
    with open(folder / "merges.txt", "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": pad_token}
    with open(folder / "special_tokens_map.json", "w") as fh:
        json.dump(specials, fh)
    with open(folder / "tokenizer_config.json", "w") as fh:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                   "errors": "replace", **specials}, fh)


def _tokenizer(folder: Path, pad_token: str = "<|endoftext|>"):
    """Write the generated tokenizer files and load them (transformers 4 and 5 alike)."""
    from transformers import CLIPTokenizer

    _write_tokenizer_files(folder, pad_token)
    return CLIPTokenizer.from_pretrained(str(folder))


def _text_encoder(tokenizer, projection: bool, seed: str):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=max(tokenizer.get_vocab().values()) + 1,
        hidden_size=_TEXT_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=_TEXT_DIM,
        hidden_act="gelu",
        bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids(tokenizer.pad_token),
    )
    torch.manual_seed(_seed(seed))
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
