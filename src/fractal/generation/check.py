"""Checking the generate section before a run, here, without a GPU and without the network.

`check_generate` returns errors (the run would fail: fix params.yaml) and notes (things
that are fine here but matter where the stage runs, e.g. vllm not installed on this
machine while generate runs on a GPU executor).
"""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from fractal.generation.backend import BACKENDS
from fractal.generation.model_source import check_model_spec, is_cached, is_local
from fractal.generation.prompts import STYLES
from fractal.generation.postprocess import stop_sequences
from fractal.generation.sampling import check_sampling
from fractal.params import GenerateParams

# What each backend needs importable where it runs.
_NEEDS = {"transformers": ["torch", "transformers"], "vllm": ["vllm", "transformers"]}


@dataclasses.dataclass
class Findings:
    errors: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


def check_generate(params: GenerateParams) -> Findings:
    found = Findings()
    if params.backend not in BACKENDS:
        found.errors.append(f"params.yaml: `generate.backend` is {params.backend!r}; choose one of {', '.join(BACKENDS)}")
        return found
    if params.backend == "replay":
        if not params.replay_file:
            found.errors.append("params.yaml: `generate.replay_file` is empty; the replay backend needs recorded samples")
        elif not Path(params.replay_file).exists():
            found.errors.append(f"params.yaml: `generate.replay_file` is {params.replay_file!r}, which does not exist")
        else:
            from fractal.generation.replay import load_recorded

            try:  # a malformed line fails here, naming file:line, not at stage time
                load_recorded(params.replay_file, params.replay_format)
            except ValueError as e:  # ParamsError included
                found.errors.append(str(e))
        return found

    found.errors.extend(check_sampling(params))
    if params.prompt_style not in STYLES:
        found.errors.append(f"params.yaml: `generate.prompt_style` is {params.prompt_style!r}; "
                            f"choose one of {', '.join(STYLES)}")
    problem = check_model_spec(params.model, "generate.model")
    if problem:
        found.errors.append(problem)
    elif not is_local(params.model) and not is_cached(params.model, params.revision):
        found.notes.append(f"generate.model {params.model} is not in this machine's Hugging Face cache; the generate "
                           f"stage downloads it where it runs (that machine needs the hub, or the weights copied "
                           f"into its cache: `hf download {params.model}`)")
    if params.prompt_style == "chat" and any(s.startswith("\n") and s.strip() in ("def", "class", "if", "#", "print")
                                             for s in stop_sequences(params)):
        found.notes.append(f"generate.stop {params.stop!r} holds completion-style stop sequences; a chat answer is cut "
                           f"at its first helper function or comment by them (use stop: [] with prompt_style: chat)")
    missing = [m for m in _NEEDS[params.backend] if importlib.util.find_spec(m) is None]
    if missing:
        hint = "pip install 'fractal[gpu]'" if "vllm" in missing else "pip install -e ."
        found.notes.append(f"generate.backend {params.backend} needs {', '.join(missing)}, not installed here; "
                           f"fine if the generate stage runs on an executor that has them ({hint} there)")
    return found
