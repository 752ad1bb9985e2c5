"""The one interface every generation backend implements."""
from __future__ import annotations

import importlib
from typing import Iterator, Protocol

from fractal.params import GenerateParams, ParamsError
from fractal.records import Generation, Problem

# name -> "module:class"; imported lazily so that replay never imports torch or vllm.
BACKENDS = {
    "replay": "fractal.generation.replay:ReplayBackend",
    "transformers": "fractal.generation.transformers_backend:TransformersBackend",
    "vllm": "fractal.generation.vllm_backend:VLLMBackend",
}


class Backend(Protocol):
    name: str

    def generate(self, problems: list[Problem], params: GenerateParams) -> Iterator[Generation]:
        """Yields params.n Generation records per problem, sample indices 0..n-1.

        Records carry the backend and model names, the raw completion and the program
        that the label stage will run.
        """
        ...


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ParamsError(f"params.yaml: `generate.backend` is {name!r}; choose one of {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        extra = " (pip install 'fractal[gpu]')" if name == "vllm" else ""
        raise ParamsError(f"generate.backend={name}: cannot import its dependencies: {e}{extra}") from e
    return getattr(mod, cls)()
