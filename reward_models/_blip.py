"""The ImageReward network: BLIP ViT image encoder + cross-attention BERT text encoder + linear MLP head.

Module and parameter names reproduce the released ``ImageReward.pt`` state dict (``blip.visual_encoder.*``,
``blip.text_encoder.*``, ``blip.vision_proj.*``, ``blip.text_proj.*``, ``mlp.layers.*``) so that it loads with
``strict=True`` (reward-scorers.md §5.1, THUDM/ImageReward ``ImageReward.py`` and ``models/BLIP``):

- the ViT is written here (BLIP's timm-style names: ``patch_embed.proj``, ``cls_token``, ``pos_embed``,
  ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``), because transformers' ``BlipVisionModel``
  names these differently;
- the text encoder is transformers' ``BlipTextModel`` (a port of BLIP's ``med.py`` with the same key names, and
  ``encoder_hidden_size`` for the 1024-wide image tokens), built without its pooler;
- the head is five ``Linear`` layers with dropouts between and **no** activations (upstream commented them out),
  so in eval mode it is an affine map of the text encoder's ``[CLS]`` state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BlipTextConfig, BlipTextModel


@dataclass(frozen=True)
class BlipViTConfig:
    """BLIP's ViT; the defaults are ImageReward's ViT-L/16 at 224 px (``create_vit('large', 224)``)."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: BlipViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection laid out as (q, k, v) × heads × head_dim."""

    def __init__(self, cfg: BlipViTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=True)
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as BLIP's qk_scale=None
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, cfg: BlipViTConfig):
        super().__init__()
        hidden = int(cfg.width * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.width, hidden)
        self.fc2 = nn.Linear(hidden, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, cfg: BlipViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.attn = _Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = _Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BlipVisionTransformer(nn.Module):
    """Pre-norm ViT returning all tokens ``[B, 1 + (S/p)², width]`` (class token first), after the final norm."""

    def __init__(self, cfg: BlipViTConfig):
        super().__init__()
        self.config = cfg
        num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = _PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, cfg.width))
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if pixel_values.shape[-2:] != (size, size):
            raise ValueError(f"BLIP ViT expects {size}x{size} images, got {tuple(pixel_values.shape[-2:])}")
        x = self.patch_embed(pixel_values)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


#: Fields of BLIP's ``med_config.json`` (a ``BertConfig``) that define the text encoder, with their BlipTextConfig names.
MED_CONFIG_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "hidden_act": "hidden_act",
    "max_position_embeddings": "max_position_embeddings",
    "layer_norm_eps": "layer_norm_eps",
    "pad_token_id": "pad_token_id",
}


def text_config_from_med(med_config: dict[str, Any], encoder_width: int, source: str) -> BlipTextConfig:
    """``BlipTextConfig`` for BLIP's MED text encoder, read from ``med_config.json`` (``source`` names it in errors).

    Like BLIP's ``BLIP_Pretrain``, the cross-attention width is the vision width, whatever ``encoder_width`` the
    json says (768 in ImageReward's file, overwritten to 1024). Dropouts are 0: the scorer is used for inference
    and ReFL, where upstream calls it in eval mode.
    """
    missing = [key for key in MED_CONFIG_FIELDS if key not in med_config]
    if missing:
        raise KeyError(f"{source}: med config lacks {', '.join(missing)}")
    fields = {ours: med_config[theirs] for theirs, ours in MED_CONFIG_FIELDS.items()}
    return BlipTextConfig(
        **fields, encoder_hidden_size=encoder_width, is_decoder=True, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, use_cache=False, bos_token_id=None, eos_token_id=None, sep_token_id=None,
    )


class ImageRewardHead(nn.Module):
    """``MLP(768)`` of ImageReward: Linear 768→1024→128→64→16→1 with dropouts 0.2, 0.2, 0.1 and no activations.

    ``nn.Sequential`` indices match upstream (linears at 0, 2, 4, 6, 7). Init as upstream: N(0, 1/(d+1)) weights,
    zero biases.
    """

    def __init__(self, input_size: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )
        for name, param in self.layers.named_parameters():
            if name.endswith("weight"):
                nn.init.normal_(param, mean=0.0, std=1.0 / (input_size + 1))
            else:
                nn.init.zeros_(param)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)


class BlipBackbone(nn.Module):
    """The ``blip`` submodule of ImageReward; ``vision_proj``/``text_proj`` (BLIP's 256-d contrastive heads) are
    unused by the reward but part of the released state dict, so they exist for strict loading."""

    def __init__(self, vision: BlipViTConfig, text: BlipTextConfig, embed_dim: int = 256):
        super().__init__()
        self.visual_encoder = BlipVisionTransformer(vision)
        self.text_encoder = BlipTextModel(text, add_pooling_layer=False)
        self.vision_proj = nn.Linear(vision.width, embed_dim)
        self.text_proj = nn.Linear(text.hidden_size, embed_dim)


class ImageRewardModel(nn.Module):
    """``raw = MLP(BERT(ids, mask, cross-attending to ViT(x))[:, 0])`` (reward-scorers.md §5.3), un-normalised."""

    def __init__(self, vision: BlipViTConfig, text: BlipTextConfig):
        super().__init__()
        self.blip = BlipBackbone(vision, text)
        self.mlp = ImageRewardHead(text.hidden_size)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw reward ``[B]`` in float32: images, token ids and masks are ``[B, ...]`` (one text per image)."""
        image_embeds = self.blip.visual_encoder(pixel_values)
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.blip.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask, is_decoder=False,
        )
        return self.mlp(text.last_hidden_state[:, 0, :].float())  # the head is kept in float32

