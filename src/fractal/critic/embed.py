"""Frozen-encoder embeddings of the critic's inputs: the prompt once per problem, the code
once per distinct program, cached on disk.

A candidate's vector is [prompt; code] / sqrt(2): its problem's prompt embedded alone and
its code embedded alone, side by side (unit norm, like each half). Embedding them apart buys
speed: the prompt, 46 % of the tokens of a joint (prompt, code) input and the same for all
of a problem's candidates, is encoded once per problem instead of once per candidate, and
each encoder input is shorter (attention is quadratic in length). What it gives up: the
code's tokens no longer attend to the prompt, so the code half says what the program is,
not how it reads against this prompt; the prompt half carries the problem.

The cache is a folder of shard files keyed by a hash of (backbone, part, truncation, text),
so a killed embed stage keeps what it embedded, a rerun with other head params embeds
nothing, and an enlarged sample set embeds only the new programs.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fractal.critic.backbone import load_encoder, load_tokenizer
from fractal.critic.inputs import CriticInput, encode_texts, pad_batch
from fractal.records import atomic_path

# What a row of the embeddings is; index.json records it, so vectors of another layout
# (the joint (prompt, code) encoding before this one) are refused, not silently mixed.
LAYOUT = "prompt+code"


def text_key(backbone: str, part: str, max_length: int, text: str) -> str:
    """The cache key of one text embedded alone as `part` (prompt or code), cut to `max_length` ids."""
    h = hashlib.sha256()
    for piece in (LAYOUT, backbone, part, str(max_length), text):
        h.update(piece.encode())
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

    def limit(self, part: str) -> int:
        """Ids a `part` keeps: the prompt `prompt_tokens` plus the two special tokens, the code `max_length`."""
        return self.prompt_tokens + 2 if part == "prompt" else self.max_length

    def key(self, part: str, text: str) -> str:
        return text_key(self.backbone, part, self.limit(part), text)

    def batch(self, ids: list[list[int]]) -> np.ndarray:
        """Mean-pooled, L2-normalised embeddings of one batch of token id sequences."""
        inputs = pad_batch(ids, self.tokenizer.pad_token_id or 0)
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"][..., None]
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            return torch.nn.functional.normalize(pooled, dim=-1).numpy()


SHARD_INPUTS = 2048  # texts per cache shard: little lost on a kill, few files


def embed(items: list[CriticInput], backbone: str, max_length: int, prompt_tokens: int,
          batch_size: int, cache_dir: str | os.PathLike | None, encoder: Encoder | None = None) -> np.ndarray:
    """One row per item, [prompt; code] / sqrt(2) (module docstring): each distinct prompt
    and each distinct code is embedded once, all of them sorted by token count and batched
    `batch_size` at a time, so a batch pads little. `cache_dir`: the shard cache to read and
    extend (None: none, for a caller that embeds a few candidates and keeps nothing).
    `encoder`: one already loaded with these backbone and truncation settings."""
    encoder = encoder or Encoder(backbone, max_length, prompt_tokens)
    prompt_keys = [encoder.key("prompt", it.prompt) for it in items]
    code_keys = [encoder.key("code", it.code) for it in items]
    cache: dict[str, np.ndarray] = {}
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache = _load_cache(cache_dir)
    todo: dict[str, tuple[str, str]] = {}  # key -> (part, text), distinct texts not yet cached
    for it, pk, ck in zip(items, prompt_keys, code_keys):
        if pk not in cache:
            todo.setdefault(pk, ("prompt", it.prompt))
        if ck not in cache:
            todo.setdefault(ck, ("code", it.code))
    if todo:
        ids: dict[str, list[int]] = {}
        for part in ("prompt", "code"):
            keys = [k for k, (p, _) in todo.items() if p == part]
            ids.update(zip(keys, encode_texts(encoder.tokenizer, [todo[k][1] for k in keys], encoder.limit(part))))
        order = sorted(ids, key=lambda k: len(ids[k]))
        shard_keys, shard_vecs = [], []
        with tqdm(total=len(order), desc="embed", unit="text", disable=cache_dir is None) as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                vectors = encoder.batch([ids[k] for k in batch])
                cache.update(zip(batch, vectors))
                shard_keys += batch
                shard_vecs.append(vectors)
                if cache_dir is not None and len(shard_keys) >= SHARD_INPUTS:
                    _save_shard(cache_dir, shard_keys, np.concatenate(shard_vecs))
                    shard_keys, shard_vecs = [], []
                bar.update(len(batch))
        if cache_dir is not None and shard_keys:
            _save_shard(cache_dir, shard_keys, np.concatenate(shard_vecs))
    # Two unit halves side by side, scaled to a unit row, as the rankers' cosines assume.
    return np.stack([np.concatenate([cache[pk], cache[ck]]) for pk, ck in zip(prompt_keys, code_keys)]) / math.sqrt(2)


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
        tmp.write_text(json.dumps({**meta, "layout": LAYOUT, "rows": [list(i) for i in ids]}) + "\n")


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
    if index.get("layout") != LAYOUT:
        raise ValueError(f"{out_dir}/{INDEX}: vectors of layout {index.get('layout', 'joint (prompt, code)')!r}, "
                         f"this fractal reads {LAYOUT!r}; run `dvc repro embed`")
    for key, value in (meta or {}).items():
        if index.get(key) != value:
            raise ValueError(f"{out_dir}/{INDEX}: {key} is {index.get(key)!r}, params.yaml says {value!r}; "
                             "run `dvc repro embed`")
    row_of = {(pid, sample): r for r, (pid, sample) in enumerate(index["rows"])}
    missing = [i for i in ids if tuple(i) not in row_of]
    if missing:
        raise ValueError(f"{out_dir}: no embedding for {missing[0][0]} sample {missing[0][1]}; run `dvc repro embed`")
    return vectors[[row_of[tuple(i)] for i in ids]]
