"""Converting SPO's released step-aware preference models (``reward_models.step_aware_spo``): a checkpoint laid out as
SPO's ``StepAwarePreferenceModel`` (modules named as in ``RockeyCoss/SPO``'s ``time_conditioned_clip.py``, attached to
a tiny transformers CLIP) converts into a ``step-aware`` folder whose image embeddings equal SPO's forward."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import CLIPModel

from reward_models import load_scorer
from reward_models.step_aware_spo import convert_spo_checkpoint, main
from visalign.testing.clip import save_tiny_clip


class SPOShaped(nn.Module):
    """``StepAwarePreferenceModel``'s state-dict layout: ``model`` = a CLIPModel with SPO's step modules attached."""

    def __init__(self, clip_folder, seed: int = 3):
        super().__init__()
        clip = CLIPModel.from_pretrained(clip_folder)
        d = clip.config.vision_config.hidden_size
        clip.t_embedder = nn.Module()
        clip.t_embedder.mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        for layer in clip.vision_model.encoder.layers:
            layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        clip.vision_model.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in clip.named_parameters():  # step modules random; the CLIP moved away from its folder
                scale = 0.2 if ("adaLN" in name or "t_embedder" in name) else 0.01
                p.add_(torch.randn(p.shape, generator=generator) * scale)
        self.model = clip.eval()

    @torch.no_grad()
    def image_embeds(self, pixel_values, timesteps):
        """SPO's ``HFTimeConditionedCLIPModel.get_image_features`` (its code, restated)."""
        clip, vision = self.model, self.model.vision_model
        half = 128
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = timesteps.float()[:, None] * freqs[None]
        time_cond = clip.t_embedder.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
        h = vision.pre_layrnorm(vision.embeddings(pixel_values))
        for layer in vision.encoder.layers:
            modulation = layer.adaLN_modulation(time_cond).chunk(6, 1)
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
            x = layer.layer_norm1(h) * (1 + scale_msa.unsqueeze(1)) + shift_msa.unsqueeze(1)
            h = h + layer.self_attn(hidden_states=x)[0] * gate_msa.unsqueeze(1)
            x = layer.layer_norm2(h) * (1 + scale_mlp.unsqueeze(1)) + shift_mlp.unsqueeze(1)
            h = h + layer.mlp(x) * gate_mlp.unsqueeze(1)
        pooled = vision.post_layernorm(h[:, 0])
        shift, scale = vision.adaLN_modulation(time_cond).chunk(2, dim=1)
        return clip.visual_projection(pooled * (1 + scale) + shift)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def spo(clip, tmp_path_factory):
    model = SPOShaped(clip)
    path = tmp_path_factory.mktemp("spo") / "sd-v1-5_step-aware_preference_model.bin"
    torch.save(model.state_dict(), path)
    return model, path


def test_a_converted_checkpoint_embeds_images_as_spos_model_at_every_timestep(clip, spo, tmp_path):
    model, path = spo
    assert main([str(path), str(clip), str(tmp_path / "spm")]) == 0
    scorer = load_scorer("step-aware", model=str(tmp_path / "spm"))
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for t in (0, 251, 951):
        timesteps = torch.full((3,), float(t))
        with torch.no_grad():
            ours = scorer.model.image_embeds(pixels, timesteps)
        torch.testing.assert_close(ours, model.image_embeds(pixels, timesteps), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scorer.backbone.net.logit_scale, model.model.logit_scale)


def test_a_key_that_lands_nowhere_or_a_missing_one_fails_naming_the_file(clip, spo, tmp_path):
    model, path = spo
    state = torch.load(path, weights_only=True)
    extra = tmp_path / "extra.bin"
    torch.save({**state, "model.vision_model.encoder.layers.0.adaLN_modulation.2.weight": torch.zeros(1)}, extra)
    with pytest.raises(ValueError, match=r"extra\.bin.*unexpected keys: vision_model\.encoder\.layers\.0\.adaLN"):
        convert_spo_checkpoint(extra, str(clip), tmp_path / "a")
    missing = tmp_path / "missing.bin"
    torch.save({k: v for k, v in state.items() if "t_embedder.mlp.2" not in k}, missing)
    with pytest.raises(ValueError, match=r"missing\.bin.*missing keys: embedder\.2\.bias"):
        convert_spo_checkpoint(missing, str(clip), tmp_path / "b")
    assert main([str(missing), str(clip), str(tmp_path / "c")]) == 2 and not (tmp_path / "c").exists()
