"""The likelihood contract (``likelihood_contract.py``) applied to every provider: token log-probs of a causal LM
(``likelihood.text.TokenLogProbs``), of VLMs (``likelihood.vlm.VLMTokenLogProbs``; LLaVA-1.5 and Qwen2-VL, summed
and dense DPO's γ-weighted score) and the diffusion ELBO surrogate (``likelihood.diffusion.DiffusionELBO``; SD and
SDXL conditioning, random and DDIM-inversion noise), each run through its provider object (``prepare`` then
``pair_loglik``) on batches collated by the family's trainer collator."""

from __future__ import annotations

import torch
from PIL import Image

from tests.contract.likelihood_contract import LikelihoodContract
from visalign.data.collators import PreferenceCollator, UnpairedCollator
from visalign.data.ref_cache import compute_reference_logps
from visalign.data.vlm import VisionPreferenceDataset
from visalign.data.vlm_collator import DenseDPOWeights, VisionPreferenceCollator
from visalign.likelihood.diffusion import DIFFUSION_NLL_SCALE, DiffusionELBO
from visalign.likelihood.noise import make_noise_source
from visalign.likelihood.base import LikelihoodProvider
from visalign.likelihood.text import TokenLogProbs, UnpairedTokenLogProbs, pair_loglik, unpaired_loglik
from visalign.likelihood.vlm import VLMTokenLogProbs, vlm_pair_loglik
from visalign.models.diffusion import DiffusionComponents, detect_family
from visalign.testing.causal_lm import tiny_llama
from visalign.testing.diffusion import TINY_SD, tiny_sd_components, tiny_sdxl_components
from visalign.testing.tokenizers import word_level_tokenizer
from visalign.testing.vlm import tiny_llava, tiny_qwen2_vl
from visalign.trainers.diffusion import collate_indexed_pairs


class _Tokens(LikelihoodContract):
    """Token providers read a precomputed reference: the columns ``ref_cache.compute_reference_logps`` writes (sums
    and per-token), computed with the model's likelihood function (``LOGLIK``)."""

    PRECOMPUTED = True
    LOGLIK = staticmethod(pair_loglik)

    def precomputed_rows(self, model, rows):
        columns = compute_reference_logps(model, rows, self.collate, batch_size=len(rows), per_token=True,
                                          loglik=type(self).LOGLIK)
        return [{**row, **{key: values[i] for key, values in columns.items()}} for i, row in enumerate(rows)]


class TestTextLikelihood(_Tokens):
    SIDE_KEYS = (("chosen_input_ids", "rejected_input_ids"),)

    def model(self):
        return tiny_llama(word_level_tokenizer()).train()

    def rows(self):
        return [
            {"prompt_input_ids": [5, 6, 7], "chosen_input_ids": [8, 9], "rejected_input_ids": [10, 11, 12]},
            {"prompt_input_ids": [14], "chosen_input_ids": [15, 16, 17], "rejected_input_ids": [18]},
            {"prompt_input_ids": [20, 21], "chosen_input_ids": [22, 23, 24, 25], "rejected_input_ids": [22, 26]},
        ]

    def provider(self, model):
        return TokenLogProbs(return_token_logps=True)

    def collate(self, rows):
        return PreferenceCollator(pad_token_id=0)(rows)

    def expected_counts(self, rows):
        return ([float(len(r["chosen_input_ids"])) for r in rows], [float(len(r["rejected_input_ids"])) for r in rows])


class TestTextMeanLikelihood(TestTextLikelihood):
    """Length-normalised sequence scores (``reduction="mean"``), the precomputed reader with the same reduction."""

    def provider(self, model):
        return TokenLogProbs("mean")


def test_the_unpaired_provider_scores_kto_rows_through_the_interface():
    """KTO's provider (unpaired rows, so outside the paired contract): ``prepare`` then ``pair_loglik`` is
    ``unpaired_loglik`` with its KL rows; it reads no precomputed reference (the KL point needs a forward)."""
    rows = [{"prompt_input_ids": [5, 6, 7], "completion_input_ids": [8, 9], "label": True},
            {"prompt_input_ids": [14], "completion_input_ids": [15, 16, 17], "label": False}]
    model, batch = tiny_llama(word_level_tokenizer()), UnpairedCollator(pad_token_id=0, kl=True)(rows)
    provider = UnpairedTokenLogProbs()
    assert isinstance(provider, LikelihoodProvider) and provider.precomputed is None
    out, expected = provider.pair_loglik(model, provider.prepare(batch, 0)), unpaired_loglik(model, batch)
    for name in ("logps", "count", "kl_logps", "kl_count"):
        torch.testing.assert_close(getattr(out, name), getattr(expected, name), rtol=0, atol=0, msg=name)
    assert out.kl_logps is not None and out.logps.requires_grad and not out.kl_logps.requires_grad


COLOURS = {"red": (220, 38, 38), "green": (34, 160, 60), "blue": (37, 70, 220)}


