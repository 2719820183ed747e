"""Noise sources: shared t and eps within pairs (random), and InPO's DDIM inversion checked step by step by hand,
per image at batch > 1, against one-by-one inversions, and through its reparametrisation identity."""

import pytest
import torch

from visalign.likelihood.diffusion import UNetCond, pair_cond
from visalign.likelihood.noise import (
    NOISE_SOURCES,
    DDIMInversionNoise,
    RandomNoise,
    make_noise_source,
    register_noise_source,
)
from visalign.testing.diffusion import TINY_SD, tiny_sd_components

B = 3
LATENT = (TINY_SD.latent_channels, TINY_SD.latent_size, TINY_SD.latent_size)
TEXT = (8, TINY_SD.text_hidden_size)


@pytest.fixture(scope="module", params=["sd15", "sd2"])
def parts(request):
    """epsilon (sd15) and v-prediction (sd2) tiny models."""
    return tiny_sd_components(variant=request.param)


def _abar(scheduler, t):
    return scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)


def test_random_shares_t_and_eps_within_pairs_and_not_across(parts):
    scheduler = parts["scheduler"]
    latents = torch.randn(2 * B, *LATENT)
    noised = RandomNoise()(latents, scheduler=scheduler, generator=torch.Generator().manual_seed(1))
    t_c, t_r = noised.timesteps.chunk(2)
    eps_c, eps_r = noised.noise.chunk(2)
    assert torch.equal(t_c, t_r) and torch.equal(eps_c, eps_r)
    assert len(set(t_c.tolist())) == B
    assert not torch.allclose(eps_c[0], eps_c[1]) and not torch.allclose(eps_c[1], eps_c[2])
    x_c, x_r = noised.noisy_latents.chunk(2)
    assert not torch.allclose(x_c, x_r)  # different images, same corruption
    a = _abar(scheduler, noised.timesteps)
    torch.testing.assert_close(noised.noisy_latents, a.sqrt() * latents + (1 - a).sqrt() * noised.noise)
    assert noised.timesteps.dtype == torch.long
    assert 0 <= int(noised.timesteps.min()) and int(noised.timesteps.max()) < 1000


def test_random_is_reproducible_with_a_generator(parts):
    latents = torch.randn(2 * B, *LATENT)

    def draw(seed):
        return RandomNoise()(latents, scheduler=parts["scheduler"], generator=torch.Generator().manual_seed(seed))

    first, again, other = draw(5), draw(5), draw(6)
    assert torch.equal(first.noise, again.noise) and torch.equal(first.timesteps, again.timesteps)
    assert not torch.equal(first.noise, other.noise)


def test_odd_batch_is_rejected(parts):
    with pytest.raises(ValueError, match=r"even batch dimension; got shape \(3, 4"):
        RandomNoise()(torch.randn(3, *LATENT), scheduler=parts["scheduler"])


def _hand_ddim_up(unet, x, source_t, a_s, a_t, text, prediction_type):
    """One upward DDIM step from the definitions x = sqrt(a) x0 + sqrt(1-a) eps and v = sqrt(a) eps - sqrt(1-a) x0."""
    with torch.no_grad():
        out = unet(x, torch.full((x.shape[0],), source_t), encoder_hidden_states=text).sample
    if prediction_type == "epsilon":
        eps = out
    else:
        eps = a_s**0.5 * out + (1 - a_s) ** 0.5 * x
    x0 = (x - (1 - a_s) ** 0.5 * eps) / a_s**0.5
    return a_t**0.5 * x0 + (1 - a_t) ** 0.5 * eps


def test_inversion_follows_the_ddim_path_to_each_images_own_t(parts):
    """num_inversion_steps=2 -> grid {500}: t=700 goes clean -> 500 -> 700 (UNet at 0, then 500); t=300 goes
    clean -> 300 in one step; the clean level has abar = 1."""
    unet, scheduler = parts["unet"], parts["scheduler"]
    prediction_type = scheduler.config.prediction_type
    alphas = scheduler.alphas_cumprod
    x0 = torch.randn(2, *LATENT)
    text = torch.randn(2, *TEXT)
    noised = DDIMInversionNoise(num_inversion_steps=2).invert(
        x0, torch.tensor([700, 300]), unet=unet, cond=UNetCond(text), scheduler=scheduler
    )
    x500 = _hand_ddim_up(unet, x0[:1], 0, 1.0, alphas[500], text[:1], prediction_type)
    x700 = _hand_ddim_up(unet, x500, 500, alphas[500], alphas[700], text[:1], prediction_type)
    x300 = _hand_ddim_up(unet, x0[1:], 0, 1.0, alphas[300], text[1:], prediction_type)
    torch.testing.assert_close(noised.noisy_latents, torch.cat([x700, x300]), rtol=1e-5, atol=1e-5)
    assert not noised.noisy_latents.requires_grad


