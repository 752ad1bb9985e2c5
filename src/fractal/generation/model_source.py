"""Where a model's files come from: a local directory, or a Hugging Face hub id.

A hub id is looked up in the local Hugging Face cache first and downloaded only when
missing. When it can be neither found nor downloaded (offline, HF_HUB_OFFLINE=1, a typo),
loading fails at once with a message that says where to put the weights and how to get
them, instead of a backend's long traceback minutes into a run.
"""
from __future__ import annotations

import re
from pathlib import Path

from fractal.params import ParamsError

# What a generation model needs: config, weights, tokenizer and chat template.
# Not *.bin/*.pth: models on the hub ship safetensors, and fetching both doubles the download.
_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]

# owner/name as the hub spells repositories; a bare name (gpt2) is a legacy hub id.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


class ModelNotFound(ParamsError):
    pass


def _looks_like_path(spec: str) -> bool:
    # A hub id has at most one slash and never starts with one; `models/qwen` that does not
    # exist reads as a hub id, and its error then also says how to use a local directory.
    return spec.startswith(("/", "./", "../", "~", "\\")) or spec.count("/") > 1 or "\\" in spec


def is_local(spec: str) -> bool:
    """True when `spec` names a directory on this machine rather than a hub id."""
    return Path(spec).expanduser().exists() or _looks_like_path(spec)


def check_model_spec(spec: str, key: str = "generate.model") -> str | None:
    """What is wrong with a model setting, without touching the network (None: nothing).

    A local path must exist and hold config.json; anything else must be spelled like a
    hub id (owner/name).
    """
    if not spec:
        return f"params.yaml: `{key}` is empty; set a hub id (e.g. Qwen/Qwen2.5-Coder-1.5B-Instruct) or a local directory"
    if is_local(spec):
        path = Path(spec).expanduser()
        if not (path / "config.json").is_file():
            return (f"params.yaml: `{key}` is {spec!r}, a local path, but {path / 'config.json'} does not exist; "
                    f"put the model's files there (config.json, *.safetensors, tokenizer files), e.g. with "
                    f"`hf download OWNER/NAME --local-dir {spec}`")
        return None
    if not _HUB_ID.fullmatch(spec):
        return (f"params.yaml: `{key}` is {spec!r}, which is neither an existing directory nor a hub id "
                f"(owner/name, e.g. Qwen/Qwen2.5-Coder-1.5B-Instruct)")
    return None


def is_cached(spec: str, revision: str = "") -> bool:
    """True when a hub model's config is already in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec, "config.json", revision=revision or None)
    return isinstance(found, str)


def resolve_model(spec: str, revision: str = "", key: str = "generate.model") -> str:
    """A local directory holding the model named by `spec`: the directory itself, or the
    hub snapshot in the Hugging Face cache (downloaded if missing and the hub is reachable)."""
    problem = check_model_spec(spec, key)
    if problem:
        raise ModelNotFound(problem)
    if is_local(spec):
        return str(Path(spec).expanduser())

    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE, HF_HUB_OFFLINE
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    where = f"{spec}" + (f" at revision {revision}" if revision else "")
    how = (f"on a machine with internet run `hf download {spec}"
           + (f" --revision {revision}" if revision else "")
           + f"` (it fills the cache {HF_HUB_CACHE}; set HF_HOME to move it), or download it anywhere and set "
           f"`{key}` to that directory (it must hold config.json, the *.safetensors weights and the tokenizer files)")
    try:
        path = snapshot_download(spec, revision=revision or None, allow_patterns=_PATTERNS,
                                 local_files_only=HF_HUB_OFFLINE)
    except LocalEntryNotFoundError as e:
        offline = "HF_HUB_OFFLINE is set" if HF_HUB_OFFLINE else f"the hub could not be reached ({_first_line(e)})"
        raise ModelNotFound(f"params.yaml: `{key}`: model {where} is not in the local cache and {offline}; {how}") from None
    except HfHubHTTPError as e:
        raise ModelNotFound(f"params.yaml: `{key}`: the hub refused model {where} ({_first_line(e)}); "
                            f"check the id (and `generate.revision`), log in with `hf auth login` for gated "
                            f"models, or {how}") from None
    if not (Path(path) / "config.json").is_file():
        raise ModelNotFound(f"params.yaml: `{key}`: the snapshot of {where} in {path} has no config.json; {how}")
    if not any(Path(path).glob("*.safetensors")):
        raise ModelNotFound(f"params.yaml: `{key}`: {where} has no *.safetensors weights (only those are fetched); "
                            f"convert the weights to safetensors in a local directory and point `{key}` at it")
    return path


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
