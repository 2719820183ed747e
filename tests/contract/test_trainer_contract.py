"""The trainer contract (``trainer_contract.py``) applied to every trainer family: text ``DPOTrainer`` (LoRA on the
tiny built-in Llama) and ``KTOTrainer`` (full fine-tune), ``VLMDPOTrainer`` (tiny LLaVA-1.5, full fine-tune of the
language side), ``DiffusionTrainer`` (Diffusion-DPO LoRA on tiny SD1.5 with augmentation on; what differs on SDXL; the
latent cache across a resume), MaPO (reference-free, full UNet fine-tune) and SPO (online step-wise pairs on the
shipped shapes model). Family-specific checks of the same finished runs sit beside them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from PIL import Image
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from tests.contract.trainer_contract import TRL_METRICS, TrainerContract
from tests.helpers.diffusion import CAPTIONS, pairs, sd15, sdxl  # noqa: F401 (pytest fixtures)
from visalign.models.causal_lm import load_causal_lm
from visalign.testing.text_data import synthetic_kto, synthetic_preferences
from visalign.testing.vlm import save_tiny_llava
from visalign.models.builtin import resolve_model
from visalign.trainers.diffusion import DiffusionConfig, DiffusionTrainer, MaPOConfig
from visalign.trainers.spo import SPOConfig, SPOTrainer
from visalign.trainers.text import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer
from visalign.trainers.vlm import VLMDPOConfig, VLMDPOTrainer

TINY_LLAMA = "builtin:tiny-llama"
#: Only the loop decides this, whatever the family: held by the SD1.5 subclass, not repeated for SDXL.
FAMILY_INDEPENDENT = "the loop's behaviour, the same for every diffusion family; held by TestDiffusionDPOTrainer"


def _token_logits(model: torch.nn.Module) -> torch.Tensor:
    """A language model's logits on a fixed run of token ids (no image token)."""
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 5, 6, 7, 8, 9]])).logits


# ------------------------------------------------------------------------------------------------ text


class TestDPOTrainer(TrainerContract):
    """LoRA with dropout (the resume replays its draws from the checkpoint's RNG states); adapter-disabled
    reference."""

    DATA = synthetic_preferences("train").select(range(4))

    def make_config(self, output_dir, **overrides):
        values = dict(model=TINY_LLAMA, output_dir=str(output_dir), max_length=64, use_lora=True, lora_r=4,
                      lora_alpha=8, lora_dropout=0.1)
        return DPOConfig(**{**values, **overrides})

    def make_trainer(self, config):
        return DPOTrainer(args=config, train_dataset=self.DATA)

    def load_saved(self, output_dir):
        return PeftModel.from_pretrained(load_causal_lm(TINY_LLAMA, dtype=torch.float32)[0], str(output_dir))

    def outputs(self, model):
        return _token_logits(model)


class TestKTOTrainer(TrainerContract):
    """Full fine-tune with a frozen copy as the reference; unpaired data, two rows per micro-batch at least."""

    METRICS = ("kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")
    STEP_ZERO_LOSS = 0.5  # 1 - σ(β·(0 - z0)) with z0 = 0: the KL estimate of a policy equal to its reference
    REFERENCE = "frozen_copy"
    BATCH = 2
    DATA = synthetic_kto("train").select(range(8))
    NOT_APPLICABLE = {
        "test_a_batch_of_4_equals_4_accumulated_micro_batches_of_1": "KTO's KL reference point pairs each row with "
        "another row of its micro-batch, so the loss depends on the batch layout (and needs 2 rows per batch)",
    }

    def make_config(self, output_dir, **overrides):
        return KTOConfig(**{**dict(model=TINY_LLAMA, output_dir=str(output_dir), max_length=64), **overrides})

    def make_trainer(self, config):
        return KTOTrainer(args=config, train_dataset=self.DATA)

    def load_saved(self, output_dir):
        return AutoModelForCausalLM.from_pretrained(output_dir)

    def outputs(self, model):
        return _token_logits(model)


# ------------------------------------------------------------------------------------------------ VLM

COLOURS = {"red": (220, 38, 38), "green": (34, 160, 60), "blue": (37, 70, 220), "yellow": (240, 200, 30)}


def _vlm_rows() -> list[dict]:
    return [{"images": [Image.new("RGB", (56, 56), COLOURS[colour])],
             "prompt": [{"role": "user", "content": "what colour is the square ?"}],
             "chosen": [{"role": "assistant", "content": f"the square is {colour} ."}],
             "rejected": [{"role": "assistant", "content": f"the square is {wrong} . a {wrong} square"}]}
            for colour, wrong in (("red", "blue"), ("green", "yellow"), ("blue", "red"), ("yellow", "green"))]