def test_reparametrisation_identity_per_image_at_batch_above_one(parts):
    unet, scheduler = parts["unet"], parts["scheduler"]
    latents = torch.randn(2 * B, *LATENT)
    cond = pair_cond(UNetCond(torch.randn(B, *TEXT)), UNetCond(torch.randn(B, *TEXT)))
    source = make_noise_source("ddim_inversion", num_inversion_steps=3)
    noised = source(latents, scheduler=scheduler, unet=unet, cond=cond, generator=torch.Generator().manual_seed(2))
    t_c, t_r = noised.timesteps.chunk(2)
    assert torch.equal(t_c, t_r) and len(set(t_c.tolist())) == B  # t shared within pairs, not across
    a = _abar(scheduler, noised.timesteps)
    torch.testing.assert_close(noised.noisy_latents, a.sqrt() * latents + (1 - a).sqrt() * noised.noise,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scheduler.add_noise(latents, noised.noise, noised.timesteps), noised.noisy_latents,
                               rtol=1e-5, atol=1e-5)
    eps_c, eps_r = noised.noise.chunk(2)
    assert not torch.allclose(eps_c, eps_r)  # each image gets its own reparametrised noise


def test_batched_inversion_equals_one_by_one(parts):
    unet, scheduler = parts["unet"], parts["scheduler"]
    source = DDIMInversionNoise(num_inversion_steps=4)
    latents = torch.randn(2, *LATENT)
    cond = UNetCond(torch.randn(2, *TEXT))
    timesteps = torch.tensor([999, 140])  # grid {250, 500, 750}: 4 and 1 inversion steps
    batched = source.invert(latents, timesteps, unet=unet, cond=cond, scheduler=scheduler)
    for i in range(2):
        alone = source.invert(latents[i : i + 1], timesteps[i : i + 1], unet=unet,
                              cond=cond.select(torch.tensor([i])), scheduler=scheduler)
        torch.testing.assert_close(batched.noisy_latents[i : i + 1], alone.noisy_latents, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batched.noise[i : i + 1], alone.noise, rtol=1e-4, atol=1e-5)


def test_eta_adds_noise_only_after_the_first_step(parts):
    unet, scheduler = parts["unet"], parts["scheduler"]
    latents = torch.randn(2, *LATENT)
    cond = UNetCond(torch.randn(2, *TEXT))
    t = torch.tensor([300, 900])  # with 2 steps: 300 is one step from the clean level (zero posterior variance)
    plain = DDIMInversionNoise(num_inversion_steps=2).invert(latents, t, unet=unet, cond=cond, scheduler=scheduler)
    noisy = DDIMInversionNoise(num_inversion_steps=2, eta=0.1).invert(
        latents, t, unet=unet, cond=cond, scheduler=scheduler, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(noisy.noisy_latents[0], plain.noisy_latents[0])
    assert not torch.allclose(noisy.noisy_latents[1], plain.noisy_latents[1])
    a = _abar(scheduler, t)
    torch.testing.assert_close(noisy.noisy_latents, a.sqrt() * latents + (1 - a).sqrt() * noisy.noise,
                               rtol=1e-5, atol=1e-5)


def test_registry_and_bad_options():
    assert set(NOISE_SOURCES) >= {"random", "ddim_inversion"}
    assert make_noise_source("ddim_inversion", num_inversion_steps=4).num_inversion_steps == 4
    with pytest.raises(ValueError, match="unknown noise source 'renoise'.*ddim_inversion"):
        make_noise_source("renoise")
    with pytest.raises(ValueError, match="noise source 'random': bad options"):
        make_noise_source("random", num_inversion_steps=3)
    with pytest.raises(ValueError, match="num_inversion_steps must be an int >= 1"):
        make_noise_source("ddim_inversion", num_inversion_steps=0)
    with pytest.raises(ValueError, match="already registered"):
        register_noise_source("random", RandomNoise)


def test_inversion_needs_the_policy(parts):
    with pytest.raises(ValueError, match="needs the policy"):
        DDIMInversionNoise()(torch.randn(2, *LATENT), scheduler=parts["scheduler"])
