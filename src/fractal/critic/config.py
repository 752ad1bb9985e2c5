"""The critic's config: what critic.json holds, typed, written by training and read by scoring.

One dataclass for both sides buys a single description of a trained critic: the train stage
builds it from its params (`from_params`) and exports it next to the weights (`write`), and
the scorer, the registered MLflow model and tracking read it back (`read`) with every key
checked once, so a missing or mistyped key is one line naming critic.json and the key
instead of a KeyError deep in model building. It imports no torch, so reading a critic's
description costs nothing.

Where it stops: it describes the critic and the folds it was cross-fitted on; whether the
weights beside it fit that description is checked when they are loaded (critic/scorer.py).
Files written by older code still load: keys recorded later take the values every critic
had before they were recorded (the dataclass defaults below).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fractal.critic.folds import Fold
from fractal.errors import UserError
from fractal.params import TrainParams
from fractal.records import MissingInput, atomic_path

METHODS = ("head", "full", "lora")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 on a GPU, fp32 on the CPU (critic/model.py)
CONFIG_FILE = "critic.json"
HOW_TO_GET = "run `dvc pull models/critic` to fetch it, or `dvc repro train` to train it"


class CriticConfigError(UserError, ValueError):
    """A critic.json that cannot describe a critic: not JSON, or a key missing or of the wrong kind."""


@dataclasses.dataclass
class CriticConfig:
    """Everything build_inputs, build_model and the scorer need to rebuild a trained critic
    and feed it the inputs it was trained on. The field order is critic.json's key order."""
    backbone: str
    method: str  # one of METHODS
    features: list[str]  # head: the feature groups (critic/features.py)
    max_length: int
    prompt_tokens: int
    hidden: int
    # Recorded since the scorer rebuilds fine-tuned critics; a critic.json from before had
    # the train params' defaults (dropout and lora_r only shape training, the batch sizes
    # and precision change scores within float tolerance at most).
    dropout: float = TrainParams.dropout
    lora_r: int = TrainParams.lora_r
    batch_size: int = TrainParams.batch_size
    embed_batch_size: int = TrainParams.embed_batch_size
    precision: str = "auto"  # as resolved for training (fp32 on the CPU), or auto in older files
    # head: what a row of the embeddings it was trained on is (critic/embed.py LAYOUT); files
    # from before it was recorded were trained on the joint (prompt, code) encoding.
    embedding_layout: str = "joint"
    folds: list[Fold] = dataclasses.field(default_factory=list)
    best_epochs: dict[int, int] = dataclasses.field(default_factory=dict)  # fold index -> best epoch (1-based)

    @classmethod
    def from_params(cls, params: TrainParams, precision: str, folds: list[Fold], embedding_layout: str) -> CriticConfig:
        """The config of a critic trained with `params` at the resolved `precision` on `folds`,
        on embeddings of `embedding_layout` (best_epochs are added once training has found them)."""
        return cls(backbone=params.backbone, method=params.method, features=list(params.features),
                   max_length=params.max_length, prompt_tokens=params.prompt_tokens, hidden=params.hidden,
                   dropout=params.dropout, lora_r=params.lora_r, batch_size=params.batch_size,
                   embed_batch_size=params.embed_batch_size, precision=precision,
                   embedding_layout=embedding_layout, folds=list(folds))

    def __getitem__(self, key: str) -> Any:
        # Critic.config was the critic.json dict before it was typed, and callers index it.
        if key not in _FIELDS:
            raise KeyError(key)
        value = getattr(self, key)
        return [dataclasses.asdict(f) for f in value] if key == "folds" else value

    def to_json(self) -> dict[str, Any]:
        """critic.json's content (fold indices as keys of best_epochs become strings in JSON)."""
        return dataclasses.asdict(self)

    def write(self, path: str | Path) -> None:
        """Writes critic.json atomically. Keys in field order, not sorted (records.write_json
        sorts them): the bytes, hence the DVC hash of models/critic, stay what they were."""
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: str | Path) -> CriticConfig:
        """The config in `path`; MissingInput when there is none, CriticConfigError (one line
        naming the file and the key) when it is not a critic's config."""
        path = Path(path)
        if not path.is_file():
            raise MissingInput(f"{path}: missing, so {path.parent} holds no critic; {HOW_TO_GET}")
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CriticConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); {HOW_TO_GET}") from None
        return cls.from_json(stored, path)

    @classmethod
    def from_json(cls, stored: Any, path: str | Path = CONFIG_FILE) -> CriticConfig:
        """A config from critic.json's parsed content; `path` only names the file in errors."""
        if not isinstance(stored, dict):
            raise CriticConfigError(f"{path}: not a critic's config (a JSON object), got {type(stored).__name__}; "
                                    f"{HOW_TO_GET}")

        def wrong(key: str, problem: str) -> CriticConfigError:
            return CriticConfigError(f"{path}: `{key}` {problem}; {HOW_TO_GET}")

        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in stored:
                if f.name in _REQUIRED:
                    raise wrong(f.name, "is missing, and the scorer needs it")
                continue
            value = stored[f.name]
            problem = _check(f.name, value)
            if problem:
                raise wrong(f.name, problem)
            values[f.name] = value
        values["folds"] = [Fold(**fold) for fold in values["folds"]]
        if "best_epochs" in values:
            values["best_epochs"] = {int(k): v for k, v in values["best_epochs"].items()}
        return cls(**values)


_FIELDS = {f.name for f in dataclasses.fields(CriticConfig)}
# folds is always written; the dataclass defaults it only so that the train stage can fill
# it in (from_params) like the other keys.
_REQUIRED = ("backbone", "method", "features", "max_length", "prompt_tokens", "hidden", "folds")
_INTS = ("max_length", "prompt_tokens", "hidden", "lora_r", "batch_size", "embed_batch_size")
_FOLD_KEYS = tuple(f.name for f in dataclasses.fields(Fold))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check(key: str, value: Any) -> str | None:
    """What is wrong with critic.json's `key` holding `value`, or None."""
    if key == "backbone" and not (isinstance(value, str) and value):
        return f"is {value!r}, not a model name or path"
    if key == "method" and value not in METHODS:
        return f"is {value!r}, not one of {', '.join(METHODS)}"
    if key == "embedding_layout" and not (isinstance(value, str) and value):
        return f"must be a layout name (a string), got {value!r}"
    if key == "precision" and value not in PRECISIONS:
        return f"is {value!r}, not one of {', '.join(PRECISIONS)}"
    if key == "features" and not _is_strings(value):
        return f"is {value!r}, not a list of feature names"
    if key in _INTS and not _is_int(value):
        return f"is {value!r}, not a whole number"
    if key == "dropout" and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return f"is {value!r}, not a number"
    if key == "folds":
        if not isinstance(value, list) or not value:
            return "lists no folds" if value == [] else f"is {type(value).__name__}, not a list of folds"
        for n, fold in enumerate(value):
            if not (isinstance(fold, dict) and set(fold) == set(_FOLD_KEYS) and _is_int(fold["index"])
                    and all(_is_strings(fold[k]) for k in ("fit", "validation", "scored"))):
                return f"item {n} is not a fold (an object with {', '.join(_FOLD_KEYS)})"
    if key == "best_epochs":
        if not (isinstance(value, dict) and all(k.lstrip("-").isdigit() and _is_int(v) for k, v in value.items())):
            return f"is {value!r}, not fold indices mapped to epochs"
    return None
