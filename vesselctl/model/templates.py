"""Chat templates and the question/answer turns Sa2VA is trained on.

A sample with several phrases becomes ONE multi-turn conversation: one question per phrase, each
answered with exactly one ``[SEG]``; only the first turn carries the image. The turn layout
follows Sa2VA's xtuner-style encoding (read from bytedance/Sa2VA ``projects/sa2va/datasets``):

    [system]  instruction(question)  |  answer + suffix  |  separator
    ------ not supervised ---------     -- supervised --    -- not supervised --

No system prompt for qwen_chat / phi3_chat (Sa2VA trains every family, Qwen2.5-VL included,
with them and no system prompt, the image tokens followed by "\n"). ``qwen2_5_vl`` reproduces
Qwen2.5-VL's own chat template, which the official Sa2VA-Qwen inference uses: the system prompt
"You are a helpful assistant." and no newline after ``<|vision_end|>``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from vesselctl.errors import ModelError

SEG_TOKEN = "[SEG]"
PHRASE_FIELD = "{phrase}"

#: The question asked by default (one of Sa2VA's SEG_QUESTIONS).
DEFAULT_QUESTION_TEMPLATES: tuple[str, ...] = ("Please segment {phrase} in this image.",)
#: The answer supervised by default and appended at inference (one of Sa2VA's ANSWER_LIST).
DEFAULT_ANSWER_TEMPLATES: tuple[str, ...] = ("Sure, [SEG].",)


@dataclass(frozen=True)
class ChatTemplate:
    """One chat format. ``instruction`` holds ``{input}``; the text pieces are literal."""

    name: str
    system: str  # full system block put before the first turn ("" = none)
    instruction: str  # user turn up to the assistant's first token, with {input}
    suffix: str  # closes the assistant's answer; supervised like the answer
    separator: str  # after every turn; not supervised
    image_separator: str  # between the image tokens and the first question
    stop_words: tuple[str, ...]


CHAT_TEMPLATES: dict[str, ChatTemplate] = {
    "qwen_chat": ChatTemplate(
        name="qwen_chat",
        system="",
        instruction="<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
        suffix="<|im_end|>",
        separator="\n",
        image_separator="\n",
        stop_words=("<|im_end|>", "<|endoftext|>"),
    ),
    "phi3_chat": ChatTemplate(
        name="phi3_chat",
        system="",
        instruction="<|user|>\n{input}<|end|>\n<|assistant|>\n",
        suffix="<|end|>",
        separator="\n",
        image_separator="\n",
        stop_words=("<|end|>",),
    ),
    "qwen2_5_vl": ChatTemplate(
        name="qwen2_5_vl",
        system="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
        instruction="<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
        suffix="<|im_end|>",
        separator="\n",
        image_separator="",
        stop_words=("<|im_end|>", "<|endoftext|>"),
    ),
}


def get_chat_template(name: str) -> ChatTemplate:
    """The chat template called ``name``; ModelError listing the known names otherwise."""
    try:
        return CHAT_TEMPLATES[name]
    except KeyError:
        raise ModelError(
            f"chat template '{name}' is unknown; expected one of {', '.join(CHAT_TEMPLATES)}"
        ) from None


@dataclass(frozen=True)
class Turn:
    """One question/answer exchange; ``answer`` holds exactly one [SEG]."""

    question: str
    answer: str


@dataclass(frozen=True)
class Segment:
    """A run of text encoded on its own; ``supervised`` marks the tokens the LLM loss sees."""

    text: str
    supervised: bool


def check_prompt_templates(
    question_templates: Sequence[str],
    answer_templates: Sequence[str],
    seg_token: str = SEG_TOKEN,
) -> None:
    """Raise ModelError unless every question has one ``{phrase}`` and every answer one [SEG].

    A question must hold no [SEG] (the masks are matched to [SEG]s in order) and no other
    ``{...}`` field.
    """
    if not question_templates:
        raise ModelError(
            "question_templates is empty; give at least one, e.g. "
            + repr(DEFAULT_QUESTION_TEMPLATES[0])
        )
    if not answer_templates:
        raise ModelError(
            "answer_templates is empty; give at least one, e.g. "
            + repr(DEFAULT_ANSWER_TEMPLATES[0])
        )
    for i, question in enumerate(question_templates):
        if question.count(PHRASE_FIELD) != 1:
            raise ModelError(
                f"question_templates[{i}] {question!r} holds {question.count(PHRASE_FIELD)} "
                f"'{PHRASE_FIELD}' fields; expected exactly 1, e.g. "
                f"{DEFAULT_QUESTION_TEMPLATES[0]!r}"
            )
        rest = question.replace(PHRASE_FIELD, "")
        if "{" in rest or "}" in rest:
            raise ModelError(
                f"question_templates[{i}] {question!r} has braces other than '{PHRASE_FIELD}'; "
                "remove them"
            )
        if seg_token in question:
            raise ModelError(
                f"question_templates[{i}] {question!r} contains {seg_token}; only answers may"
            )
    for i, answer in enumerate(answer_templates):
        if answer.count(seg_token) != 1:
            raise ModelError(
                f"answer_templates[{i}] {answer!r} holds {answer.count(seg_token)} {seg_token} "
                f"tokens; expected exactly 1, e.g. {DEFAULT_ANSWER_TEMPLATES[0]!r}"
            )


def build_turns(
    phrases: Sequence[str],
    question_templates: Sequence[str] = DEFAULT_QUESTION_TEMPLATES,
    answer_templates: Sequence[str] = DEFAULT_ANSWER_TEMPLATES,
    rng: random.Random | None = None,
) -> list[Turn]:
    """One turn per phrase, in phrase order (so mask i belongs to the i-th [SEG]).

    With ``rng`` each turn draws its question and answer template at random (training, as
    Sa2VA does); without, the first template of each list is used (inference: deterministic).
    """
    turns = []
    for phrase in phrases:
        if rng is None:
            question, answer = question_templates[0], answer_templates[0]
        else:
            question, answer = rng.choice(question_templates), rng.choice(answer_templates)
        turns.append(Turn(question=question.replace(PHRASE_FIELD, phrase), answer=answer))
    return turns


def conversation_segments(
    turns: Sequence[Turn], template: ChatTemplate, image_text: str, answer_last: bool = True
) -> list[Segment]:
    """Lay out a conversation as text segments, the image text opening the first question.

    ``image_text`` already ends with whatever separates it from the question (Sa2VA trains with
    "<img>...</img>\\n"). Each turn yields an unsupervised instruction, the supervised
    answer + suffix, and the unsupervised separator. ``answer_last=False`` stops after the last
    instruction (the assistant header): a prompt for generation.
    """
    segments: list[Segment] = []
    for i, turn in enumerate(turns):
        user_text = image_text + turn.question if i == 0 else turn.question
        prompt = template.instruction.format(input=user_text)
        if i == 0 and template.system:
            prompt = template.system + prompt
        segments.append(Segment(prompt, supervised=False))
        if not answer_last and i == len(turns) - 1:
            break
        segments.append(Segment(turn.answer + template.suffix, supervised=True))
        if template.separator:
            segments.append(Segment(template.separator, supervised=False))
    return segments


def render_conversation(turns: Sequence[Turn], template: ChatTemplate, image_text: str) -> str:
    """The whole conversation as one string (for display and checks)."""
    return "".join(s.text for s in conversation_segments(turns, template, image_text))
