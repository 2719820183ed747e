"""The diffusion ELBO surrogate: hand computations from the UNet's own output, eps / v targets, per-side and SDXL
conditioning, and the Diffusion-DPO paper's loss reproduced by the plain sigmoid of the loss core."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from visalign.likelihood.diffusion import (
    NoisedLatents,
    UNetCond,
    diffusion_loglik,
    diffusion_pair_loglik,
    diffusion_target,
    pair_cond,
)
from visalign.likelihood.noise import RandomNoise
from visalign.losses import preference_loss
from visalign.testing.diffusion import TINY_SD, tiny_sd_components, tiny_sdxl_components

B = 3  # pairs
LATENT = (TINY_SD.latent_channels, TINY_SD.latent_size, TINY_SD.latent_size)
TEXT = (8, TINY_SD.text_hidden_size)  # short sequences keep the cross-attention cheap


@pytest.fixture(scope="module")
def sd15():
    return tiny_sd_components(variant="sd15")


@pytest.fixture(scope="module")
def sd2():
    return tiny_sd_components(variant="sd2")


def _latents(n=2 * B):
    return torch.randn(n, *LATENT)


def _hand_loglik(unet, x_t, t, target, **cond):
    with torch.no_grad():
        pred = unet(x_t, t, **cond).sample
    return -0.5 * ((target - pred) ** 2).mean(dim=(1, 2, 3))


def _abar(scheduler, t):
    return scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)


def test_loglik_is_half_negative_mse_of_the_unets_own_output_in_one_forward(sd15):
    unet, scheduler = sd15["unet"], sd15["scheduler"]
    latents, text = _latents(), torch.randn(B, *TEXT)
    cond = pair_cond(UNetCond(text))
    noised = RandomNoise()(latents, scheduler=scheduler, generator=torch.Generator().manual_seed(3))

    calls = []
    hook = unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        ll = diffusion_pair_loglik(unet, noised, cond, scheduler=scheduler)
    finally:
        hook.remove()
    assert calls == [2 * B]  # one forward over [chosen; rejected]

    a = _abar(scheduler, noised.timesteps)
    x_t = a.sqrt() * latents + (1 - a).sqrt() * noised.noise
    expected = _hand_loglik(unet, x_t, noised.timesteps, noised.noise, encoder_hidden_states=torch.cat([text, text]))
    torch.testing.assert_close(ll.chosen.detach(), expected[:B], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ll.rejected.detach(), expected[B:], rtol=1e-5, atol=1e-6)
    assert ll.chosen.requires_grad and ll.chosen.dtype == torch.float32


def test_v_prediction_target_is_the_velocity(sd2):
    unet, scheduler = sd2["unet"], sd2["scheduler"]
    assert scheduler.config.prediction_type == "v_prediction"
    latents, text = _latents(), torch.randn(B, *TEXT)
    noised = RandomNoise()(latents, scheduler=scheduler)
    a = _abar(scheduler, noised.timesteps)
    velocity = a.sqrt() * noised.noise - (1 - a).sqrt() * latents  # Salimans & Ho 2022, v = alpha eps - sigma x0
    torch.testing.assert_close(diffusion_target(noised, scheduler), velocity)

    ll = diffusion_pair_loglik(unet, noised, pair_cond(UNetCond(text)), scheduler=scheduler)
    expected = _hand_loglik(unet, noised.noisy_latents, noised.timesteps, velocity,
                            encoder_hidden_states=torch.cat([text, text]))
    torch.testing.assert_close(torch.cat([ll.chosen, ll.rejected]).detach(), expected, rtol=1e-5, atol=1e-6)


def test_unsupported_prediction_type_names_the_config_key(sd15):
    scheduler = DDPMScheduler.from_config(sd15["scheduler"].config, prediction_type="sample")
    noised = RandomNoise()(_latents(), scheduler=scheduler)
    with pytest.raises(ValueError, match="prediction_type='sample'"):
        diffusion_pair_loglik(sd15["unet"], noised, pair_cond(UNetCond(torch.randn(B, *TEXT))), scheduler=scheduler)


def test_sft_term_is_the_references_mean_mse_on_the_chosen_images(sd15):
    """Salesforce ``--sft``: ``F.mse_loss(pred[:B], target[:B], reduction="mean")``; MaPO's SFT term: ``mean(L_w)``.
    The ``sft`` loss on the diffusion likelihood equals both (not half: the loglik is ``-0.5·MSE``)."""
    unet, scheduler = sd15["unet"], sd15["scheduler"]
    latents, text = _latents(), torch.randn(B, *TEXT)
    noised = RandomNoise()(latents, scheduler=scheduler, generator=torch.Generator().manual_seed(1))
    policy = diffusion_pair_loglik(unet, noised, pair_cond(UNetCond(text)), scheduler=scheduler)
    with torch.no_grad():
        pred = unet(noised.noisy_latents, noised.timesteps, encoder_hidden_states=torch.cat([text, text])).sample
    salesforce_sft = F.mse_loss(pred[:B], noised.noise[:B], reduction="mean")
    out = preference_loss("sft", policy, None, beta=1.0)
    torch.testing.assert_close(out.loss.detach(), salesforce_sft, rtol=1e-5, atol=1e-7)
    mapo_sft_term = preference_loss("mapo", policy, None, beta=0.1).metrics["mse/chosen"]  # mean(L_w)
    assert out.loss.item() == pytest.approx(mapo_sft_term, rel=1e-5)


def test_diffusion_loglik_by_hand():
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[3.0, -1.0], [0.0, 0.0]]]])
    torch.testing.assert_close(diffusion_loglik(pred, target), torch.tensor([-0.5, -0.5 * (9 + 1) / 4]))


def test_dcpo_conditions_each_side_on_its_own_caption(sd15):
    unet, scheduler = sd15["unet"], sd15["scheduler"]
    latents = _latents()
    text_chosen, text_rejected = torch.randn(B, *TEXT), torch.randn(B, *TEXT)
    noised = RandomNoise()(latents, scheduler=scheduler)
    dual = diffusion_pair_loglik(unet, noised, pair_cond(UNetCond(text_chosen), UNetCond(text_rejected)),
                                 scheduler=scheduler)
    shared = diffusion_pair_loglik(unet, noised, pair_cond(UNetCond(text_chosen)), scheduler=scheduler)
    t, x_t, eps = noised.timesteps, noised.noisy_latents, noised.noise
    rejected_alone = _hand_loglik(unet, x_t[B:], t[B:], eps[B:], encoder_hidden_states=text_rejected)
    torch.testing.assert_close(dual.rejected.detach(), rejected_alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dual.chosen, shared.chosen)
    assert not torch.allclose(dual.rejected, shared.rejected)


def test_sdxl_added_cond_kwargs_are_passed_per_image():
    parts = tiny_sdxl_components()
    unet, scheduler = parts["unet"], parts["scheduler"]
    text = torch.randn(B, 8, 2 * TINY_SD.text_hidden_size)
    pooled = torch.randn(B, TINY_SD.pooled_dim)
    ids_chosen = torch.tensor([[32.0, 32, 0, 0, 32, 32], [64, 48, 4, 2, 32, 32], [512, 768, 0, 16, 32, 32]])
    ids_rejected = ids_chosen.flip(0)
    cond = pair_cond(UNetCond(text, pooled, ids_chosen), UNetCond(text, pooled, ids_rejected))
    noised = RandomNoise()(_latents(), scheduler=scheduler)
    ll = diffusion_pair_loglik(unet, noised, cond, scheduler=scheduler)
    expected = _hand_loglik(
        unet, noised.noisy_latents, noised.timesteps, noised.noise, encoder_hidden_states=torch.cat([text, text]),
        added_cond_kwargs={"text_embeds": torch.cat([pooled, pooled]),
                           "time_ids": torch.cat([ids_chosen, ids_rejected])},
    )
    torch.testing.assert_close(torch.cat([ll.chosen, ll.rejected]).detach(), expected, rtol=1e-5, atol=1e-6)
    same_ids = diffusion_pair_loglik(unet, noised, pair_cond(UNetCond(text, pooled, ids_chosen)), scheduler=scheduler)
    assert not torch.allclose(same_ids.rejected[[0, 2]], ll.rejected[[0, 2]])  # the time ids reach the UNet
    torch.testing.assert_close(same_ids.rejected[1], ll.rejected[1])  # the middle row's ids are unchanged


def test_sigmoid_loss_reproduces_the_diffusion_dpo_paper_form(sd15):
    """Salesforce/paper (Supp. S4 Eq. 46):
    ``-logsigma(-beta/2 * [(MSE_th(w) - MSE_ref(w)) - (MSE_th(l) - MSE_ref(l))])``;
    the diffusers SD1.5 port writes ``-logsigma(beta' * (Delta_ref - Delta_th))``, so its beta' = beta / 2."""
    policy, scheduler = sd15["unet"], sd15["scheduler"]
    reference = tiny_sd_components(variant="sd15", seed=7)["unet"]
    text = torch.randn(B, *TEXT)
    cond = pair_cond(UNetCond(text))
    noised = RandomNoise()(_latents(), scheduler=scheduler, generator=torch.Generator().manual_seed(0))
    policy_ll = diffusion_pair_loglik(policy, noised, cond, scheduler=scheduler)
    with torch.no_grad():
        ref_ll = diffusion_pair_loglik(reference, noised, cond, scheduler=scheduler)

    def mse(unet):
        with torch.no_grad():
            pred = unet(noised.noisy_latents, noised.timesteps, encoder_hidden_states=torch.cat([text, text])).sample
        return F.mse_loss(pred, noised.noise, reduction="none").mean(dim=(1, 2, 3)).chunk(2)

    (th_w, th_l), (ref_w, ref_l) = mse(policy), mse(reference)
    beta = 500.0
    inside = -0.5 * beta * ((th_w - th_l) - (ref_w - ref_l))
    assert inside.abs().max() > 0.1 and inside.abs().min() < 20  # a non-trivial, non-saturated check
    paper = -F.logsigmoid(inside)
    diffusers_port = -F.logsigmoid((beta / 2) * ((ref_w - ref_l) - (th_w - th_l)))

    out = preference_loss("sigmoid", policy_ll, ref_ll, beta=beta)
    torch.testing.assert_close(out.losses.detach(), paper, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(paper, diffusers_port)
    out.loss.backward()  # the policy log-likelihood carries the gradient
    assert policy.conv_in.weight.grad is not None


def test_same_model_gives_ln2_and_identical_reference_inputs(sd15):
    unet, scheduler = sd15["unet"], sd15["scheduler"]
    cond = pair_cond(UNetCond(torch.randn(B, *TEXT)))
    noised = RandomNoise()(_latents(), scheduler=scheduler)
    policy_ll = diffusion_pair_loglik(unet, noised, cond, scheduler=scheduler)
    with torch.no_grad():
        ref_ll = diffusion_pair_loglik(unet, noised, cond, scheduler=scheduler)
    losses = preference_loss("sigmoid", policy_ll, ref_ll, beta=5000.0).losses
    torch.testing.assert_close(losses.detach(), torch.full((B,), torch.log(torch.tensor(2.0)).item()))


def test_half_precision_unet_gives_fp32_loglik(sd15):
    unet = tiny_sd_components(variant="sd15")["unet"].to(torch.bfloat16)
    scheduler = sd15["scheduler"]
    noised = RandomNoise()(_latents(), scheduler=scheduler)
    ll = diffusion_pair_loglik(unet, noised, pair_cond(UNetCond(torch.randn(B, *TEXT))), scheduler=scheduler)
    assert ll.chosen.dtype == torch.float32 and torch.isfinite(ll.chosen).all()


def test_mismatched_conditioning_rows_fail_clearly(sd15):
    noised = NoisedLatents(*(torch.zeros(4, *LATENT) for _ in range(3)), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="4 latents and 2 conditioning rows"):
        diffusion_pair_loglik(sd15["unet"], noised, UNetCond(torch.zeros(2, *TEXT)), scheduler=sd15["scheduler"])
    with pytest.raises(ValueError, match="time_ids"):
        UNetCond(torch.zeros(2, *TEXT), torch.zeros(2, 4))
