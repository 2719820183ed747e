"""SPO's step-aware preference model (SPM; Liang et al., CVPR 2025, arXiv 2406.04314; diffusion-methods.md
§6.3, flow-and-online.md §1): a PickScore-style CLIP whose vision transformer is conditioned on the timestep ``t``.

- Timestep embedding ``c`` (DiT's ``TimestepEmbedder``, Peebles & Xie, ICCV 2023): ``[cos(t·f), sin(t·f)]`` with
  256 frequencies ``f_i = 10000^(−i/128)``, then ``Linear(256, D) → SiLU → Linear(D, D)`` (D = vision width).
- Every vision layer is an adaLN block: ``SiLU(c) → Linear(D, 6D)`` gives shift/scale/gate for attention and MLP,
  ``h += gate_msa·attn(LN1(h)·(1 + scale_msa) + shift_msa)``, the same for the MLP with LN2.
- The pooled output (post-layernorm CLS) is modulated by ``SiLU(c) → Linear(D, 2D)``: ``pooled·(1 + scale) + shift``.
- Score = ``exp(logit_scale)·cos(visual_projection(pooled), text_emb)`` (PickScore's scale).

The vision forward is written here from the CLIP vision model's submodules; transformers' classes are used as loaded.
Initialisation: modulation weights are zero, and, **deliberately unlike SPO's code** (which sets every layer's
modulation bias to 1, so shift and scale start at 1 too), the biases give shift 0, scale 0 and gate 1: an untrained
SPM scores exactly as the CLIP it was initialised from, at every ``t``. The embedder weights are N(0, 0.02) (biases
0) from a fixed seed.

Saved folder (:meth:`StepAwareScorer.save_pretrained`, written atomically): the CLIP's ``save_pretrained`` files and
its tokenizer (so ``pickscore`` loads the folder as the plain CLIP), ``step_aware.safetensors`` (the step modules,
keys ``embedder.*``, ``layers.<i>.*``, ``pooled.*``) and ``step_aware_config.json`` (format, version, sizes).
Everything loads strictly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from .base import ScorerInfo, ScoreResult
from .inputs import Images, as_items
from .pickscore import PickScore
from .weights import load_strict, read_state_dict, resolve_file

STEP_WEIGHTS = "step_aware.safetensors"
STEP_CONFIG = "step_aware_config.json"
FORMAT = "visalign-step-aware"
VERSION = 1
FREQUENCY_DIM = 256
MAX_PERIOD = 10_000
#: Accuracy of the SPM is reported at these timesteps (SPO's evaluation).
EVAL_TIMESTEPS = (0, 251, 501, 701, 951)
_INIT_SEED = 0


def timestep_frequencies(timesteps: torch.Tensor, dim: int = FREQUENCY_DIM, max_period: int = MAX_PERIOD):
    """DiT's sinusoidal features of ``[B]`` timesteps: ``[B, dim]`` = ``cat(cos(t·f), sin(t·f))``,
    ``f_i = max_period^(−i/(dim/2))`` (float32)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x·(1 + scale) + shift``."""
    return x * (1 + scale) + shift


class StepModules(nn.Module):
    """The timestep conditioning of a CLIP vision tower of width ``hidden_size`` and ``num_layers`` layers."""

    def __init__(self, hidden_size: int, num_layers: int, frequency_dim: int = FREQUENCY_DIM,
                 max_period: int = MAX_PERIOD):
        super().__init__()
        self.frequency_dim, self.max_period = frequency_dim, max_period
        self.embedder = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(),
                                      nn.Linear(hidden_size, hidden_size))
        self.layers = nn.ModuleList(nn.Linear(hidden_size, 6 * hidden_size) for _ in range(num_layers))
        self.pooled = nn.Linear(hidden_size, 2 * hidden_size)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Embedder N(0, 0.02) from a fixed seed; modulation at the identity (shift 0, scale 0, gate 1)."""
        generator = torch.Generator().manual_seed(_INIT_SEED)
        for linear in (self.embedder[0], self.embedder[2]):
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 0.02)
            linear.bias.zero_()
        for linear in (*self.layers, self.pooled):
            linear.weight.zero_()
            linear.bias.zero_()
        for linear in self.layers:  # chunks: shift, scale, gate (attention), shift, scale, gate (MLP)
            linear.bias.view(6, -1)[[2, 5]] = 1.0

    def condition(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``SiLU(c)`` ``[B, D]``, the input of every modulation."""
        features = timestep_frequencies(timesteps, self.frequency_dim, self.max_period).to(dtype)
        return F.silu(self.embedder(features))

    def config(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "hidden_size": self.pooled.in_features,
                "num_layers": len(self.layers), "frequency_dim": self.frequency_dim, "max_period": self.max_period}


class StepAwareCLIP(nn.Module):
    """A transformers ``CLIPModel`` (``clip``) and its :class:`StepModules` (``step``): the trainable SPM."""

    def __init__(self, clip: nn.Module, step: StepModules):
        super().__init__()
        self.clip, self.step = clip, step

    def image_embeds(self, pixel_values: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Projected (unnormalised) image embeddings ``[B, P]`` of normalised pixels at timesteps ``[B]``."""
        vision = self.clip.vision_model
        dtype = self.clip.visual_projection.weight.dtype
        h = vision.pre_layrnorm(vision.embeddings(pixel_values.to(dtype)))
        c = self.step.condition(timesteps.to(h.device), dtype)
        for layer, modulation in zip(vision.encoder.layers, self.step.layers, strict=True):
            shift1, scale1, gate1, shift2, scale2, gate2 = modulation(c).unsqueeze(1).chunk(6, dim=-1)
            attn, _ = layer.self_attn(hidden_states=modulate(layer.layer_norm1(h), shift1, scale1))
            h = h + gate1 * attn
            h = h + gate2 * layer.mlp(modulate(layer.layer_norm2(h), shift2, scale2))
        shift, scale = self.step.pooled(c).chunk(2, dim=-1)
        return self.clip.visual_projection(modulate(vision.post_layernorm(h[:, 0]), shift, scale))


class StepAwareScorer(PickScore):
    """The SPM as a scorer. ``model`` is a saved SPM folder (or hub repo) in this module's format; with
    ``init_from_clip=True`` it is a PickScore-style CLIP folder and the step modules start at the identity (an
    untrained SPM). ``score``/``score_tensor``/``preference``/``rank`` take ``timesteps=`` (one per image, or one
    for all; default 0). ``model`` holds the trainable :class:`StepAwareCLIP` (frozen and in eval mode as loaded)."""

    info = ScorerInfo(
        name="step-aware", formula="exp(logit_scale) * cos(t, v(image, timestep))", raw_range=(-100.0, 100.0),
        differentiable=True,
    )

    def __init__(self, model: str, *, init_from_clip: bool = False, tokenizer: str | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                 resize: Literal["pil", "torch"] = "pil"):
        super().__init__(model, tokenizer=tokenizer, device=device, dtype=dtype, resize=resize)
        vision = self.backbone.net.config.vision_config
        if init_from_clip:
            step = StepModules(vision.hidden_size, vision.num_hidden_layers)
        else:
            step = _load_step_modules(model, vision.hidden_size, vision.num_hidden_layers)
        step = step.to(self.backbone.device, self.backbone.dtype).eval().requires_grad_(False)
        self.model = StepAwareCLIP(self.backbone.net, step)
        variant = "untrained: identity step modules on the CLIP" if init_from_clip else ""
        self.provenance = dataclasses.replace(self.provenance, variant=variant)
        self._pending: torch.Tensor | None = None

    # ---- timesteps ---------------------------------------------------------------------------------------------
    def score(self, images: Images, prompts: str | Sequence[str], *, timesteps=None, **kwargs: Any) -> ScoreResult:
        """:meth:`Scorer.score` with the images' timesteps (a number for all, or one per image; default 0)."""
        items = as_items(images)
        with self._at(timesteps, len(items)):
            return super().score(items, prompts, **kwargs)

    def score_tensor(self, pixels: torch.Tensor, prompts: str | Sequence[str], *, timesteps=None) -> ScoreResult:
        """:meth:`Scorer.score_tensor` with the images' timesteps (a number for all, or one per image; default 0)."""
        n = pixels.shape[0] if isinstance(pixels, torch.Tensor) and pixels.ndim == 4 else 0
        with self._at(timesteps, n):
            return super().score_tensor(pixels, prompts)

    @contextmanager
    def _at(self, timesteps, n: int) -> Iterator[None]:
        """Queue the call's timesteps; :meth:`forward` takes them batch by batch, in order."""
        self._pending = _check_timesteps(timesteps, n)
        try:
            yield
        finally:
            self._pending = None

    def forward(self, inputs: torch.Tensor, prompt_context: torch.Tensor, prompt_index: torch.Tensor):
        b = inputs.shape[0]
        if self._pending is None:
            timesteps = torch.zeros(b)
        else:
            timesteps, self._pending = self._pending[:b], self._pending[b:]
        image = F.normalize(self.model.image_embeds(inputs.to(self.backbone.device), timesteps).float(), dim=-1)
        text = prompt_context[prompt_index.to(prompt_context.device)]
        cosine = (image * text).sum(-1)
        return self.from_cosine(cosine), {"cosine": cosine, "timestep": timesteps.to(cosine.device)}

    # ---- saving ------------------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the SPM folder (see the module docstring) atomically: into a hidden sibling, then renamed over
        ``folder`` (an existing folder is replaced only once the new one is complete)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        tmp, old = folder.with_name(f".{folder.name}.{tag}.tmp"), folder.with_name(f".{folder.name}.{tag}.old")
        try:
            self.backbone.net.save_pretrained(tmp)
            self.backbone.tokenizer.save_pretrained(tmp)
            step = self.model.step
            save_file({k: v.detach().contiguous().cpu() for k, v in step.state_dict().items()}, tmp / STEP_WEIGHTS,
                      metadata={"format": "pt"})
            (tmp / STEP_CONFIG).write_text(json.dumps(step.config(), indent=2) + "\n")
            if folder.exists():
                folder.rename(old)
            try:
                tmp.rename(folder)
            except BaseException:
                if old.exists():
                    old.rename(folder)
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        return folder


def _check_timesteps(timesteps, n: int) -> torch.Tensor:
    """``[n]`` float32 timesteps from ``None`` (all 0), a number, or ``n`` values; negatives and NaN raise."""
    if timesteps is None:
        return torch.zeros(n)
    t = torch.as_tensor(timesteps).detach().float().cpu()
    if t.ndim == 0:
        t = t.expand(n)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"timesteps: got shape {tuple(t.shape)} for {n} images; give one number or one per image")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"timesteps must be finite and >= 0, got {t.tolist()}")
    return t


