"""CLIP crop and HPS pad preprocessing on non-square images: geometry, pad values, parity with transformers'
PIL-backed CLIP image processor, and the differentiable tensor path."""

import pytest
import torch
from PIL import Image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from reward_models.preprocess import (
    CenterCropTransform,
    PadTransform,
    center_crop_offsets,
    longest_edge_size,
    normalize,
    normalize_uint8,
    pad_amounts,
    shortest_edge_size,
)
from reward_models.inputs import to_float

BLACK = torch.tensor([(0 - m) / s for m, s in zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
WHITE = torch.tensor([(1 - m) / s for m, s in zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])


def test_hps_geometry_of_a_wide_image():
    # 300 wide x 100 high -> 224 x round(74.67) = 75 rows, 149 pad rows split 74 above / 75 below
    assert longest_edge_size(100, 300, 224) == (75, 224)
    assert pad_amounts(75, 224, 224) == (0, 0, 74, 75)
    assert pad_amounts(224, 75, 224) == (74, 75, 0, 0)


def test_hps_pads_with_black_and_keeps_content_in_the_middle():
    white = torch.full((3, 100, 300), 255, dtype=torch.uint8)
    out = PadTransform(224)(white)
    assert out.shape == (3, 224, 224)
    torch.testing.assert_close(out[:, :74], BLACK.view(3, 1, 1).expand(3, 74, 224))
    torch.testing.assert_close(out[:, 149:], BLACK.view(3, 1, 1).expand(3, 75, 224))
    torch.testing.assert_close(out[:, 74:149], WHITE.view(3, 1, 1).expand(3, 75, 224))


def test_hps_pads_even_when_the_longest_edge_already_fits():
    out = PadTransform(224)(torch.zeros(3, 160, 224, dtype=torch.uint8))  # upstream would leave it 160x224
    assert out.shape == (3, 224, 224)


def test_clip_geometry_of_a_tall_image():
    assert shortest_edge_size(300, 100, 224) == (672, 224)
    assert shortest_edge_size(100, 301, 224) == (224, 674)  # int(224 * 301 / 100) = 674
    assert center_crop_offsets(674, 224, 224) == (225, 0)  # (674 - 224) // 2
    with pytest.raises(ValueError, match="cannot centre-crop"):
        center_crop_offsets(100, 300, 224)


@pytest.mark.parametrize("hw", [(40, 56), (97, 31), (64, 64)])
def test_clip_pil_backend_matches_transformers_pil_processor(hw):
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, *hw), generator=g, dtype=torch.uint8)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                      image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD))
    expected = processor(images=Image.fromarray(image.permute(1, 2, 0).numpy()), return_tensors="pt")
    torch.testing.assert_close(CenterCropTransform(32, "pil")(image), expected["pixel_values"][0],
                               rtol=0, atol=1e-6)


def test_clip_crop_keeps_the_centre_of_a_non_square_image():
    image = torch.zeros(3, 32, 96, dtype=torch.uint8)
    image[:, :, 32:64] = 255  # white middle third survives the crop exactly (no resize: short edge is 32)
    for backend in ("pil", "torch"):
        out = CenterCropTransform(32, backend)(image)
        torch.testing.assert_close(out, WHITE.view(3, 1, 1).expand(3, 32, 32), rtol=0, atol=1e-6)


def test_tensor_path_is_differentiable_and_close_to_pil():
    g = torch.Generator().manual_seed(0)
    pixels = (torch.randint(0, 256, (2, 3, 48, 80), generator=g).float() / 255).requires_grad_()
    transform = CenterCropTransform(32, "pil")
    out = transform.batch(pixels)
    out.sum().backward()
    assert out.shape == (2, 3, 32, 32) and pixels.grad.abs().sum() > 0
    pil = torch.stack([transform(p.detach()) for p in pixels])
    assert (out.detach() - pil).abs().mean() < 0.05  # PIL vs antialiased torch bicubic: small, not zero
    assert transform.batch_variant.endswith("-torch") and transform.variant.endswith("-pil")


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend"):
        CenterCropTransform(224, "cv2")


def test_uint8_table_normalisation_is_bit_identical_to_the_float_formula():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (37, 53, 3), generator=g, dtype=torch.uint8)
    image[0, :3] = torch.tensor([[0, 0, 0], [255, 255, 255], [1, 128, 254]], dtype=torch.uint8)
    expected = normalize(to_float(image.permute(2, 0, 1)))
    out = normalize_uint8(image.numpy())
    assert out.dtype == torch.float32 and out.shape == (3, 37, 53)
    assert torch.equal(out, expected)
    strided = image.numpy()[5:30, 7:40]  # a crop view, as the CLIP transform passes it
    assert torch.equal(normalize_uint8(strided), expected[:, 5:30, 7:40])


def test_16_bit_greyscale_is_scaled_not_clipped_in_scoring_and_training(tmp_path):
    # PIL's convert("RGB") clips I;16 samples to 255 (a solid white image); both decoders must scale them instead.
    import numpy as np

    from reward_models.inputs import decode
    from visalign.data.image_transforms import open_rgb

    wide = (np.arange(48 * 40).reshape(48, 40) * 34).astype(np.uint16)  # 0 .. 65246
    Image.fromarray(wide).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    expected = torch.from_numpy(np.round(wide / 257.0).astype(np.uint8)).expand(3, -1, -1)
    torch.testing.assert_close(decode(tmp_path / "grey16.png", 0), expected, rtol=0, atol=0)
    training = torch.from_numpy(np.array(open_rgb(str(tmp_path / "grey16.png")))).permute(2, 0, 1)
    torch.testing.assert_close(training, expected, rtol=0, atol=0)
