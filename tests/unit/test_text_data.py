"""Text preference data: sources, synthetic sets, TRL-format tokenization, collators (exact tensors)."""

import itertools

import datasets
import pytest
import torch

from visalign.data import text as text_mod
from visalign.data.collators import PreferenceCollator, UnpairedCollator
from visalign.data.sources import load_source
from visalign.data.text import (
    dataset_fingerprint,
    extract_prompt,
    tokenize_preferences,
    tokenize_unpaired,
)
from visalign.testing.text_data import synthetic_kto, synthetic_preferences
from visalign.testing.tokenizers import DEFAULT_WORDS, SIMPLE_CHAT_TEMPLATE, word_level_tokenizer


@pytest.fixture(scope="module")
def tok():
    return word_level_tokenizer(chat_template=SIMPLE_CHAT_TEMPLATE)


def ids(tok, text):
    return tok.convert_tokens_to_ids(text.split())


# ------------------------------------------------------------------------------------------------ sources


def test_load_source_reads_files_and_saved_folders(tmp_path):
    rows = {"prompt": ["a", "b"], "chosen": [" red", " blue"], "rejected": [" green", " black"]}
    ds = datasets.Dataset.from_dict(rows)
    ds.to_json(tmp_path / "pairs.jsonl")
    ds.to_parquet(tmp_path / "pairs.parquet")
    ds.to_csv(tmp_path / "pairs.csv", index=False)
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(tmp_path / "saved")
    for name in ("pairs.jsonl", "pairs.parquet", "pairs.csv"):
        assert load_source(str(tmp_path / name)).to_dict() == rows
    assert load_source(str(tmp_path / "saved"), split="test")["chosen"] == [" blue"]
    with pytest.raises(ValueError, match="no split 'validation'.*'test', 'train'"):
        load_source(str(tmp_path / "saved"), split="validation")


def test_load_source_errors_name_the_problem(tmp_path):
    (tmp_path / "pairs.txt").write_text("x")
    with pytest.raises(ValueError, match=r"unsupported suffix '\.txt'"):
        load_source(str(tmp_path / "pairs.txt"))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="unknown built-in dataset 'builtin:nope'.*synthetic-preferences"):
        load_source("builtin:nope")


def test_unreadable_files_and_rows_name_the_file_and_line(tmp_path, tok):
    good = '{"prompt": "a", "chosen": " red", "rejected": " blue"}\n'
    accented = '{"prompt": "caf\u00e9", "chosen": " red", "rejected": " blue"}\n'
    cases = [
        ("bad.jsonl", (good + '{"prompt": "b", "chosen": " red"\n').encode(), r"bad\.jsonl line 2: not valid JSON"),
        ("list.jsonl", (good + "[1, 2]\n").encode(), r"list\.jsonl line 2: a JSON Lines row must be an object"),
        ("latin1.jsonl", (good * 2 + accented).encode("latin-1"), r"latin1\.jsonl line 3: not UTF-8 text"),
        ("latin1.csv", "prompt,chosen,rejected\na,red,blue\ncaf\u00e9,red,blue\n".encode("latin-1"),
         r"latin1\.csv line 3: not UTF-8 text"),
    ]
    for name, content, pattern in cases:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=pattern):
            load_source(str(tmp_path / name))
    for missing, row in (('{"prompt": null, "chosen": " red", "rejected": " blue"}', "row 1: column 'prompt'"),
                         ('{"prompt": "c", "chosen": " red"}', "row 1: column 'rejected'")):
        (tmp_path / "rows.jsonl").write_text(good + missing + "\n")
        with pytest.raises(ValueError, match=rf"rows\.jsonl {row} is null or missing"):
            tokenize_preferences(load_source(str(tmp_path / "rows.jsonl")), tok, name="rows.jsonl")