class TestVLMDPOTrainer(TrainerContract):
    """Tiny LLaVA-1.5 saved with ``save_pretrained``; full fine-tune with the vision tower frozen (the default) and a
    frozen copy as the reference."""

    REFERENCE = "frozen_copy"

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _llava(cls, tmp_path_factory):
        cls.model_path = str(save_tiny_llava(tmp_path_factory.mktemp("llava")))

    def make_config(self, output_dir, **overrides):
        return VLMDPOConfig(**{**dict(model=self.model_path, output_dir=str(output_dir)), **overrides})

    def make_trainer(self, config):
        return VLMDPOTrainer(args=config, train_dataset=_vlm_rows())

    def load_saved(self, output_dir):
        return AutoModelForImageTextToText.from_pretrained(output_dir)

    def outputs(self, model):
        return _token_logits(model)

    def test_checkpoints_leave_out_the_frozen_vision_tower(self, finished_run):
        """It is reloaded from the model on resume (the resume contract above proves that is exact)."""
        saved = load_file(finished_run.output_dir / "checkpoints" / "checkpoint-1" / "model.safetensors")
        assert any("language_model" in key for key in saved)
        assert not any("vision_tower" in key for key in saved)


# ------------------------------------------------------------------------------------------------ diffusion


class _Diffusion(TrainerContract):
    """The hooks of ``DiffusionTrainer`` on tiny SD1.5 (``model_path``, ``data``: the helpers' fixtures)."""

    STEP_ZERO_ATOL = 1e-3  # β = 5000 scales the ~1e-7 kernel differences of train- and eval-mode UNet forwards
    RESUME_ATOL = 1e-6
    ACCUMULATION_RTOL = 1e-3  # fp32 conv sums depend on the batch size; β·(∇MSE_w - ∇MSE_l) amplifies them

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _files(cls, sd15, pairs):
        cls.model_path, cls.data = sd15, pairs

    def make_trainer(self, config):
        return DiffusionTrainer(config)

    def outputs(self, unet):
        config = unet.config
        g = torch.Generator().manual_seed(0)
        sample = torch.randn(2, config.in_channels, config.sample_size, config.sample_size, generator=g)
        cond = {"encoder_hidden_states": torch.randn(2, 7, config.cross_attention_dim, generator=g)}
        if config.addition_embed_type == "text_time":  # SDXL: pooled text embeddings and time ids
            pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
            cond["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, generator=g),
                                         "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
        unet.eval()
        with torch.no_grad():
            return unet(sample, torch.tensor([10, 500]), **cond).sample


class TestDiffusionDPOTrainer(_Diffusion):
    """Diffusion-DPO LoRA on tiny SD1.5 with random flips, random crops and caption dropout on, so the resume also
    replays the per-epoch augmentation draws (issue 16: a resume used to restart them at epoch 0)."""

    pipeline_class = StableDiffusionPipeline

    def make_config(self, output_dir, **overrides):
        values = dict(model=self.model_path, dataset=self.data, output_dir=str(output_dir), resolution=32,
                      use_lora=True, lora_r=4, lora_alpha=8, random_flip=True, caption_dropout=0.5)
        return DiffusionConfig(**{**values, **overrides})

    def load_saved(self, output_dir):
        pipe = self.pipeline_class.from_pretrained(self.model_path)
        pipe.load_lora_weights(str(output_dir))
        return pipe.unet

    def test_the_model_card_shows_how_to_load_it_and_its_code_runs(self, finished_run):
        out = finished_run.output_dir
        card = (out / "README.md").read_text()
        assert "load_lora_weights" in card and "## Results" in card and "| `train_loss` |" in card
        code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
        assert repr(CAPTIONS[0]) in code  # the example prompt is one the model was trained on
        namespace: dict = {}
        exec(code.replace(").images[0]", ", num_inference_steps=1, height=32, width=32).images[0]"), namespace)
        assert namespace["pipe"].get_list_adapters()["unet"] and namespace["image"].size == (32, 32)

    def test_lora_checkpoints_hold_the_adapter_not_the_frozen_unet(self, finished_run):
        """Issue 16: a LoRA checkpoint held the whole frozen UNet (65x the adapter)."""
        checkpoint = finished_run.output_dir / "checkpoints" / "checkpoint-1"
        saved = load_file(checkpoint / "model.safetensors")
        model = self.trained_model(finished_run.trainer)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert set(saved) == set(trainable) and all("lora_" in key for key in saved)
        assert len(saved) < len(model.state_dict()) / 2
        trainable_bytes = sum(p.numel() * p.element_size() for p in trainable.values())
        size = (checkpoint / "model.safetensors").stat().st_size
        assert trainable_bytes <= size < trainable_bytes + 256 * len(saved)  # the tensors plus the safetensors header


class TestSDXLDiffusionDPOTrainer(TestDiffusionDPOTrainer):
    """What differs on SDXL: its conditioning (pooled embeddings, time ids) at step 0, its LoRA format and card."""

    pipeline_class = StableDiffusionXLPipeline
    NOT_APPLICABLE = {name: FAMILY_INDEPENDENT for name in (
        "test_bad_values_and_unknown_keys_fail_naming_the_key",
        "test_a_fresh_run_refuses_a_non_empty_output_dir_before_any_model_loads",
        "test_an_unwritable_output_dir_fails_before_any_model_loads",
        "test_a_batch_of_4_equals_4_accumulated_micro_batches_of_1",
        "test_a_killed_and_resumed_run_ends_as_an_uninterrupted_one",
        "test_non_finite_steps_are_skipped_counted_and_stop_the_run_keeping_the_last_good_checkpoint",
        "test_lora_checkpoints_hold_the_adapter_not_the_frozen_unet",
    )}

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _files(cls, sdxl, pairs):
        cls.model_path, cls.data = sdxl, pairs


class TestCachedDiffusionDPOTrainer(TestDiffusionDPOTrainer):
    """The latent and text-embedding cache (``cache_dir``; the on-policy trainer's path): its per-epoch flips and
    caption dropout replay exactly across a resume too."""

    NOT_APPLICABLE = {name: "the cache changes only where latents and embeddings come from; the rest is held by "
                      "TestDiffusionDPOTrainer and test_cache_gives_the_same_losses_as_the_uncached_path"
                      for name in dir(TestDiffusionDPOTrainer) if name.startswith("test_") and "resumed" not in name}

    def make_config(self, output_dir, **overrides):
        cache = str(Path(output_dir).parent / "cache")  # shared by the uninterrupted and the killed run
        return super().make_config(output_dir, **{"cache_dir": cache, "center_crop": True, **overrides})


class TestMaPOTrainer(_Diffusion):
    """MaPO: reference-free (no reference model, no ln 2 at step 0), here as a full UNet fine-tune saved with
    ``save_pretrained``."""

    REFERENCE = "none"
    METRICS = ("mse/chosen", "mse/rejected", "mapo/ratio")
    NOT_APPLICABLE = {"test_the_first_loss_is_the_loss_at_zero_log_ratios": "reference-free: there is no log-ratio"}

    def make_config(self, output_dir, **overrides):
        values = dict(model=self.model_path, dataset=self.data, output_dir=str(output_dir), resolution=32,
                      random_flip=True)
        return MaPOConfig(**{**values, **overrides})

    def load_saved(self, output_dir):
        return UNet2DConditionModel.from_pretrained(output_dir, subfolder="unet")

    def test_the_full_unet_model_card_names_from_pretrained(self, finished_run):
        assert "UNet2DConditionModel.from_pretrained" in (finished_run.output_dir / "README.md").read_text()


class TestSPOTrainer(_Diffusion):
    """SPO (``method: spo``): LoRA on the shipped shapes model trained on rounds of step-wise pairs drawn from itself
    (a round every 2 steps, so the resume crosses a round), the transition likelihood and the clipped-ratio loss."""

    pipeline_class = StableDiffusionPipeline
    METRICS = (*TRL_METRICS, "spo/clip_fraction", "data/round")
    NOT_APPLICABLE = {
        "test_a_batch_of_4_equals_4_accumulated_micro_batches_of_1":
            "a round is cut to whole global batches, so per-device batches 4 and 1 train on different pairs",
        "test_non_finite_steps_are_skipped_counted_and_stop_the_run_keeping_the_last_good_checkpoint":
            "a diverged policy samples no pair: its next round is empty and the online source stops the run first",
    }

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _files(cls):
        cls.model_path = resolve_model("builtin:shapes-sd")

    def make_config(self, output_dir, **overrides):
        values = dict(model="builtin:shapes-sd", output_dir=str(output_dir), resolution=32, num_prompts=8,
                      prompts_per_round=4, sample_steps=4, divert_start_step=1, num_candidates=4, spo_threshold=0.0,
                      resample_every=2, lora_r=4, lora_alpha=8)
        return SPOConfig(**{**values, **overrides})

    def make_trainer(self, config):
        return SPOTrainer(config)

    def load_saved(self, output_dir):
        pipe = self.pipeline_class.from_pretrained(self.model_path)
        pipe.load_lora_weights(str(output_dir))
        return pipe.unet
