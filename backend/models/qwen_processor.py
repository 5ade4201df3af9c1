"""Qwen2-VL's processor for pictures only (Qwen-Image-Edit's ``processor`` folder)."""

from __future__ import annotations


def image_processor_class():
    """Qwen2-VL's processor for pictures only.

    transformers' ``Qwen2VLProcessor`` also takes a video processor, and without torchvision
    transformers cannot even check that argument's class, so loading the real processor
    fails. This subclass has the same tokenizer, image processor, files and ``__call__``,
    without the video part (an edit never sends a video)."""
    from transformers import Qwen2VLProcessor

    class Qwen2VLImageProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    Qwen2VLImageProcessor.__qualname__ = Qwen2VLImageProcessor.__name__ = "Qwen2VLProcessor"
    return Qwen2VLImageProcessor
