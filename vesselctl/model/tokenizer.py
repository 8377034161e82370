"""Tokenizers for Sa2VA: a tiny offline one for tests and presets, and the Sa2VA token additions.

The tiny tokenizer is a byte-level BPE (the scheme Qwen2 uses) trained on a fixed built-in
corpus, so any text tokenises (byte fallback through the 256-symbol byte alphabet) and the ids
are the same on every run and machine. It carries every special token the chat templates,
the InternVL image side, the Qwen2.5-VL image side and Sa2VA need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PAD_TOKEN = "<|endoftext|>"

#: Tokens Sa2VA adds to the base MLLM's tokenizer (official order; embeddings are resized after).
SA2VA_TOKENS: tuple[str, ...] = ("[SEG]", "<p>", "</p>", "<vp>", "</vp>")

#: Chat-template tokens of qwen_chat, phi3_chat and Qwen2.5-VL.
CHAT_TOKENS: tuple[str, ...] = (
    "<|im_start|>",
    "<|im_end|>",
    "<|user|>",
    "<|end|>",
    "<|assistant|>",
)

#: InternVL image tokens.
INTERNVL_IMAGE_TOKENS: tuple[str, ...] = ("<img>", "</img>", "<IMG_CONTEXT>")

#: Qwen2.5-VL vision tokens.
QWEN_VISION_TOKENS: tuple[str, ...] = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Every special token of the tiny tokenizer, in id order (the pad token is id 0).
TINY_SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN,
    *CHAT_TOKENS,
    *INTERNVL_IMAGE_TOKENS,
    *QWEN_VISION_TOKENS,
    *SA2VA_TOKENS,
)

# A fixed training text: the prompts, answers and phrases vesselctl uses, so they tokenise into
# few tokens, plus everyday words. Changing it changes every id: don't, or tiny checkpoints saved
# earlier no longer match their tokenizer (the tokenizer is saved next to them, so they still load).
_TINY_CORPUS: tuple[str, ...] = (
    "Please segment the blood vessels in this image.",
    "Please segment {phrase} in this image.",
    "Can you segment the blood vessels in this image?",
    "Could you please give me a mask of the blood vessels?",
    "What is the blood vessel in this image? Please respond with a segmentation mask.",
    "Sure, [SEG].",
    "It is [SEG].",
    "Sure, it is [SEG].",
    "Here is the segmentation mask: [SEG].",
    "You are a helpful assistant.",
    "user\nassistant\nsystem\n",
    "retinal vessel artery vein capillary vessels arteries veins microscopy fundus angiogram",
    "the a an of in on to and or with for is it this that be are can you me please image mask",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000",
    "The quick brown fox jumps over the lazy dog.",
)

_TINY_VOCAB_SIZE = 512


def build_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """Build the small deterministic byte-level BPE tokenizer used by the ``tiny`` preset.

    No download: the BPE merges are learned from a fixed built-in corpus. Special tokens take the
    first ids in the order of ``TINY_SPECIAL_TOKENS``; pad is ``<|endoftext|>`` (id 0) and eos is
    ``<|im_end|>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB_SIZE,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(_TINY_CORPUS), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token="<|im_end|>",
        padding_side="right",
        model_max_length=8192,
    )
    # Mark the non-pad/eos ones special too, so skip_special_tokens drops them when decoding.
    tokenizer.add_tokens(_as_special(TINY_SPECIAL_TOKENS), special_tokens=True)
    return tokenizer


def add_sa2va_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Add ``[SEG]``, ``<p>``, ``</p>``, ``<vp>``, ``</vp>`` as special tokens; return their ids.

    Tokens already present keep their ids (so calling it twice, or on a Sa2VA tokenizer, is a
    no-op). The caller resizes the model's embeddings to ``len(tokenizer)`` afterwards.
    """
    tokenizer.add_tokens(_as_special(SA2VA_TOKENS), special_tokens=True)
    return token_ids(tokenizer, SA2VA_TOKENS)


def token_ids(
    tokenizer: PreTrainedTokenizerBase, tokens: tuple[str, ...] | list[str]
) -> dict[str, int]:
    """Return ``{token: id}`` for tokens that must each be ONE token in ``tokenizer``.

    Raises ModelError naming the token when the tokenizer lacks it (e.g. a base tokenizer given
    where a Sa2VA one was expected).
    """
    from vesselctl.errors import ModelError

    vocab = tokenizer.get_vocab()
    ids: dict[str, int] = {}
    for token in tokens:
        if token not in vocab:
            raise ModelError(
                f"tokenizer ({type(tokenizer).__name__}, {len(tokenizer)} tokens) has no token "
                f"{token!r}; expected a tokenizer with Sa2VA's tokens (call add_sa2va_tokens for a "
                "base MLLM tokenizer, or use the tokenizer saved with the model)"
            )
        ids[token] = int(vocab[token])
    return ids


def _as_special(tokens: tuple[str, ...]) -> list:
    """AddedToken objects that are never split, normalised or stripped."""
    from tokenizers import AddedToken

    return [
        AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
        for t in tokens
    ]
