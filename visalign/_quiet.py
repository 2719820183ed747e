"""Quieting third-party messages a visalign user cannot act on: one logger and one message at a time, never a
global filter, so every other warning still shows.

- bitsandbytes (loaded by peft and diffusers) logs "Failed to load CPU gemm_4bit_forward ... `pip install kernels`"
  at import on CPUs with AVX512-BF16; it concerns 4-bit inference kernels visalign never calls, so it is dropped
  for the whole process (``visalign/__init__.py``).
- ``transformers_bars_off()``: transformers' per-model "Loading weights" bars, nested inside diffusers' "Loading
  pipeline components" bar while a pipeline loads.
- ``dropped_messages(logger, prefix)``: a message dropped while a block runs, e.g. diffusers' "No LoRA keys
  associated to CLIPTextModel" when a UNet-only LoRA loads (``visalign.evaluation.generate.load_pipeline``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

BNB_CPU_KERNELS = ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community")


class _DropPrefix(logging.Filter):
    """Drops the records whose (unformatted) message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def drop_messages(logger_name: str, prefix: str) -> logging.Filter:
    """Drop, from now on, the messages of logger ``logger_name`` that start with ``prefix``; returns the filter."""
    drop = _DropPrefix(prefix)
    logging.getLogger(logger_name).addFilter(drop)
    return drop


@contextmanager
def dropped_messages(logger_name: str, prefix: str) -> Iterator[None]:
    """Drop the messages of ``logger_name`` starting with ``prefix`` while the block runs."""
    drop = drop_messages(logger_name, prefix)
    try:
        yield
    finally:
        logging.getLogger(logger_name).removeFilter(drop)


@contextmanager
def bars_off(is_enabled: Callable[[], bool], disable: Callable[[], None], enable: Callable[[], None]
             ) -> Iterator[None]:
    """A library's progress bars off while the block runs (restored after, if they were on), given its three
    switches (e.g. ``datasets.is_progress_bar_enabled``, ``disable_progress_bars``, ``enable_progress_bars``)."""
    was_enabled = is_enabled()
    disable()
    try:
        yield
    finally:
        if was_enabled:
            enable()


def transformers_bars_off() -> AbstractContextManager[None]:
    """transformers' progress bars off while the block runs."""
    from transformers.utils import logging as hf_logging

    return bars_off(hf_logging.is_progress_bar_enabled, hf_logging.disable_progress_bar,
                    hf_logging.enable_progress_bar)
