"""Behaviour every reward scorer must have, written once (in the spirit of diffusers' ``PipelineTesterMixin``).

Use: ``class TestMyScorer(ScorerContract)`` with a ``scorer`` fixture returning a loaded ``reward_models.Scorer``.
Images are uint8 ``[B,3,H,W]`` tensors of a non-square size, so resizing and cropping/padding always run.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

PROMPTS = ["a red circle", "a blue square", "a red circle", "a cat on a tree"]


def make_images(n: int = 4, height: int = 40, width: int = 56, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, height, width), generator=g, dtype=torch.uint8)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]


class ScorerContract:
    """Subclasses define a ``scorer`` fixture."""

    def test_shape_dtype_and_details(self, scorer):
        result = scorer.score(make_images(), PROMPTS)
        assert result.scores.shape == (4,) and result.scores.dtype == torch.float32
        assert torch.isfinite(result.scores).all()
        for name, value in result.details.items():
            assert value.shape == (4,), name
        lo, hi = scorer.info.raw_range
        assert ((result.scores >= lo) & (result.scores <= hi)).all()

    def test_provenance_recorded(self, scorer):
        prov = scorer.score(make_images(1), PROMPTS[:1]).provenance[scorer.info.name]
        assert prov.model_id and prov.preprocessing and prov.dtype == str(torch.float32)
        assert prov.weights_sha256 is not None and len(prov.weights_sha256.split("+")[0]) == 64

    def test_deterministic(self, scorer):
        images = make_images()
        assert torch.equal(scorer.score(images, PROMPTS).scores, scorer.score(images, PROMPTS).scores)

    def test_batch_composition_invariance(self, scorer):
        images = make_images()
        full = scorer.score(images, PROMPTS, batch_size=4).scores
        single = scorer.score(images, PROMPTS, batch_size=1).scores
        subset = scorer.score(images[1:3], PROMPTS[1:3]).scores
        torch.testing.assert_close(single, full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(subset, full[1:3], rtol=1e-5, atol=1e-5)

    def test_pil_paths_and_tensors_agree(self, scorer, tmp_path):
        images = make_images()
        pils = to_pil(images)
        paths = []
        for i, pil in enumerate(pils):
            pil.save(tmp_path / f"{i}.png")
            paths.append(tmp_path / f"{i}.png")
        from_uint8 = scorer.score(images, PROMPTS).scores
        torch.testing.assert_close(scorer.score(pils, PROMPTS).scores, from_uint8, rtol=0, atol=0)
        torch.testing.assert_close(scorer.score(paths, PROMPTS).scores, from_uint8, rtol=0, atol=0)
        floats = images.float() / 255.0
        torch.testing.assert_close(scorer.score(floats, PROMPTS).scores, from_uint8, rtol=1e-5, atol=1e-5)

    def test_no_gradient_unless_asked(self, scorer):
        pixels = (make_images().float() / 255.0).requires_grad_()
        result = scorer.score(pixels, PROMPTS)
        assert not result.scores.requires_grad
        assert all(not v.requires_grad for v in result.details.values())

    def test_gradient_when_asked(self, scorer):
        pixels = (make_images().float() / 255.0).requires_grad_()
        if not scorer.info.differentiable:
            with pytest.raises(TypeError, match="not differentiable"):
                scorer.score_tensor(pixels, PROMPTS)
            return
        result = scorer.score_tensor(pixels, PROMPTS)
        result.scores.sum().backward()
        assert pixels.grad is not None and torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
        assert result.provenance[scorer.info.name].preprocessing == scorer.transform.batch_variant

    def test_rank_and_preference_are_consistent(self, scorer):
        images = make_images(3)
        ranked = scorer.rank(PROMPTS[0], images)
        torch.testing.assert_close(ranked.probs.sum(), torch.tensor(1.0))
        best = int(ranked.order[0])
        assert ranked.scores[best] == (ranked.scores.max() if scorer.info.higher_is_better else ranked.scores.min())
        ab = scorer.preference(PROMPTS[0], images[:1], images[1:2]).probs
        ba = scorer.preference(PROMPTS[0], images[1:2], images[:1]).probs
        torch.testing.assert_close(ab + ba, torch.ones(1))
        # the pairwise probability is the 2-way softmax of the listwise one
        p0, p1 = ranked.probs[0], ranked.probs[1]
        torch.testing.assert_close(ab[0], p0 / (p0 + p1), rtol=1e-4, atol=1e-5)

    def test_bad_input_is_named(self, scorer):
        with pytest.raises(ValueError, match="3 prompts for 4 images"):
            scorer.score(make_images(), PROMPTS[:3])
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            scorer.score(make_images().float(), PROMPTS)
        with pytest.raises(ValueError, match="nope.png"):
            scorer.score(["nope.png"], "a cat")