def test_builtin_synthetic_sets_are_disjoint_and_in_vocabulary():
    train, test = load_source("builtin:synthetic-preferences"), load_source("builtin:synthetic-preferences",
                                                                            split="test")
    as_triples = lambda d: set(zip(d["prompt"], d["chosen"], d["rejected"]))  # noqa: E731
    assert len(train) == 512 and len(test) == 64 and not as_triples(train) & as_triples(test)
    words = set(itertools.chain.from_iterable(" ".join(r.values()).split() for r in train))
    assert words <= set(DEFAULT_WORDS)
    assert all(c != r for c, r in zip(train["chosen"], train["rejected"]))
    kto = load_source("builtin:synthetic-kto", split="test")
    assert len(kto) == 128 and sum(kto["label"]) == 64
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        synthetic_preferences("dev")


# ------------------------------------------------------------------------------------------------ tokenization


def test_extract_prompt_strings_and_conversations():
    assert extract_prompt({"chosen": "what colour ? red", "rejected": "what colour ? blue"}) == {
        "prompt": "what colour ?", "chosen": " red", "rejected": " blue"}
    user = {"role": "user", "content": "q"}
    out = extract_prompt({"chosen": [user, {"role": "assistant", "content": "red"}],
                          "rejected": [user, {"role": "assistant", "content": "blue"}]})
    assert out["prompt"] == [user] and out["chosen"] == [{"role": "assistant", "content": "red"}]


def test_plain_text_tokenization_appends_eos_and_splits_at_the_prompt(tok):
    ds = datasets.Dataset.from_dict({"prompt": ["what colour is the sky ?"], "chosen": [" blue ."],
                                     "rejected": [" red .</s>"], "extra": [7]})
    row = tokenize_preferences(ds, tok)[0]
    assert row == {"prompt_input_ids": ids(tok, "what colour is the sky ?"),
                   "chosen_input_ids": ids(tok, "blue . </s>"), "rejected_input_ids": ids(tok, "red . </s>"), "extra": 7}


def test_implicit_prompt_is_extracted(tok):
    ds = datasets.Dataset.from_dict({"chosen": ["is the sky blue ? yes"], "rejected": ["is the sky blue ? no"]})
    row = tokenize_preferences(ds, tok)[0]
    assert row["prompt_input_ids"] == ids(tok, "is the sky blue ?")
    assert row["chosen_input_ids"] == ids(tok, "yes </s>") and row["rejected_input_ids"] == ids(tok, "no </s>")


def test_chat_template_completion_starts_after_the_generation_prompt(tok):
    row = tokenize_preferences(synthetic_preferences("test", conversational=True).select([0]), tok)[0]
    plain = synthetic_preferences("test")[0]
    assert row["prompt_input_ids"] == ids(tok, f"user : {plain['prompt']} assistant :")
    assert row["chosen_input_ids"] == ids(tok, f"{plain['chosen']} </s>")
    assert row["rejected_input_ids"] == ids(tok, f"{plain['rejected']} </s>")


def test_chat_template_common_prefix_split_when_prompt_renders_differently(monkeypatch):
    # The generation prompt ends with "yes", which the full conversation does not contain: the completion must start
    # where the two token lists diverge, and the user is warned.
    template = SIMPLE_CHAT_TEMPLATE.replace("assistant : {% endif %}", "assistant : yes {% endif %}")
    tok = word_level_tokenizer(chat_template=template)
    monkeypatch.setattr(text_mod, "_warned_prefix_mismatch", False)
    ds = datasets.Dataset.from_dict({
        "prompt": [[{"role": "user", "content": "what colour ?"}]],
        "chosen": [[{"role": "assistant", "content": "red ."}]],
        "rejected": [[{"role": "assistant", "content": "blue ."}]],
    })
    with pytest.warns(UserWarning, match="prompt's tail 'yes' is left out"):
        row = tokenize_preferences(ds, tok)[0]
    assert row["prompt_input_ids"] == ids(tok, "user : what colour ? assistant :")
    assert row["chosen_input_ids"] == ids(tok, "red . </s>")


