"""Prompts shared by the backends that read a model's scores or constrain its generation.

The model is a plain completion model: a few-shot prompt lists the allowed labels with their
descriptions and examples, then the user's message, then the field the label follows
(``Intent:``, ``Reply:``, ``Answer:``). Everything that depends only on the label set comes
first, so it can be evaluated once and reused.
"""

from __future__ import annotations

from collections.abc import Sequence

from sopagent.backends import ChooseRequest, Label

__all__ = ["CONTENT_FREE", "choose_prompt", "classify_prompt", "one_line", "slot_prompt"]

CONTENT_FREE = "N/A"
"""A message that says nothing, used to measure a prompt's bias towards some labels."""


def classify_prompt(vocabulary: Sequence[Label], *, per_label: int = 4) -> str:
    """Return the classification prefix: the intent names, then interleaved examples.

    Up to ``per_label`` examples of each intent are shown, round by round (every intent's
    first example, then every intent's second, ...).

    The policy's description is left out on purpose: with a small completion model, a sentence
    about the assistant pulls messages towards the intents that repeat its words (on the probe
    set of ``bench/refund_probe.py``, 11 of 21 right with it, 16 without).
    """
    lines: list[str] = []
    names = ", ".join(label.name for label in vocabulary)
    lines.append(f"Classify each customer message into one of these intents: {names}.")
    lines.append("")
    examples = _interleave(vocabulary, per_label=per_label)
    for name, example in examples:
        lines.append(f"Message: {one_line(example)}")
        lines.append(f"Intent: {name}")
        lines.append("")
    lines.append("Message:")
    return "\n".join(lines)


def choose_prompt(request: ChooseRequest) -> str:
    """Return the prefix that asks for one reply among the allowed response ids."""
    lines = []
    if request.instructions:
        lines.append(request.instructions.strip())
    lines.append("Pick the reply that fits the customer's message best. Replies:")
    for option in request.options:
        lines.append(f"- {option.name}: {one_line(option.description)}")
    lines.append("")
    lines.append("Message:")
    return "\n".join(lines)


def slot_prompt(name: str, values: Sequence[Label], instructions: str) -> str:
    """Return the prefix that asks which value of an enum slot the message means."""
    lines = []
    if instructions:
        lines.append(instructions.strip())
    human = name.replace("_", " ")
    lines.append(f"Which {human} does the customer's message mean? Options:")
    for value in values:
        lines.append(f"- {value.name}: {value.description}")
    lines.append("")
    lines.append("Message:")
    return "\n".join(lines)


def _interleave(labels: Sequence[Label], per_label: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for round_ in range(per_label):
        for label in labels:
            if round_ < len(label.examples):
                out.append((label.name, label.examples[round_]))
    return out


def one_line(text: str) -> str:
    """Fold whitespace and cap a text so it cannot break the prompt's line structure."""
    return " ".join(text.split())[:300]


def message_suffix(text: str, answer: str) -> str:
    """Return what follows a prefix for one message: the message, then the answer field."""
    return f" {one_line(text)}\n{answer}"