def _load_step_modules(model: str, hidden_size: int, num_layers: int) -> StepModules:
    """The step modules of an SPM folder (or hub repo), strictly: the config must name this format and fit the CLIP,
    the weights must hold exactly the modules' keys."""
    try:
        config_file = resolve_file(model, STEP_CONFIG)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}: not a step-aware model folder; to start an untrained SPM from a CLIP, "
                                "pass init_from_clip=True") from None
    config = json.loads(config_file.read_text())
    expected = {"format", "version", "hidden_size", "num_layers", "frequency_dim", "max_period"}
    if set(config) != expected:
        raise ValueError(f"{config_file}: keys {sorted(config)} differ from {sorted(expected)}")
    if config["format"] != FORMAT or config["version"] != VERSION:
        raise ValueError(f"{config_file}: format {config['format']!r} version {config['version']!r} is not "
                         f"{FORMAT!r} version {VERSION}")
    for key, value in (("hidden_size", hidden_size), ("num_layers", num_layers)):
        if config[key] != value:
            raise ValueError(f"{config_file}: {key} {config[key]} does not fit the CLIP's vision tower ({value})")
    step = StepModules(hidden_size, num_layers, config["frequency_dim"], config["max_period"])
    weights = resolve_file(model, STEP_WEIGHTS)
    load_strict(step, read_state_dict(weights), weights)
    return step


