"""The DDIM transition and its log-probability (``visalign.likelihood.transition``) against diffusers'
``DDIMScheduler.step`` and a direct Gaussian density."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from visalign.likelihood.transition import ddim_transition, previous_timesteps, transition_log_prob

SD_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
                "set_alpha_to_one": False, "steps_offset": 1, "num_train_timesteps": 1000}


def _scheduler(steps: int = 20, **overrides) -> DDIMScheduler:
    scheduler = DDIMScheduler(**{**SD_SCHEDULER, **overrides})
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("overrides", [{}, {"prediction_type": "v_prediction"}, {"clip_sample": True},
                                       {"set_alpha_to_one": True}])
@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_the_drawn_sample_is_diffusers_ddim_step_with_the_same_noise(overrides, eta):
    scheduler = _scheduler(**overrides)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    output = torch.randn(2, 4, 8, 8, generator=generator)
    for t in scheduler.timesteps[[0, 7, -2]]:  # early, middle and the step before the last
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(1))
        ours = ddim_transition(scheduler, output, t, sample, eta=eta, noise=noise)
        expected = scheduler.step(output, int(t), sample, eta=eta, variance_noise=noise).prev_sample
        torch.testing.assert_close(ours.prev_sample, expected, atol=1e-5, rtol=1e-5)
        variance = scheduler._get_variance(int(t), int(t) - 1000 // 20)
        torch.testing.assert_close(ours.std, (eta * variance.sqrt()).expand(2))
        torch.testing.assert_close(ours.prev_sample - ours.mean, ours.std.view(-1, 1, 1, 1) * noise, atol=1e-5,
                                   rtol=1e-5)


def test_log_prob_is_the_mean_gaussian_log_density_over_the_latent_elements():
    scheduler = _scheduler()
    generator = torch.Generator().manual_seed(2)
    sample, output = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    step = ddim_transition(scheduler, output, scheduler.timesteps[5], sample, eta=1.0,
                           noise=torch.randn(sample.shape, generator=generator))
    normal = torch.distributions.Normal(step.mean, step.std.view(-1, 1, 1, 1))
    torch.testing.assert_close(step.log_prob, normal.log_prob(step.prev_sample).flatten(1).mean(1))
    # a stored x_{t-1} is scored, not redrawn: the same transition scores the same
    again = ddim_transition(scheduler, output, scheduler.timesteps[5], sample, eta=1.0, prev_sample=step.prev_sample)
    torch.testing.assert_close(again.log_prob, step.log_prob)
    far = ddim_transition(scheduler, output, scheduler.timesteps[5], sample, eta=1.0,
                          prev_sample=step.prev_sample + 3 * step.std.view(-1, 1, 1, 1))
    assert (far.log_prob < step.log_prob).all()


def test_one_timestep_per_sample_equals_each_sample_alone():
    scheduler = _scheduler()
    generator = torch.Generator().manual_seed(3)
    sample, output = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    prev = torch.randn(3, 4, 8, 8, generator=generator)
    timesteps = scheduler.timesteps[[1, 9, 18]]
    batch = ddim_transition(scheduler, output, timesteps, sample, eta=1.0, prev_sample=prev)
    for i, t in enumerate(timesteps):
        alone = ddim_transition(scheduler, output[i:i + 1], t, sample[i:i + 1], eta=1.0, prev_sample=prev[i:i + 1])
        torch.testing.assert_close(batch.log_prob[i:i + 1], alone.log_prob)
        torch.testing.assert_close(batch.mean[i:i + 1], alone.mean)


def test_the_log_prob_is_differentiable_in_the_model_output_and_fp32_for_half_inputs():
    scheduler = _scheduler()
    generator = torch.Generator().manual_seed(4)
    sample = torch.randn(2, 4, 8, 8, generator=generator).to(torch.bfloat16)
    output = torch.randn(2, 4, 8, 8, generator=generator).to(torch.bfloat16).requires_grad_(True)
    prev = torch.randn(2, 4, 8, 8, generator=generator)
    step = ddim_transition(scheduler, output, scheduler.timesteps[3], sample, eta=1.0, prev_sample=prev)
    assert step.log_prob.dtype == torch.float32 and step.prev_sample.dtype == torch.float32
    step.log_prob.sum().backward()
    assert output.grad is not None and output.grad.abs().sum() > 0


def test_previous_timesteps_follow_diffusers_spacing():
    scheduler = _scheduler(steps=20)
    prev = previous_timesteps(scheduler, scheduler.timesteps)
    torch.testing.assert_close(prev[:-1], scheduler.timesteps[1:])
    assert prev[-1] < 0


def test_bad_settings_fail_naming_them():
    generator = torch.Generator().manual_seed(5)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    with pytest.raises(ValueError, match="eta must be > 0"):
        ddim_transition(_scheduler(), sample, 981, sample, eta=0.0, prev_sample=sample)
    with pytest.raises(ValueError, match="thresholding"):
        ddim_transition(_scheduler(thresholding=True), sample, 981, sample, eta=1.0, prev_sample=sample)
    with pytest.raises(ValueError, match="prediction_type='sample'"):
        ddim_transition(_scheduler(prediction_type="sample"), sample, 981, sample, eta=1.0, prev_sample=sample)
    with pytest.raises(ValueError, match="set_timesteps"):
        ddim_transition(DDIMScheduler(**SD_SCHEDULER), sample, 981, sample, eta=1.0, prev_sample=sample)
    with pytest.raises(ValueError, match="exactly one of prev_sample"):
        ddim_transition(_scheduler(), sample, 981, sample, eta=1.0)



def test_a_deterministic_last_step_has_no_density():
    scheduler = _scheduler(set_alpha_to_one=True)  # abar_prev = 1 after the last step: sigma = 0
    generator = torch.Generator().manual_seed(6)
    sample, output = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    last = ddim_transition(scheduler, output, scheduler.timesteps[-1], sample, eta=1.0, noise=torch.randn_like(sample))
    assert (last.std == 0).all() and torch.isnan(last.log_prob).all()
    torch.testing.assert_close(last.prev_sample, last.mean)
    mixed = transition_log_prob(sample, sample, torch.tensor([0.0, 1.0]))
    assert torch.isnan(mixed[0]) and torch.isfinite(mixed[1])
