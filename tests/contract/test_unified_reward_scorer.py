"""UnifiedReward with tiny Qwen2-VL judges built in code, saved and loaded through ``from_pretrained``.

Two judges: the random tiny model (its answers are gibberish, so every parse fails and gives NaN + a flag), and a
tiny model whose weights are set so that greedy decoding always emits one fixed answer: every token embeds to the
same vector ``e``, attention and MLP outputs are zeroed (the residual stream stays ``e``), and only the answer's
``lm_head`` row is non-zero (``e``), so its logit ``e·norm(e) > 0`` beats the zeros of every other token.
"""

import pytest
import torch

from reward_models import load_scorer
from reward_models.unified_reward import (
    PAIRWISE_TEMPLATE,
    POINTWISE_TEMPLATE,
    UnifiedReward,
    combine_orders,
    judge_messages,
)
from tests.contract.scorer_contract import PROMPTS, ScorerContract, make_images
from visalign.testing.vlm import save_tiny_qwen2_vl, tiny_qwen2_vl

MAX_NEW_TOKENS = 3
#: The contract judge's fixed answer: a 4 under the pointwise template, "first is better" under the pairwise one.
ANSWER = "Image 1 is better. Final Score: 4"


def save_constant_judge(path, answer: str):
    model, processor = tiny_qwen2_vl()
    tokenizer = processor.tokenizer
    tokenizer.add_tokens([answer])  # one token whose text is the whole answer
    model.resize_token_embeddings(len(tokenizer))
    e = torch.randn(model.config.text_config.hidden_size)
    with torch.no_grad():
        model.get_input_embeddings().weight[:] = e
        for layer in model.model.language_model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = model.get_output_embeddings().weight
        head.zero_()
        head[tokenizer.convert_tokens_to_ids(answer)] = e
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    path = save_constant_judge(tmp_path_factory.mktemp("judge"), ANSWER)
    return load_scorer("reward_models.unified_reward:UnifiedReward", model=str(path), max_new_tokens=MAX_NEW_TOKENS)


@pytest.fixture(scope="module")
def random_judge(tmp_path_factory):
    path = save_tiny_qwen2_vl(tmp_path_factory.mktemp("random_judge"))
    return UnifiedReward(str(path), max_new_tokens=MAX_NEW_TOKENS)


class TestUnifiedRewardContract(ScorerContract):
    """The whole contract holds for the constant judge: its pairwise answers are position-biased ("Image 1") and the
    two orders average to 1/2, the 2-way softmax of its equal pointwise scores."""


def test_registered_under_unifiedreward(tmp_path):
    path = save_tiny_qwen2_vl(tmp_path / "judge")
    assert isinstance(load_scorer("unifiedreward", model=str(path), max_new_tokens=1), UnifiedReward)


def test_prompts_are_rendered_exactly(scorer):
    images_first = "<|vision_start|><|image_pad|><|vision_end|>"
    pointwise = scorer.chat_text(judge_messages(POINTWISE_TEMPLATE, "a {red} cat", 1))
    assert pointwise == ("<|im_start|>user\n" + images_first
                         + POINTWISE_TEMPLATE.replace("{prompt}", "a {red} cat")
                         + "<|im_end|>\n<|im_start|>assistant\n")
    assert pointwise.endswith("and assign a score from 1 to 5 after 'Final Score:'.\nYour task is provided as "
                              "follows:\nText Caption: [a {red} cat]<|im_end|>\n<|im_start|>assistant\n")
    pairwise = scorer.chat_text(judge_messages(PAIRWISE_TEMPLATE, "a cat", 2))
    assert pairwise.startswith("<|im_start|>user\n" + 2 * images_first + "You are given a text caption and two")
    assert 'Provide a clear conclusion such as "Image 1 is better.", "Image 2 is better." and "Both images are ' \
           'equally good."\nYour task is provided as follows:\nText Caption: [a cat]<|im_end|>' in pairwise


def test_pointwise_answer_is_generated_greedily_and_parsed(scorer):
    images = make_images(2)
    answers = scorer.answer([judge_messages(POINTWISE_TEMPLATE, p, 1) for p in PROMPTS[:2]],
                            [[scorer.transform(img)] for img in images])
    assert answers == [" ".join([ANSWER] * MAX_NEW_TOKENS)] * 2  # max_new_tokens is honoured
    result = scorer.score(images, PROMPTS[:2])
    assert torch.equal(result.scores, torch.tensor([4.0, 4.0]))
    assert torch.equal(result.details["parse_ok"], torch.ones(2))


def test_unparseable_answers_give_nan_and_a_flag_never_zero(random_judge):
    images = make_images(3)
    answers = random_judge.answer([judge_messages(POINTWISE_TEMPLATE, "a cat", 1)] * 3,
                                  [[random_judge.transform(img)] for img in images])
    assert all(isinstance(a, str) and "Final Score" not in a for a in answers)
    result = random_judge.score(images, "a cat", batch_size=2)
    assert torch.isnan(result.scores).all() and torch.equal(result.details["parse_ok"], torch.zeros(3))
    pref = random_judge.preference("a cat", images[:2], images[1:])
    assert torch.isnan(pref.probs).all() and torch.equal(pref.details["parse_ok"], torch.zeros(2))


def test_both_orders_cancel_a_pure_position_bias(tmp_path):
    """A judge that always says "Image 1 is better" prefers whichever image is shown first: asked both ways, the
    preference is exactly 1/2."""
    judge = UnifiedReward(str(save_constant_judge(tmp_path, "Image 1 is better.")), max_new_tokens=2)
    result = judge.preference(["a cat", "a dog"], make_images(2, seed=1), make_images(2, seed=2))
    assert torch.equal(result.details["p_forward"], torch.ones(2))
    assert torch.equal(result.details["p_swapped"], torch.ones(2))
    assert torch.equal(result.probs, torch.full((2,), 0.5))
    assert torch.equal(result.details["parse_ok"], torch.ones(2))


def test_combine_orders():
    forward = torch.tensor([1.0, 1.0, 0.5, 0.0, float("nan")])
    swapped = torch.tensor([0.0, 1.0, 0.5, 1.0, 0.0])
    expected = torch.tensor([1.0, 0.5, 0.5, 0.0, float("nan")])
    torch.testing.assert_close(combine_orders(forward, swapped), expected, equal_nan=True)


def test_preference_checks_its_inputs(scorer):
    with pytest.raises(ValueError, match="as many 'a' as 'b' images, got 2 and 1"):
        scorer.preference("a cat", make_images(2), make_images(1))


def test_bad_max_new_tokens(tmp_path):
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        UnifiedReward(str(tmp_path), max_new_tokens=0)
