"""The critic model: the head, the wrapper around a fine-tuned backbone, building either
from a CriticConfig, and where and at what precision it runs.

Training (critic/crossfit.py) and scoring (critic/scorer.py) both build their models here
from the same config, so a loaded critic is the module that was trained and its checkpoint
loads into it. Every kind of critic maps a batch to one logit per candidate.

Where it stops: the weights come from training (critic/train.py) or from a checkpoint
(the scorer); the inputs a model reads are built in critic/crossfit.py (build_inputs), the
backbone is loaded in critic/backbone.py.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fractal.critic.backbone import load_classifier
from fractal.critic.config import CriticConfig
from fractal.params import ParamsError

if TYPE_CHECKING:
    from fractal.critic.crossfit import Inputs

# Every precision but auto (config.PRECISIONS), as the dtype torch.autocast runs in (None: no autocast).
AUTOCAST: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Head(nn.Module):
    """MLP (or logistic regression with hidden=0) on standardised features."""

    def __init__(self, n_in: int, hidden: int, dropout: float, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        if hidden:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(n_in, hidden), nn.GELU(),
                                     nn.Dropout(dropout), nn.Linear(hidden, 1))
        else:
            self.net = nn.Linear(n_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).squeeze(-1)


class _LogitsOnly(nn.Module):
    """Makes a transformers classifier return a 1-d logits tensor like Head does. The
    classifier is its `model` attribute: checkpoints' keys start with `model.`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)


def build_model(config: CriticConfig, inputs: Inputs, fit: list[int] | None = None) -> nn.Module:
    """A fresh critic for these inputs. Head: standardised on the `fit` rows; without them
    the standardisation is left to the checkpoint's buffers (mean, std) to fill. Full / lora:
    the backbone with a one-logit classification head (lora: with LoRA adapters)."""
    if config.method == "head":
        x = inputs.features
        if fit is None:
            return build_head(config, x.shape[1])
        return build_head(config, x.shape[1], x[fit].mean(0).numpy(), x[fit].std(0).numpy() + 1e-6)
    model = load_classifier(config.backbone, inputs.pad_token_id)
    if config.method == "lora":
        try:
            from peft import LoraConfig, TaskType, get_peft_model
        except ImportError:
            raise ParamsError("train.method=lora needs peft (pip install 'fractal[gpu]')") from None
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=config.lora_r,
                                                  lora_alpha=2 * config.lora_r, lora_dropout=config.dropout))
    return _LogitsOnly(model)


def build_head(config: CriticConfig, n_in: int, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> Head:
    """A head on `n_in` features, standardised with `mean` and `std`; without them the
    standardisation is left to the checkpoint's buffers to fill."""
    mean = np.zeros(n_in) if mean is None else mean
    std = np.ones(n_in) if std is None else std
    return Head(n_in, config.hidden, config.dropout, mean, std)


def resolve_device(precision: str, device: str | None = None) -> tuple[str, str, torch.dtype | None]:
    """(device, precision, autocast dtype): the GPU when there is one, and `auto` precision
    as bf16 there and fp32 on the CPU."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if precision == "auto":
        precision = "bf16" if device.startswith("cuda") else "fp32"
    if precision not in AUTOCAST:
        raise ParamsError(f"params.yaml: `train.precision` is {precision!r}; choose auto, fp32, bf16 or fp16")
    return device, precision, AUTOCAST[precision]
