"""Noise sources: where the noised point ``(x_t, t, eps)`` scored by the diffusion ELBO surrogate comes from.

A noise source is called as ``source(latents, *, scheduler, unet=None, cond=None, generator=None, denoise=...)`` on
clean latents in ``[chosen; rejected]`` order (2B rows) and returns a
:class:`~visalign.likelihood.diffusion.NoisedLatents` that the policy and the reference then both score. A source that
queries the policy calls ``denoise(unet, x_t, t, cond)``: the model family's denoiser call
(``DiffusionFamily.denoise``; the UNet families' :func:`unet_predict` by default). Sources live in the plain dict
:data:`NOISE_SOURCES`:

- ``random`` (Diffusion-DPO, MaPO, DCPO; reference ``diffusion-methods.md`` §2.2): t ~ U{0..T-1} and eps ~ N(0, I)
  drawn once per pair and shared by its chosen and rejected image, independent across pairs.
- ``ddim_inversion`` (InPO, Lu et al. CVPR 2025, arXiv 2503.18454; reference §7): t shared within the pair, x_t from
  DDIM-inverting each image with the policy, eps reparametrised per image.

Room for SmPO's ReNoise inversion (arXiv 2506.02698, reference §9.1): subclass :class:`DDIMInversionNoise`, override
:meth:`DDIMInversionNoise.inversion_step` (take a provisional step, re-evaluate eps at the provisional latent,
average the two predictions, step again with the average) and add it with ``register_noise_source("renoise", cls)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from visalign.likelihood.diffusion import NoisedLatents, UNetCond, check_prediction_type, unet_predict


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """fp32 standard normal drawn on the generator's device (so a CPU generator works for CUDA latents)."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32).to(device)


def _check_pairs(latents: torch.Tensor) -> int:
    if latents.ndim < 2 or latents.shape[0] % 2:
        raise ValueError(
            f"noise source: latents must be [chosen; rejected] with an even batch dimension; got shape "
            f"{tuple(latents.shape)}"
        )
    return latents.shape[0] // 2


