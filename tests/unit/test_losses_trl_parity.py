"""Parity with TRL 1.16's own loss code on the same log-likelihoods.

TRL computes the DPO and KTO losses inline in ``DPOTrainer._compute_loss`` / ``KTOTrainer._compute_loss``; those methods
are called here unbound, with a namespace holding the trainer attributes they read and a plain torch module standing
in for the language model: it returns per-token log-probs ``−0.1·next_token_id`` on completion tokens (0 elsewhere),
the ``log_probs`` TRL's fused LM head would return. Reference log-probs go through TRL's precomputed-reference path.
CPO and ORPO expose their losses as methods (``cpo_loss``, ``odds_ratio_loss``) and are called the same way.
"""

import collections
import types

import pytest
import torch

pytest.importorskip("trl")
from trl import DPOTrainer, KTOTrainer  # noqa: E402
from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402
from trl.experimental.orpo.orpo_trainer import log1mexp as trl_log1mexp  # noqa: E402

from visalign.losses import PairLogLik, UnpairedLogLik, kto_loss, preference_loss  # noqa: E402
from visalign.losses.reference_free import log1mexp  # noqa: E402

TOKEN_LOGP = -0.1


class TokenLogProbLM(torch.nn.Module):
    """Per-token log-prob of the next token = −0.1·token_id on labelled positions, in TRL's fused-head output form."""

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=None, fused_lm_head=None):
        next_labels = labels[:, 1:]
        log_probs = torch.where(next_labels == -100, 0.0, TOKEN_LOGP * next_labels.float())
        zeros = torch.zeros_like(log_probs)
        return types.SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                                     is_top1=torch.zeros_like(log_probs, dtype=torch.bool))


def _trainer_state(**attrs):
    accelerator = types.SimpleNamespace(device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t)
    return types.SimpleNamespace(
        model=TokenLogProbLM(), accelerator=accelerator, aux_loss_enabled=False, precompute_ref_logps=True,
        _metrics={"train": collections.defaultdict(list)}, _total_train_tokens=0, _tp_size=1, **attrs,
    )


def _pad(rows):
    width = max(len(r) for r in rows)
    return torch.tensor([r + [0] * (width - len(r)) for r in rows])


def _sequences(prompts, completions):
    """input_ids, attention_mask, completion_mask (prompt ≥ 1 token) and summed logps / token counts."""
    ids = _pad([p + c for p, c in zip(prompts, completions)])
    completion_mask = _pad([[0] * len(p) + [1] * len(c) for p, c in zip(prompts, completions)])
    logps = torch.tensor([TOKEN_LOGP * sum(c) for c in completions])
    counts = torch.tensor([float(len(c)) for c in completions])
    return ids, (ids > 0).long(), completion_mask, logps, counts


# Three pairs: prompts, chosen and rejected completions (token ids), reference sums chosen/rejected.
PROMPTS = [[1, 2], [1], [3, 1, 2]]
CHOSEN = [[4, 5], [2, 2, 3, 1], [9]]
REJECTED = [[7], [6, 1], [2, 8, 3]]
REF_CHOSEN = torch.tensor([-0.7, -1.1, -0.2])
REF_REJECTED = torch.tensor([-0.9, -0.4, -1.6])

DPO_CASES = [
    ([name], [1.0], {}) for name in (
        "sigmoid", "hinge", "ipo", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero",
        "apo_down", "discopop", "sft", "sigmoid_norm",
    )
] + [
    (["robust"], [1.0], {"label_smoothing": 0.2}),
    (["exo_pair"], [1.0], {"label_smoothing": 0.1}),
    (["aot"], [1.0], {"label_smoothing": 0.1}),
    (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], {}),
    (["sigmoid", "sft"], [1.0, 0.3], {}),
    (["sigmoid"], [1.0], {"f_divergence_type": "forward_kl"}),
    (["ipo"], [1.0], {"f_divergence_type": "js_divergence"}),
    (["hinge", "sft"], [1.0, 1.0], {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3}),
    (["discopop"], [1.0], {"discopop_tau": 0.2}),
]


@pytest.mark.parametrize("loss_types, weights, hparams", DPO_CASES, ids=lambda v: str(v))
def test_dpo_family_matches_trl(loss_types, weights, hparams):
    beta = 0.4
    ids, attention, completion_mask, logps, counts = _sequences(PROMPTS + PROMPTS, CHOSEN + REJECTED)
    trainer = _trainer_state(
        beta=beta, loss_types=loss_types, loss_weights=weights, ld_alpha=None, use_weighting=False,
        f_divergence_type=hparams.get("f_divergence_type", "reverse_kl"),
        f_alpha_divergence_coef=hparams.get("f_alpha_divergence_coef", 0.5),
        label_smoothing=hparams.get("label_smoothing", 0.0),
        args=types.SimpleNamespace(discopop_tau=hparams.get("discopop_tau", 0.05)),
    )
    inputs = dict(input_ids=ids, attention_mask=attention, completion_mask=completion_mask,
                  ref_chosen_logps=REF_CHOSEN, ref_rejected_logps=REF_REJECTED)
    trl_loss = DPOTrainer._compute_loss(trainer, trainer.model, inputs, return_outputs=False)

    chosen, rejected = logps.chunk(2)
    chosen_count, rejected_count = counts.chunk(2)
    policy = PairLogLik(chosen, rejected, chosen_count, rejected_count)
    ours = preference_loss(loss_types, policy, PairLogLik(REF_CHOSEN, REF_REJECTED), beta=beta,
                           loss_weights=weights, **hparams)
    assert ours.loss.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-7)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected"):
        assert ours.metrics[key] == pytest.approx(trainer._metrics["train"][key][-1], rel=1e-5, abs=1e-7), key


