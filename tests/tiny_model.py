"""A tiny Qwen2 model and its tokenizer, built offline from nothing, for tests and benchmarks.

- The tokenizer is a byte-level BPE with Qwen2's pre-tokenization, trained on a few lines
  of Python, with Qwen's special tokens and a ChatML chat template like Qwen's.
- The model is a Qwen2ForCausalLM with random weights (heads of 64 dimensions, which
  vLLM's attention kernels support). Optionally it is taught a few answers first, a
  few hundred Adam steps on the CPU, so that sampling from it yields programs of which
  some pass and some fail: an end-to-end run then has both labels to learn from.

Both are written with save_pretrained into one directory that either backend loads like
a downloaded model. The files are kept readable by older transformers too (vLLM pins its
own version): tokenizer_class and rope_theta are written in their older spelling.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen2's pre-tokenization (single digits, byte-level). transformers 5 loads any qwen2 model
# directory's tokenizer as Qwen2Tokenizer, which rebuilds this pipeline whatever
# tokenizer.json says; with another one, the model would be taught one tokenization and
# asked in another.
QWEN2_PRETOKENIZE = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# ChatML, as Qwen2.5's template writes it, without tools.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def is_even(n):\n    return n % 2 == 0\n",
    "import math\nfrom typing import List\n\ndef mean(xs: List[float]) -> float:\n    return sum(xs) / len(xs)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "for i in range(10):\n    if i > 5:\n        print(i)\n    else:\n        continue\n",
    "assert add(1, 2) == 3\nassert is_even(4) == True\n",
    "Write a function to find the largest number in a list.\nYour code should pass these tests:\n",
    "Here is the code:\n```python\nwhile x is not None and not done:\n    x = f(x)\n```\n",
    "result = [x * 2 for x in items if x]\nreturn sorted(set(result), key=lambda t: -t)\n",
]


def build_tokenizer(corpus: Sequence[str] = (), vocab_size: int = 512, pad_vocab_to: int = 0):
    """A byte-level BPE tokenizer (any text encodes, nothing is unknown) with a chat template.

    `pad_vocab_to`: fill the vocabulary up to this size with tokens no text encodes to but
    every id decodes from (" w123"), so a model with a real model's vocabulary size
    (151,936 for Qwen2.5) can sample any id and have it detokenized.
    """
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tokenizers import Regex

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(CORPUS) + list(corpus), trainer)
    if pad_vocab_to:
        spec = json.loads(tok.to_str())
        vocab = spec["model"]["vocab"]
        for i in range(len(vocab), pad_vocab_to):
            vocab[f"\u0120w{i}"] = i  # \u0120 is how byte-level BPE writes a leading space
        tok = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def qwen2_config(vocab_size: int, **overrides):
    """A small Qwen2 configuration; overrides give it any other size (e.g. Qwen2.5-Coder-1.5B's)."""
    from transformers import Qwen2Config

    sizes = dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    sizes.update(overrides)
    return Qwen2Config(vocab_size=vocab_size, **sizes)


def build_tiny_model(
    out_dir: str | Path,
    corpus: Sequence[str] = (),
    teach: Sequence[tuple[str, str]] = (),
    steps: int = 300,
    seed: int = 0,
) -> Path:
    """Writes a tiny Qwen2 model and tokenizer to `out_dir` and returns it.

    `teach`: (user message, assistant answer) pairs the model is trained to answer, in
    the chat template; nothing else is learned, so other prompts get random text.
    """
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    texts = list(corpus) + [t for pair in teach for t in pair]
    tokenizer = build_tokenizer(texts)
    torch.manual_seed(seed)
    config = qwen2_config(len(tokenizer), bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config)
    if teach:
        _teach(model, tokenizer, teach, steps)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _write_portable(out_dir)
    _check_reloads_the_same(out_dir, tokenizer, texts or list(CORPUS))
    return out_dir


def _check_reloads_the_same(out_dir: Path, tokenizer, texts: Sequence[str]) -> None:
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(out_dir)
    for text in texts:
        if loaded(text)["input_ids"] != tokenizer(text)["input_ids"]:
            raise AssertionError(f"{out_dir}: the saved tokenizer ({type(loaded).__name__}) tokenizes {text[:40]!r} "
                                 f"differently from the one the model was built with")


def _teach(model, tokenizer, teach: Sequence[tuple[str, str]], steps: int) -> None:
    """Trains on the answers only (the prompt tokens carry no loss), full batch."""
    import torch

    rows = []
    for user, answer in teach:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((p_ids + a_ids, [-100] * len(p_ids) + a_ids))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    # One thread: ops this small gain nothing from more, and on a shared machine the
    # threads' synchronisation makes each step ten times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    try:
        for _ in range(steps):
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


def _write_portable(out_dir: Path) -> None:
    # transformers 5 writes tokenizer_class "TokenizersBackend" and rope_parameters; vLLM's
    # pinned transformers 4.x knows PreTrainedTokenizerFast and rope_theta.
    tc_path = out_dir / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc_path.write_text(json.dumps(tc, indent=2))
    c_path = out_dir / "config.json"
    c = json.loads(c_path.read_text())
    c.setdefault("rope_theta", (c.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    c.setdefault("torch_dtype", c.get("dtype", "float32"))
    c_path.write_text(json.dumps(c, indent=2))
