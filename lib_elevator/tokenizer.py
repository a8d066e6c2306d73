"""CLIP tokenizers without a model hub.

A diffusers folder ships its tokenizer (vocab.json + merges.txt). A single-file checkpoint does
not: SD1/SD2/SDXL use the CLIP BPE vocabulary, which ships inside the open_clip_torch package (a
WebUI dependency, and in this project's requirements) as bpe_simple_vocab_16e6.txt.gz; HF's
vocab.json/merges.txt are a re-encoding of that file. Without it, or a tokenizer folder the user
names, there is no tokenizer: any other vocabulary would condition real weights on wrong token ids.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import os
import tempfile

from lib_elevator.errors import ModelError

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in chars]))


def open_clip_bpe_path() -> str | None:
    """Path of the CLIP BPE file inside an installed open_clip_torch, found without importing it."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], BPE_FILE)
    return path if os.path.exists(path) else None


def clip_vocab_from_bpe(bpe_path: str) -> tuple[dict[str, int], list[str]]:
    """vocab (49408 tokens) and merges of CLIP from the gzipped BPE file."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    base = list(bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer_files(folder: str, vocab: dict[str, int], merges: list[str], max_length: int = 77) -> str:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    config = {
        "model_max_length": max_length,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "tokenizer_class": "CLIPTokenizer",
    }
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)
    return folder


def clip_tokenizer(folder: str | None = None, pad_token: str = "<|endoftext|>"):
    """A `transformers.CLIPTokenizer`: from `folder` when given, else CLIP's own vocabulary from
    open_clip_torch. `pad_token="!"` gives SD2/OpenCLIP padding."""
    from transformers import CLIPTokenizer

    if folder is not None:
        missing = [f for f in ("vocab.json", "merges.txt") if not os.path.exists(os.path.join(folder, f))]
        if missing:
            raise ModelError(f"tokenizer folder {folder} lacks {', '.join(missing)}")
        return CLIPTokenizer.from_pretrained(folder, pad_token=pad_token, local_files_only=True)
    return CLIPTokenizer.from_pretrained(_builtin_tokenizer_folder(), pad_token=pad_token, local_files_only=True)


@functools.lru_cache(maxsize=1)
def _builtin_tokenizer_folder() -> str:
    bpe = open_clip_bpe_path()
    if bpe is None:
        raise ModelError(
            "this model's file carries no tokenizer, and CLIP's vocabulary was not found: install it with "
            "`pip install open_clip_torch` (it ships the vocabulary; `--no-deps` is enough), or name a tokenizer "
            "folder with vocab.json and merges.txt (--tokenizer DIR)"
        )
    vocab, merges = clip_vocab_from_bpe(bpe)
    folder = tempfile.mkdtemp(prefix="videoelevator-clip-tokenizer-")
    return write_tokenizer_files(folder, vocab, merges)


def has_clip_vocabulary() -> bool:
    return open_clip_bpe_path() is not None


def check_vocabulary(tokenizer, vocab_size: int, source: str) -> None:
    """A text encoder's token table and its tokenizer must be the same vocabulary: refuse a pair
    whose sizes differ (token ids would point at the wrong embeddings)."""
    if len(tokenizer) != vocab_size:
        raise ModelError(
            f"{source}: the tokenizer ({getattr(tokenizer, 'name_or_path', '') or 'built-in'}) has {len(tokenizer)} "
            f"tokens but the text encoder embeds {vocab_size}; give the model's own tokenizer (--tokenizer DIR, a "
            "folder with vocab.json and merges.txt)"
        )
