"""Diffusion ELBO surrogate log-likelihood of preference pairs (the scoring step).

Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908, Eq. 14 and Supp. S4 Eq. 46) replaces the intractable image
log-likelihood by the per-sample denoising error at one noised point ``(x_t, t, eps)``. We report

    loglik = -0.5 * mean_{c,h,w} (target - pred)^2        (fp32)

so that the plain DPO sigmoid of the loss core, ``-logsigma(beta * ((ll_c - ref_c) - (ll_r - ref_r)))``, is exactly
the paper's ``-logsigma(-beta/2 * (Delta_theta - Delta_ref))`` with ``Delta = MSE(chosen) - MSE(rejected)``. beta
therefore carries the Salesforce/paper convention (2000-5000); the diffusers SD1.5 port drops the 1/2, so its
``--beta_dpo 2500`` is our beta 5000 (reference ``diffusion-methods.md`` §4.1).

Noising is a separate step (``visalign.likelihood.noise``): it returns a :class:`NoisedLatents` that the policy and
the reference both score, so they see exactly the same ``x_t``, ``t`` and ``eps``.

:class:`DiffusionELBO` is the provider a trainer calls: ``prepare(batch, step)`` turns a collated batch into those
inputs (latents, conditioning, keyed noise) and ``pair_loglik(unet, inputs)`` scores them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from visalign.losses.types import PairLogLik
from visalign.models.diffusion import SDXL, encode_images, encode_prompts, sdxl_time_ids

if TYPE_CHECKING:
    from visalign.models.diffusion import DiffusionComponents

SUPPORTED_PREDICTION_TYPES = ("epsilon", "v_prediction")
#: ``PairLogLik.nll_scale`` of the ELBO surrogate: the supervised (SFT) loss is the denoising MSE, ``-2 * loglik``.
DIFFUSION_NLL_SCALE = 2.0


@dataclass
class UNetCond:
    """Conditioning of a ``UNet2DConditionModel`` for a batch of N samples.

    Attributes:
        encoder_hidden_states: ``[N, L, D]`` prompt token embeddings.
        text_embeds: SDXL only, ``[N, D_pooled]`` pooled embedding (``added_cond_kwargs["text_embeds"]``).
        time_ids: SDXL only, ``[N, 6]`` micro-conditioning (``added_cond_kwargs["time_ids"]``).
    """

    encoder_hidden_states: torch.Tensor
    text_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.text_embeds is None) != (self.time_ids is None):
            raise ValueError("UNetCond: SDXL conditioning needs both text_embeds and time_ids (or neither)")
        n = self.encoder_hidden_states.shape[0]
        for name in ("text_embeds", "time_ids"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise ValueError(
                    f"UNetCond.{name} has {value.shape[0]} rows but encoder_hidden_states has {n}"
                )

    def __len__(self) -> int:
        return self.encoder_hidden_states.shape[0]

    def select(self, index: torch.Tensor) -> "UNetCond":
        """The rows ``index`` (an index or boolean tensor over the N samples)."""

        def pick(t):
            return None if t is None else t[index.to(t.device)]

        return UNetCond(pick(self.encoder_hidden_states), pick(self.text_embeds), pick(self.time_ids))

    def unet_kwargs(self, dtype: torch.dtype, device: torch.device) -> dict:
        """Keyword arguments for ``unet(sample, t, **kwargs)``, cast to the UNet's dtype and device."""
        kwargs = {"encoder_hidden_states": self.encoder_hidden_states.to(device=device, dtype=dtype)}
        if self.text_embeds is not None:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": self.text_embeds.to(device=device, dtype=dtype),
                "time_ids": self.time_ids.to(device=device, dtype=dtype),
            }
        return kwargs


def pair_cond(chosen: UNetCond, rejected: UNetCond | None = None) -> UNetCond:
    """``[chosen; rejected]`` conditioning for B pairs: ``2B`` rows.

    Diffusion-DPO, MaPO, InPO: pass the caption's conditioning once; it is used for both images of each pair. DCPO
    (arXiv 2502.06023, ``src/dcpo_trainer.py``): pass ``rejected`` built from the rejected side's caption, so the
    chosen image is scored given ``caption_chosen`` and the rejected one given ``caption_rejected``. SDXL time ids
    are per image, so for SDXL pass ``rejected`` with the rejected images' own time ids even when captions match.
    """
    rejected = chosen if rejected is None else rejected
    if len(chosen) != len(rejected):
        raise ValueError(f"pair_cond: {len(chosen)} chosen rows but {len(rejected)} rejected rows")

    def cat(a, b):
        return None if a is None else torch.cat([a, b.to(a.device)])

    return UNetCond(
        cat(chosen.encoder_hidden_states, rejected.encoder_hidden_states),
        cat(chosen.text_embeds, rejected.text_embeds),
        cat(chosen.time_ids, rejected.time_ids),
    )


