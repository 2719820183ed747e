"""Third-party noise a user cannot act on is dropped one logger and one message at a time (visalign._quiet)."""

from __future__ import annotations

import logging
import warnings

import visalign  # noqa: F401 - installs the bitsandbytes filter
from visalign._quiet import BNB_CPU_KERNELS, dropped_messages
from visalign.models.lora import apply_lora
from visalign.testing.causal_lm import tiny_llama
from visalign.testing.tokenizers import word_level_tokenizer


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _recording(name: str) -> _Records:
    handler = _Records()
    logging.getLogger(name).addHandler(handler)
    return handler


def test_bitsandbytes_kernels_message_is_dropped_and_others_kept():
    name, prefix = BNB_CPU_KERNELS
    handler = _recording(name)
    try:
        # the message as bitsandbytes.backends.cpu.ops logs it at import on CPUs with AVX512-BF16
        logging.getLogger(name).warning(prefix + ": %s. Please make sure you already `pip install kernels`", "x")
        logging.getLogger(name).warning("a bitsandbytes warning that matters")
    finally:
        logging.getLogger(name).removeHandler(handler)
    assert handler.messages == ["a bitsandbytes warning that matters"]


def test_dropped_messages_is_scoped_to_the_block():
    handler = _recording("visalign.test_quiet")
    log = logging.getLogger("visalign.test_quiet")
    try:
        with dropped_messages("visalign.test_quiet", "No LoRA keys"):
            log.warning("No LoRA keys associated to CLIPTextModel")
            log.warning("kept inside")
        log.warning("No LoRA keys after the block")
    finally:
        log.removeHandler(handler)
    assert handler.messages == ["kept inside", "No LoRA keys after the block"]


def test_apply_lora_raises_no_deprecation_warning():
    # peft's PeftModel reads transformers' deprecated `is_gradient_checkpointing`; the user did nothing wrong.
    model = tiny_llama(word_level_tokenizer())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_lora(model, r=2, alpha=2, target_modules=["q_proj"])
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
