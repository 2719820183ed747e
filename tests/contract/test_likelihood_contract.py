"""The likelihood contract (``likelihood_contract.py``) applied to every provider: token log-probs of a causal LM
(``likelihood.text.pair_loglik``), of VLMs (``likelihood.vlm.vlm_pair_loglik``; LLaVA-1.5 and Qwen2-VL) and the
diffusion ELBO surrogate (``likelihood.diffusion.DiffusionELBO``; SD and SDXL conditioning, random and
DDIM-inversion noise)."""

from __future__ import annotations

import torch
from PIL import Image

from tests.contract.likelihood_contract import LikelihoodContract
from visalign.data.collators import PreferenceCollator
from visalign.data.vlm import VisionPreferenceDataset
from visalign.data.vlm_collator import VisionPreferenceCollator
from visalign.likelihood.diffusion import DIFFUSION_NLL_SCALE, DiffusionELBO, UNetCond, pair_cond
from visalign.likelihood.noise import make_noise_source
from visalign.likelihood.text import pair_loglik
from visalign.likelihood.vlm import vlm_pair_loglik
from visalign.models.diffusion import DiffusionComponents, detect_family
from visalign.testing.causal_lm import tiny_llama
from visalign.testing.diffusion import TINY_SD, tiny_sd_components, tiny_sdxl_components
from visalign.testing.tokenizers import word_level_tokenizer
from visalign.testing.vlm import tiny_llava, tiny_qwen2_vl


class TestTextLikelihood(LikelihoodContract):
    SIDE_KEYS = (("chosen_input_ids", "rejected_input_ids"),)

    def model(self):
        return tiny_llama(word_level_tokenizer()).train()

    def rows(self):
        return [
            {"prompt_input_ids": [5, 6, 7], "chosen_input_ids": [8, 9], "rejected_input_ids": [10, 11, 12]},
            {"prompt_input_ids": [14], "chosen_input_ids": [15, 16, 17], "rejected_input_ids": [18]},
            {"prompt_input_ids": [20, 21], "chosen_input_ids": [22, 23, 24, 25], "rejected_input_ids": [22, 26]},
        ]

    def loglik(self, model, rows):
        return pair_loglik(model, PreferenceCollator(pad_token_id=0)(rows), return_token_logps=True)

    def expected_counts(self, rows):
        return ([float(len(r["chosen_input_ids"])) for r in rows], [float(len(r["rejected_input_ids"])) for r in rows])


COLOURS = {"red": (220, 38, 38), "green": (34, 160, 60), "blue": (37, 70, 220)}


class _VLM(LikelihoodContract):
    build = None  # the tiny model builder: () -> (model, processor)

    def model(self):
        return type(self).build()[0].train()

    def rows(self):
        pairs = (("red", "blue", (56, 56)), ("green", "red", (40, 64)))
        rows = [{"images": [Image.new("RGB", size, COLOURS[colour])],
                 "prompt": [{"role": "user", "content": "what colour is the square ?"}],
                 "chosen": [{"role": "assistant", "content": f"the square is {colour} ."}],
                 "rejected": [{"role": "assistant", "content": f"it is {wrong} . a {wrong} square"}]}
                for colour, wrong, size in pairs]
        data = VisionPreferenceDataset(rows, name="rows")
        return [data[i] for i in range(len(data))]

    def _collator(self):
        return VisionPreferenceCollator(type(self).build()[1])

    def loglik(self, model, rows):
        return vlm_pair_loglik(model, self._collator()(rows), return_token_logps=True)

    def expected_counts(self, rows):
        """The completion texts' token counts, tokenised apart from the prompt (end-of-turn tokens included)."""
        collator = self._collator()
        counts = [[], []]
        for row in rows:
            _, *completions = collator.render(row, len(row["images"]))
            for side, text in zip(counts, completions):
                side.append(float(len(collator.tokenizer(text, add_special_tokens=False)["input_ids"])))
        return counts[0], counts[1]


class TestLlavaLikelihood(_VLM):
    build = staticmethod(tiny_llava)


class TestQwen2VLLikelihood(_VLM):
    build = staticmethod(tiny_qwen2_vl)


class _Diffusion(LikelihoodContract):
    """Rows carry clean latents and per-side conditioning (DCPO's per-side captions, SDXL's per-image time ids); the
    batch is noised by the provider, ``DiffusionELBO.noised``, pair by pair from generators keyed by the pair's
    index."""

    SIDE_KEYS = (("chosen", "rejected"), ("chosen_cond", "rejected_cond"))
    NLL_SCALE = DIFFUSION_NLL_SCALE
    NOISE_SOURCE: dict = {"name": "random"}
    components = tiny_sd_components()

    def model(self):
        return type(self).components["unet"].__class__.from_config(self.components["unet"].config).train()

    def row_cond(self, g: torch.Generator) -> dict[str, torch.Tensor]:
        return {"hidden": torch.randn(5, TINY_SD.text_hidden_size, generator=g)}

    def rows(self):
        g = torch.Generator().manual_seed(0)
        size, channels = TINY_SD.latent_size, TINY_SD.latent_channels
        return [{"index": index, "chosen": torch.randn(channels, size, size, generator=g),
                 "rejected": torch.randn(channels, size, size, generator=g),
                 "chosen_cond": self.row_cond(g), "rejected_cond": self.row_cond(g)} for index in (3, 11)]

    def cond(self, sides: list[dict[str, torch.Tensor]]) -> UNetCond:
        return UNetCond(torch.stack([s["hidden"] for s in sides]))

    def loglik(self, model, rows):
        latents = torch.stack([r["chosen"] for r in rows] + [r["rejected"] for r in rows])
        cond = pair_cond(self.cond([r["chosen_cond"] for r in rows]), self.cond([r["rejected_cond"] for r in rows]))
        c = self.components
        encoders = tuple(c[k] for k in ("text_encoder", "text_encoder_2") if k in c)
        tokenizers = tuple(c[k] for k in ("tokenizer", "tokenizer_2") if k in c)
        components = DiffusionComponents(detect_family(c["unet"].config), c["unet"], c["vae"], encoders, tokenizers,
                                         c["scheduler"])
        elbo = DiffusionELBO(components, make_noise_source(**self.NOISE_SOURCE), policy=model, seed=0,
                             device=torch.device("cpu"))
        return elbo.pair_loglik(model, (elbo.noised(latents, cond, [r["index"] for r in rows], step=0), cond))


class TestSDLikelihood(_Diffusion):
    pass


class TestSDInversionLikelihood(_Diffusion):
    """InPO: x_t from DDIM-inverting each image with the policy; t shared within the pair."""

    NOISE_SOURCE = {"name": "ddim_inversion", "num_inversion_steps": 3}


class TestSDXLLikelihood(_Diffusion):
    components = tiny_sdxl_components()

    def row_cond(self, g):
        unet = self.components["unet"].config
        return {"hidden": torch.randn(5, unet.cross_attention_dim, generator=g),
                "pooled": torch.randn(unet.projection_class_embeddings_input_dim - 6 * unet.addition_time_embed_dim,
                                      generator=g),
                "time_ids": torch.tensor([64.0, 48.0, 0.0, 8.0, 32.0, 32.0]) * (1 + torch.rand(1, generator=g))}

    def cond(self, sides):
        return UNetCond(*(torch.stack([s[key] for s in sides]) for key in ("hidden", "pooled", "time_ids")))