@dataclass
class NoisedLatents:
    """One noised point per sample, ``[chosen; rejected]`` along dim 0, all fp32 except ``timesteps`` (long).

    Invariant: ``noisy_latents = sqrt(abar_t) * latents + sqrt(1 - abar_t) * noise`` (up to fp32 rounding).
    """

    latents: torch.Tensor
    noisy_latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor


def check_prediction_type(scheduler) -> str:
    """The scheduler's ``prediction_type``, or a ValueError naming the config key if we cannot score it."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type not in SUPPORTED_PREDICTION_TYPES:
        raise ValueError(
            f"scheduler.config.prediction_type={prediction_type!r} is not supported; expected one of "
            f"{SUPPORTED_PREDICTION_TYPES}"
        )
    return prediction_type


def unet_input_spec(unet) -> tuple[torch.dtype, torch.device]:
    """dtype and device the (possibly DDP-wrapped) UNet expects its inputs in: those of its first floating-point
    parameter (``conv_in.weight``), the parameter diffusers' ``ModelMixin.dtype``/``.device`` report too. Those
    properties also walk every submodule looking for layerwise-casting and group-offloading hooks (~15 ms per call
    on an SDXL-shaped UNet on a CPU core, twice per training step); training uses neither."""
    module = getattr(unet, "module", unet)
    param = next((p for p in module.parameters() if p.is_floating_point()), None)
    if param is None:
        raise ValueError(f"unet_input_spec: {type(module).__name__} has no floating-point parameters")
    return param.dtype, param.device


def unet_predict(unet, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: UNetCond) -> torch.Tensor:
    """The UNet's raw output (eps or v) for each sample, upcast to fp32."""
    dtype, device = unet_input_spec(unet)
    out = unet(
        noisy_latents.to(device=device, dtype=dtype),
        timesteps.to(device),
        **cond.unet_kwargs(dtype, device),
        return_dict=False,
    )[0]
    return out.float()


def diffusion_target(noised: NoisedLatents, scheduler) -> torch.Tensor:
    """Regression target in fp32: eps, or ``v = sqrt(abar)*eps - sqrt(1-abar)*x0`` via ``scheduler.get_velocity``."""
    if check_prediction_type(scheduler) == "epsilon":
        return noised.noise.float()
    return scheduler.get_velocity(noised.latents.float(), noised.noise.float(), noised.timesteps).float()


