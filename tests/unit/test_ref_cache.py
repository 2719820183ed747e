"""Precomputed reference log-probs: equal to the live reference, cached once, invalidated by model or data."""

from pathlib import Path

import pytest
import torch

from visalign.data.collators import PreferenceCollator
from visalign.data.ref_cache import attach_reference_logps, model_fingerprint
from visalign.data.sources import load_source
from visalign.data.text import tokenize_preferences
from visalign.likelihood.text import cached_pair_loglik, pair_loglik
from visalign.testing.causal_lm import tiny_llama
from visalign.testing.text_data import synthetic_preferences
from visalign.testing.tokenizers import SIMPLE_CHAT_TEMPLATE, word_level_tokenizer


@pytest.fixture(scope="module")
def tok():
    return word_level_tokenizer(chat_template=SIMPLE_CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def pairs(tok):
    return tokenize_preferences(synthetic_preferences("test").select(range(6)), tok, max_length=16)


@pytest.fixture
def collator(tok):
    return PreferenceCollator(tok.pad_token_id)


def cache_files(folder):
    return sorted(folder.glob("ref_logps-*.safetensors"))


def forbid_forward(model):
    def fail(*_):
        raise AssertionError("the reference was recomputed")

    return model.register_forward_pre_hook(fail)


def test_precomputed_reference_equals_live_reference(tmp_path, tok, pairs, collator):
    model = tiny_llama(tok).train()
    attached = attach_reference_logps(pairs, model, collator, batch_size=4, per_token=True, cache_dir=tmp_path)
    assert model.training  # the pass restores train mode
    batch = collator(list(attached))
    with torch.no_grad():
        live = pair_loglik(model.eval(), batch, return_token_logps=True)
    cached = cached_pair_loglik(batch)
    torch.testing.assert_close(cached.chosen, live.chosen, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached.rejected, live.rejected, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached.chosen_token_logps, live.chosen_token_logps, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached.rejected_token_logps, live.rejected_token_logps, rtol=0, atol=1e-5)
    assert [len(r) for r in attached["ref_chosen_token_logps"]] == [len(r) for r in attached["chosen_input_ids"]]


def test_second_run_reuses_the_cache_file(tmp_path, tok, pairs, collator):
    model = tiny_llama(tok)
    first = attach_reference_logps(pairs, model, collator, batch_size=4, cache_dir=tmp_path)
    (path,) = cache_files(tmp_path)
    stamp = path.stat().st_mtime_ns
    handle = forbid_forward(model)
    try:
        second = attach_reference_logps(first, model, collator, batch_size=2, cache_dir=tmp_path)
    finally:
        handle.remove()
    assert second["ref_chosen_logps"] == first["ref_chosen_logps"]
    assert cache_files(tmp_path) == [path] and path.stat().st_mtime_ns == stamp
    assert "ref_chosen_token_logps" not in second.column_names


def test_a_corrupt_cache_file_is_named(tmp_path, tok, pairs, collator):
    model = tiny_llama(tok)
    attach_reference_logps(pairs, model, collator, batch_size=4, cache_dir=tmp_path)
    (path,) = cache_files(tmp_path)
    path.write_bytes(path.read_bytes()[:40])  # half-written
    with pytest.raises(ValueError, match=rf"reference cache {path} is corrupt .*delete the file"):
        attach_reference_logps(pairs, model, collator, batch_size=4, cache_dir=tmp_path)


def test_other_model_data_or_options_get_their_own_cache(tmp_path, tok, pairs, collator):
    model = tiny_llama(tok)
    base = attach_reference_logps(pairs, model, collator, batch_size=4, cache_dir=tmp_path)
    other_model = tiny_llama(tok, seed=1)
    moved = attach_reference_logps(pairs, other_model, collator, batch_size=4, cache_dir=tmp_path)
    assert len(cache_files(tmp_path)) == 2 and moved["ref_chosen_logps"] != base["ref_chosen_logps"]
    subset = attach_reference_logps(pairs.select([0, 1, 2]), model, collator, batch_size=4, cache_dir=tmp_path)
    assert len(cache_files(tmp_path)) == 3
    torch.testing.assert_close(torch.tensor(subset["ref_chosen_logps"]), torch.tensor(base["ref_chosen_logps"][:3]))
    attach_reference_logps(pairs, model, collator, batch_size=4, per_token=True, cache_dir=tmp_path)
    assert len(cache_files(tmp_path)) == 4


def test_cache_lives_beside_a_file_backed_dataset(tmp_path, tok, collator):
    synthetic_preferences("test").select(range(4)).to_json(tmp_path / "pairs.jsonl")
    dataset = tokenize_preferences(load_source(str(tmp_path / "pairs.jsonl")), tok)
    folder = Path(dataset.cache_files[0]["filename"]).parent
    before = cache_files(folder)
    attach_reference_logps(dataset, tiny_llama(tok), collator, batch_size=4)
    assert len(cache_files(folder)) == len(before) + 1


def test_model_fingerprint_tracks_every_weight_and_dtype(tok):
    model = tiny_llama(tok)
    fp = model_fingerprint(model)
    assert model_fingerprint(tiny_llama(tok)) == fp
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    assert model_fingerprint(model) != fp
    assert model_fingerprint(tiny_llama(tok).to(torch.bfloat16)) != fp