def step_aware_preference_loss(scores_0: torch.Tensor, scores_1: torch.Tensor, label_0: torch.Tensor,
                               weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The SPM's objective, PickScore's (Kirstain et al. 2023, ``clip_criterion.py``): the 2-way cross-entropy of
    ``softmax([s_0, s_1])`` against ``(label_0, 1 − label_0)`` minus the target's entropy, i.e. the KL divergence to
    the target, so a tie (0.5/0.5) fitted exactly costs 0 (PickScore's ``+log 0.5``; one-hot targets have entropy 0).
    The weighted mean uses ``weights`` (SPO: ``1/num_examples_per_prompt``) normalised to sum 1; default uniform.

    Returns ``(loss, accuracy)``: accuracy over the non-tie pairs (``label_0`` ≠ 0.5), a score tie counting as wrong;
    NaN when every pair is a tie. Scores are the raw ``exp(logit_scale)·cos`` scores."""
    logits = torch.stack([scores_0, scores_1], dim=-1).float()
    target = torch.stack([label_0, 1 - label_0], dim=-1).to(logits)
    per_pair = -(target * torch.log_softmax(logits, dim=-1)).sum(-1) - torch.special.entr(target).sum(-1)
    w = torch.ones_like(per_pair) if weights is None else weights.to(per_pair)
    loss = (w * per_pair).sum() / w.sum()
    with torch.no_grad():
        decided = target[:, 0] != 0.5
        correct = torch.where(target[:, 0] > 0.5, logits[:, 0] > logits[:, 1], logits[:, 1] > logits[:, 0])
        accuracy = correct[decided].float().mean()
    return loss, accuracy
