"""The objective contract (``objective_contract.py``) applied to every likelihood provider family: token log-probs
(text, VLM; paired and KTO's unpaired form) and the diffusion ELBO surrogate; plus what the objective itself
promises."""

from __future__ import annotations

import torch

from tests.contract.objective_contract import ObjectiveContract
from visalign.data.collators import PreferenceCollator, UnpairedCollator
from visalign.likelihood.diffusion import DiffusionELBO, NoisedLatents, UNetCond
from visalign.likelihood.noise import make_noise_source
from visalign.likelihood.text import TokenLogProbs, UnpairedTokenLogProbs, pair_loglik
from visalign.losses import kto_loss, kto_reference_point
from visalign.models.diffusion import DiffusionComponents, detect_family
from visalign.models.lora import apply_lora
from visalign.testing.causal_lm import tiny_llama
from visalign.testing.diffusion import TINY_SD, tiny_sd_components
from visalign.testing.tokenizers import word_level_tokenizer
from visalign.trainers.text import KTOConfig

PAIRS = [
    {"prompt_input_ids": [5, 6, 7], "chosen_input_ids": [8, 9], "rejected_input_ids": [10, 11, 12]},
    {"prompt_input_ids": [14], "chosen_input_ids": [15, 16, 17], "rejected_input_ids": [18]},
]
UNPAIRED = [
    {"prompt_input_ids": [5, 6, 7], "completion_input_ids": [8, 9], "label": True},
    {"prompt_input_ids": [14], "completion_input_ids": [15, 16, 17], "label": False},
    {"prompt_input_ids": [20, 21], "completion_input_ids": [22], "label": True},
]


class _Tokens:
    def base_model(self):
        return tiny_llama(word_level_tokenizer())

    def add_adapter(self, model):
        return apply_lora(model, r=4, alpha=8, target_modules=["q_proj", "v_proj"])


class TestTextObjective(_Tokens, ObjectiveContract):
    STRATEGIES = ("frozen_copy", "disable_adapter", "ref_adapter", "precomputed", "none")
    LOSS_TYPE = ["sigmoid", "ipo", "sft"]  # a weighted combination, a length-normalised loss, a reference-free term

    def likelihood(self):
        return TokenLogProbs()

    def batch(self):
        return PreferenceCollator(pad_token_id=0)(PAIRS)

    def with_columns(self, batch, ref):
        return {**batch, "ref_chosen_logps": ref.chosen, "ref_rejected_logps": ref.rejected}


class TestKTOObjective(_Tokens, ObjectiveContract):
    STRATEGIES = ("frozen_copy", "disable_adapter", "ref_adapter")
    LOSS_TYPE = "kto"
    CONFIG = KTOConfig

    def likelihood(self):
        return UnpairedTokenLogProbs()

    def batch(self):
        return UnpairedCollator(pad_token_id=0, kl=True)(UNPAIRED)

    def objective_kwargs(self):
        return {"reduce": lambda z0: z0}  # one process

    def expected_loss(self, loss_type, policy, ref):
        out = kto_loss(policy, ref, beta=self.BETA, z0=kto_reference_point(policy, ref))
        return out.loss, out.metrics

    def scores(self, loglik):
        return loglik.logps