def test_kto_matches_trl():
    beta = 0.3
    prompts = [[1, 2], [3], [2, 2, 1], [1]]
    completions = [[4, 5], [6], [2, 3, 1], [7, 7]]
    kl_completions = completions[-1:] + completions[:-1]  # TRL's collator shifts completions by one
    desirable = torch.tensor([True, False, True, False])
    ids, attention, completion_mask, logps, _ = _sequences(prompts, completions)
    kl_ids, kl_attention, kl_mask, kl_logps, _ = _sequences(prompts, kl_completions)
    ref_logps = torch.tensor([-0.6, -0.2, -1.0, -2.0])
    ref_kl_logps = torch.tensor([-1.9, -0.3, -0.4, -0.5])

    trainer = _trainer_state(beta=beta, loss_type="kto", calculate_KL=True, desirable_weight=1.0,
                             undesirable_weight=1.5)
    trainer._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, trainer)
    batch = dict(input_ids=ids, attention_mask=attention, completion_mask=completion_mask, label=desirable,
                 KL_input_ids=kl_ids, KL_attention_mask=kl_attention, KL_completion_mask=kl_mask,
                 ref_logps=ref_logps, ref_KL_logps=ref_kl_logps)
    trl_loss = KTOTrainer._compute_loss(trainer, trainer.model, batch, return_outputs=False)

    ours = kto_loss(UnpairedLogLik(logps, desirable, kl_logps), UnpairedLogLik(ref_logps, desirable, ref_kl_logps),
                    beta=beta, undesirable_weight=1.5)
    assert ours.loss.item() == pytest.approx(trl_loss.item(), rel=1e-5)
    for key in ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert ours.metrics[key] == pytest.approx(trainer._metrics["train"][key][-1], rel=1e-5, abs=1e-7), key


CHOSEN_SUM = torch.tensor([-2.0, -3.0, -0.9])
REJECTED_SUM = torch.tensor([-4.0, -1.0, -1.2])
CHOSEN_COUNT = torch.tensor([4.0, 2.0, 3.0])
REJECTED_COUNT = torch.tensor([2.0, 5.0, 1.0])
FREE = PairLogLik(CHOSEN_SUM, REJECTED_SUM, CHOSEN_COUNT, REJECTED_COUNT)
NLL = -CHOSEN_SUM.sum() / CHOSEN_COUNT.sum()


def _cpo_state(loss_type, beta, label_smoothing, simpo_gamma=0.5):
    return types.SimpleNamespace(alpha=0.0, beta=beta, loss_type=loss_type, simpo_gamma=simpo_gamma,
                                 label_smoothing=label_smoothing,
                                 accelerator=types.SimpleNamespace(device=torch.device("cpu")))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_simpo_matches_trl_cpo_trainer(label_smoothing):
    trainer = _cpo_state("simpo", beta=2.0, label_smoothing=label_smoothing, simpo_gamma=1.375)
    # CPOTrainer's simpo reads mean token logps
    trl_losses, trl_chosen, trl_rejected = CPOTrainer.cpo_loss(
        trainer, CHOSEN_SUM / CHOSEN_COUNT, REJECTED_SUM / REJECTED_COUNT
    )
    ours = preference_loss("simpo", FREE, None, beta=2.0, simpo_gamma=1.375, label_smoothing=label_smoothing)
    torch.testing.assert_close(ours.losses, trl_losses)
    torch.testing.assert_close(ours.chosen_rewards, trl_chosen)
    torch.testing.assert_close(ours.rejected_rewards, trl_rejected)


def test_cpo_matches_trl_cpo_trainer():
    trainer = _cpo_state("sigmoid", beta=0.5, label_smoothing=0.1)
    trl_losses, trl_chosen, _ = CPOTrainer.cpo_loss(trainer, CHOSEN_SUM, REJECTED_SUM)
    ours = preference_loss("cpo", FREE, None, beta=0.5, cpo_alpha=1.5, label_smoothing=0.1)
    # CPOTrainer: loss = mean(losses) + cpo_alpha·NLL(chosen)
    torch.testing.assert_close(ours.losses, trl_losses + 1.5 * NLL)
    torch.testing.assert_close(ours.chosen_rewards, trl_chosen)


def test_orpo_matches_trl_orpo_trainer():
    trainer = types.SimpleNamespace(beta=0.1, accelerator=types.SimpleNamespace(device=torch.device("cpu")))
    trl_losses, trl_chosen, trl_rejected, trl_ratio, trl_log_odds = ORPOTrainer.odds_ratio_loss(
        trainer, CHOSEN_SUM / CHOSEN_COUNT, REJECTED_SUM / REJECTED_COUNT
    )
    ours = preference_loss("orpo", FREE, None, beta=0.1)
    # ORPOTrainer: loss = NLL(chosen) − mean(β·logσ(log_odds))
    torch.testing.assert_close(ours.losses, NLL - trl_losses)
    torch.testing.assert_close(ours.chosen_rewards, trl_chosen)
    torch.testing.assert_close(ours.rejected_rewards, trl_rejected)
    assert ours.metrics["log_odds_ratio"] == pytest.approx(trl_ratio.item(), rel=1e-6)
    assert ours.metrics["log_odds_chosen"] == pytest.approx(trl_log_odds.item(), rel=1e-6)


def test_log1mexp_matches_trl():
    a = -torch.logspace(-7, 2, 50)
    torch.testing.assert_close(log1mexp(a), trl_log1mexp(a))
