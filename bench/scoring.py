"""Images/s of batched PickScore scoring vs the upstream usage pattern, on the same model, in one run.

Peer: the PickScore README loop — for each image, ``processor(images=..., text=...)`` then ``get_image_features`` /
``get_text_features`` and ``exp(logit_scale) * cos`` (here through transformers' default CLIP processor).
Ours: ``reward_models`` PickScore ``score()`` (DataLoader decoding, each prompt encoded once, batched towers).
The model is a random CLIP built in code (no weights can be downloaded) at a ViT-B/32-like size by default.

    python bench/scoring.py [--images 64] [--batch-size 32] [--hidden 384] [--layers 6] [--num-workers 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from reward_models import load_scorer
from visalign.testing.clip import save_tiny_clip


def peer_loop(folder: str, paths, prompt: str) -> torch.Tensor:
    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPProcessor.from_pretrained(folder)
    scores = []
    with torch.no_grad():
        for path in paths:
            inputs = processor(images=Image.open(path), text=[prompt], padding=True, return_tensors="pt")
            image = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
            text = model.get_text_features(input_ids=inputs["input_ids"],
                                           attention_mask=inputs["attention_mask"]).pooler_output
            image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
            scores.append(model.logit_scale.exp() * (image * text).sum(-1))
    return torch.cat(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(save_tiny_clip(f"{tmp}/model", image_size=224, patch_size=32, hidden_size=args.hidden,
                                    num_layers=args.layers, num_heads=max(1, args.hidden // 64), projection_dim=256))
        g = torch.Generator().manual_seed(0)
        paths = []
        for i in range(args.images):
            pixels = torch.randint(0, 256, (512, 384, 3), generator=g, dtype=torch.uint8).numpy()
            paths.append(f"{tmp}/{i}.png")
            Image.fromarray(pixels).save(paths[-1])
        prompt = "a red circle on a blue square"
        scorer = load_scorer("pickscore", model=folder)
        scorer.score(paths[:2], prompt)  # warm-up
        start = time.perf_counter()
        ours = scorer.score(paths, prompt, batch_size=args.batch_size, num_workers=args.num_workers).scores
        t_ours = time.perf_counter() - start
        peer_loop(folder, paths[:2], prompt)
        start = time.perf_counter()
        theirs = peer_loop(folder, paths, prompt)
        t_peer = time.perf_counter() - start
    diff = float((ours - theirs).abs().max())
    print(f"model: CLIP hidden {args.hidden}, {args.layers} layers, 224 px; {args.images} images 384x512 PNG; "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'method':<40} {'images/s':>10}")
    print(f"{'per-image processor loop (upstream)':<40} {args.images / t_peer:>10.1f}")
    print(f"{'reward_models batched (bs %d)' % args.batch_size:<40} {args.images / t_ours:>10.1f}")
    print(f"speed-up {t_peer / t_ours:.2f}x; max |score difference| {diff:.4f} "
          "(peer resizes with transformers' torchvision backend, ours with PIL as the original processor)")


if __name__ == "__main__":
    main()