def sample_pair_timesteps(
    num_pairs: int, scheduler, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``[2B]`` long timesteps ~ U{0..num_train_timesteps-1}, one per pair, repeated for ``[chosen; rejected]``."""
    draw_device = generator.device if generator is not None else device
    t = torch.randint(
        0, scheduler.config.num_train_timesteps, (num_pairs,), generator=generator, device=draw_device
    ).to(device)
    return torch.cat([t, t])


def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[N]`` per-sample scalars viewed to broadcast against ``[N, ...]``."""
    return values.view(-1, *([1] * (like.ndim - 1)))


class PairNoiseSource:
    """A noise source whose t is drawn once per pair and shared by its two images (:func:`sample_pair_timesteps`);
    a subclass says, in :meth:`noise_at`, how the latents are noised at those timesteps."""

    def __call__(
        self,
        latents: torch.Tensor,
        *,
        scheduler,
        unet=None,
        cond: UNetCond | None = None,
        generator: torch.Generator | None = None,
        denoise: Callable = unet_predict,
    ) -> NoisedLatents:
        timesteps = sample_pair_timesteps(_check_pairs(latents), scheduler, latents.device, generator)
        return self.noise_at(latents, timesteps, scheduler, unet, cond, generator, denoise=denoise)

    def noise_at(self, latents, timesteps, scheduler, unet, cond, generator, denoise=unet_predict) -> NoisedLatents:
        raise NotImplementedError


@dataclass(frozen=True)
class RandomNoise(PairNoiseSource):
    """t and eps shared within each pair, independent across pairs (Diffusion-DPO §2.2; Salesforce ``train.py``)."""

    def noise_at(self, latents, timesteps, scheduler, unet, cond, generator, denoise=unet_predict) -> NoisedLatents:
        x0 = latents.float()
        eps = _randn((x0.shape[0] // 2, *x0.shape[1:]), generator, x0.device)
        noise = torch.cat([eps, eps])
        return NoisedLatents(x0, scheduler.add_noise(x0, noise, timesteps), noise, timesteps)


@dataclass(frozen=True)
class DDIMInversionNoise(PairNoiseSource):
    """InPO's reparametrised DDIM inversion (arXiv 2503.18454; ``JaydenLyh/InPO`` ``train.py``; reference §7.1).

    For each pair a timestep t is drawn and shared by both images. Each image's clean latent x0 is DDIM-inverted
    (deterministic DDIM, Song et al. 2021 Eq. 12 run upwards) by the policy under ``torch.no_grad()`` and with the
    image's own conditioning, along the levels ``clean -> s_1 -> ... -> s_k -> t`` where the ``s_j`` are the points
    of the uniform grid ``j * (T // num_inversion_steps)`` below t. Each step from level a to level b is

        eps = eps_theta(x_a, a, c);  x0_hat = (x_a - sqrt(1-abar_a) eps) / sqrt(abar_a)
        x_b = sqrt(abar_b) x0_hat + sqrt(1-abar_b) eps  [+ eta * sigma_ab * z]

    with the clean latent at ``abar = 1`` (scored at UNet timestep 0), and ``sigma_ab^2`` the DDPM posterior variance
    between the two levels. At most ``num_inversion_steps`` UNet forwards are taken. Then

        eps_tilde = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)

    so ``x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps_tilde`` holds per image; x_t is the noisy input and eps_tilde the
    target. The chosen and rejected images get different, image-dependent eps_tilde. :meth:`invert` does the same
    for given timesteps.

    Differences from the InPO code, on purpose:

    - Per image, correct at any batch size: each sample stops at its own t and is reparametrised with its own
      ``abar_t``; the InPO code stops every sample at the first sample's t, which is only right at batch 1.
    - Timestep level: the InPO code steps ``DDIMInverseScheduler`` (diffusers semantics as of 0.42: ``step(eps,
      t_i)`` moves the latent from level ``t_i - 100`` to ``t_i``) over the grid ``{1, 101, ..., 901}`` while
      ``t_i < t``, so its inverted latent sits at level ``max{t_i < t}``, up to 100 timesteps below the t at which it
      is scored and whose ``abar_t`` reparametrises it. Here the last step lands exactly on t, so the latent's noise
      level and the scored timestep agree. The InPO code also queries the UNet at each step's target level; here it
      is queried at the source level, as in textbook DDIM inversion.
    - eta: InPO adds ``0.1 * z * sqrt(posterior variance)`` per step (optional there, default 0 here); we use the
      variance between the step's own two levels. With ``eta > 0`` the draws depend on the batch composition, so
      batched and one-by-one inversions agree only at ``eta = 0``.
    """

    num_inversion_steps: int = 10
    eta: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.num_inversion_steps, int) or self.num_inversion_steps < 1:
            raise ValueError(
                f"ddim_inversion: num_inversion_steps must be an int >= 1; got {self.num_inversion_steps!r}"
            )
        if self.eta < 0:
            raise ValueError(f"ddim_inversion: eta must be >= 0; got {self.eta!r}")

    def inversion_step(
        self,
        unet,
        x: torch.Tensor,
        source_t: int,
        alpha_source: torch.Tensor,
        alpha_target: torch.Tensor,
        cond: UNetCond,
        prediction_type: str,
        denoise: Callable = unet_predict,
    ) -> torch.Tensor:
        """One deterministic DDIM step upwards from ``x`` at ``source_t`` (``abar = alpha_source``, a scalar) to the
        per-sample levels ``alpha_target`` ``[n]``; ``source_t`` is the UNet timestep of the source level."""
        out = denoise(unet, x, torch.full((x.shape[0],), source_t, dtype=torch.long, device=x.device), cond)
        out = out.to(x.device)
        a_s = alpha_source
        if prediction_type == "epsilon":
            eps = out
            x0_hat = (x - (1 - a_s).sqrt() * eps) / a_s.sqrt()
        else:  # v_prediction: v = sqrt(a) eps - sqrt(1-a) x0
            x0_hat = a_s.sqrt() * x - (1 - a_s).sqrt() * out
            eps = a_s.sqrt() * out + (1 - a_s).sqrt() * x
        a_t = _bcast(alpha_target, x)
        return a_t.sqrt() * x0_hat + (1 - a_t).sqrt() * eps

    def noise_at(self, latents, timesteps, scheduler, unet, cond, generator, denoise=unet_predict) -> NoisedLatents:
        if unet is None or cond is None:
            raise ValueError("ddim_inversion noise source needs the policy `unet` and the conditioning `cond`")
        return self.invert(latents, timesteps, unet=unet, cond=cond, scheduler=scheduler, generator=generator,
                           denoise=denoise)

    @torch.no_grad()
    def invert(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        *,
        unet,
        cond: UNetCond,
        scheduler,
        generator: torch.Generator | None = None,
        denoise: Callable = unet_predict,
    ) -> NoisedLatents:
        """Invert each of the N clean ``latents`` to its own ``timesteps[i]`` and reparametrise its noise (the policy
        queried through ``denoise(unet, x, t, cond)``)."""
        n = latents.shape[0]
        if timesteps.shape != (n,) or len(cond) != n:
            raise ValueError(
                f"ddim_inversion: {n} latents need {n} timesteps and conditioning rows; got timesteps of shape "
                f"{tuple(timesteps.shape)} and {len(cond)} conditioning rows"
            )
        prediction_type = check_prediction_type(scheduler)
        num_train = scheduler.config.num_train_timesteps
        if self.num_inversion_steps > num_train:
            raise ValueError(
                f"ddim_inversion: num_inversion_steps={self.num_inversion_steps} exceeds the scheduler's "
                f"num_train_timesteps={num_train}"
            )
        x0 = latents.float()
        device = x0.device
        timesteps = timesteps.to(device=device, dtype=torch.long)
        alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)

        stride = num_train // self.num_inversion_steps
        grid = torch.arange(1, self.num_inversion_steps, device=device) * stride  # inner levels s_1 < s_2 < ...
        num_steps = 1 + (grid[None, :] < timesteps[:, None]).sum(dim=1)  # per sample, 1..num_inversion_steps
        next_inner = torch.cat([grid, grid.new_full((1,), num_train - 1)])  # padded: step k's non-final target
        one = torch.ones((), device=device)

        x = x0.clone()
        for k in range(int(num_steps.max())):
            active = (num_steps > k).nonzero().squeeze(1)
            source_t = 0 if k == 0 else int(grid[k - 1])
            alpha_source = one if k == 0 else alphas[source_t]
            target_t = torch.where(num_steps[active] == k + 1, timesteps[active], next_inner[k])
            alpha_target = alphas[target_t]
            x_next = self.inversion_step(
                unet, x[active], source_t, alpha_source, alpha_target, cond.select(active), prediction_type, denoise
            )
            if self.eta > 0:
                variance = (1 - alpha_source) / (1 - alpha_target) * (1 - alpha_target / alpha_source)
                z = _randn(tuple(x_next.shape), generator, device)
                x_next = x_next + self.eta * _bcast(variance.clamp_min(0).sqrt(), x_next) * z
            x[active] = x_next

        abar_t = _bcast(alphas[timesteps], x0)
        noise = (x - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
        return NoisedLatents(x0, x, noise, timesteps)


NOISE_SOURCES: dict[str, type] = {"random": RandomNoise, "ddim_inversion": DDIMInversionNoise}


def register_noise_source(name: str, cls: type) -> None:
    """Add a noise source class (instances called as described in the module docstring) under ``name``."""
    if name in NOISE_SOURCES:
        raise ValueError(f"noise source {name!r} is already registered")
    if not callable(cls):
        raise TypeError(f"noise source {name!r} must be a class; got {cls!r}")
    NOISE_SOURCES[name] = cls


def make_noise_source(name: str, **options):
    """An instance of the noise source ``name`` configured with ``options`` (e.g. ``num_inversion_steps=10``)."""
    if name not in NOISE_SOURCES:
        raise ValueError(f"unknown noise source {name!r}; expected one of {sorted(NOISE_SOURCES)}")
    try:
        return NOISE_SOURCES[name](**options)
    except TypeError as err:
        raise ValueError(f"noise source {name!r}: bad options {sorted(options)}: {err}") from None
