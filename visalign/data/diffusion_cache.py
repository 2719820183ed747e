"""Disk cache of VAE latents and text embeddings for diffusion preference training.

None of the reference repositories cache (``diffusion-methods.md`` §15, §18.6); they VAE- and text-encode every
step. Here both are encoded once, offline, with a progress bar, into safetensors shards that later runs reuse:

- :class:`LatentCache`: per pair, the chosen and rejected latents of every augmentation variant. Random crops cannot be
  cached (building one refuses them: use ``center_crop=True``); with ``random_flip`` **both flips are stored**, so the
  cached path keeps the flip augmentation and draws it exactly as the uncached path does. Latents are the VAE
  posterior mean scaled by ``scaling_factor`` (``encode_images(..., sample=False)``); the diffusers scripts draw a
  fresh posterior sample per step, a difference far below the diffusion noise. For parity with the cache, the
  uncached path must encode with ``sample=False`` too.
- :class:`TextEmbeddingCache`: per distinct caption (plus ``""`` for caption dropout), the prompt embedding (SD: last
  hidden state; SDXL: both encoders' penultimate states concatenated, and the pooled embedding of encoder 2), as
  the family's adapter encodes prompts (``DiffusionFamily.encode_prompts``).

Each cache lives in ``cache_dir/{kind}-{hash of its key}/``, beside a ``manifest.json`` that spells the key out: the
weights fingerprint of the VAE or text encoders (and tokenizers), the resolution and augmentation, the data
fingerprint (:meth:`PreferencePairs.fingerprint`, or the caption set) and the layout. Changing any of them selects
another folder, so a stale cache is never read. Shards are written to a temporary name and renamed, so a killed fill
resumes where it stopped and a half-written shard is never read. Fill it on one process (e.g. inside
``accelerator.main_process_first()``) before the others read it.

:class:`CachedDiffusionPreferenceDataset` yields items that :func:`~visalign.data.diffusion.collate_diffusion_pairs`
stacks into ``latents`` ``[2B, C, h, w]``, ``prompt_embeds`` ``[2B, L, D]`` and, for SDXL, ``pooled_prompt_embeds``
``[2B, D_pooled]`` and ``time_ids`` ``[2B, 6]``: the tensors the uncached path computes from the same
``(seed, epoch, index)`` (same flip, same dropped captions). Pairs whose images were unreadable while filling are
stored as invalid and yield the skip marker, as the uncached dataset does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from visalign.data.diffusion import PreferencePairs, SeededPairDataset, skip_marker
from visalign.data.image_transforms import IMAGE_ERRORS, PairTransform, draw_flip
from visalign.errors import DataError
from visalign.models.diffusion import encode_images
from visalign.models.families import DiffusionFamily, family_of_text_encoders
from visalign.models.families.conditioning import PromptEmbeddings

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
#: Latent variants stored per pair: the plain crop, and the flipped one when the transform flips.
PLAIN, FLIPPED = "plain", "flipped"


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over a module's class and every state-dict tensor (name, shape, dtype and bytes)."""
    digest = hashlib.sha256(type(module).__name__.encode())
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of a tokenizer's full serialisation (vocabulary, merges, normaliser) and its ``model_max_length``.

    The backend's ``truncation`` and ``padding`` entries are left out: a fast tokenizer rewrites them on every call
    with ``padding=``/``truncation=``, so they say how it was last called, not what it is."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        serialised = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        text = json.dumps(serialised, sort_keys=True)
    else:
        text = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(f"{type(tokenizer).__name__}|{tokenizer.model_max_length}|{text}".encode()).hexdigest()


