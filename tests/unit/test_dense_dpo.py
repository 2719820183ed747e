"""RLHF-V dense-DPO token weights on hand-made token pairs (RLHF-V §A.4): replacement, insertion, deletion, short
matches, the prompt prefix, and the text-dataset helper."""

import pytest
from datasets import Dataset

from visalign.data.dense_dpo import add_dense_weights, changed_spans, dense_token_weights

G = 5.0
PROMPT = [1, 2, 3]
TAIL = [13, 14, 15]


def test_replacement_marks_both_sides():
    chosen, rejected = dense_token_weights([10, 11, 12, 30, 31, *TAIL], [10, 11, 12, 20, *TAIL], gamma=G,
                                           prefix_ids=PROMPT)
    assert chosen == [1, 1, 1, G, G, 1, 1, 1]
    assert rejected == [1, 1, 1, G, 1, 1, 1]


@pytest.mark.parametrize("mark", [False, True])
def test_insertion_and_deletion_only_with_option(mark):
    chosen, rejected = dense_token_weights([10, 11, 12, 30, *TAIL], [10, 11, 12, *TAIL], gamma=G, prefix_ids=PROMPT,
                                           mark_insertions_deletions=mark)
    assert chosen == [1, 1, 1, G if mark else 1, 1, 1, 1] and rejected == [1] * 6
    chosen, rejected = dense_token_weights([10, 11, 12, *TAIL], [10, 11, 12, 20, *TAIL], gamma=G, prefix_ids=PROMPT,
                                           mark_insertions_deletions=mark)
    assert rejected == [1, 1, 1, G if mark else 1, 1, 1, 1] and chosen == [1] * 6


def test_short_matches_count_as_changed():
    chosen_ids, rejected_ids = [10, 11, 12, 30, 5, 31, *TAIL], [10, 11, 12, 20, 5, 21, *TAIL]
    chosen, rejected = dense_token_weights(chosen_ids, rejected_ids, gamma=G, prefix_ids=PROMPT)
    assert chosen == rejected == [1, 1, 1, G, G, G, 1, 1, 1]  # the 1-token match "5" is dropped
    chosen, rejected = dense_token_weights(chosen_ids, rejected_ids, gamma=G, prefix_ids=PROMPT, min_match_size=1)
    assert chosen == rejected == [1, 1, 1, G, 1, G, 1, 1, 1]


def test_prompt_prefix_anchors_a_short_common_start():
    # with the prompt, the shared first token joins the prompt's matching block; without it, it is a short match
    assert dense_token_weights([7, 30, *TAIL], [7, 20, *TAIL], gamma=G, prefix_ids=PROMPT) == ([1, G, 1, 1, 1],) * 2
    assert dense_token_weights([7, 30, *TAIL], [7, 20, *TAIL], gamma=G) == ([G, G, 1, 1, 1],) * 2


def test_changed_spans_indices_and_errors():
    assert changed_spans([1, 2, 3, 9, 4, 5, 6], [1, 2, 3, 8, 8, 4, 5, 6]) == ([3], [3, 4])
    with pytest.raises(ValueError, match="gamma must be > 0"):
        dense_token_weights([1], [2], gamma=0)
    with pytest.raises(ValueError, match="min_match_size must be >= 1"):
        changed_spans([1], [2], min_match_size=0)


def test_add_dense_weights_on_tokenized_text():
    data = Dataset.from_dict({"prompt_input_ids": [PROMPT], "chosen_input_ids": [[10, 11, 12, 30, *TAIL]],
                              "rejected_input_ids": [[10, 11, 12, 20, *TAIL]]})
    row = add_dense_weights(data, gamma=2.0)[0]
    assert row["chosen_token_weights"] == row["rejected_token_weights"] == [1, 1, 1, 2, 1, 1, 1]


def test_the_method_name_decides_dense_dpo_and_a_contradiction_fails_naming_both_keys():
    from visalign.trainers.vlm import VLMDPOConfig

    assert VLMDPOConfig(method="dense-dpo").dense_dpo is True
    assert VLMDPOConfig(method="dense-dpo").reduction != "sum"
    assert VLMDPOConfig(method="vlm-dpo").dense_dpo is False and VLMDPOConfig().reduction == "sum"
    with pytest.raises(ValueError, match=r"VLMDPOConfig.dense_dpo must be true .* for method 'dense-dpo'; got False"):
        VLMDPOConfig(method="dense-dpo", dense_dpo=False)
    for method in ("vlm-dpo", "mia-dpo"):
        with pytest.raises(ValueError, match=rf"dense_dpo must be false .* for method '{method}'; got True"):
            VLMDPOConfig(method=method, dense_dpo=True)