def diffusion_loglik(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ELBO surrogate ``-0.5 * mean over all non-batch dims of (target - pred)^2`` in fp32, ``[N]``."""
    return -0.5 * (target.float() - pred.float()).pow(2).flatten(1).mean(dim=1)


def diffusion_pair_loglik(unet, noised: NoisedLatents, cond: UNetCond, *, scheduler) -> PairLogLik:
    """ONE UNet forward over ``[chosen; rejected]`` (2B samples) and the per-sample log-likelihoods of the pairs.

    Call it with the policy (with grad) and with the reference (under ``torch.no_grad()``) on the same ``noised``
    and ``cond``. ``cond`` has 2B rows (see :func:`pair_cond`).
    """
    n = noised.noisy_latents.shape[0]
    if n % 2 or len(cond) != n:
        raise ValueError(
            f"diffusion_pair_loglik: expected an even batch [chosen; rejected] with as many conditioning rows; got "
            f"{n} latents and {len(cond)} conditioning rows"
        )
    pred = unet_predict(unet, noised.noisy_latents, noised.timesteps, cond)
    target = diffusion_target(noised, scheduler).to(pred.device)
    chosen, rejected = diffusion_loglik(pred, target).chunk(2)
    return PairLogLik(chosen=chosen, rejected=rejected, nll_scale=DIFFUSION_NLL_SCALE)


def mse_metrics(policy: PairLogLik, ref: PairLogLik | None) -> dict[str, torch.Tensor]:
    """Mean denoising MSE of each side, ``-2·loglik``: ``mse/chosen|rejected`` and, with a reference,
    ``ref_mse/chosen|rejected`` (the diffusion scripts' logged MSEs)."""
    sides = {"mse/chosen": policy.chosen, "mse/rejected": policy.rejected}
    if ref is not None:
        sides.update({"ref_mse/chosen": ref.chosen, "ref_mse/rejected": ref.rejected})
    return {key: -DIFFUSION_NLL_SCALE * value.detach().mean() for key, value in sides.items()}


def pair_noise_seed(seed: int, step: int, index: int) -> int:
    """The seed of pair ``index``'s noise at optimizer step ``step`` (:class:`DiffusionELBO`: keyed noise)."""
    return int(np.random.SeedSequence([seed, step, int(index)]).generate_state(1, dtype=np.uint64)[0])


class DiffusionELBO:
    """The diffusion likelihood provider: the ELBO surrogate (ε or v prediction, the scheduler's) of a batch of pairs.

    ``prepare(batch, step)`` builds the step's inputs ``(NoisedLatents, UNetCond)``, 2B rows ``[chosen; rejected]``,
    from a collated batch of B pairs: latents (the batch's cached ``latents``, else the VAE posterior mean), prompt
    conditioning (cached embeddings, else encoded per step; each side with its own caption, DCPO; SDXL adds each
    image's pooled embedding and time ids) and one noised point per image. The noise is keyed, not streamed: pair
    ``index`` at optimizer step ``step`` draws from a generator seeded with ``(seed, step, index)``
    (:func:`pair_noise_seed`), so the draws do not depend on the number of processes, the per-device batch size or a
    resume. ``pair_loglik(unet, inputs)`` scores the inputs (:func:`diffusion_pair_loglik`), with the policy and with
    the reference alike.

    Args:
        components: the model's ``DiffusionComponents`` (family, VAE, text encoders, tokenizers, scheduler).
        noise_source: a source of ``visalign.likelihood.noise``, called pair by pair.
        policy: the trained UNet (as ``accelerate`` prepared it); inversion noise sources (InPO) run it.
        seed: the run's seed, the first key of every pair's noise.
        device: where the inputs go.
        resolution: training resolution in pixels, the SDXL target size.
        time_ids: the SDXL time-id convention (``visalign.models.diffusion.SDXL_TIME_IDS``).
        vae_batch_size: images per VAE forward when the batch carries pixels.
    """

    def __init__(self, components: DiffusionComponents, noise_source, *, policy: torch.nn.Module, seed: int,
                 device: torch.device, resolution: int | None = None, time_ids: str = "true_size",
                 vae_batch_size: int = 8) -> None:
        self.components, self.noise_source, self.policy = components, noise_source, policy
        self.seed, self.device, self.resolution = seed, device, resolution
        self.time_ids, self.vae_batch_size = time_ids, vae_batch_size

    def _no_autocast(self):
        return torch.autocast(device_type=self.device.type, enabled=False)

    def latents(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """``[2B, C, h, w]`` fp32 clean latents: the batch's cached ``latents``, else the VAE posterior mean of its
        ``pixel_values`` (the tensors the latent cache stores, so cached and uncached runs agree)."""
        if "latents" in batch:
            return batch["latents"].to(self.device, torch.float32)
        with self._no_autocast():  # the VAE runs in its own dtype (fp32, or an fp16-safe VAE)
            return encode_images(self.components.vae, batch["pixel_values"], batch_size=self.vae_batch_size,
                                 sample=False)

    def conditioning(self, batch: Mapping[str, Any]) -> UNetCond:
        """``[chosen; rejected]`` conditioning (2B rows): each image with its own side's caption (identical for
        every method but DCPO) and, for SDXL, its pooled embedding and its own time ids."""
        if "prompt_embeds" in batch:
            hidden, pooled = batch["prompt_embeds"], batch.get("pooled_prompt_embeds")
        else:
            captions = batch["captions_chosen"] + batch["captions_rejected"]
            unique = list(dict.fromkeys(captions))
            with self._no_autocast():
                embeds = encode_prompts(self.components.text_encoders, self.components.tokenizers, unique)
            rows = torch.tensor([unique.index(c) for c in captions], device=embeds.hidden_states.device)
            hidden = embeds.hidden_states[rows]
            pooled = None if embeds.pooled is None else embeds.pooled[rows]
        if self.components.family != SDXL:
            return UNetCond(hidden.to(self.device))
        if "time_ids" in batch:
            time_ids = batch["time_ids"]
        else:
            time_ids = sdxl_time_ids(batch["original_sizes"], batch["crop_top_lefts"],
                                     (self.resolution, self.resolution), convention=self.time_ids)
        return UNetCond(hidden.to(self.device), pooled.to(self.device), time_ids.to(self.device))

    def noised(self, latents: torch.Tensor, cond: UNetCond, indices: list[int], step: int) -> NoisedLatents:
        """One noised point per image, pair by pair from generators keyed by ``(seed, step, index)``."""
        num_pairs = len(indices)
        parts = []
        for i, index in enumerate(indices):
            rows = torch.tensor([i, num_pairs + i], device=latents.device)
            generator = torch.Generator().manual_seed(pair_noise_seed(self.seed, step, index))
            parts.append(self.noise_source(latents[rows], scheduler=self.components.scheduler, unet=self.policy,
                                           cond=cond.select(rows), generator=generator))

        def stack(name: str) -> torch.Tensor:
            values = [getattr(p, name) for p in parts]
            return torch.cat([v[:1] for v in values] + [v[1:] for v in values])

        return NoisedLatents(*(stack(f.name) for f in fields(NoisedLatents)))

    def prepare(self, batch: Mapping[str, Any], step: int) -> tuple[NoisedLatents, UNetCond]:
        """The inputs of optimizer step ``step`` for a collated batch (its ``indices`` key the pairs' noise)."""
        latents = self.latents(batch)
        cond = self.conditioning(batch)
        return self.noised(latents, cond, batch["indices"], step), cond

    def pair_loglik(self, unet: torch.nn.Module, inputs: tuple[NoisedLatents, UNetCond]) -> PairLogLik:
        """The ELBO surrogate of ``unet`` at the prepared noised latents and conditioning."""
        noised, cond = inputs
        return diffusion_pair_loglik(unet, noised, cond, scheduler=self.components.scheduler)
