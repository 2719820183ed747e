"""The family contract (``family_contract.py``) applied to every registered diffusion model family: SD1.5/SD2.x and
SDXL, each on a tiny checkpoint saved with its pipeline's ``save_pretrained`` and compared with that pipeline's own
prompt encoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.contract.family_contract import FamilyContract, prompt_rows
from visalign.models.families import FAMILIES, family_of_checkpoint
from visalign.models.families.conditioning import PromptEmbeddings
from visalign.testing.diffusion import save_tiny_sd, save_tiny_sdxl


class TestSDFamily(FamilyContract):
    NAME = "sd"

    def save_tiny(self, path: Path) -> Path:
        return save_tiny_sd(path)

    def pipeline_conditioning(self, pipe, prompts, negative_prompts, resolution):
        """``StableDiffusionPipeline.encode_prompt`` with CFG (``""`` as the unconditional prompt by default)."""
        cond, uncond = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=negative_prompts)
        return prompt_rows(PromptEmbeddings(uncond), PromptEmbeddings(cond))


class TestSDXLFamily(FamilyContract):
    NAME = "sdxl"

    def save_tiny(self, path: Path) -> Path:
        return save_tiny_sdxl(path)

    def pipeline_conditioning(self, pipe, prompts, negative_prompts, resolution):
        """``StableDiffusionXLPipeline.encode_prompt`` with CFG and its ``_get_add_time_ids`` for a square image."""
        cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
            prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=negative_prompts)
        ids = pipe._get_add_time_ids((resolution, resolution), (0, 0), (resolution, resolution), dtype=torch.float32,
                                     text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        return prompt_rows(PromptEmbeddings(uncond, uncond_pooled), PromptEmbeddings(cond, pooled),
                           ids.repeat(len(prompts), 1))


def test_every_registered_family_has_a_contract_test():
    assert {cls.NAME for cls in FamilyContract.__subclasses__()} == set(FAMILIES)


def test_a_checkpoint_no_family_matches_names_the_subfolders_looked_in(tmp_path):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"_class_name": "SD3Transformer2DModel"}))
    with pytest.raises(ValueError, match=r"no diffusion model family matches its denoiser \(a config in none of the "
                                         r"subfolders \['unet'\]\); known families: \['sd', 'sdxl'\]"):
        family_of_checkpoint(tmp_path)
