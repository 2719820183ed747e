"""Behaviour every diffusion model family adapter (``visalign.models.families``) must have, written once and applied
to each family (``test_family_contract.py``), as ``likelihood_contract.py`` does for likelihood providers. A new
family (SD3, FLUX) arrives with this contract already specified: subclass :class:`FamilyContract` with its tiny
checkpoint and its pipeline's own prompt encoding.

What every family promises, on a tiny checkpoint saved with its diffusers pipeline's ``save_pretrained``:

- it is registered under its name and detected, alone, from its denoiser's config (in the checkpoint's
  ``denoiser_subfolder``); ``load_diffusion_components``
  loads the checkpoint strictly with its text encoders and tokenizers (the same weights the pipeline loads);
- prompt embeddings are ``[N, L, cross_attention_dim]`` (and pooled ``[N, D]`` where the family pools);
- training conditioning has one row per image; the cached path (``cache_item`` per image, collated, read back by
  ``cached_embeddings``) gives exactly the uncached conditioning, under every SDXL time-id convention;
- sampling conditioning is ``[uncond; cond]``, exactly what the family's diffusers pipeline encodes for CFG;
- the denoiser call returns one fp32 output per latent, shaped as the latents;
- a LoRA on the default targets, saved by the adapter, loads with the real pipeline's ``load_lora_weights`` and
  changes its denoiser exactly as trained;
- the pipeline the adapter builds is the checkpoint's pipeline class and renders; native resolution and model-card
  tags are the family's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from visalign.data.diffusion import PAIR_TENSOR_KEYS
from visalign.models.diffusion import load_diffusion_components
from visalign.models.diffusion_io import save_diffusion_lora, write_model_card
from visalign.models.families import FAMILIES, detect_family, family_of_checkpoint, get_family
from visalign.models.families.conditioning import PromptEmbeddings, UNetCond

PROMPTS = ["a red square", "two dots"]
NEGATIVE = ["a blue circle", "a green cross"]
TIME_ID_CONVENTIONS = ("true_size", "square_resolution")


class FamilyContract:
    """Mixin: a subclass sets ``NAME`` and ``RESOLUTION`` and provides ``save_tiny`` and ``pipeline_conditioning``."""

    #: The family's registry name.
    NAME: str
    #: The tiny checkpoint's native resolution in pixels.
    RESOLUTION: int = 32

    # ------------------------------------------------------------------ family hooks

    def save_tiny(self, path: Path) -> Path:
        """Save a tiny checkpoint of the family with its pipeline's ``save_pretrained`` into ``path``."""
        raise NotImplementedError

    def pipeline_conditioning(self, pipe, prompts, negative_prompts, resolution: int) -> UNetCond:
        """``[uncond; cond]`` as the family's diffusers pipeline builds it for CFG (its ``encode_prompt`` etc.)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ fixtures

    @pytest.fixture(scope="class")
    @classmethod
    def saved(cls, tmp_path_factory) -> Path:
        return cls().save_tiny(tmp_path_factory.mktemp(f"family-{cls.NAME}"))

    @pytest.fixture(scope="class")
    @classmethod
    def components(cls, saved):
        return load_diffusion_components(saved)

    @pytest.fixture(scope="class")
    @classmethod
    def pipe(cls, saved):
        return get_family(cls.NAME).pipeline_class().from_pretrained(saved)

    @property
    def adapter(self):
        return get_family(self.NAME)

    def batch(self, components) -> dict:
        """Two pairs of an uncached collated batch: captions, true sizes and crops."""
        return {"captions_chosen": PROMPTS, "captions_rejected": [PROMPTS[1], NEGATIVE[0]],
                "original_sizes": torch.tensor([[40, 36], [64, 48], [30, 44], [32, 32]]),
                "crop_top_lefts": torch.tensor([[4, 0], [0, 8], [4, 0], [0, 8]])}

    # ------------------------------------------------------------------ loading

    def test_registered_and_detected_alone_from_its_denoiser(self, components, saved):
        assert FAMILIES[self.NAME] is self.adapter and self.adapter.name == self.NAME
        assert family_of_checkpoint(saved) is detect_family(components.unet.config) is self.adapter
        assert [f.name for f in FAMILIES.values() if f.matches(components.unet.config)] == [self.NAME]
        assert components.family == self.NAME and components.adapter is self.adapter

    def test_loads_the_weights_its_pipeline_loads(self, components, pipe, saved):
        assert json.loads((saved / "model_index.json").read_text())["_class_name"] == self.adapter.pipeline_name
        assert len(components.text_encoders) == len(components.tokenizers) == self.adapter.num_text_encoders
        names = ["text_encoder", *(f"text_encoder_{i + 1}" for i in range(1, self.adapter.num_text_encoders))]
        for ours, name in zip(components.text_encoders, names):
            theirs = getattr(pipe, name)
            assert type(ours) is type(theirs) and not ours.training
            for (key, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
                assert torch.equal(a, b), key
        for key, value in pipe.unet.state_dict().items():
            assert torch.equal(components.unet.state_dict()[key], value), key

    def test_native_resolution(self, components):
        assert self.adapter.native_resolution(components.unet, components.vae) == self.RESOLUTION

    # ------------------------------------------------------------------ prompts and conditioning

    def test_prompt_embeddings_fit_the_denoiser(self, components):
        embeds = self.adapter.encode_prompts(components.text_encoders, components.tokenizers, PROMPTS)
        n, _, width = embeds.hidden_states.shape
        assert (n, width) == (len(PROMPTS), components.unet.config.cross_attention_dim)
        assert embeds.pooled is None or embeds.pooled.shape[0] == len(PROMPTS)

    def training_conditioning(self, components, batch, embeds, time_ids) -> UNetCond:
        return self.adapter.training_conditioning(embeds, batch, resolution=self.RESOLUTION, time_ids=time_ids,
                                                  device=torch.device("cpu"))

    @pytest.mark.parametrize("time_ids", TIME_ID_CONVENTIONS)
    def test_cached_training_conditioning_equals_the_uncached(self, components, time_ids):
        batch = self.batch(components)
        captions = batch["captions_chosen"] + batch["captions_rejected"]
        embeds = self.adapter.encode_prompts(components.text_encoders, components.tokenizers, captions)
        uncached = self.training_conditioning(components, batch, embeds, time_ids)
        assert len(uncached) == len(captions)
        assert self.adapter.cached_embeddings(batch) is None

        items = [self.adapter.cache_item(embeds.rows(torch.tensor(i)), original_size=tuple(batch["original_sizes"][i]),
                                         crop_top_left=tuple(batch["crop_top_lefts"][i]), resolution=self.RESOLUTION,
                                         time_ids=time_ids) for i in range(len(captions))]
        assert all(tuple(item) == self.adapter.cache_keys for item in items)
        assert set(self.adapter.cache_keys) <= set(PAIR_TENSOR_KEYS)  # the collator stacks them
        cached_batch = {key: torch.stack([item[key] for item in items]) for key in self.adapter.cache_keys}
        cached = self.training_conditioning(components, cached_batch, self.adapter.cached_embeddings(cached_batch),
                                            time_ids)
        for name in ("encoder_hidden_states", "text_embeds", "time_ids"):
            a, b = getattr(uncached, name), getattr(cached, name)
            assert (a is None and b is None) or torch.equal(a, b), name

    @pytest.mark.parametrize("negative", [None, NEGATIVE], ids=["no-negative", "negative"])
    def test_sampling_conditioning_is_what_its_pipeline_encodes(self, components, pipe, negative):
        cond = self.adapter.sampling_conditioning(components, PROMPTS, negative, resolution=self.RESOLUTION)
        assert len(cond) == 2 * len(PROMPTS)
        expected = self.pipeline_conditioning(pipe, PROMPTS, negative, self.RESOLUTION)
        for name in ("encoder_hidden_states", "text_embeds", "time_ids"):
            a, b = getattr(cond, name), getattr(expected, name)
            assert (a is None and b is None) or torch.equal(a, b.to(a.dtype)), name

    def test_denoiser_gives_one_fp32_output_per_latent(self, components):
        shape = (2 * len(PROMPTS), components.unet.config.in_channels, *(2 * [components.unet.config.sample_size]))
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        cond = self.adapter.sampling_conditioning(components, PROMPTS, resolution=self.RESOLUTION)
        with torch.no_grad():
            out = self.adapter.denoise(components.unet, latents, torch.tensor([10, 500, 10, 500]), cond)
        assert out.shape == latents.shape and out.dtype == torch.float32 and torch.isfinite(out).all()

    # ------------------------------------------------------------------ outputs

    def test_lora_saved_by_the_adapter_loads_into_its_pipeline(self, saved, tmp_path):
        from peft import LoraConfig

        components = load_diffusion_components(saved)  # a fresh UNet: the adapter is added in place
        unet = components.unet
        unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                    target_modules=list(self.adapter.lora_targets)))
        with torch.no_grad():
            for name, param in unet.named_parameters():
                if "lora_B" in name:  # gaussian init leaves B at zero: make the adapter change the UNet
                    param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
        path = save_diffusion_lora(tmp_path, unet, self.NAME)
        assert path.is_file()

        pipe = self.adapter.pipeline_class().from_pretrained(saved)
        cond = self.adapter.sampling_conditioning(components, PROMPTS, resolution=self.RESOLUTION)
        latents = torch.randn(4, unet.config.in_channels, *(2 * [unet.config.sample_size]),
                              generator=torch.Generator().manual_seed(1))
        t = torch.tensor([10, 500, 10, 500])
        with torch.no_grad():
            before = self.adapter.denoise(pipe.unet, latents, t, cond)
            pipe.load_lora_weights(str(tmp_path))
            after = self.adapter.denoise(pipe.unet, latents, t, cond)
            trained = self.adapter.denoise(unet, latents, t, cond)
        assert (after - before).abs().max() > 1e-4
        torch.testing.assert_close(after, trained, rtol=1e-4, atol=1e-5)

    def test_builds_its_pipeline_and_renders(self, components):
        scheduler = self.adapter.validation_scheduler(components)
        pipeline = self.adapter.build_pipeline(components, components.unet, scheduler)
        assert type(pipeline) is self.adapter.pipeline_class()
        pipeline.set_progress_bar_config(disable=True)
        image = pipeline(PROMPTS[0], num_inference_steps=1, height=self.RESOLUTION, width=self.RESOLUTION,
                         guidance_scale=self.adapter.default_guidance_scale,
                         generator=torch.Generator().manual_seed(0)).images[0]
        assert image.size == (self.RESOLUTION, self.RESOLUTION)

    def test_model_card_names_its_pipeline_and_tags(self, tmp_path):
        card = write_model_card(tmp_path, base_model="org/base", family=self.NAME, method="diffusion-dpo", lora=True,
                                settings={}).read_text()
        assert f"from diffusers import {self.adapter.pipeline_name}" in card
        assert all(f"- {tag}" in card for tag in self.adapter.card_tags)


def prompt_rows(uncond: PromptEmbeddings, cond: PromptEmbeddings, time_ids: torch.Tensor | None = None) -> UNetCond:
    """``[uncond; cond]`` as a :class:`UNetCond` (the layout every family's sampling conditioning has)."""
    pooled = None if cond.pooled is None else torch.cat([uncond.pooled, cond.pooled])
    ids = None if time_ids is None else torch.cat([time_ids, time_ids])
    return UNetCond(torch.cat([uncond.hidden_states, cond.hidden_states]), pooled, ids)
