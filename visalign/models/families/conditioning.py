"""What a diffusion family's text side gives the denoiser: prompt embeddings and the UNet conditioning of N samples.

Shared by every family (``visalign.models.families``) and by the likelihood providers that score with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PromptEmbeddings:
    """Encoded prompts: ``hidden_states`` ``[N, L, D]``; ``pooled`` ``[N, D_pooled]`` for SDXL, else None."""

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None

    def rows(self, index: torch.Tensor | slice) -> "PromptEmbeddings":
        """The prompts ``index`` (an index tensor or a slice over the N prompts)."""
        return PromptEmbeddings(self.hidden_states[index], None if self.pooled is None else self.pooled[index])


@dataclass
class UNetCond:
    """Conditioning of a ``UNet2DConditionModel`` for a batch of N samples.

    Attributes:
        encoder_hidden_states: ``[N, L, D]`` prompt token embeddings.
        text_embeds: SDXL only, ``[N, D_pooled]`` pooled embedding (``added_cond_kwargs["text_embeds"]``).
        time_ids: SDXL only, ``[N, 6]`` micro-conditioning (``added_cond_kwargs["time_ids"]``).
    """

    encoder_hidden_states: torch.Tensor
    text_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.text_embeds is None) != (self.time_ids is None):
            raise ValueError("UNetCond: SDXL conditioning needs both text_embeds and time_ids (or neither)")
        n = self.encoder_hidden_states.shape[0]
        for name in ("text_embeds", "time_ids"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise ValueError(
                    f"UNetCond.{name} has {value.shape[0]} rows but encoder_hidden_states has {n}"
                )

    def __len__(self) -> int:
        return self.encoder_hidden_states.shape[0]

    def select(self, index: torch.Tensor) -> "UNetCond":
        """The rows ``index`` (an index or boolean tensor over the N samples)."""

        def pick(t):
            return None if t is None else t[index.to(t.device)]

        return UNetCond(pick(self.encoder_hidden_states), pick(self.text_embeds), pick(self.time_ids))

    def unet_kwargs(self, dtype: torch.dtype, device: torch.device) -> dict:
        """Keyword arguments for ``unet(sample, t, **kwargs)``, cast to the UNet's dtype and device."""
        kwargs = {"encoder_hidden_states": self.encoder_hidden_states.to(device=device, dtype=dtype)}
        if self.text_embeds is not None:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": self.text_embeds.to(device=device, dtype=dtype),
                "time_ids": self.time_ids.to(device=device, dtype=dtype),
            }
        return kwargs


def pair_cond(chosen: UNetCond, rejected: UNetCond | None = None) -> UNetCond:
    """``[chosen; rejected]`` conditioning for B pairs: ``2B`` rows.

    Diffusion-DPO, MaPO, InPO: pass the caption's conditioning once; it is used for both images of each pair. DCPO
    (arXiv 2502.06023, ``src/dcpo_trainer.py``): pass ``rejected`` built from the rejected side's caption, so the
    chosen image is scored given ``caption_chosen`` and the rejected one given ``caption_rejected``. SDXL time ids
    are per image, so for SDXL pass ``rejected`` with the rejected images' own time ids even when captions match.
    Sampling with classifier-free guidance stacks ``[uncond; cond]`` the same way.
    """
    rejected = chosen if rejected is None else rejected
    if len(chosen) != len(rejected):
        raise ValueError(f"pair_cond: {len(chosen)} chosen rows but {len(rejected)} rejected rows")

    def cat(a, b):
        return None if a is None else torch.cat([a, b.to(a.device)])

    return UNetCond(
        cat(chosen.encoder_hidden_states, rejected.encoder_hidden_states),
        cat(chosen.text_embeds, rejected.text_embeds),
        cat(chosen.time_ids, rejected.time_ids),
    )
