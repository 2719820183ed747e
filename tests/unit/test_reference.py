"""Reference strategies, LoRA and causal-LM loading through real from_pretrained folders."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from visalign.data.collators import PreferenceCollator
from visalign.likelihood.text import TokenLogProbs, pair_loglik
from visalign.errors import NotFoundError
from visalign.models.causal_lm import load_causal_lm, load_tokenizer
from visalign.models.lora import apply_lora
from visalign.reference import REFERENCE_STRATEGIES, make_reference
from visalign.testing.causal_lm import save_tiny_llama, tiny_llama
from visalign.testing.tokenizers import word_level_tokenizer

ROWS = [
    {"prompt_input_ids": [5, 6, 7], "chosen_input_ids": [8, 9], "rejected_input_ids": [10, 11, 12]},
    {"prompt_input_ids": [14], "chosen_input_ids": [15, 16, 17], "rejected_input_ids": [18]},
]
BATCH = PreferenceCollator(pad_token_id=0)(ROWS)


def base_model():
    return tiny_llama(word_level_tokenizer())


def lora_model():
    return apply_lora(base_model(), r=4, alpha=8, target_modules=["q_proj", "v_proj"])


def scores(model):
    with torch.no_grad():
        return pair_loglik(model, BATCH)


def ref_scores(reference, policy):
    with reference.active(policy) as ref_model:
        return pair_loglik(ref_model, BATCH)


def perturb_adapter(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B.default" in name:
                p.normal_(0.0, 0.5)


def test_frozen_copy_equals_disable_adapter_at_step_zero_with_fresh_lora():
    base = scores(base_model())
    policy = lora_model()
    frozen, disabled = make_reference("frozen_copy", policy), make_reference("disable_adapter", policy)
    a, b = ref_scores(frozen, policy), ref_scores(disabled, policy)
    assert torch.equal(a.chosen, b.chosen) and torch.equal(a.rejected, b.rejected)
    assert torch.equal(a.chosen, base.chosen)
    assert torch.equal(scores(policy).chosen, base.chosen)  # fresh LoRA: B = 0


def test_disable_adapter_is_the_base_model_after_the_adapter_moves():
    policy = lora_model()
    base = scores(policy)
    perturb_adapter(policy)
    assert not torch.allclose(scores(policy).chosen, base.chosen)
    assert torch.equal(ref_scores(make_reference("disable_adapter", policy), policy).chosen, base.chosen)
    assert not torch.allclose(scores(policy).chosen, base.chosen)  # adapters are back on after the block


def test_disable_adapter_with_transformers_integrated_adapters():
    from peft import LoraConfig

    model = base_model()
    base = scores(model)
    model.add_adapter(LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    assert not torch.allclose(scores(model).chosen, base.chosen)
    assert torch.equal(ref_scores(make_reference("disable_adapter", model), model).chosen, base.chosen)
    assert not torch.allclose(scores(model).chosen, base.chosen)


def test_ref_adapter_is_a_frozen_copy_of_the_current_adapter():
    policy = lora_model()
    base = scores(policy)
    perturb_adapter(policy)
    trained_start = scores(policy)
    reference = make_reference("ref_adapter", policy)
    policy.train()
    ref = ref_scores(reference, policy)
    assert torch.equal(ref.chosen, trained_start.chosen) and not torch.allclose(ref.chosen, base.chosen)
    assert policy.active_adapter == "default" and policy.training
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    # the policy moves on, the reference stays
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_A.default" in name:
                p.add_(0.3)
    assert torch.equal(ref_scores(reference, policy).chosen, trained_start.chosen)
    assert not torch.allclose(scores(policy).chosen, trained_start.chosen)


def test_active_runs_in_eval_without_grad_and_restores_every_mode_flag():
    policy = lora_model().train()
    frozen_sub = policy.base_model.model.model.layers[0]
    frozen_sub.eval()
    seen = []
    with make_reference("disable_adapter", policy).active(policy) as ref_model:
        seen.append((ref_model.training, torch.is_grad_enabled()))
    assert seen == [(False, False)]
    assert policy.training and not frozen_sub.training


def test_frozen_copy_is_independent_and_can_change_dtype():
    policy = base_model()
    reference = make_reference("frozen_copy", policy, dtype=torch.bfloat16)
    assert reference.model.dtype == torch.bfloat16 and not any(p.requires_grad for p in reference.model.parameters())
    before = ref_scores(reference, policy).chosen
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
    assert torch.equal(ref_scores(reference, policy).chosen, before)
    assert policy.dtype == torch.float32


def test_reference_errors():
    with pytest.raises(ValueError, match="unknown reference strategy 'ema'"):
        make_reference("ema", base_model())
    with pytest.raises(ValueError, match="'disable_adapter' needs a model with peft adapters"):
        make_reference("disable_adapter", base_model())
    with pytest.raises(ValueError, match="'ref_adapter' needs a peft PeftModel"):
        make_reference("ref_adapter", base_model())
    with pytest.raises(ValueError, match="reference_dtype applies to reference 'frozen_copy' only"):
        make_reference("disable_adapter", lora_model(), dtype=torch.float16)
    for strategy in ("precomputed", "none"):
        reference = make_reference(strategy, base_model())
        assert not reference.needs_forward
        with pytest.raises(ValueError, match="runs no reference forward"), reference.active(base_model()):
            pass


def test_loglik_is_one_call_for_every_strategy():
    policy = lora_model()
    perturb_adapter(policy)
    before = scores(policy)
    with policy.disable_adapter():
        base = scores(policy)
    references = {strategy: make_reference(strategy, policy) for strategy in REFERENCE_STRATEGIES}
    perturb_adapter(policy)  # the policy moves after the references are made
    expected = {"frozen_copy": before, "ref_adapter": before, "disable_adapter": base}
    for strategy, want in expected.items():
        got = references[strategy].loglik(policy, BATCH, TokenLogProbs())
        assert not references[strategy].reads_batch and got.chosen.grad_fn is None
        torch.testing.assert_close((got.chosen, got.rejected), (want.chosen, want.rejected))
    columns = {**BATCH, "ref_chosen_logps": torch.tensor([-1.0, -2.0]),
               "ref_rejected_logps": torch.tensor([-3.0, -4.0])}
    assert references["precomputed"].reads_batch
    read = references["precomputed"].loglik(policy, columns, TokenLogProbs())
    assert read.chosen.tolist() == [-1.0, -2.0] and read.rejected.tolist() == [-3.0, -4.0]
    assert references["none"].loglik(policy, BATCH, TokenLogProbs()) is None


def test_apply_lora_trains_only_the_adapter():
    policy = apply_lora(base_model(), r=2, alpha=4)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)  # all-linear leaves the output head alone
    assert type(policy).__name__ == "PeftModelForCausalLM"
    with pytest.raises(ValueError, match="lora_r must be positive"):
        apply_lora(base_model(), r=0, alpha=1)


def test_load_causal_lm_from_a_saved_folder(tmp_path):
    folder = save_tiny_llama(tmp_path / "tiny", seed=3)
    model, tok = load_causal_lm(str(folder), dtype="float32")
    reference = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)
    assert tok.pad_token_id == 0 and tok.eos_token == "</s>"
    assert load_causal_lm(str(folder), dtype="bfloat16")[0].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        load_causal_lm(str(folder), dtype="fp8")


def test_builtin_tiny_llama_is_built_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VISALIGN_CACHE", str(tmp_path))
    model, tok = load_causal_lm("builtin:tiny-llama")
    config = tmp_path / "builtin" / "tiny-llama" / "config.json"
    stamp = config.stat().st_mtime_ns
    assert model.config.vocab_size == len(tok)
    assert load_tokenizer("builtin:tiny-llama").chat_template == tok.chat_template
    load_causal_lm("builtin:tiny-llama")
    assert config.stat().st_mtime_ns == stamp
    with pytest.raises(NotFoundError, match="unknown built-in model 'builtin:gpt'"):
        load_causal_lm("builtin:gpt")


def test_tokenizer_without_pad_token_pads_with_eos(tmp_path):
    tok = word_level_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == "</s>" and loaded.pad_token_id == loaded.eos_token_id