def _long_prompt_rows():
    return datasets.Dataset.from_dict({
        "prompt": ["the sky", "what colour is the big sky ?", "the sun"],
        "chosen": [" is blue .", " blue", " is yellow ."],
        "rejected": [" is red .", " red", " is red ."],
    })


def test_max_length_cuts_the_completion_never_the_prompt(tok):
    rows = tokenize_preferences(_long_prompt_rows().select([0, 2]), tok, max_length=4)
    assert rows[0]["prompt_input_ids"] == ids(tok, "the sky")
    assert rows[0]["chosen_input_ids"] == ids(tok, "is blue")
    assert rows[1]["rejected_input_ids"] == ids(tok, "is red")


def test_prompt_that_does_not_fit_names_the_row(tok):
    with pytest.raises(ValueError, match=r"row 1: the prompt has 7 tokens.*max_length=4"):
        tokenize_preferences(_long_prompt_rows(), tok, max_length=4)


def test_prompt_that_does_not_fit_is_dropped_and_counted_on_request(tok):
    with pytest.warns(UserWarning, match="dropped 1 of 3 rows"):
        rows = tokenize_preferences(_long_prompt_rows(), tok, max_length=4, drop_long_prompts=True)
    assert [r["prompt_input_ids"] for r in rows] == [ids(tok, "the sky"), ids(tok, "the sun")]
    assert "_prompt_too_long" not in rows.column_names


def test_missing_column_and_empty_completion_errors(tok):
    with pytest.raises(ValueError, match=r"missing column\(s\) \['rejected'\]"):
        tokenize_preferences(datasets.Dataset.from_dict({"prompt": ["a"], "chosen": ["b"]}), tok)
    empty = datasets.Dataset.from_dict({"prompt": ["a", "b"], "chosen": [" red", " blue"], "rejected": [" red", " "]})
    with pytest.raises(ValueError, match=r"row 1: column 'rejected' is an empty completion"):
        tokenize_preferences(empty, tok)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['label'\]"):
        tokenize_unpaired(datasets.Dataset.from_dict({"prompt": ["a"], "completion": ["b"]}), tok)
    with pytest.raises(ValueError, match=r"row 0: column 'label' must be a bool"):
        tokenize_unpaired(datasets.Dataset.from_dict({"prompt": ["a"], "completion": ["b"], "label": [1]}), tok)


def test_unpaired_tokenization(tok):
    row = tokenize_unpaired(synthetic_kto("test").select([0]), tok)[0]
    source = synthetic_kto("test")[0]
    assert row["prompt_input_ids"] == ids(tok, source["prompt"])
    assert row["completion_input_ids"] == ids(tok, source["completion"] + " </s>")
    assert row["label"] is source["label"]


def test_dataset_fingerprint_tracks_content_only():
    a = datasets.Dataset.from_dict({"x": [[1, 2], [3]], "y": ["a", "b"]})
    b = datasets.Dataset.from_list([{"x": [1, 2], "y": "a"}, {"x": [3], "y": "b"}])
    assert dataset_fingerprint(a) == dataset_fingerprint(b)
    assert dataset_fingerprint(a, ["x"]) != dataset_fingerprint(a)
    regrouped = datasets.Dataset.from_dict({"x": [[1], [2, 3]], "y": ["a", "b"]})  # same flat ids, other rows
    assert dataset_fingerprint(a) != dataset_fingerprint(regrouped)
    assert dataset_fingerprint(a) != dataset_fingerprint(a.select([1, 0]))


# ------------------------------------------------------------------------------------------------ collators