class ShardStore:
    """A folder ``root/{kind}-{key hash}`` of ``shard-NNNNN.safetensors`` files and a ``manifest.json`` of the key.

    Item ``i`` lives in shard ``i // shard_size``. Files are written to ``*.tmp`` and renamed into place.
    """

    def __init__(self, root: str | Path, kind: str, key: dict[str, Any], num_items: int, shard_size: int):
        if shard_size < 1:
            raise ValueError(f"cache shard_size must be >= 1; got {shard_size}")
        self.key = {"format": CACHE_FORMAT, "kind": kind, **key, "num_items": num_items, "shard_size": shard_size}
        key_hash = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()
        self.dir = Path(root) / f"{kind}-{key_hash[:16]}"
        self.num_items, self.shard_size = num_items, shard_size
        self.num_shards = -(-num_items // shard_size)
        self._manifest = self.dir / MANIFEST
        if self._manifest.is_file():
            try:
                stored = json.loads(self._manifest.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise DataError(f"{self._manifest}: corrupt cache manifest ({err}); delete {self.dir} to rebuild "
                                "the cache") from None
            if stored.get("key") != json.loads(json.dumps(self.key)):
                raise ValueError(f"{self._manifest}: its key does not match this run's key; delete {self.dir}")

    def shard_path(self, shard: int) -> Path:
        return self.dir / f"shard-{shard:05d}.safetensors"

    def open(self, path: Path):
        """``safe_open`` a shard for reading; a corrupt or truncated shard raises ``DataError`` naming it."""
        try:
            return safe_open(str(path), framework="pt")
        except (SafetensorError, OSError) as err:
            raise DataError(f"cache shard {path} is corrupt ({err}); delete {self.dir} to rebuild the cache") from None

    def missing_shards(self) -> list[int]:
        return [k for k in range(self.num_shards) if not self.shard_path(k).is_file()]

    def shard_range(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_items))

    def locate(self, index: int) -> tuple[Path, int]:
        """``(shard file, row within it)`` of item ``index``."""
        if not 0 <= index < self.num_items:
            raise IndexError(f"cache {self.dir}: item {index} out of range [0, {self.num_items})")
        return self.shard_path(index // self.shard_size), index % self.shard_size

    def write_manifest(self, **extra) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic(self._manifest, lambda tmp: tmp.write_text(json.dumps({"key": self.key, **extra}, indent=1)))

    def write_shard(self, shard: int, tensors: dict[str, torch.Tensor]) -> None:
        tensors = {name: t.contiguous() for name, t in tensors.items()}
        _atomic(self.shard_path(shard), lambda tmp: save_file(tensors, str(tmp)))


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


class LatentCache:
    """VAE latents of every pair and augmentation variant (module docstring); build with :meth:`build`.

    Shard tensors: ``valid`` ``[n]`` (0: an image was unreadable), ``original_sizes`` ``[n, 2, 2]`` (chosen, rejected
    ``(h, w)``), and per variant ``{variant}.chosen``/``{variant}.rejected`` ``[n_valid, C, h, w]`` (valid rows only,
    in order) and ``{variant}.crop_top_left`` ``[n, 2]``.
    """

    def __init__(self, store: ShardStore, resolution: int, random_flip: bool):
        self.store, self.resolution, self.random_flip = store, resolution, random_flip
        self._meta: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def variants(self) -> tuple[str, ...]:
        return (PLAIN, FLIPPED) if self.random_flip else (PLAIN,)

    @classmethod
    def build(
        cls,
        pairs: PreferencePairs,
        transform: PairTransform,
        vae,
        cache_dir: str | Path,
        *,
        vae_batch_size: int = 8,
        shard_size: int = 256,
        num_workers: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> "LatentCache":
        """Open the cache of ``pairs`` under ``transform`` and ``vae``, encoding the shards that are not on disk yet.

        Args:
            vae_batch_size: images per VAE forward (both images and both flips of a pair count).
            num_workers: DataLoader workers that decode and transform images while the VAE encodes.
            dtype: storage dtype of the latents (fp32 keeps cached == uncached exactly; bf16 halves the disk).
        """
        if not transform.center_crop:
            raise ValueError("latents cannot be cached with random crops (every step would need a new crop); use "
                             "center_crop=True, or train without the latent cache")
        key = {"vae": weights_fingerprint(vae), "vae_dtype": str(vae.dtype), "resolution": transform.resolution,
               "center_crop": True, "random_flip": transform.random_flip, "data": pairs.fingerprint(),
               "latent_dtype": str(dtype)}
        cache = cls(ShardStore(cache_dir, "latents", key, len(pairs), shard_size), transform.resolution,
                    transform.random_flip)
        missing = cache.store.missing_shards()
        if missing:
            cache.store.write_manifest(complete=False)
            cache._fill(pairs, transform, vae, missing, vae_batch_size, num_workers, dtype)
            cache.store.write_manifest(complete=True)
        return cache

    def _fill(self, pairs, transform, vae, shards, vae_batch_size, num_workers, dtype) -> None:
        """Encode the pairs of ``shards`` in order, writing each shard as soon as its last pair is encoded."""
        indices = [i for shard in shards for i in self.store.shard_range(shard)]
        source = _VariantPairs(pairs, transform, self.variants, indices)
        per_batch = max(1, vae_batch_size // (2 * len(self.variants)))
        loader = DataLoader(source, batch_size=per_batch, num_workers=num_workers, collate_fn=list)
        rows: list[dict | None] = []
        shard_queue = iter(shards)
        shard = next(shard_queue)
        with tqdm(total=len(indices), desc=f"Caching VAE latents in {self.store.dir}", unit="pair") as progress:
            for items in loader:
                rows.extend(self._encode(items, vae, vae_batch_size, dtype))
                progress.update(len(items))
                while rows and len(rows) >= len(self.store.shard_range(shard)):
                    size = len(self.store.shard_range(shard))
                    self.store.write_shard(shard, self._shard_tensors(rows[:size]))
                    rows = rows[size:]
                    shard = next(shard_queue, None)

    def _encode(self, items, vae, vae_batch_size, dtype) -> list[dict | None]:
        """Add ``latents`` ``[variants, 2, C, h, w]`` to each readable item and drop its pixels."""
        valid = [item for item in items if item is not None]
        if valid:
            pixels = torch.stack([px for item in valid for pair in item.pop("pixels") for px in pair])
            latents = encode_images(vae, pixels, batch_size=vae_batch_size, sample=False).to(dtype).cpu()
            for item, lat in zip(valid, latents.view(len(valid), len(self.variants), 2, *latents.shape[1:])):
                item["latents"] = lat
        return items

    def _shard_tensors(self, rows: Sequence[dict | None]) -> dict[str, torch.Tensor]:
        valid = [row for row in rows if row is not None]
        tensors = {
            "valid": torch.tensor([row is not None for row in rows], dtype=torch.uint8),
            "original_sizes": torch.tensor([row["sizes"] if row else ((0, 0), (0, 0)) for row in rows]),
        }
        for v_index, variant in enumerate(self.variants):
            tensors[f"{variant}.crop_top_left"] = torch.tensor([row["crops"][v_index] if row else (0, 0)
                                                                for row in rows])
            for side, name in enumerate(("chosen", "rejected")):
                tensors[f"{variant}.{name}"] = (torch.stack([row["latents"][v_index, side] for row in valid])
                                                if valid else torch.zeros(0))
        return tensors

    def _shard_meta(self, path: Path) -> dict[str, torch.Tensor]:
        shard = int(path.stem.split("-")[1])
        if shard not in self._meta:
            with self.store.open(path) as handle:
                meta = {name: handle.get_tensor(name) for name in handle.keys()
                        if not name.endswith((".chosen", ".rejected"))}
            meta["position"] = meta["valid"].long().cumsum(0) - 1
            self._meta[shard] = meta
        return self._meta[shard]

    def get(self, index: int, flipped: bool) -> dict[str, Any] | None:
        """The cached pair ``index`` in the given flip, or None when one of its images was unreadable."""
        path, row = self.store.locate(index)
        meta = self._shard_meta(path)
        if not meta["valid"][row]:
            return None
        variant = FLIPPED if flipped else PLAIN
        if variant not in self.variants:
            raise ValueError(f"cache {self.store.dir} holds no flipped latents (built with random_flip=False)")
        position = int(meta["position"][row])
        with self.store.open(path) as handle:
            chosen, rejected = (handle.get_slice(f"{variant}.{side}")[position:position + 1][0]
                                for side in ("chosen", "rejected"))
        sizes = meta["original_sizes"][row].tolist()
        return {"latents_chosen": chosen, "latents_rejected": rejected, "original_size_chosen": tuple(sizes[0]),
                "original_size_rejected": tuple(sizes[1]),
                "crop_top_left": tuple(meta[f"{variant}.crop_top_left"][row].tolist())}

    def __getstate__(self):
        return {**self.__dict__, "_meta": {}}


class _VariantPairs(torch.utils.data.Dataset):
    """Pairs ``indices`` decoded and transformed in every variant: ``pixels`` (one ``(chosen, rejected)`` per variant),
    ``crops`` (one ``(top, left)`` per variant) and ``sizes``; None when an image is unreadable (stored as invalid)."""

    def __init__(self, pairs: PreferencePairs, transform: PairTransform, variants: Sequence[str],
                 indices: Sequence[int]):
        self.pairs, self.transform, self.variants, self.indices = pairs, transform, variants, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict | None:
        index = self.indices[i]
        try:
            chosen, rejected = self.pairs.open_images(index)
        except IMAGE_ERRORS as err:
            logger.warning("%s: unreadable image not cached (%s: %s)", self.pairs.describe(index),
                           type(err).__name__, err)
            return None
        outs = [self.transform(chosen, rejected, np.random.default_rng(0), flip=variant == FLIPPED)
                for variant in self.variants]
        return {"pixels": [(out.chosen, out.rejected) for out in outs], "crops": [out.crop_top_left for out in outs],
                "sizes": (outs[0].original_size_chosen, outs[0].original_size_rejected)}


class TextEmbeddingCache:
    """Prompt embeddings of every distinct caption and ``""`` (module docstring); build with :meth:`build`.

    Shard tensors: ``hidden_states`` ``[n, L, D]`` and, for SDXL, ``pooled`` ``[n, D_pooled]``, in the encoders'
    dtype; row ``i`` is ``captions[i]`` of the sorted caption list.
    """

    def __init__(self, store: ShardStore, captions: Sequence[str]):
        self.store = store
        self.rows = {caption: i for i, caption in enumerate(captions)}

    @classmethod
    def build(
        cls,
        captions: Iterable[str],
        text_encoders: Sequence,
        tokenizers: Sequence,
        cache_dir: str | Path,
        *,
        batch_size: int = 64,
        shard_size: int = 4096,
        family: DiffusionFamily | None = None,
    ) -> "TextEmbeddingCache":
        """Open the cache of ``captions`` (and ``""``) under these encoders, encoding missing shards as ``family``
        encodes prompts (default: the one family with this many text encoders)."""
        family = family or family_of_text_encoders(len(text_encoders))
        unique = sorted(set(captions) | {""})
        key = {"text_encoders": [weights_fingerprint(e) for e in text_encoders],
               "tokenizers": [tokenizer_fingerprint(t) for t in tokenizers],
               "captions": hashlib.sha256(json.dumps(unique).encode()).hexdigest()}
        cache = cls(ShardStore(cache_dir, "text", key, len(unique), shard_size), unique)
        missing = cache.store.missing_shards()
        if missing:
            cache.store.write_manifest(complete=False)
            total = sum(len(cache.store.shard_range(k)) for k in missing)
            with tqdm(total=total, desc=f"Caching text embeddings in {cache.store.dir}", unit="caption") as progress:
                for shard in missing:
                    chunks = []
                    indices = cache.store.shard_range(shard)
                    for start in range(indices.start, indices.stop, batch_size):
                        batch = unique[start:min(start + batch_size, indices.stop)]
                        chunks.append(family.encode_prompts(text_encoders, tokenizers, batch))
                        progress.update(len(batch))
                    tensors = {"hidden_states": torch.cat([c.hidden_states.cpu() for c in chunks])}
                    if chunks[0].pooled is not None:
                        tensors["pooled"] = torch.cat([c.pooled.cpu() for c in chunks])
                    cache.store.write_shard(shard, tensors)
            cache.store.write_manifest(complete=True)
        return cache

    def get(self, caption: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(hidden_states [L, D], pooled [D_pooled] or None)`` of a cached caption."""
        if caption not in self.rows:
            raise KeyError(f"caption {caption!r} is not in the text-embedding cache {self.store.dir}")
        path, row = self.store.locate(self.rows[caption])
        with self.store.open(path) as handle:
            hidden = handle.get_slice("hidden_states")[row:row + 1][0]
            pooled = handle.get_slice("pooled")[row:row + 1][0] if "pooled" in handle.keys() else None
        return hidden, pooled


class CachedDiffusionPreferenceDataset(SeededPairDataset):
    """The cached counterpart of :class:`~visalign.data.diffusion.DiffusionPreferenceDataset` (module docstring).

    An item: ``latents_*``, the family's cache keys ``<key>_*`` (``DiffusionFamily.cache_item``: ``prompt_embeds``,
    and for SDXL ``pooled_prompt_embeds`` and ``time_ids``; ``*`` = chosen, rejected), ``original_size_*``,
    ``crop_top_left``, the captions and ``weight``; or the skip marker. ``family``: the adapter of the model whose
    text encoders filled ``texts``.
    """

    def __init__(self, pairs: PreferencePairs, latents: LatentCache, texts: TextEmbeddingCache, *, family,
                 caption_dropout: float = 0.0, seed: int = 0, time_id_convention: str = "true_size"):
        if latents.store.num_items != len(pairs):
            raise ValueError(f"latent cache {latents.store.dir} holds {latents.store.num_items} pairs; the data has "
                             f"{len(pairs)}")
        super().__init__(pairs, caption_dropout=caption_dropout, seed=seed)
        self.latents, self.texts, self.family = latents, texts, family
        self.time_id_convention = time_id_convention

    def __getitem__(self, index: int) -> dict[str, Any]:
        captions, augmentation_rng = self.draw(index)
        item = self.latents.get(index, draw_flip(augmentation_rng, self.latents.random_flip))
        if item is None:
            return skip_marker(self, index, "unreadable image (found while filling the latent cache)")
        item.update(self.pair_fields(index, captions))
        embeddings = {caption: self.texts.get(caption) for caption in set(captions)}
        for side, caption in zip(("chosen", "rejected"), captions):
            fields = self.family.cache_item(PromptEmbeddings(*embeddings[caption]),
                                            original_size=item[f"original_size_{side}"],
                                            crop_top_left=item["crop_top_left"], resolution=self.latents.resolution,
                                            time_ids=self.time_id_convention)
            item.update({f"{key}_{side}": value for key, value in fields.items()})
        return item


def cached_preference_dataset(
    pairs: PreferencePairs,
    transform: PairTransform,
    vae,
    text_encoders: Sequence,
    tokenizers: Sequence,
    cache_dir: str | Path,
    *,
    caption_dropout: float = 0.0,
    seed: int = 0,
    vae_batch_size: int = 8,
    text_batch_size: int = 64,
    num_workers: int = 0,
    latent_dtype: torch.dtype = torch.float32,
    time_id_convention: str = "true_size",
    family: DiffusionFamily | None = None,
) -> CachedDiffusionPreferenceDataset:
    """Fill (or reuse) both caches of ``pairs`` and return the cached dataset of ``family`` (the model's adapter,
    ``components.adapter``; default: the one family with this many text encoders), SDXL time ids by
    ``time_id_convention`` (one of ``visalign.models.diffusion.SDXL_TIME_IDS``)."""
    latents = LatentCache.build(pairs, transform, vae, cache_dir, vae_batch_size=vae_batch_size,
                                num_workers=num_workers, dtype=latent_dtype)
    family = family or family_of_text_encoders(len(text_encoders))
    texts = TextEmbeddingCache.build([*pairs.captions_chosen, *pairs.captions_rejected], text_encoders, tokenizers,
                                     cache_dir, batch_size=text_batch_size, family=family)
    return CachedDiffusionPreferenceDataset(pairs, latents, texts, family=family,
                                            caption_dropout=caption_dropout, seed=seed,
                                            time_id_convention=time_id_convention)
