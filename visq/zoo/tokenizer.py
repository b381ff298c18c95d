"""The real OpenAI CLIP BPE tokenizer, built offline from the vocabulary file that open_clip ships.

transformers 5 has no slow tokenizer and the hub is unreachable here, so the vocabulary (49,408 tokens) and
merges are rebuilt from ``open_clip/bpe_simple_vocab_16e6.txt.gz``; ids match open_clip's ``SimpleTokenizer``.
Each pipeline folder stores the result with ``save_pretrained`` so ``from_pretrained`` works without open_clip.
"""

from __future__ import annotations

import gzip

MAX_LENGTH = 32  # zoo captions are ~16 tokens; the zoo text towers have 32 positions
_N_MERGES = 49152 - 256 - 2


def build_clip_tokenizer(model_max_length: int = MAX_LENGTH):
    """Return a transformers ``CLIPTokenizer`` with the full OpenAI CLIP vocabulary.

    Args:
        model_max_length: padding/truncation length used by pipelines (``padding="max_length"``).
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    with gzip.open(default_bpe()) as f:
        merges = f.read().decode("utf-8").split("\n")[1:_N_MERGES + 1]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[tuple(m.split()) for m in merges],
                         model_max_length=model_max_length)


def save_slim(tokenizer, folder) -> None:
    """Save ``tokenizer`` as ``vocab.json`` + ``merges.txt`` (1.6 MB instead of a 3.6 MB ``tokenizer.json``).

    ``CLIPTokenizer.from_pretrained(folder)`` rebuilds the same tokenizer from these files.
    """
    import json
    from pathlib import Path

    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    spec = json.loads((folder / "tokenizer.json").read_text())["model"]
    (folder / "vocab.json").write_text(json.dumps(spec["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer.json").unlink()