def _pair_rows():
    return [
        {"prompt_input_ids": [5, 6], "chosen_input_ids": [7], "rejected_input_ids": [8, 9],
         "ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0,
         "ref_chosen_token_logps": [-1.0], "ref_rejected_token_logps": [-0.5, -1.5],
         "chosen_token_weights": [3.0], "rejected_token_weights": [1.0, 3.0]},
        {"prompt_input_ids": [5], "chosen_input_ids": [10, 11, 12], "rejected_input_ids": [13],
         "ref_chosen_logps": -3.0, "ref_rejected_logps": -4.0,
         "ref_chosen_token_logps": [-1.0, -1.0, -1.0], "ref_rejected_token_logps": [-4.0],
         "chosen_token_weights": [1.0, 1.0, 1.0], "rejected_token_weights": [2.0]},
    ]


def test_preference_collator_exact_tensors():
    batch = PreferenceCollator(pad_token_id=0)(_pair_rows())
    assert torch.equal(batch["input_ids"], torch.tensor(
        [[5, 6, 7, 0], [5, 10, 11, 12], [5, 6, 8, 9], [5, 13, 0, 0]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]))
    assert torch.equal(batch["completion_mask"], torch.tensor([[0, 0, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1], [0, 1, 0, 0]]))
    assert torch.equal(batch["ref_chosen_logps"], torch.tensor([-1.0, -3.0]))
    assert torch.equal(batch["ref_rejected_logps"], torch.tensor([-2.0, -4.0]))
    assert torch.equal(batch["ref_chosen_token_logps"], torch.tensor([[0, 0, -1.0, 0], [0, -1.0, -1.0, -1.0]]))
    assert torch.equal(batch["ref_rejected_token_logps"], torch.tensor([[0, 0, -0.5, -1.5], [0, -4.0, 0, 0]]))
    assert torch.equal(batch["token_weights"], torch.tensor(
        [[0, 0, 3.0, 0], [0, 1.0, 1.0, 1.0], [0, 0, 1.0, 3.0], [0, 2.0, 0, 0]]))


def test_preference_collator_optional_columns_and_padding_multiple():
    rows = [{k: r[k] for k in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")} for r in _pair_rows()]
    batch = PreferenceCollator(pad_token_id=1, pad_to_multiple_of=8)(rows)
    assert set(batch) == {"input_ids", "attention_mask", "completion_mask"}
    assert batch["input_ids"].shape == (4, 8) and batch["input_ids"][3, 2:].eq(1).all()
    bad = _pair_rows()
    bad[1]["ref_chosen_token_logps"] = [-1.0]
    with pytest.raises(ValueError, match="batch row 1: 'ref_chosen_token_logps' has 1 values but 'chosen_input_ids'"):
        PreferenceCollator(pad_token_id=0)(bad)


def test_unpaired_collator_cycles_completions_for_kl():
    rows = [{"prompt_input_ids": [5], "completion_input_ids": [6, 7], "label": True},
            {"prompt_input_ids": [8, 9], "completion_input_ids": [10], "label": False},
            {"prompt_input_ids": [11], "completion_input_ids": [12], "label": True}]
    batch = UnpairedCollator(pad_token_id=0, max_length=3)(rows)
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 0]]))
    assert torch.equal(batch["completion_mask"], torch.tensor([[0, 1, 1], [0, 0, 1], [0, 1, 0]]))
    assert torch.equal(batch["desirable"], torch.tensor([True, False, True]))
    # row i = prompt i + completion of row i-1 (cyclic); row 1's borrowed [6, 7] is cut to max_length 3
    assert torch.equal(batch["kl_input_ids"], torch.tensor([[5, 12, 0], [8, 9, 6], [11, 10, 0]]))
    assert torch.equal(batch["kl_completion_mask"], torch.tensor([[0, 1, 0], [0, 0, 1], [0, 1, 0]]))
    assert torch.equal(batch["kl_attention_mask"], torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0]]))
    with pytest.raises(ValueError, match="at least 2 rows"):
        UnpairedCollator(pad_token_id=0)(rows[:1])
    assert "kl_input_ids" not in UnpairedCollator(pad_token_id=0, kl=False)(rows[:1])