class _VLM(_Tokens):
    build = None  # the tiny model builder: () -> (model, processor)
    LOGLIK = staticmethod(vlm_pair_loglik)
    REJECTED = "it is {wrong} . a {wrong} square"

    def model(self):
        return type(self).build()[0].train()

    def rows(self):
        pairs = (("red", "blue", (56, 56)), ("green", "red", (40, 64)))
        rows = [{"images": [Image.new("RGB", size, COLOURS[colour])],
                 "prompt": [{"role": "user", "content": "what colour is the square ?"}],
                 "chosen": [{"role": "assistant", "content": f"the square is {colour} ."}],
                 "rejected": [{"role": "assistant", "content": self.REJECTED.format(wrong=wrong)}]}
                for colour, wrong, size in pairs]
        data = VisionPreferenceDataset(rows, name="rows")
        return [data[i] for i in range(len(data))]

    def _collator(self):
        return VisionPreferenceCollator(type(self).build()[1])

    def provider(self, model):
        return VLMTokenLogProbs(return_token_logps=True)

    def collate(self, rows):
        return self._collator()(rows)

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


class TestLlavaDenseDPOLikelihood(TestLlavaLikelihood):
    """RLHF-V dense DPO: the γ-weighted normalised score over the collator's token weights, policy and precomputed
    reference alike."""

    REJECTED = "the square is {wrong} . a {wrong} square"  # shares its first words with the chosen answer

    def _collator(self):
        return VisionPreferenceCollator(type(self).build()[1], dense_dpo=DenseDPOWeights(gamma=3.0))

    def provider(self, model):
        return VLMTokenLogProbs("weighted_mean")

    def test_corrected_tokens_are_weighted(self):
        weights = self.collate(self.rows())["token_weights"]
        assert set(weights.unique().tolist()) == {0.0, 1.0, 3.0}


def _sides(*fields: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"{name}_chosen", f"{name}_rejected") for name in fields)


class _Diffusion(LikelihoodContract):
    """Rows are the cached dataset's items (clean latents and per-side prompt embeddings: DCPO's per-side captions,
    SDXL's per-image pooled embeddings and time ids), collated by the trainer's ``collate_indexed_pairs``; the
    provider's ``prepare`` noises them pair by pair from generators keyed by the pair's index and the step."""

    SIDE_KEYS = _sides("latents", "prompt_embeds", "caption", "original_size")
    NLL_SCALE = DIFFUSION_NLL_SCALE
    NOISE_SOURCE: dict = {"name": "random"}
    STEP = 5
    components = tiny_sd_components()

    def model(self):
        return type(self).components["unet"].__class__.from_config(self.components["unet"].config).train()

    def side(self, g: torch.Generator) -> dict[str, torch.Tensor]:
        """One image's cached prompt fields."""
        return {"prompt_embeds": torch.randn(5, TINY_SD.text_hidden_size, generator=g)}

    def rows(self):
        g = torch.Generator().manual_seed(0)
        size, channels = TINY_SD.latent_size, TINY_SD.latent_channels
        rows = []
        for index in (3, 11):
            row = {"index": index, "crop_top_left": (0, 0)}
            for side in ("chosen", "rejected"):
                fields = {"latents": torch.randn(channels, size, size, generator=g), **self.side(g),
                          "caption": f"{side} {index}", "original_size": (48, 64)}
                row.update({f"{key}_{side}": value for key, value in fields.items()})
            rows.append(row)
        return rows

    def provider(self, model):
        c = self.components
        encoders = tuple(c[k] for k in ("text_encoder", "text_encoder_2") if k in c)
        tokenizers = tuple(c[k] for k in ("tokenizer", "tokenizer_2") if k in c)
        components = DiffusionComponents(detect_family(c["unet"].config), c["unet"], c["vae"], encoders, tokenizers,
                                         c["scheduler"])
        return DiffusionELBO(components, make_noise_source(**self.NOISE_SOURCE), policy=model, seed=0,
                             device=torch.device("cpu"))

    def collate(self, rows):
        return collate_indexed_pairs(rows)


class TestSDLikelihood(_Diffusion):
    pass


class TestSDInversionLikelihood(_Diffusion):
    """InPO: x_t from DDIM-inverting each image with the policy; t shared within the pair."""

    NOISE_SOURCE = {"name": "ddim_inversion", "num_inversion_steps": 3}


class TestSDXLLikelihood(_Diffusion):
    SIDE_KEYS = _sides("latents", "prompt_embeds", "pooled_prompt_embeds", "time_ids", "caption", "original_size")
    components = tiny_sdxl_components()

    def side(self, g):
        unet = self.components["unet"].config
        return {"prompt_embeds": torch.randn(5, unet.cross_attention_dim, generator=g),
                "pooled_prompt_embeds": torch.randn(
                    unet.projection_class_embeddings_input_dim - 6 * unet.addition_time_embed_dim, generator=g),
                "time_ids": torch.tensor([64.0, 48.0, 0.0, 8.0, 32.0, 32.0]) * (1 + torch.rand(1, generator=g))}
