"""Frozen-encoder embeddings, computed once per distinct input and cached on disk.

The cache is a folder of shard files keyed by a hash of (backbone, truncation, input), so a
killed train stage keeps what it embedded, a rerun with other head params embeds nothing,
and an enlarged sample set embeds only the new candidates.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fractal.critic.backbone import load_encoder, load_tokenizer
from fractal.critic.inputs import CriticInput, encode, pad_batch
from fractal.records import atomic_path


def input_key(backbone: str, max_length: int, prompt_tokens: int, item: CriticInput) -> str:
    h = hashlib.sha256()
    for part in (backbone, str(max_length), str(prompt_tokens), item.prompt, item.code):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _load_cache(cache_dir: Path) -> dict[str, np.ndarray]:
    cache: dict[str, np.ndarray] = {}
    for shard in sorted(cache_dir.glob("shard-*.npz")):
        with np.load(shard) as z:
            cache.update(zip(z["keys"].tolist(), z["vectors"]))
    return cache


def _save_shard(cache_dir: Path, keys: list[str], vectors: np.ndarray) -> None:
    name = hashlib.sha256("".join(keys).encode()).hexdigest()[:16]
    with atomic_path(cache_dir / f"shard-{name}.npz") as tmp:
        with tmp.open("wb") as f:
            np.savez(f, keys=np.array(keys), vectors=vectors.astype(np.float32))


class Encoder:
    """The frozen encoder and its tokenizer, each loaded once, on first use: a caller that
    embeds a few candidates at a time (the registered critic's predict) pays the model load
    once, not per call. The model stays unloaded while everything asked for is cached."""

    def __init__(self, backbone: str, max_length: int, prompt_tokens: int):
        self.backbone, self.max_length, self.prompt_tokens = backbone, max_length, prompt_tokens
        self._tokenizer = None
        self._model: torch.nn.Module | None = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.backbone)
        return self._tokenizer

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._model = load_encoder(self.backbone).eval()
        return self._model

    def key(self, item: CriticInput) -> str:
        return input_key(self.backbone, self.max_length, self.prompt_tokens, item)

    def batch(self, ids: list[list[int]]) -> np.ndarray:
        """Mean-pooled, L2-normalised embeddings of one batch of token id sequences."""
        inputs = pad_batch(ids, self.tokenizer.pad_token_id or 0)
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"][..., None]
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def embed(items: list[CriticInput], backbone: str, max_length: int, prompt_tokens: int,
          batch_size: int, cache_dir: str | os.PathLike | None, encoder: Encoder | None = None) -> np.ndarray:
    """Mean-pooled, L2-normalised encoder embeddings of every item, one row per item; each
    distinct input is embedded once, in batches of similar length (little padding, so far
    less work on CPU). `cache_dir`: the shard cache to read and extend (None: none, for a
    caller that embeds a few candidates and keeps nothing). `encoder`: one already loaded
    with these backbone and truncation settings."""
    encoder = encoder or Encoder(backbone, max_length, prompt_tokens)
    keys = [encoder.key(it) for it in items]
    cache: dict[str, np.ndarray] = {}
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache = _load_cache(cache_dir)
    todo = {k: it for k, it in zip(keys, items) if k not in cache}  # distinct inputs only
    if todo:
        ids = {k: encode(encoder.tokenizer, it, max_length, prompt_tokens) for k, it in todo.items()}
        order = sorted(ids, key=lambda k: len(ids[k]))
        shard_keys, shard_vecs = [], []
        with tqdm(total=len(order), desc="embed", unit="input", disable=cache_dir is None) as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                vectors = encoder.batch([ids[k] for k in batch])
                cache.update(zip(batch, vectors))
                shard_keys += batch
                shard_vecs.append(vectors)
                if cache_dir is not None and len(shard_keys) >= 2048:  # a shard every ~2k inputs: little lost on a kill
                    _save_shard(cache_dir, shard_keys, np.concatenate(shard_vecs))
                    shard_keys, shard_vecs = [], []
                bar.update(len(batch))
        if cache_dir is not None and shard_keys:
            _save_shard(cache_dir, shard_keys, np.concatenate(shard_vecs))
    return np.stack([cache[k] for k in keys])


# The embed stage's output: one row per generation, in data/generations.jsonl order, so the
# train and rank stages read them without the encoder (and DVC caches them once for every
# experiment that keeps the backbone and truncation).
VECTORS = "vectors.npy"
INDEX = "index.json"


def save_embeddings(out_dir: str | os.PathLike, vectors: np.ndarray, ids: list[tuple[str, int]], meta: dict) -> None:
    """Writes out_dir/vectors.npy (float32, rows = ids) and out_dir/index.json (ids and meta)."""
    import json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / VECTORS) as tmp, tmp.open("wb") as f:
        np.save(f, vectors.astype(np.float32))
    with atomic_path(out_dir / INDEX) as tmp:
        tmp.write_text(json.dumps({**meta, "rows": [list(i) for i in ids]}) + "\n")


def load_embeddings(out_dir: str | os.PathLike, ids: list[tuple[str, int]], meta: dict | None = None) -> np.ndarray:
    """The rows of out_dir's embeddings for `ids` (problem_id, sample), in that order; an
    error naming the stage to rerun if one is missing or `meta` (backbone, truncation) differs."""
    import json

    out_dir = Path(out_dir)
    try:
        index = json.loads((out_dir / INDEX).read_text())
        vectors = np.load(out_dir / VECTORS)
    except FileNotFoundError:
        raise FileNotFoundError(f"{out_dir}: no embeddings; run `dvc repro embed`") from None
    for key, value in (meta or {}).items():
        if index.get(key) != value:
            raise ValueError(f"{out_dir}/{INDEX}: {key} is {index.get(key)!r}, params.yaml says {value!r}; "
                             "run `dvc repro embed`")
    row_of = {(pid, sample): r for r, (pid, sample) in enumerate(index["rows"])}
    missing = [i for i in ids if tuple(i) not in row_of]
    if missing:
        raise ValueError(f"{out_dir}: no embedding for {missing[0][0]} sample {missing[0][1]}; run `dvc repro embed`")
    return vectors[[row_of[tuple(i)] for i in ids]]
