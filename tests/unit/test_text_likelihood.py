"""Token log-probs, sequence scores and one-forward pair/unpaired scoring on a tiny Llama."""

import pytest
import torch

from visalign.data.collators import PreferenceCollator, UnpairedCollator
from visalign.likelihood.text import (
    cached_pair_loglik,
    pair_loglik,
    scored_mask,
    sequence_scores,
    token_logps,
    unpaired_loglik,
)
from visalign.testing.causal_lm import tiny_llama
from visalign.testing.tokenizers import word_level_tokenizer

ROWS = [
    {"prompt_input_ids": [5, 6, 7], "chosen_input_ids": [8, 9], "rejected_input_ids": [10, 11, 12, 13]},
    {"prompt_input_ids": [14], "chosen_input_ids": [15, 16, 17], "rejected_input_ids": [18]},
]


@pytest.fixture(scope="module")
def model():
    return tiny_llama(word_level_tokenizer()).eval()


@pytest.fixture(scope="module")
def batch():
    return PreferenceCollator(pad_token_id=0)(ROWS)


def naive_completion_logp(model, prompt, completion):
    """Sum of log_softmax-gathered log-probs of ``completion`` after ``prompt``, on the unpadded row alone."""
    ids = torch.tensor([prompt + completion])
    logprobs = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[0]
    return sum(logprobs[len(prompt) + i - 1, tok] for i, tok in enumerate(completion))


def test_token_logps_equal_naive_log_softmax_gather():
    logits = torch.randn(3, 5, 11)
    ids = torch.randint(0, 11, (3, 5))
    expected = torch.log_softmax(logits, -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    out = token_logps(logits, ids)
    assert out.dtype == torch.float32 and out.shape == (3, 5)
    assert torch.equal(out[:, 0], torch.zeros(3))
    torch.testing.assert_close(out[:, 1:], expected, rtol=0, atol=1e-6)
    # bf16 logits: maths in fp32 on the same (rounded) values
    half = logits.bfloat16()
    torch.testing.assert_close(token_logps(half, ids)[:, 1:],
                               torch.log_softmax(half.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1),
                               rtol=0, atol=1e-6)


def test_sequence_scores_by_hand():
    lp = torch.tensor([[0.0, -1.0, -2.0, -3.0], [0.0, -4.0, -5.0, -6.0]])
    mask = torch.tensor([[0.0, 1, 1, 0], [0, 0, 1, 1]])
    w = torch.tensor([[1.0, 1, 3, 1], [1, 1, 2, 1]])
    assert torch.equal(sequence_scores(lp, mask), torch.tensor([-3.0, -11.0]))
    assert torch.equal(sequence_scores(lp, mask, reduction="mean"), torch.tensor([-1.5, -5.5]))
    # weighted: -1·1 - 2·3 = -7; -5·2 - 6·1 = -16. weighted_mean divides by Σw·m = 4 and 3.
    assert torch.equal(sequence_scores(lp, mask, reduction="weighted", weights=w), torch.tensor([-7.0, -16.0]))
    torch.testing.assert_close(sequence_scores(lp, mask, reduction="weighted_mean", weights=w),
                               torch.tensor([-7.0 / 4, -16.0 / 3]))
    with pytest.raises(ValueError, match="needs per-token weights"):
        sequence_scores(lp, mask, reduction="weighted")
    with pytest.raises(ValueError, match="unknown reduction 'max'"):
        sequence_scores(lp, mask, reduction="max")


def test_scored_mask_drops_position_zero_without_touching_the_input():
    completion = torch.tensor([[1.0, 1.0, 0.0]])
    assert torch.equal(scored_mask(completion, torch.tensor([[1, 1, 1]])), torch.tensor([[0.0, 1.0, 0.0]]))
    assert torch.equal(completion, torch.tensor([[1.0, 1.0, 0.0]]))


def test_pair_loglik_matches_separate_unpadded_forwards(model, batch):
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        out = pair_loglik(model, batch, return_token_logps=True)
    finally:
        handle.remove()
    assert len(calls) == 1  # ONE forward over [chosen; rejected]
    with torch.no_grad():
        chosen = torch.stack([naive_completion_logp(model, r["prompt_input_ids"], r["chosen_input_ids"]) for r in ROWS])
        rejected = torch.stack([naive_completion_logp(model, r["prompt_input_ids"], r["rejected_input_ids"])
                                for r in ROWS])
    torch.testing.assert_close(out.chosen, chosen, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.rejected, rejected, rtol=0, atol=1e-5)
    assert torch.equal(out.chosen_count, torch.tensor([2.0, 3.0]))
    assert torch.equal(out.rejected_count, torch.tensor([4.0, 1.0]))
    assert out.chosen_token_logps.shape == (2, 7)  # T = longest prompt+completion (3 + 4)
    torch.testing.assert_close(out.chosen_token_logps.sum(-1), out.chosen)
    assert torch.equal(out.chosen_token_logps[0, :3], torch.zeros(3))  # prompt positions are not scored
    assert out.chosen.requires_grad
    mean = pair_loglik(model, batch, reduction="mean")
    torch.testing.assert_close(mean.chosen, chosen / torch.tensor([2.0, 3.0]), rtol=0, atol=1e-5)


def test_cached_pair_loglik_equals_live_scores(model, batch):
    with torch.no_grad():
        live = pair_loglik(model, batch, return_token_logps=True)
    cached = dict(batch, ref_chosen_logps=live.chosen, ref_rejected_logps=live.rejected)
    out = cached_pair_loglik(cached)
    assert torch.equal(out.chosen, live.chosen) and torch.equal(out.rejected_count, live.rejected_count)
    with pytest.raises(ValueError, match="reduction 'mean' needs per-token reference log-probs"):
        cached_pair_loglik(cached, reduction="mean")
    with pytest.raises(ValueError, match="no 'ref_chosen_logps'"):
        cached_pair_loglik(batch)
    weights = torch.rand(4, 7) + 0.5
    per_token = dict(batch, ref_chosen_token_logps=live.chosen_token_logps,
                     ref_rejected_token_logps=live.rejected_token_logps, token_weights=weights)
    with torch.no_grad():
        live_weighted = pair_loglik(model, dict(batch, token_weights=weights), reduction="weighted_mean")
    out = cached_pair_loglik(per_token, reduction="weighted_mean")
    torch.testing.assert_close(out.chosen, live_weighted.chosen, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.rejected, live_weighted.rejected, rtol=0, atol=1e-6)


def test_unpaired_loglik_scores_matched_rows_with_grad_and_kl_rows_without(model):
    rows = [{"prompt_input_ids": [5, 6], "completion_input_ids": [7, 8], "label": True},
            {"prompt_input_ids": [9], "completion_input_ids": [10, 11, 12], "label": False}]
    out = unpaired_loglik(model, UnpairedCollator(pad_token_id=0)(rows))
    with torch.no_grad():
        matched = torch.stack([naive_completion_logp(model, r["prompt_input_ids"], r["completion_input_ids"])
                               for r in rows])
        kl = torch.stack([naive_completion_logp(model, [5, 6], [10, 11, 12]),
                          naive_completion_logp(model, [9], [7, 8])])
    torch.testing.assert_close(out.logps, matched, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.kl_logps, kl, rtol=0, atol=1e-5)
    assert out.logps.requires_grad and not out.kl_logps.requires_grad
    assert torch.equal(out.desirable, torch.tensor([True, False]))
    assert torch.equal(out.count, torch.tensor([2.0, 3.0])) and torch.equal(out.kl_count, torch.tensor([3.0, 2.0]))
