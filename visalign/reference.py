"""How the reference model is obtained, shared by every model family (reference §C.4).

``make_reference(strategy, policy, dtype=None) -> Reference``; then, every step, one call for every strategy
(``visalign.objective`` makes it), with the family's likelihood provider (``visalign.likelihood.base``)::

    ref = reference.loglik(policy, inputs, likelihood)  # PairLogLik (what likelihood.pair_loglik returns), or None

``active`` runs the block in eval mode (no dropout; transformers' gradient checkpointing is off outside training)
and restores every module's train/eval flag afterwards. ``policy`` may be the accelerate-wrapped model; the
strategies act on the unwrapped module. Per step ``active`` walks no module tree: the unwrapped policy, its list of
submodules (for the mode flags) and, for ``disable_adapter``, its adapter layers are found once, in
``make_reference``; so the policy's modules must not change after it (a different ``policy`` object is looked up
afresh). On an SDXL-shaped UNet with LoRA (2.5k modules) the walks cost ~50 ms per step on a CPU core.

Strategies (``REFERENCE_STRATEGIES``):

- ``frozen_copy``: a deep copy of the policy taken at construction, in eval mode with ``requires_grad_(False)``,
  optionally cast to ``dtype``. Costs a second set of weights; works for any model.
- ``disable_adapter``: the policy with every adapter disabled, i.e. the base model (peft's ``disable_adapter()``
  context for a ``PeftModel``; ``disable_adapters()``/``enable_adapters()`` for transformers/diffusers models with
  peft adapters). With a fresh LoRA (``B = 0``) this equals ``frozen_copy`` at step 0, at no memory cost.
- ``ref_adapter``: for a ``PeftModel`` that already carries a trained adapter (DPO on top of an SFT LoRA): a frozen
  copy of the active adapter named ``"ref"`` is added at construction and activated with ``set_adapter`` during
  the reference forward (TRL 1.16's rule for a ``PeftModel`` passed without ``peft_config``).
- ``precomputed``: no forward during training; reference log-probs are columns of the dataset
  (``visalign.data.ref_cache``, attached by the trainer when ``reads_batch``), read back by the provider's
  ``precomputed(inputs)``.
- ``none``: reference-free losses; no reference at all: ``loglik`` returns ``None``.

``precomputed`` and ``none`` run no forward, so their ``active`` raises.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import extract_model_from_parallel

from visalign.models.lora import is_peft_model

if TYPE_CHECKING:
    from visalign.likelihood.base import LikelihoodProvider

REFERENCE_STRATEGIES = ("frozen_copy", "disable_adapter", "ref_adapter", "precomputed", "none")
REF_ADAPTER_NAME = "ref"


class ModeFlags:
    """The train/eval flags of every submodule of ``root``, listed once, to switch the tree to eval mode and back.

    ``Module.eval()`` walks the tree and sets each module's ``training`` attribute; when no class in the tree overrides
    ``train`` or ``__setattr__`` (diffusers UNets with peft LoRA, plain torch modules), :meth:`eval_mode` sets the
    same attributes from the cached list instead. Otherwise (transformers' ``PreTrainedModel.train`` re-applies
    kernels, peft's DoRA layers clear a cache) it calls the real ``root.eval()``.
    """

    def __init__(self, root: torch.nn.Module):
        self.root = root
        self.modules = list(root.modules())
        self._plain = all(type(m).train is torch.nn.Module.train and type(m).__setattr__ is torch.nn.Module.__setattr__
                          for m in self.modules)

    @contextmanager
    def eval_mode(self) -> Iterator[torch.nn.Module]:
        """Eval mode for the block; every submodule's flag is restored after."""
        flags = [m.training for m in self.modules]
        set_flag = object.__setattr__ if self._plain else setattr
        if self._plain:
            for m in self.modules:
                set_flag(m, "training", False)
        else:
            self.root.eval()
        try:
            yield self.root
        finally:
            for m, training in zip(self.modules, flags):
                set_flag(m, "training", training)


@contextmanager
def reference_mode(module: torch.nn.Module, flags: ModeFlags | None = None) -> Iterator[torch.nn.Module]:
    """``torch.no_grad()`` and eval mode for the block; every submodule's train/eval flag is restored after.

    ``flags``: the module's :class:`ModeFlags` when the caller keeps them across calls (else listed now).
    """
    with (flags or ModeFlags(module)).eval_mode(), torch.no_grad():
        yield module


@dataclass
class Reference:
    """A reference strategy bound to one policy; ``loglik(policy, inputs, likelihood)`` gives the reference
    log-likelihoods of a step's inputs, whatever the strategy; ``active(policy)`` yields the module to run as the
    reference.

    Attributes:
        strategy: one of ``REFERENCE_STRATEGIES``.
        model: the frozen copy for ``frozen_copy`` (e.g. to prepare it with accelerate), else ``None``.
    """

    strategy: str
    model: torch.nn.Module | None = None
    _switch: Callable[[], AbstractContextManager] | None = None
    _policy: torch.nn.Module | None = None
    _flags: ModeFlags | None = None

    @property
    def needs_forward(self) -> bool:
        """Whether the strategy runs a reference forward during training."""
        return self.strategy not in ("precomputed", "none")

    @property
    def reads_batch(self) -> bool:
        """Whether the reference log-likelihoods are batch columns (``precomputed``): the trainer attaches them to its
        datasets (``visalign.data.ref_cache``) before training."""
        return self.strategy == "precomputed"

    def loglik(self, policy: torch.nn.Module, inputs: Any, likelihood: LikelihoodProvider) -> Any:
        """The reference's log-likelihoods of ``inputs``: ``likelihood.pair_loglik(reference module, inputs)`` under
        ``active`` (no grad, eval mode) for the strategies with a forward, ``likelihood.precomputed(inputs)`` (the
        batch's ``ref_*`` columns) for ``precomputed``, ``None`` for ``none``."""
        if self.reads_batch:
            return likelihood.precomputed(inputs)
        if not self.needs_forward:
            return None
        with self.active(policy) as module:
            return likelihood.pair_loglik(module, inputs)

    @contextmanager
    def active(self, policy: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Yield the module whose forward is the reference forward, under ``reference_mode``."""
        if not self.needs_forward:
            raise ValueError(f"reference strategy {self.strategy!r} runs no reference forward")
        if self.model is not None:
            flags = self._flags if self._flags is not None and self._flags.root is self.model else None
            with reference_mode(self.model, flags) as module:
                yield module
            return
        if policy is self._policy:
            flags, switch = self._flags, self._switch
        else:  # not the policy bound in make_reference: look it up afresh
            module = extract_model_from_parallel(policy)
            flags, switch = ModeFlags(module), _SWITCHES[self.strategy](module)
        with reference_mode(flags.root, flags) as module, switch():
            yield module


def make_reference(strategy: str, policy: torch.nn.Module, *, dtype: torch.dtype | None = None) -> Reference:
    """Bind ``strategy`` to ``policy`` (module docstring). ``dtype`` is the ``frozen_copy``'s (an error with the other
    forward strategies; ``precomputed`` and ``none`` load no model, so it is moot there)."""
    if strategy not in REFERENCE_STRATEGIES:
        raise ValueError(f"unknown reference strategy {strategy!r}; use one of {list(REFERENCE_STRATEGIES)}")
    if strategy in ("precomputed", "none"):
        return Reference(strategy)
    if dtype is not None and strategy != "frozen_copy":
        raise ValueError(f"reference_dtype applies to reference 'frozen_copy' only, not {strategy!r}")
    module = extract_model_from_parallel(policy)
    if strategy == "frozen_copy":
        ref = copy.deepcopy(module).eval().requires_grad_(False)
        ref = ref if dtype is None else ref.to(dtype)
        return Reference(strategy, model=ref, _flags=ModeFlags(ref))
    if strategy == "disable_adapter":
        if not (is_peft_model(module) or getattr(module, "_hf_peft_config_loaded", False)):
            raise ValueError(
                "reference 'disable_adapter' needs a model with peft adapters (use_lora); use 'frozen_copy' for "
                "full fine-tuning"
            )
    else:
        _add_frozen_ref_adapter(module)
    return Reference(strategy, _switch=_SWITCHES[strategy](module), _policy=policy, _flags=ModeFlags(module))


def _adapters_disabled(module: torch.nn.Module) -> Callable[[], AbstractContextManager]:
    """The ``disable_adapter`` switch of ``module``: peft's ``disable_adapter()`` context for a ``PeftModel``; for a
    diffusers/transformers model with integrated adapters, what their ``disable_adapters()``/``enable_adapters()``
    do (``enable_adapters(False/True)`` on every peft tuner layer and modules-to-save wrapper) over the layers listed
    once here instead of a walk of the whole model (and a package-version check) per call."""
    if is_peft_model(module):
        return module.disable_adapter
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    layers = [m for m in module.modules() if isinstance(m, (BaseTunerLayer, ModulesToSaveWrapper))]

    @contextmanager
    def switch() -> Iterator[None]:
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in layers:
                layer.enable_adapters(True)

    return switch


def _add_frozen_ref_adapter(module: torch.nn.Module) -> None:
    """Add adapter ``"ref"``: the active adapter's config and current weights, frozen (TRL 1.16 §C.4)."""
    if not is_peft_model(module):
        raise ValueError("reference 'ref_adapter' needs a peft PeftModel carrying the adapter to copy")
    if REF_ADAPTER_NAME in module.peft_config:
        return
    source = module.active_adapter
    module.add_adapter(REF_ADAPTER_NAME, module.peft_config[source])
    params = dict(module.named_parameters())
    copied = 0
    for name, param in params.items():
        if f".{source}." in name:
            ref_param = params[name.replace(f".{source}.", f".{REF_ADAPTER_NAME}.")]
            ref_param.data.copy_(param.data)
            copied += 1
    if copied == 0:
        raise ValueError(f"adapter {source!r} has no parameters to copy into the reference adapter")
    for name, param in module.named_parameters():
        if f".{REF_ADAPTER_NAME}." in name:
            param.requires_grad_(False)


@contextmanager
def _ref_adapter_active(module: torch.nn.Module) -> Iterator[None]:
    previous = module.active_adapter
    grads = {name: p.requires_grad for name, p in module.named_parameters()}
    module.set_adapter(REF_ADAPTER_NAME, inference_mode=True)
    try:
        yield
    finally:
        module.set_adapter(previous)
        for name, p in module.named_parameters():
            p.requires_grad_(grads[name])


#: strategy -> (unwrapped policy -> the context that switches it to the reference for a block).
_SWITCHES: dict[str, Callable[[torch.nn.Module], Callable[[], AbstractContextManager]]] = {
    "disable_adapter": _adapters_disabled, "ref_adapter": lambda module: partial(_ref_adapter_active, module),
}
