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

from visalign.likelihood.base import LikelihoodProvider
from visalign.losses.types import PairLogLik
from visalign.models.diffusion import encode_images
from visalign.models.families.conditioning import UNetCond, pair_cond
from visalign.models.families.unet2d import unet_input_spec, unet_predict

# UNetCond, pair_cond, unet_input_spec and unet_predict live with the UNet families; re-exported for the likelihood's
# callers (noise sources, tests).
__all__ = ["DIFFUSION_NLL_SCALE", "DiffusionELBO", "NoisedLatents", "UNetCond", "check_prediction_type",
           "diffusion_loglik", "diffusion_pair_loglik", "diffusion_target", "mse_metrics", "pair_cond",
           "pair_noise_seed", "unet_input_spec", "unet_predict"]

if TYPE_CHECKING:
    from visalign.models.diffusion import DiffusionComponents

SUPPORTED_PREDICTION_TYPES = ("epsilon", "v_prediction")
#: ``PairLogLik.nll_scale`` of the ELBO surrogate: the supervised (SFT) loss is the denoising MSE, ``-2 * loglik``.
DIFFUSION_NLL_SCALE = 2.0


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


def diffusion_target(noised: NoisedLatents, scheduler) -> torch.Tensor:
    """Regression target in fp32: eps, or ``v = sqrt(abar)*eps - sqrt(1-abar)*x0`` via ``scheduler.get_velocity``."""
    if check_prediction_type(scheduler) == "epsilon":
        return noised.noise.float()
    return scheduler.get_velocity(noised.latents.float(), noised.noise.float(), noised.timesteps).float()


def diffusion_loglik(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ELBO surrogate ``-0.5 * mean over all non-batch dims of (target - pred)^2`` in fp32, ``[N]``."""
    return -0.5 * (target.float() - pred.float()).pow(2).flatten(1).mean(dim=1)


def diffusion_pair_loglik(unet, noised: NoisedLatents, cond: UNetCond, *, scheduler,
                          denoise=unet_predict) -> PairLogLik:
    """ONE UNet forward over ``[chosen; rejected]`` (2B samples) and the per-sample log-likelihoods of the pairs.

    Call it with the policy (with grad) and with the reference (under ``torch.no_grad()``) on the same ``noised``
    and ``cond``. ``cond`` has 2B rows (see :func:`pair_cond`). ``denoise``: the family's denoiser call
    (``DiffusionFamily.denoise``), default the ``UNet2DConditionModel`` call.
    """
    n = noised.noisy_latents.shape[0]
    if n % 2 or len(cond) != n:
        raise ValueError(
            f"diffusion_pair_loglik: expected an even batch [chosen; rejected] with as many conditioning rows; got "
            f"{n} latents and {len(cond)} conditioning rows"
        )
    pred = denoise(unet, noised.noisy_latents, noised.timesteps, cond)
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


class DiffusionELBO(LikelihoodProvider):
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
        time_ids: the SDXL time-id convention (``visalign.models.diffusion.SDXL_TIME_IDS``), passed to the family.
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
        every method but DCPO) and what the family adds per image (SDXL: the pooled embedding and the image's own
        time ids), built by the family's adapter (``DiffusionFamily.training_conditioning``)."""
        adapter = self.components.adapter
        embeds = adapter.cached_embeddings(batch)
        if embeds is None:
            captions = batch["captions_chosen"] + batch["captions_rejected"]
            unique = list(dict.fromkeys(captions))
            with self._no_autocast():
                encoded = adapter.encode_prompts(self.components.text_encoders, self.components.tokenizers, unique)
            embeds = encoded.rows(torch.tensor([unique.index(c) for c in captions],
                                               device=encoded.hidden_states.device))
        return adapter.training_conditioning(embeds, batch, resolution=self.resolution, time_ids=self.time_ids,
                                             device=self.device)

    def noised(self, latents: torch.Tensor, cond: UNetCond, indices: list[int], step: int) -> NoisedLatents:
        """One noised point per image, pair by pair from generators keyed by ``(seed, step, index)``."""
        num_pairs = len(indices)
        parts = []
        for i, index in enumerate(indices):
            rows = torch.tensor([i, num_pairs + i], device=latents.device)
            generator = torch.Generator().manual_seed(pair_noise_seed(self.seed, step, index))
            parts.append(self.noise_source(latents[rows], scheduler=self.components.scheduler, unet=self.policy,
                                           cond=cond.select(rows), generator=generator,
                                           denoise=self.components.adapter.denoise))

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
        return diffusion_pair_loglik(unet, noised, cond, scheduler=self.components.scheduler,
                                     denoise=self.components.adapter.denoise)

    def metrics(self, policy: PairLogLik, ref: PairLogLik | None) -> dict[str, torch.Tensor]:
        """The denoising MSEs of each side (:func:`mse_metrics`)."""
        return mse_metrics(policy, ref)
