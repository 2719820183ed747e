"""Images/s of batched PickScore scoring vs the upstream usage pattern, on the same model, side by side in one run.

Peer: the PickScore README's code called one image at a time (``AutoProcessor`` on one PIL image and the prompt,
``get_image_features`` / ``get_text_features``, ``exp(logit_scale) * cos``), in float32 as the README runs it. The
processor is transformers' PIL-backed CLIP processor, the one PickScore was published with (transformers 5 defaults to
a torchvision backend whose resize is up to 2/255 apart), so that our rows compute exactly the same scores.
Ours: ``reward_models`` PickScore ``score()`` (DataLoader decoding, each prompt encoded once, batched towers, float32
cosines), once in float32 and once with ``dtype="auto"`` (bfloat16 on CPUs with native bf16, e.g. AVX512-BF16).
Ceiling: the bare compute of the ``dtype="auto"`` row, i.e. the text tower once and the image tower on pixels
preprocessed beforehand, in the same batches and dtype, nothing else. No scoring code can beat it on this machine,
so ``bare / README`` bounds the speed-up reachable here and ``ours / bare`` is how close ``score()`` comes.

The model is a random CLIP built in code (no weights can be downloaded) with PickScore's shape at a smaller width:
224-px images in 14-px patches (257 tokens per image, as ViT-H/14), GELU, 4x MLPs, and the text tower ~3/4 of the
vision tower's width and depth (ViT-H: 1024 vs 1280 wide, 24 vs 32 layers). Images are 384x512 PNG files (decoding,
resizing and cropping all run). Every run is the whole call: decoding, preprocessing, text and image towers.
Rows are interleaved ``--repeats`` times and the median is reported, since the machine may be shared.

    python bench/scoring.py [--images 32] [--repeats 3] [--batch-size N] [--num-workers N] [--quick]
                            [--device cpu|cuda] [--precision no|bf16|fp16] [--gpu] [--json PATH]

``--precision`` sets the fast row's dtype (``no``: ``dtype="auto"``, bf16 on CPUs with native bf16 and on recent
GPUs). ``--gpu``: PickScore's real size (ViT-H/14: vision 1280 x 32 layers, text 1024 x 24) and 128 images, random
weights built on the GPU. On CUDA each timed run ends with ``torch.cuda.synchronize`` and each row also reports its
``torch.cuda.max_memory_allocated`` (reset per run), the process RSS, and the image tower's FLOPs per image counted
on the meta device, read as model FLOPs utilisation (``bench/_common.py``).
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoProcessor, CLIPConfig, CLIPModel, CLIPProcessor, CLIPVisionConfig

from _common import (
    Row as TableRow, add_device_args, bench_result, check_device_args, count_flops, cuda_peak_mib, flops_line,
    format_table, machine_line, reset_cuda_peak, rss_mib, synchronize, weights_gib, write_json,
)
from reward_models import Scorer, load_scorer
from reward_models.inputs import decode
from visalign.testing.clip import LOGIT_SCALE_INIT, clip_image_processor, clip_text_config, seeded
from visalign.testing.tokenizers import clip_style_tokenizer

PROMPT = "a red circle on a blue square"

#: Model and data sizes: ``FULL`` is the bench (~2-3 min on 2 CPU cores), ``QUICK`` a smoke run for CI.
FULL = {"images": 32, "vision_width": 512, "vision_layers": 8, "text_width": 384, "text_layers": 6}
QUICK = {"images": 6, "vision_width": 64, "vision_layers": 1, "text_width": 64, "text_layers": 1}
#: PickScore's real size (CLIP ViT-H/14, ~1B parameters; heads of 64 here, ViT-H has 16 of 80: the same FLOPs)
GPU = {"images": 128, "vision_width": 1280, "vision_layers": 32, "text_width": 1024, "text_layers": 24}

#: float32 rows must agree with the peer to float rounding (scores are 100 * cos).
FP32_ATOL = 1e-3
#: bf16 towers with float32 cosines vs float32 (docs/rewards.md "Precision"): max |cos difference|.
BF16_COSINE_ATOL = 0.02


@dataclass
class Row:
    """One line of the table: median images/s over the repeats and the scores of the last run."""

    name: str
    rates: list[float] = field(default_factory=list)
    scores: torch.Tensor | None = None
    cuda_peaks: list[float] = field(default_factory=list)  #: MiB per run, CUDA only

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def clip_config(size: dict, tokenizer) -> CLIPConfig:
    """The PickScore-shaped ``CLIPConfig`` of ``size`` (module docstring)."""
    width, text_width = size["vision_width"], size["text_width"]
    text = clip_text_config(tokenizer, hidden_size=text_width, num_layers=size["text_layers"],
                            num_heads=max(1, text_width // 64), projection_dim=width, hidden_act="gelu")
    text.intermediate_size = 4 * text_width
    vision = CLIPVisionConfig(image_size=224, patch_size=14, hidden_size=width, intermediate_size=4 * width,
                              num_hidden_layers=size["vision_layers"], num_attention_heads=max(1, width // 64),
                              projection_dim=width, hidden_act="gelu")
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=width,
                      logit_scale_init_value=LOGIT_SCALE_INIT)


def build_model(folder: Path, size: dict, device: torch.device) -> Path:
    """Save a random PickScore-shaped ``CLIPModel`` (built on ``device``) and its processor to ``folder``."""
    tokenizer = clip_style_tokenizer()
    with seeded(0), torch.device(device):
        model = CLIPModel(clip_config(size, tokenizer)).eval()
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=clip_image_processor(224), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def write_images(folder: Path, n: int) -> list[Path]:
    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(n):
        pixels = torch.randint(0, 256, (512, 384, 3), generator=g, dtype=torch.uint8).numpy()
        paths.append(folder / f"{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def readme_loop(model: CLIPModel, processor, paths: Sequence[Path], prompt: str) -> torch.Tensor:
    """The PickScore README's scoring code, called for one image at a time (transformers 5 returns the projected
    features in ``pooler_output``); inputs go to the model's device, as the README's ``.to(device)``."""
    scores = []
    for path in paths:
        image_inputs = processor(images=[Image.open(path)], padding=True, truncation=True, max_length=77,
                                 return_tensors="pt").to(model.device)
        text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77,
                                return_tensors="pt").to(model.device)
        with torch.no_grad():
            image_embs = model.get_image_features(**image_inputs).pooler_output
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = model.get_text_features(**text_inputs).pooler_output
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            scores.append(model.logit_scale.exp() * (text_embs @ image_embs.T)[0])
    return torch.cat(scores)


def bare_compute(scorer, pixels: torch.Tensor, prompt: str, batch_size: int) -> torch.Tensor:
    """The towers alone on preprocessed ``pixels``: one text forward, the image tower batch by batch, fp32 cosines."""
    net = scorer.backbone
    with torch.no_grad():
        text = F.normalize(net.text_features([prompt]).float(), dim=-1)
        images = torch.cat([net.image_features(chunk) for chunk in pixels.split(batch_size)])
        return net.logit_scale.exp() * (F.normalize(images.float(), dim=-1) @ text.T)[:, 0]


def timed(run: Callable[[], torch.Tensor], n: int, device: torch.device) -> tuple[float, torch.Tensor]:
    """Images/s of ``run()`` (its queued CUDA work included) and its scores on the CPU."""
    synchronize(device)
    start = time.perf_counter()
    scores = run()
    synchronize(device)
    return n / (time.perf_counter() - start), scores.cpu()


def image_flops(size: dict) -> tuple[float, dict]:
    """FLOPs of the image tower + projection for one 224-px image, and the model's real-size memory, both counted on
    the meta device (the text tower runs once per call, not per image, and is left out)."""
    with torch.device("meta"):
        model = CLIPModel(clip_config(size, clip_style_tokenizer())).eval()
        pixels = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        flops = count_flops(lambda: model.get_image_features(pixel_values=pixels))
    return float(flops), weights_gib(model.requires_grad_(False))


def pair_order_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of image pairs that ``a`` and ``b`` order the same way."""
    i, j = torch.triu_indices(len(a), len(a), offset=1)
    return float(((a[i] - a[j]).sign() == (b[i] - b[j]).sign()).float().mean())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, help=f"images per run (default {FULL['images']})")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per row (median reported)")
    parser.add_argument("--batch-size", type=int, help="ours: images per batch (default: score()'s)")
    parser.add_argument("--num-workers", type=int, help="ours: DataLoader workers (default: score()'s)")
    parser.add_argument("--quick", action="store_true", help="tiny model and 6 images: a smoke run")
    add_device_args(parser, precision_help="dtype of the fast row: no = score()'s dtype='auto'")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    check_device_args(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    size = dict(QUICK if args.quick else GPU if args.gpu else FULL)
    device = torch.device(args.device)
    fast_dtype = {"no": "auto", "bf16": "bfloat16", "fp16": "float16"}[args.precision]
    n = args.images or size["images"]
    options = {k: v for k, v in (("batch_size", args.batch_size), ("num_workers", args.num_workers)) if v is not None}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(Path(tmp) / "model", size, device)
        paths = write_images(Path(tmp), n)
        model = CLIPModel.from_pretrained(folder).eval().to(device)
        processor = AutoProcessor.from_pretrained(folder, backend="pil")
        ours32 = load_scorer("pickscore", model=str(folder), dtype="float32", device=device)
        auto = load_scorer("pickscore", model=str(folder), dtype=fast_dtype, device=device)
        pixels = torch.stack([auto.transform(decode(p, i)) for i, p in enumerate(paths)]).to(device)
        batch = options.get("batch_size", inspect.signature(Scorer.score).parameters["batch_size"].default)
        runs = {
            "PickScore README, one image at a time, float32": lambda p: readme_loop(model, processor, p, PROMPT),
            "visalign PickScore.score, float32": lambda p: ours32.score(p, PROMPT, **options).scores,
            f"visalign PickScore.score, dtype={fast_dtype} ({str(auto.backbone.dtype).removeprefix('torch.')})":
                lambda p: auto.score(p, PROMPT, **options).scores,
            f"bare compute of the dtype={fast_dtype} row (ceiling)":
                lambda p: bare_compute(auto, pixels[:len(p)], PROMPT, batch),
        }
        rows = [Row(name) for name in runs]
        for run in runs.values():
            run(paths[:2])  # warm-up
        for _ in range(args.repeats):
            for row, run in zip(rows, runs.values()):
                reset_cuda_peak(device)
                rate, row.scores = timed(lambda: run(paths), n, device)
                row.rates.append(rate)
                if device.type == "cuda":
                    row.cuda_peaks.append(cuda_peak_mib(device))
        scale = float(ours32.backbone.logit_scale.exp())

    peer, fp32, fast, bare = rows
    fp32_diff = float((fp32.scores - peer.scores).abs().max())
    cos_diff = float((fast.scores - fp32.scores).abs().max()) / scale
    flops, memory = image_flops(size)
    config = (f"model: CLIP, vision {size['vision_width']} wide x {size['vision_layers']} layers, 224 px / 14-px "
              f"patches (257 tokens), text {size['text_width']} x {size['text_layers']}; {n} images 384x512 PNG, one "
              f"prompt; ours with {options or 'score() defaults'}; {args.repeats} interleaved runs, median")
    print(machine_line(device))
    print(config)
    print(flops_line(flops, "image (image tower + projection)", memory) + "\n")
    table = [TableRow(r.name, r.rate, max(r.cuda_peaks, default=float("nan")),
                      "runs: " + ", ".join(f"{x:.2f}" for x in r.rates), flops=flops, rss_mib=rss_mib())
             for r in rows]
    if device.type == "cuda":
        print(format_table(table, peer.name, unit="images/s", device=device))
    else:  # the CPU table as it always was (no CUDA peak to show)
        width = max(len(r.name) for r in rows) + 2
        print(f"{'run':<{width}}{'images/s':>9}{'vs peer':>9}  runs")
        for r in rows:
            print(f"{r.name:<{width}}{r.rate:>9.2f}{r.rate / peer.rate:>8.2f}x  "
                  f"{', '.join(f'{x:.2f}' for x in r.rates)}")
    print(f"\nspeed-up vs the README loop: float32 {fp32.rate / peer.rate:.2f}x, "
          f"dtype=auto {fast.rate / peer.rate:.2f}x; the ceiling here (bare compute) {bare.rate / peer.rate:.2f}x, "
          f"of which dtype=auto reaches {fast.rate / bare.rate:.0%}")
    print(f"float32 vs README: max |score difference| {fp32_diff:.2e}")
    print(f"dtype=auto vs float32: max |cosine difference| {cos_diff:.2e} (score: {scale * cos_diff:.3f}); "
          f"pairs ordered alike {pair_order_agreement(fast.scores, fp32.scores):.3f}")
    bare_diff = float((bare.scores - fast.scores).abs().max())
    print(f"bare compute vs dtype=auto: max |score difference| {bare_diff:.2e} (the same compute)")
    ratios = {"fp32_vs_readme": fp32.rate / peer.rate, "fast_vs_readme": fast.rate / peer.rate,
              "ceiling_vs_readme": bare.rate / peer.rate, "fast_vs_ceiling": fast.rate / bare.rate}
    write_json(args.json, bench_result("scoring", table, peer=peer.name, unit="images/s", device=device,
                                       config=config, ratios=ratios))
    if fp32_diff > FP32_ATOL:
        raise AssertionError(f"float32 scores differ from the README loop's by {fp32_diff} > {FP32_ATOL}")
    if cos_diff > BF16_COSINE_ATOL:
        raise AssertionError(f"dtype=auto cosines differ from float32 by {cos_diff} > {BF16_COSINE_ATOL}")
    if bare_diff > FP32_ATOL:
        raise AssertionError(f"the bare compute's scores differ from dtype=auto's by {bare_diff} > {FP32_ATOL}")
    return rows


if __name__ == "__main__":
    main()
