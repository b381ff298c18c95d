"""The offline CLIP tokenizer reproduces OpenAI CLIP ids, and the shipped copies match it."""

from visq.zoo import path
from visq.zoo.tokenizer import build_clip_tokenizer


def test_known_ids():
    tok = build_clip_tokenizer()
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408


def test_shipped_tokenizers_match():
    from transformers import CLIPTokenizer

    text = "a large purple star on a white background, bottom right"
    ref = build_clip_tokenizer()(text, padding="max_length").input_ids
    tok = CLIPTokenizer.from_pretrained(path("shapes-sd") / "tokenizer")
    assert tok(text, padding="max_length").input_ids == ref and tok.model_max_length == 32
