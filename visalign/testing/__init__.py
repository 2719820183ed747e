"""Tiny models of the real architectures, built in code for tests, docs and notebooks (no hub download).

Each builder returns seeded random weights; each ``save_*`` writes a folder that loads through the real
``from_pretrained`` path. Names are re-exported lazily, so ``import visalign.testing.tokenizers`` stays light.

- tokenizers: ``word_level_tokenizer``, ``clip_style_tokenizer``, ``SIMPLE_CHAT_TEMPLATE``, ``DEFAULT_WORDS``
- causal LMs: ``tiny_llama``, ``save_tiny_llama``; synthetic text data: ``synthetic_preferences``, ``synthetic_kto``
- VLMs: ``tiny_llava``, ``tiny_llava_next``, ``tiny_qwen2_vl`` and their ``save_*``
- diffusion: ``tiny_sd_components``/``tiny_sd_pipeline``/``save_tiny_sd`` (SD1.5, SD2.x via ``variant="sd2"``),
  ``tiny_sdxl_components``/``tiny_sdxl_pipeline``/``save_tiny_sdxl``, shapes ``TINY_SD``, ``TINY_SDXL``, ``SMALL_SDXL``
- CLIP: ``tiny_clip``/``save_tiny_clip`` (transformers), ``tiny_open_clip``/``save_tiny_open_clip``/
  ``register_tiny_open_clip`` (open_clip)
"""

from importlib import import_module

_EXPORTS = {
    "tokenizers": ("word_level_tokenizer", "clip_style_tokenizer", "SIMPLE_CHAT_TEMPLATE", "DEFAULT_WORDS"),
    "causal_lm": ("tiny_llama", "save_tiny_llama"),
    "text_data": ("synthetic_preferences", "synthetic_kto"),
    "vlm": ("tiny_llava", "save_tiny_llava", "tiny_llava_next", "save_tiny_llava_next", "tiny_qwen2_vl",
            "save_tiny_qwen2_vl"),
    "diffusion": ("DiffusionShape", "TINY_SD", "TINY_SDXL", "SMALL_SDXL", "tiny_sd_components", "tiny_sd_pipeline",
                  "save_tiny_sd", "tiny_sdxl_components", "tiny_sdxl_pipeline", "save_tiny_sdxl"),
    "clip": ("tiny_clip", "save_tiny_clip", "tiny_open_clip", "save_tiny_open_clip", "register_tiny_open_clip",
             "TINY_OPEN_CLIP_NAME"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'visalign.testing' has no attribute {name!r}")
    return getattr(import_module(f"visalign.testing.{_MODULE_OF[name]}"), name)
