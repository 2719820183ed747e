"""The VAE-latent / text-embedding cache: cached == uncached (SD and SDXL, both flips, caption dropout), cache hits
do not recompute, and the model, resolution, augmentation and data invalidate it."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from visalign.data.diffusion import (
    SKIPPED,
    DiffusionPreferenceDataset,
    collate_diffusion_pairs,
    load_preference_pairs,
    pair_rngs,
)
from visalign.data.diffusion_cache import (
    LatentCache,
    TextEmbeddingCache,
    cached_preference_dataset,
    tokenizer_fingerprint,
    weights_fingerprint,
)
from visalign.data.image_transforms import PairTransform, draw_flip, open_rgb
from visalign.models.diffusion import encode_images, encode_prompts, load_diffusion_components, sdxl_time_ids
from visalign.testing.diffusion import save_tiny_sd, save_tiny_sdxl

RES = 32
CAPTIONS = ["a red cat", "two blue squares", "a green tree", "the sun"]


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return load_diffusion_components(save_tiny_sd(tmp_path_factory.mktemp("sd") / "pipe"))


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return load_diffusion_components(save_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "pipe"))


def write_pairs(root, n=4, corrupt=None):
    """A paired folder of ``n`` pairs of 36 x 45 images (so the centre crop is off the origin); pair ``corrupt``'s
    rejected image is not an image."""
    rng = np.random.default_rng(0)
    for side in ("chosen", "rejected"):
        (root / side).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        for side in ("chosen", "rejected"):
            Image.fromarray(rng.integers(0, 256, (36, 45, 3), dtype=np.uint8)).save(root / side / f"{i}.png")
    if corrupt is not None:
        (root / "rejected" / f"{corrupt}.png").write_bytes(b"\x89PNG broken")
    lines = [{"file_name": f"{i}.png", "caption": CAPTIONS[i % len(CAPTIONS)]} for i in range(n)]
    (root / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    return load_preference_pairs(str(root))


class ForwardCounter:
    """Counts forwards of a module through a forward hook."""

    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1

    def remove(self):
        self.handle.remove()


def build(pairs, components, cache_dir, transform, **kwargs):
    return cached_preference_dataset(pairs, transform, components.vae, components.text_encoders,
                                     components.tokenizers, cache_dir, **kwargs)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_cached_batches_equal_the_uncached_path(family, sd, sdxl, tmp_path):
    components = sd if family == "sd" else sdxl
    pairs = write_pairs(tmp_path / "data", n=4, corrupt=2)
    transform = PairTransform(RES, center_crop=True, random_flip=True)
    cached = build(pairs, components, tmp_path / "cache", transform, caption_dropout=0.5, seed=5)
    uncached = DiffusionPreferenceDataset(pairs, transform, caption_dropout=0.5, seed=5)
    flips = {draw_flip(pair_rngs(5, epoch, i)[1], True) for epoch in (0, 1) for i in range(4)}
    assert flips == {False, True}  # both cached flip variants are exercised
    dropped = 0
    for epoch in (0, 1):
        cached.set_epoch(epoch)
        uncached.set_epoch(epoch)
        items_c, items_u = [cached[i] for i in range(4)], [uncached[i] for i in range(4)]
        assert [SKIPPED in item for item in items_c] == [SKIPPED in item for item in items_u] == [0, 0, 1, 0]
        got, want = collate_diffusion_pairs(items_c), collate_diffusion_pairs(items_u)
        assert got["num_skipped"] == want["num_skipped"] == 1 and got["num_pairs"] == 3
        assert got["captions_chosen"] == want["captions_chosen"]
        dropped += got["captions_chosen"].count("")
        for key in ("original_sizes", "crop_top_lefts"):
            assert got[key].equal(want[key])
        assert want["crop_top_lefts"].tolist() == [[0, 4]] * 6  # 36 x 45 -> 32 x 40 -> centre (0, round(8 / 2))
        latents = encode_images(components.vae, want["pixel_values"], sample=False)
        assert got["latents"].shape == latents.shape == (6, 4, RES // 2, RES // 2)
        torch.testing.assert_close(got["latents"], latents, rtol=1e-5, atol=1e-6)
        prompts = encode_prompts(components.text_encoders, components.tokenizers,
                                 want["captions_chosen"] + want["captions_rejected"])
        torch.testing.assert_close(got["prompt_embeds"], prompts.hidden_states, rtol=1e-5, atol=1e-6)
        if family == "sdxl":
            torch.testing.assert_close(got["pooled_prompt_embeds"], prompts.pooled, rtol=1e-5, atol=1e-6)
            expected = sdxl_time_ids(want["original_sizes"], want["crop_top_lefts"], (RES, RES))
            assert got["time_ids"].equal(expected) and expected[0].tolist() == [36, 45, 0, 4, RES, RES]
        else:
            assert "pooled_prompt_embeds" not in got and "time_ids" not in got
    assert dropped > 0  # the dropped caption's embedding ("") comes from the cache too


def test_a_second_build_reuses_the_cache_without_encoding(sd, tmp_path):
    pairs = write_pairs(tmp_path / "data", n=3)
    transform = PairTransform(RES)
    first = build(pairs, sd, tmp_path / "cache", transform)
    shard = first.latents.store.shard_path(0)
    stamp = shard.stat().st_mtime_ns
    counters = [ForwardCounter(sd.vae.encoder), ForwardCounter(sd.text_encoders[0])]
    try:
        second = build(pairs, sd, tmp_path / "cache", transform)
        assert [c.calls for c in counters] == [0, 0]
        assert second.latents.store.dir == first.latents.store.dir and shard.stat().st_mtime_ns == stamp
        torch.testing.assert_close(second[1]["latents_chosen"], first[1]["latents_chosen"], rtol=0, atol=0)
    finally:
        for counter in counters:
            counter.remove()
    manifest = json.loads((first.latents.store.dir / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["key"]["resolution"] == RES and manifest["key"]["random_flip"] is True
    assert manifest["key"]["data"] == pairs.fingerprint() and manifest["key"]["vae"] == weights_fingerprint(sd.vae)


def test_shards_hold_every_variant_and_a_killed_fill_resumes_with_the_missing_shards_only(sd, tmp_path):
    pairs = write_pairs(tmp_path / "data", n=5)
    transform = PairTransform(RES, random_flip=True)
    # 3 pairs (12 images) per VAE batch against 2 pairs per shard: batches straddle shard boundaries
    cache = LatentCache.build(pairs, transform, sd.vae, tmp_path / "cache", shard_size=2, vae_batch_size=12)
    assert cache.store.num_shards == 3 and cache.store.missing_shards() == []
    for i in range(5):
        for flip in (False, True):
            out = transform(*(open_rgb(ref, base_dir=pairs.base_dir) for ref in pairs.image_refs(i)),
                            np.random.default_rng(0), flip=flip)
            want = encode_images(sd.vae, torch.stack([out.chosen, out.rejected]), sample=False)
            got = cache.get(i, flip)
            torch.testing.assert_close(torch.stack([got["latents_chosen"], got["latents_rejected"]]), want,
                                       rtol=1e-5, atol=1e-6)
            assert got["crop_top_left"] == out.crop_top_left
    cache.store.shard_path(1).unlink()
    counter = ForwardCounter(sd.vae.encoder)
    try:
        resumed = LatentCache.build(pairs, transform, sd.vae, tmp_path / "cache", shard_size=2, vae_batch_size=12)
    finally:
        counter.remove()
    assert counter.calls == 1 and resumed.store.missing_shards() == []  # pairs 2 and 3 only: 8 images, one batch
    assert not list(resumed.store.dir.glob("*.tmp"))


def count_latent_encodes(pairs, transform, vae, cache_dir):
    counter = ForwardCounter(vae.encoder)
    try:
        cache = LatentCache.build(pairs, transform, vae, cache_dir)
    finally:
        counter.remove()
    return cache.store.dir, counter.calls


def test_model_resolution_augmentation_and_data_changes_invalidate_the_latents(sd, tmp_path):
    pairs = write_pairs(tmp_path / "data", n=2)
    transform = PairTransform(RES)
    base, calls = count_latent_encodes(pairs, transform, sd.vae, tmp_path / "cache")
    assert calls == 1

    other_vae = copy.deepcopy(sd.vae)
    with torch.no_grad():
        other_vae.encoder.conv_in.bias.add_(1e-3)
    changed = [
        count_latent_encodes(pairs, transform, other_vae, tmp_path / "cache"),
        count_latent_encodes(pairs, PairTransform(16), sd.vae, tmp_path / "cache"),
        count_latent_encodes(pairs, PairTransform(RES, random_flip=False), sd.vae, tmp_path / "cache"),
    ]
    Image.fromarray(np.zeros((36, 45, 3), dtype=np.uint8)).save(tmp_path / "data" / "rejected" / "1.png")
    changed.append(count_latent_encodes(load_preference_pairs(str(tmp_path / "data")), transform, sd.vae,
                                        tmp_path / "cache"))
    assert all(calls >= 1 for _, calls in changed)
    assert len({base, *(folder for folder, _ in changed)}) == 5
    assert count_latent_encodes(pairs, transform, sd.vae, tmp_path / "cache") == (base, 0)


def test_text_cache_is_invalidated_by_the_encoder_and_the_captions(sd, tmp_path):
    def build_text(captions, encoders):
        counter = ForwardCounter(encoders[0])
        try:
            cache = TextEmbeddingCache.build(captions, encoders, sd.tokenizers, tmp_path / "cache")
        finally:
            counter.remove()
        return cache.store.dir, counter.calls

    base = build_text(["a cat", "a dog"], sd.text_encoders)
    assert base[1] >= 1 and build_text(["a dog", "a cat", "a cat"], sd.text_encoders) == (base[0], 0)
    new_captions = build_text(["a cat", "a big dog"], sd.text_encoders)
    other = copy.deepcopy(sd.text_encoders[0])
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    new_encoder = build_text(["a cat", "a dog"], (other,))
    assert new_captions[1] >= 1 and new_encoder[1] >= 1
    assert len({base[0], new_captions[0], new_encoder[0]}) == 3


def test_random_crops_cannot_be_cached(sd, tmp_path):
    pairs = write_pairs(tmp_path / "data", n=1)
    with pytest.raises(ValueError, match="random crops"):
        LatentCache.build(pairs, PairTransform(RES, center_crop=False), sd.vae, tmp_path / "cache")


def test_the_cached_dataset_works_in_dataloader_workers(sdxl, tmp_path):
    pairs = write_pairs(tmp_path / "data", n=4)
    cached = build(pairs, sdxl, tmp_path / "cache", PairTransform(RES), caption_dropout=0.5, seed=1)

    def batches(workers):
        return list(torch.utils.data.DataLoader(cached, batch_size=2, num_workers=workers,
                                                collate_fn=collate_diffusion_pairs))

    for a, b in zip(batches(0), batches(2), strict=True):
        assert a["captions_chosen"] == b["captions_chosen"]
        for key in ("latents", "prompt_embeds", "pooled_prompt_embeds", "time_ids"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_a_tokenizer_keeps_its_fingerprint_once_it_has_been_called(tmp_path):
    """A fast tokenizer rewrites its backend's padding/truncation settings when called; the text cache key must not
    follow them, or the second run of the same data re-encodes every caption into a new folder."""
    save_tiny_sd(tmp_path / "sd")
    tokenizer = load_diffusion_components(str(tmp_path / "sd")).tokenizers[0]
    before = tokenizer_fingerprint(tokenizer)
    tokenizer(["a red square"], padding="max_length", truncation=True, max_length=tokenizer.model_max_length)
    assert tokenizer_fingerprint(tokenizer) == before


def test_a_corrupt_shard_or_manifest_is_named_with_the_fix(sd, tmp_path):
    pairs = write_pairs(tmp_path / "data", n=2)
    transform = PairTransform(RES)
    cached = build(pairs, sd, tmp_path / "cache", transform)
    latent_shard, text_shard = cached.latents.store.shard_path(0), cached.texts.store.shard_path(0)
    for shard in (latent_shard, text_shard):
        shard.write_bytes(shard.read_bytes()[:100])  # a half-written file, e.g. a full disk
    reopened = build(pairs, sd, tmp_path / "cache", transform)  # shards exist: nothing is re-encoded
    with pytest.raises(ValueError, match=rf"cache shard {latent_shard} is corrupt .*delete {latent_shard.parent}"):
        reopened.latents.get(0, False)
    with pytest.raises(ValueError, match=rf"cache shard {text_shard} is corrupt"):
        reopened.texts.get(CAPTIONS[0])
    (latent_shard.parent / "manifest.json").write_text('{"key": ')
    with pytest.raises(ValueError, match=r"manifest\.json: corrupt cache manifest .*delete"):
        build(pairs, sd, tmp_path / "cache", transform)
