"""Tests for chat templates and conversation layout."""

from __future__ import annotations

import random

import pytest

from vesselctl.errors import ModelError
from vesselctl.model.templates import (
    CHAT_TEMPLATES,
    Turn,
    build_turns,
    check_prompt_templates,
    conversation_segments,
    get_chat_template,
    render_conversation,
)

TURNS = [Turn("Please segment vessels in this image.", "Sure, [SEG]."), Turn("Q2?", "It is [SEG].")]


def test_qwen_chat_two_turns_image_in_first_only():
    text = render_conversation(TURNS, get_chat_template("qwen_chat"), "<img>X</img>\n")
    assert text == (
        "<|im_start|>user\n<img>X</img>\nPlease segment vessels in this image.<|im_end|>\n"
        "<|im_start|>assistant\nSure, [SEG].<|im_end|>\n"
        "<|im_start|>user\nQ2?<|im_end|>\n<|im_start|>assistant\nIt is [SEG].<|im_end|>\n"
    )


def test_phi3_chat_layout():
    text = render_conversation(TURNS[:1], get_chat_template("phi3_chat"), "<img>X</img>\n")
    assert text == (
        "<|user|>\n<img>X</img>\nPlease segment vessels in this image.<|end|>\n"
        "<|assistant|>\nSure, [SEG].<|end|>\n"
    )


def test_qwen2_5_vl_has_system_prompt_once_and_no_image_newline():
    template = get_chat_template("qwen2_5_vl")
    assert template.image_separator == ""
    text = render_conversation(TURNS, template, "<|vision_start|>P<|vision_end|>")
    assert text.startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|>P<|vision_end|>Please segment"
    )
    assert text.count("You are a helpful assistant.") == 1
    assert text.count("<|vision_start|>") == 1


def test_segments_mark_only_answer_and_suffix_supervised():
    segments = conversation_segments(TURNS, get_chat_template("qwen_chat"), "")
    supervised = [s.text for s in segments if s.supervised]
    assert supervised == ["Sure, [SEG].<|im_end|>", "It is [SEG].<|im_end|>"]
    assert [s.supervised for s in segments] == [False, True, False] * 2


def test_open_last_turn_for_generation():
    segments = conversation_segments(TURNS, get_chat_template("qwen_chat"), "", answer_last=False)
    assert [s.supervised for s in segments] == [False, True, False, False]
    assert segments[-1].text.endswith("<|im_start|>assistant\n")


def test_unknown_template_names_the_known_ones():
    with pytest.raises(ModelError, match=r"chatml.*qwen_chat, phi3_chat, qwen2_5_vl"):
        get_chat_template("chatml")
    assert set(CHAT_TEMPLATES) == {"qwen_chat", "phi3_chat", "qwen2_5_vl"}


@pytest.mark.parametrize(
    ("questions", "answers", "match"),
    [
        (["Segment it."], ["Sure, [SEG]."], r"0 '\{phrase\}' fields"),
        (["{phrase} and {phrase}"], ["Sure, [SEG]."], r"2 '\{phrase\}' fields"),
        (["Segment {phrase} {other}"], ["Sure, [SEG]."], "braces"),
        (["Segment {phrase} [SEG]"], ["Sure, [SEG]."], "only answers may"),
        (["Segment {phrase}."], ["Sure."], "0 \\[SEG\\] tokens"),
        (["Segment {phrase}."], ["[SEG] [SEG]"], "2 \\[SEG\\] tokens"),
        ([], ["Sure, [SEG]."], "question_templates is empty"),
        (["Segment {phrase}."], [], "answer_templates is empty"),
    ],
)
def test_prompt_template_checks(questions, answers, match):
    with pytest.raises(ModelError, match=match):
        check_prompt_templates(questions, answers)


def test_build_turns_order_and_template_choice():
    questions = ["Please segment {phrase} in this image.", "Can you segment the {phrase}?"]
    answers = ["Sure, [SEG].", "It is [SEG]."]
    turns = build_turns(["artery", "vein"], questions, answers)
    assert [t.question for t in turns] == [
        "Please segment artery in this image.",
        "Please segment vein in this image.",
    ]
    drawn = build_turns(["a"] * 40, questions, answers, random.Random(0))
    assert {t.answer for t in drawn} == set(answers)
    assert {t.question for t in drawn} == {q.replace("{phrase}", "a") for q in questions}
    again = build_turns(["a"] * 40, questions, answers, random.Random(0))
    assert drawn == again
