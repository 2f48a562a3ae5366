"""Audit step, continued: turn audit logs into evaluation sets and fine-tuning data.

Labeled turns come out of the JSON-lines audit log as ``{"text", "intent", "state"}`` lines: a
reviewer corrects the intents, and the file becomes an evaluation set (`sopagent eval`) and
fine-tuning data for the classifier, in OpenAI's chat format, whose system message is exactly
the one the OpenAI backend sends for that state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sopagent._compile import CompiledPolicy
from sopagent.backends import ClassifyRequest
from sopagent.policy import OUT_OF_SCOPE

__all__ = ["fine_tuning_records", "labeled_turns"]

_LABELED_SOURCES = frozenset({"model", "example", "forced"})


def labeled_turns(events: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, str]]:
    """Yield ``{"text", "intent", "state"}`` for every audit event of a classified user turn.

    Opening turns, turns that only gave slot values, failed turns and events written without
    the user's text (``Agent(audit_text=False)``) are skipped.
    """
    for event in events:
        text, intent = event.get("text"), event.get("intent")
        if not isinstance(text, str) or not isinstance(intent, str) or event.get("error"):
            continue
        if event.get("intent_source") not in _LABELED_SOURCES:
            continue
        yield {"text": text, "intent": intent, "state": str(event.get("state_before", ""))}


def fine_tuning_records(
    compiled: CompiledPolicy, examples: Iterable[Mapping[str, str]]
) -> Iterator[dict[str, Any]]:
    """Yield OpenAI chat fine-tuning records, one per labeled example.

    Args:
        compiled: the policy the examples belong to.
        examples: ``{"text", "intent", "state"}`` mappings; ``state`` defaults to the initial.

    Raises:
        ValueError: an example names an unknown state, or an intent its state does not allow.
    """
    from sopagent.backends.openai import system_message  # noqa: PLC0415 (keeps SDKs lazy)

    for number, example in enumerate(examples, start=1):
        state_name = example.get("state") or compiled.policy.initial
        state = compiled.states.get(state_name)
        if state is None or state.kind != "wait":
            raise ValueError(f"example {number}: {state_name!r} is not a state that waits")
        intent = example["intent"]
        if intent not in state.allowed:
            # An intent the state does not accept is out of scope there, as the agent treats it.
            if intent not in compiled.policy.intents:
                raise ValueError(f"example {number}: unknown intent {intent!r}")
            intent = OUT_OF_SCOPE
        request = ClassifyRequest(
            text=example["text"],
            labels=state.labels,
            vocabulary=compiled.vocabulary,
            key=compiled.hash,
            instructions=compiled.policy.description,
        )
        yield {
            "messages": [
                {"role": "system", "content": system_message(request)},
                {"role": "user", "content": example["text"]},
                {"role": "assistant", "content": json.dumps({"intent": intent})},
            ]
        }