class TestDiffusionObjective(ObjectiveContract):
    STRATEGIES = ("frozen_copy", "disable_adapter", "none")
    REFERENCE_FREE_LOSS = "mapo"
    BETA = 500.0
    SCALE = 0.02

    components = tiny_sd_components()

    def base_model(self):
        return tiny_sd_components()["unet"].train()

    def add_adapter(self, unet):
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        return unet

    def batch(self):
        g = torch.Generator().manual_seed(0)
        size, channels = TINY_SD.latent_size, TINY_SD.latent_channels
        latents = torch.randn(4, channels, size, size, generator=g)
        noise = torch.randn(latents.shape, generator=g)
        timesteps = torch.tensor([100, 700, 100, 700])
        noisy = self.components["scheduler"].add_noise(latents, noise, timesteps)
        cond = UNetCond(torch.randn(4, 5, TINY_SD.text_hidden_size, generator=g))
        return NoisedLatents(latents, noisy, noise, timesteps), cond

    def likelihood(self):
        c = self.components
        components = DiffusionComponents(detect_family(c["unet"].config), c["unet"], c["vae"], (c["text_encoder"],),
                                         (c["tokenizer"],), c["scheduler"])
        return DiffusionELBO(components, make_noise_source("random"), policy=c["unet"], seed=0,
                             device=torch.device("cpu"))

    def expected_loss(self, loss_type, policy, ref):
        loss, metrics = super().expected_loss(loss_type, policy, ref)
        mse = {"mse/chosen": -2 * policy.chosen.mean(), "mse/rejected": -2 * policy.rejected.mean()}
        if ref is not None:
            mse.update({"ref_mse/chosen": -2 * ref.chosen.mean(), "ref_mse/rejected": -2 * ref.rejected.mean()})
        return loss, {**metrics, **{k: v.item() for k, v in mse.items()}}


def test_the_loss_plan_is_built_once_not_per_step(monkeypatch):
    import visalign.losses.registry as registry
    import visalign.objective as objective_module
    from visalign.objective import make_objective
    from visalign.reference import make_reference
    from visalign.trainers.config import PreferenceConfig

    model = tiny_llama(word_level_tokenizer())
    config = PreferenceConfig(loss_type=["sigmoid", "sft"], loss_weights=[0.5, 1.0], reference="frozen_copy")
    objective = make_objective(config, reference=make_reference("frozen_copy", model), likelihood=TokenLogProbs())

    def refuse(*args, **kwargs):
        raise AssertionError("the loss plan was rebuilt during a step")

    monkeypatch.setattr(registry, "plan_losses", refuse)
    monkeypatch.setattr(objective_module, "plan_losses", refuse)
    batch = PreferenceCollator(pad_token_id=0)(PAIRS)
    losses = [objective(model, batch)[0] for _ in range(2)]
    torch.testing.assert_close(losses[0], losses[1])


def test_per_pair_weights_scale_each_pairs_loss():
    from visalign.losses import preference_loss
    from visalign.objective import make_objective
    from visalign.reference import make_reference
    from visalign.trainers.config import PreferenceConfig

    model = tiny_llama(word_level_tokenizer())
    reference = make_reference("precomputed", model)
    batch = PreferenceCollator(pad_token_id=0)(PAIRS)
    with torch.no_grad():
        ref = pair_loglik(model, batch)
    batch = {**batch, "ref_chosen_logps": ref.chosen - 1.0, "ref_rejected_logps": ref.rejected + 2.0}
    likelihood = TokenLogProbs()
    objective = make_objective(PreferenceConfig(reference="precomputed"), reference=reference, likelihood=likelihood)
    weights = torch.tensor([0.25, 3.0])
    loss, _ = objective(model, batch, weights=weights)
    per_pair = preference_loss("sigmoid", pair_loglik(model, batch), reference.loglik(model, batch, likelihood),
                               beta=0.1).losses
    torch.testing.assert_close(loss, (per_pair * weights).mean())
    assert not torch.allclose(loss, per_pair.mean())


def test_kto_refuses_a_precomputed_reference_in_its_config():
    import pytest

    with pytest.raises(ValueError, match="KTOConfig.reference must be .*, not 'precomputed' .* for method 'kto'"):
        KTOConfig(reference="precomputed")


def test_a_precomputed_reference_needs_a_provider_that_reads_columns():
    """Refused when the objective is built, before any precomputed pass or step."""
    import pytest

    from visalign.objective import make_objective
    from visalign.reference import make_reference
    from visalign.trainers.config import PreferenceConfig

    reference = make_reference("precomputed", tiny_llama(word_level_tokenizer()))
    with pytest.raises(ValueError, match="UnpairedTokenLogProbs cannot read a precomputed reference"):
        make_objective(PreferenceConfig(reference="precomputed"), reference=reference,
                       likelihood=UnpairedTokenLogProbs())
