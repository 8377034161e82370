"""Tests for the tiny offline tokenizer and the Sa2VA token additions."""

from __future__ import annotations

import pickle

import pytest

from vesselctl.errors import ModelError
from vesselctl.model.tokenizer import (
    SA2VA_TOKENS,
    TINY_SPECIAL_TOKENS,
    add_sa2va_tokens,
    build_tiny_tokenizer,
    token_ids,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def test_special_tokens_have_fixed_first_ids(tokenizer):
    ids = token_ids(tokenizer, TINY_SPECIAL_TOKENS)
    assert list(ids.values()) == list(range(len(TINY_SPECIAL_TOKENS)))
    assert tokenizer.pad_token_id == 0
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "right"


def test_deterministic_across_builds(tokenizer):
    assert build_tiny_tokenizer().get_vocab() == tokenizer.get_vocab()


def test_special_tokens_never_split_and_text_round_trips(tokenizer):
    text = "<|im_start|>user\n<img><IMG_CONTEXT></img>\nPlease segment x.<|im_end|>Sure, [SEG]."
    ids = tokenizer(text, add_special_tokens=False).input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    for special in ("<|im_start|>", "<img>", "<IMG_CONTEXT>", "</img>", "<|im_end|>", "[SEG]"):
        assert tokens.count(special) == 1
    assert tokenizer.decode(ids) == text
    assert "[SEG]" not in tokenizer.decode(ids, skip_special_tokens=True)


def test_any_unicode_text_tokenises_through_bytes(tokenizer):
    text = "Gefäße der Netzhaut 血管 ✓"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert max(ids) < len(tokenizer)
    assert tokenizer.decode(ids) == text


def test_save_load_and_pickle_keep_ids(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    text = "<|vision_start|><|image_pad|><|vision_end|>Please segment the vessels. [SEG]"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text, add_special_tokens=False).input_ids == ids
    assert loaded.pad_token_id == tokenizer.pad_token_id
    assert len(loaded) == len(tokenizer)
    assert pickle.loads(pickle.dumps(tokenizer))(text, add_special_tokens=False).input_ids == ids


def test_add_sa2va_tokens_to_a_base_tokenizer_and_idempotent():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    base = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    with pytest.raises(ModelError, match=r"no token '\[SEG\]'.*add_sa2va_tokens"):
        token_ids(base, SA2VA_TOKENS)
    ids = add_sa2va_tokens(base)
    assert list(ids) == list(SA2VA_TOKENS)
    assert sorted(ids.values()) == [2, 3, 4, 5, 6]
    assert add_sa2va_tokens(base) == ids
    assert len(base) == 7
    assert base("hello [SEG]", add_special_tokens=False).input_ids == [1, ids["[SEG]"]]
