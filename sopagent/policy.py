"""The policy and catalog formats, as pydantic models.

A policy YAML file is validated into `Policy`; an approved response catalog into `Catalog`.
These models describe what an author may write; `sopagent.compile_policy` turns a validated
policy into the state machine that runs. JSON Schemas for editors are generated from these
models (`sopagent schema`).
"""

from __future__ import annotations

import hashlib
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from sopagent.errors import Location

__all__ = [
    "BooleanSlot",
    "Catalog",
    "Confidence",
    "DateSlot",
    "DecimalSlot",
    "EnumSlot",
    "GlobalRoutes",
    "IntegerSlot",
    "Intent",
    "MoneySlot",
    "Policy",
    "Response",
    "Route",
    "Slot",
    "State",
    "StringSlot",
    "content_hash",
    "placeholders",
]

OUT_OF_SCOPE = "out_of_scope"
"""The built-in intent for input that matches no intent of the policy."""

_ID = r"^[a-z][a-z0-9_]*$"
Identifier = Annotated[str, Field(pattern=_ID, max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class _Sourced(_Model):
    """A top-level document that remembers the file it was read from."""

    _document: Any = PrivateAttr(default=None)
    _path: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The file this was loaded from, if any."""
        return self._path

    def locate(self, *path: str | int) -> Location:
        """Return ``file:line:col`` of the value at ``path`` in the source file."""
        if self._document is None:
            return Location(str(self._path or "<memory>"))
        located: Location = self._document.locate(path)
        return located

    def locate_key(self, *path: str | int) -> Location:
        """Return the location of the key leading to ``path`` in the source file."""
        if self._document is None:
            return Location(str(self._path or "<memory>"))
        located: Location = self._document.locate_key(path)
        return located


# --- slots ------------------------------------------------------------------------------------


class _SlotBase(_Model):
    description: str = ""
    ask: Identifier | None = Field(
        default=None, description="Response said when the slot is required but missing."
    )
    invalid: Identifier | None = Field(
        default=None, description="Response said when a value was found but failed validation."
    )
    personal: bool = Field(default=False, description="Personal data: masked in audit logs.")


class StringSlot(_SlotBase):
    """Free text constrained by a regular expression; the pattern is also the extractor."""

    type: Literal["string"]
    pattern: str | None = Field(
        default=None, description="Regular expression a value must match; also used to find it."
    )
    min_length: int = Field(default=1, ge=0)
    max_length: int = Field(default=200, ge=1, le=10_000)
    normalize: Literal["none", "upper", "lower", "digits"] = "none"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compiled = re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
            if compiled.groups > 1:
                raise ValueError("a slot pattern may have at most one capture group")
        return value


class EnumSlot(_SlotBase):
    """One of a fixed set of values; synonyms map words in the text to a value."""

    type: Literal["enum"]
    values: list[Identifier] = Field(min_length=1)
    synonyms: dict[Identifier, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _synonyms_name_values(self) -> EnumSlot:
        unknown = sorted(set(self.synonyms) - set(self.values))
        if unknown:
            raise ValueError(f"synonyms for unknown values: {', '.join(unknown)}")
        return self


class IntegerSlot(_SlotBase):
    """A whole number, optionally bounded."""

    type: Literal["integer"]
    min: int | None = None
    max: int | None = None


class DecimalSlot(_SlotBase):
    """A decimal number, optionally bounded."""

    type: Literal["decimal"]
    min: float | None = None
    max: float | None = None
    places: int = Field(default=2, ge=0, le=8)


class MoneySlot(_SlotBase):
    """An amount of money in one currency, optionally bounded."""

    type: Literal["money"]
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    min: float | None = None
    max: float | None = None


class BooleanSlot(_SlotBase):
    """Yes or no."""

    type: Literal["boolean"]


class DateSlot(_SlotBase):
    """A calendar date (ISO ``2024-05-01``, ``05/01/2024``, ``today``, ``yesterday``)."""

    type: Literal["date"]


Slot = Annotated[
    StringSlot | EnumSlot | IntegerSlot | DecimalSlot | MoneySlot | BooleanSlot | DateSlot,
    Field(discriminator="type"),
]


# --- intents and routes -----------------------------------------------------------------------


class Intent(_Model):
    """Something a user may want, described for the model and illustrated with examples."""

    description: str = Field(min_length=1, max_length=500)
    examples: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(
        default_factory=list
    )


class Route(_Model):
    """Where an intent or an outcome leads, and what is said on the way."""

    to: Identifier | None = Field(default=None, description="Target state; omitted: stay.")
    say: list[Identifier] = Field(default_factory=list, description="Responses said in order.")
    choose: list[Identifier] = Field(
        default_factory=list, description="The model picks one of these responses."
    )
    require: list[Identifier] = Field(
        default_factory=list, description="Slots that must be filled to take this route."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"to": value}
        if isinstance(value, dict) and isinstance(value.get("say"), str):
            return {**value, "say": [value["say"]]}
        return value


class Confidence(_Model):
    """What to do when the model is unsure: its score for the intent is below ``threshold``."""

    threshold: float = Field(ge=0.0, le=1.0, description="Lowest score acted upon.")
    below: Route = Field(
        description="Taken instead of the intent's route when the score is lower, e.g. a"
        " clarifying question."
    )


class State(_Model):
    """A step of the procedure.

    A state either waits for the user (it has ``on`` routes, slots to ``collect`` or is the
    target of input), runs a decision function (``decide`` with ``outcomes``), or ends the
    conversation (``terminal``).
    """

    description: str = ""
    say: list[Identifier] = Field(default_factory=list, description="Said on entering the state.")
    choose: list[Identifier] = Field(
        default_factory=list, description="On entering, the model picks one of these responses."
    )
    collect: list[Identifier] = Field(
        default_factory=list, description="Slots extracted from what the user says here."
    )
    on: dict[Identifier, Route] = Field(default_factory=dict, description="Intent -> route.")
    filled: Route | None = Field(
        default=None, description="Taken when every collected slot has a value."
    )
    fallback: Route | None = Field(
        default=None, description="Overrides the global fallback in this state."
    )
    confidence: Confidence | None = Field(
        default=None, description="Overrides the global confidence rule in this state."
    )
    decide: Identifier | None = Field(default=None, description="Decision function to run.")
    outcomes: dict[Identifier, Route] = Field(
        default_factory=dict, description="Decision outcome -> route."
    )
    terminal: bool = False
    globals: bool = Field(default=True, description="Whether global intents apply here.")
    handoff: bool = Field(
        default=False,
        description="Entering this state hands the conversation to a person: a service marks"
        " the session and emits a handoff event, and the agent stops answering. Terminal only.",
    )
    consequential: bool = Field(
        default=False,
        description="The decision function acts on the world (cancels, refunds, writes a"
        " record); reviews and verifiers check how such states can be reached. Deciding only.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("say"), str):
            return {**value, "say": [value["say"]]}
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> State:
        if self.decide is not None and (self.on or self.collect or self.filled):
            raise ValueError("a state that decides cannot also wait for input (on/collect/filled)")
        if self.decide is None and self.outcomes:
            raise ValueError("outcomes need a decision function: add decide")
        if self.decide is not None and not self.outcomes:
            raise ValueError("a state that decides must route its outcomes")
        if self.terminal and (self.on or self.decide or self.filled or self.collect):
            raise ValueError("a terminal state has no routes, decisions or slots")
        return self


class GlobalRoutes(_Model):
    """Routes that apply in every state that waits for input, unless the state overrides them."""

    on: dict[Identifier, Route] = Field(default_factory=dict)
    fallback: Route = Field(description="What happens when the input matches nothing here.")
    error: Route = Field(
        description="Said when a backend or decision function fails; the session is kept."
    )
    confidence: Confidence | None = Field(
        default=None,
        description="Below this score the model's intent is not acted upon (model answers only).",
    )


class Policy(_Sourced):
    """A standard operating procedure: intents, slots, facts, states and their routes."""

    sopagent: Literal[1] = Field(description="Format version.")
    name: Identifier
    version: str = "1"
    description: str = ""
    catalog: str = Field(
        description="Path of the approved response catalog, relative to this file."
    )
    decisions: list[str] = Field(
        default_factory=list,
        description="Modules whose @decision functions this policy may use: dotted names or "
        "paths of .py files relative to this file. Nothing else is ever imported.",
    )
    initial: Identifier
    intents: dict[Identifier, Intent] = Field(min_length=1)
    slots: dict[Identifier, Slot] = Field(default_factory=dict)
    facts: dict[Identifier, Slot] = Field(
        default_factory=dict, description="Typed values set by the host or decision functions."
    )
    out_of_scope: Intent | None = Field(
        default=None,
        description="How to recognise input the policy does not handle; by default a generic"
        " description with off-topic examples.",
    )
    global_: GlobalRoutes = Field(alias="global")
    states: dict[Identifier, State] = Field(min_length=1)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("intents")
    @classmethod
    def _reserved(cls, value: dict[str, Intent]) -> dict[str, Intent]:
        if OUT_OF_SCOPE in value:
            raise ValueError(f"{OUT_OF_SCOPE!r} is built in; describe it with fallback routes")
        return value


# --- catalogs ---------------------------------------------------------------------------------


def content_hash(text: str) -> str:
    """Return the approval hash of a response text: ``sha256:`` and 16 hex digits."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


_FORMATTER = string.Formatter()


def placeholders(text: str) -> tuple[str, ...]:
    """Return the placeholder names of a template, in order of first use.

    Raises:
        ValueError: the template has attribute or index access, conversions, positional
            fields or unbalanced braces.
    """
    names: list[str] = []
    for _, field, spec, conversion in _FORMATTER.parse(text):
        if field is None:
            continue
        if not re.fullmatch(_ID[1:-1], field):
            raise ValueError(
                f"placeholder {{{field}}} must be a plain slot or fact name"
                " (no attributes, indexes or positions)"
            )
        if conversion or spec:
            raise ValueError(f"placeholder {{{field}}} may not carry a format spec or conversion")
        if field not in names:
            names.append(field)
    return tuple(names)


class Response(_Model):
    """One approved line: its text template and, once reviewed, the hash that was approved."""

    text: str = Field(min_length=1, max_length=2000)
    approved: str | None = Field(
        default=None,
        pattern=r"^sha256:[0-9a-f]{16}$",
        description="content_hash of the text a reviewer approved.",
    )
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"text": value}
        return value

    @field_validator("text")
    @classmethod
    def _template(cls, value: str) -> str:
        placeholders(value)
        return value

    @property
    def hash(self) -> str:
        """The content hash of the text."""
        return content_hash(self.text)

    @property
    def placeholders(self) -> tuple[str, ...]:
        """Names the template fills."""
        return placeholders(self.text)


class Catalog(_Sourced):
    """The approved responses a policy may say, in one locale."""

    sopagent: Literal[1]
    catalog: Identifier
    locale: str = Field(default="en", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    responses: dict[Identifier, Response] = Field(min_length=1)
