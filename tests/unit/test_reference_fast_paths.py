"""The per-step fast paths of the reference and the UNet input spec on a diffusers UNet with integrated LoRA: the
adapter layers and mode flags listed once in ``make_reference`` give exactly what diffusers' own
``disable_adapters()``/``eval()`` give, and leave the policy as it was."""

import pytest
import torch
from peft import LoraConfig

from visalign.likelihood.diffusion import unet_input_spec
from visalign.reference import ModeFlags, make_reference
from visalign.testing.diffusion import TINY_SD, tiny_sd_components

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def lora_unet(seed=0, dtype=torch.float32):
    unet = tiny_sd_components(seed=seed)["unet"].to(dtype)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=TARGETS))
    with torch.no_grad():  # move the adapter away from B = 0 so that disabling it changes the output
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    return unet.train()


def predict(unet):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, TINY_SD.latent_channels, TINY_SD.latent_size, TINY_SD.latent_size, generator=g)
    hidden = torch.randn(2, 8, TINY_SD.text_hidden_size, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 700]), encoder_hidden_states=hidden).sample


def base_prediction(unet):
    unet.disable_adapters()
    try:
        return predict(unet)
    finally:
        unet.enable_adapters()


def trainable(unet):
    return {n for n, p in unet.named_parameters() if p.requires_grad}


def test_disable_adapter_on_a_diffusers_unet_is_its_base_model_and_restores_the_policy():
    unet = lora_unet()
    base, adapted, grads = base_prediction(unet), predict(unet), trainable(unet)
    assert grads and all("lora" in n for n in grads) and not torch.allclose(base, adapted)
    reference = make_reference("disable_adapter", unet)
    for _ in range(2):  # the cached layers switch off and back on every time
        with reference.active(unet) as ref_unet:
            assert ref_unet is unet and not unet.training and not torch.is_grad_enabled()
            assert torch.equal(predict(ref_unet), base)
        assert torch.equal(predict(unet), adapted)
        assert unet.training and trainable(unet) == grads


def test_a_policy_other_than_the_bound_one_is_looked_up_afresh():
    bound, other = lora_unet(seed=0), lora_unet(seed=1)
    expected = base_prediction(other)
    with make_reference("disable_adapter", bound).active(other) as ref_unet:
        assert ref_unet is other and torch.equal(predict(ref_unet), expected)
    assert not torch.allclose(predict(other), expected)


def test_mode_flags_set_eval_and_restore_every_flag():
    unet = lora_unet()
    frozen_sub = unet.down_blocks[0]
    frozen_sub.eval()
    before = {name: m.training for name, m in unet.named_modules()}
    assert any(before.values()) and not all(before.values())
    flags = ModeFlags(unet)
    with flags.eval_mode() as root:
        assert root is unet and not any(m.training for m in unet.modules())
    assert {name: m.training for name, m in unet.named_modules()} == before


def test_mode_flags_call_an_overridden_train():
    calls = []

    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Dropout(0.5)

        def train(self, mode=True):
            calls.append(mode)
            return super().train(mode)

    module = Custom().train()
    calls.clear()
    with ModeFlags(module).eval_mode():
        assert not module.training and not module.inner.training
    assert calls == [False] and module.training and module.inner.training


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unet_input_spec_matches_diffusers_with_an_fp32_adapter_on_a_low_precision_base(dtype):
    unet = lora_unet(dtype=dtype)
    for p in unet.parameters():  # what the trainer does: trainable LoRA weights in fp32
        if p.requires_grad:
            p.data = p.data.float()
    assert unet_input_spec(unet) == (unet.dtype, unet.device) == (dtype, torch.device("cpu"))
    with pytest.raises(ValueError, match="has no floating-point parameters"):
        unet_input_spec(torch.nn.Identity())
