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

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)

from sopagent.errors import Location

__all__ = [
    "AtMostOnceProperty",
    "BooleanSlot",
    "Catalog",
    "Confidence",
    "CountsFact",
    "DateSlot",
    "DecimalSlot",
    "DecisionEvent",
    "EffectCall",
    "EffectEvent",
    "EffectSpec",
    "EndedEvent",
    "EnumSlot",
    "Event",
    "Events",
    "Fact",
    "FilledEvent",
    "FromValue",
    "GlobalRoutes",
    "IntegerSlot",
    "Intent",
    "IntentEvent",
    "LeadsToProperty",
    "Limits",
    "MoneySlot",
    "NeverBothProperty",
    "NeverProperty",
    "Policy",
    "Privacy",
    "Property",
    "ReachableProperty",
    "Response",
    "Route",
    "SayEvent",
    "SetFact",
    "Slot",
    "State",
    "StateEvent",
    "StringSlot",
    "content_hash",
    "placeholders",
]

OUT_OF_SCOPE = "out_of_scope"
"""The built-in intent for input that matches no intent of the policy."""

_ID = r"^[a-z][a-z0-9_]*$"
_MODULE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
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
    personal: bool = Field(
        default=False,
        description="Personal data: shown as the policy's `privacy` says in audit logs, exports"
        " and the server's views.",
    )
    privacy: Literal["hash", "mask", "drop"] | None = Field(
        default=None,
        description="For a personal value: how it appears, instead of the policy's `privacy`.",
    )
    examples: list[str | int | float | bool | list[str] | dict[str, int]] = Field(
        default_factory=list,
        max_length=100,
        description="Typical valid values (a list of ids for a set fact, id -> count for a"
        " counts fact). `sopagent verify` and `sopagent test --generate` try them first; for"
        " facts, they start generated conversations with them as the host would.",
    )


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


class SetFact(_SlotBase):
    """A set of ids, such as the quest flags a player has raised. Facts only."""

    type: Literal["set"]
    values: list[Identifier] | None = Field(
        default=None, description="The ids a member may be; omitted: any id."
    )
    max_items: int = Field(default=256, ge=1, le=10_000)


class CountsFact(_SlotBase):
    """A count per id, such as an inventory (item -> how many). Facts only."""

    type: Literal["counts"]
    keys: list[Identifier] | None = Field(
        default=None, description="The ids that may be counted; omitted: any id."
    )
    min: int = Field(default=0, description="Lowest count.")
    max: int | None = Field(default=None, description="Highest count.")
    max_items: int = Field(default=256, ge=1, le=10_000)


Fact = Annotated[
    StringSlot
    | EnumSlot
    | IntegerSlot
    | DecimalSlot
    | MoneySlot
    | BooleanSlot
    | DateSlot
    | SetFact
    | CountsFact,
    Field(discriminator="type"),
]


# --- effects ----------------------------------------------------------------------------------


class EffectSpec(_Model):
    """An effect the host applies (``give_item``, ``take_gold``): its typed parameters."""

    description: str = ""
    params: dict[Identifier, Slot] = Field(
        default_factory=dict, description="Parameter name -> type (the slot types)."
    )


class FromValue(_Model):
    """An effect argument taken from a slot or fact value when the effect is emitted."""

    from_: Identifier = Field(alias="from", description="The slot or fact to read.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Argument = bool | int | float | str | FromValue


class EffectCall(_Model):
    """One declared effect emitted with its arguments: constants or ``{from: name}``."""

    name: Identifier
    args: dict[Identifier, Argument] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and len(value) == 1 and "name" not in value:
            ((name, args),) = value.items()
            return {"name": name, "args": {} if args is None else args}
        return value


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
    vary: list[Identifier] = Field(
        default_factory=list,
        description="One of these responses, picked by the session's seed (no model call).",
    )
    effects: list[EffectCall] = Field(
        default_factory=list, description="Declared effects emitted when the route is taken."
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
    vary: list[Identifier] = Field(
        default_factory=list,
        description="On entering, one of these responses, picked by the session's seed.",
    )
    effects: list[EffectCall] = Field(
        default_factory=list, description="Declared effects emitted on entering the state."
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
    filler: Route | None = Field(
        default=None, description="Overrides the global filler line in this state."
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
        if self.filler is not None and (self.terminal or self.decide is not None):
            raise ValueError("a filler line is for states that wait for input")
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
    filler: Route | None = Field(
        default=None,
        description="Said at once when a turn misses its time budget (say or vary only); the"
        " real answer follows.",
    )


# --- properties -------------------------------------------------------------------------------

# Names in events may be globs: `refund_*` matches every id starting with `refund_`.
_GLOB = r"^[a-z0-9_*?]+$"


def _glob(value: str) -> str:
    if not re.fullmatch(_GLOB[1:-1], value):
        raise ValueError(
            f"{value!r} is not a valid id or glob: lower_snake_case, with * for any characters"
        )
    return value


Glob = Annotated[
    str, AfterValidator(_glob), Field(max_length=64, json_schema_extra={"pattern": _GLOB})
]


EVENT_KINDS = ("state", "say", "intent", "decision", "filled", "effect", "ended")
"""The keys that name an event's kind, in the order they are recognised."""


class _EventBase(_Model):
    where: str | None = Field(
        default=None,
        max_length=500,
        description="Only when this condition on slot and fact values holds, e.g."
        " 'order_total > 100 and not verified'.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, value: Any) -> Any:
        if isinstance(value, dict):
            kinds = [kind for kind in EVENT_KINDS if kind in value]
            if len(kinds) > 1:
                raise ValueError(
                    f"an event has one kind; this one has {' and '.join(kinds)}:"
                    " list several events to mean any of them"
                )
        return value


class StateEvent(_EventBase):
    """A state is entered."""

    state: Glob = Field(description="State id or glob.")


class SayEvent(_EventBase):
    """A response is said."""

    say: Glob = Field(description="Response id or glob, e.g. refund_*.")


class IntentEvent(_EventBase):
    """A turn's intent is classified (the label the model or a rule gave)."""

    intent: Glob = Field(description="Intent id, out_of_scope, or a glob.")
    in_: Glob | None = Field(
        default=None, alias="in", description="Only in these states (id or glob)."
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DecisionEvent(_EventBase):
    """A decision function decides (optionally: one of its outcomes)."""

    decision: Identifier = Field(description="Decision function name.")
    outcome: Identifier | None = Field(default=None, description="Only this outcome.")


class FilledEvent(_EventBase):
    """A slot or fact is given a value (by the user or by a decision function)."""

    filled: Identifier = Field(description="Slot or fact name.")


EffectArg = Annotated[str | bool | int | float, Field(description="The argument's value.")]


class EffectEvent(_EventBase):
    """An effect is emitted (optionally: with these arguments).

    In its ``where`` condition, the effect's parameters are names beside the slots and facts
    (a parameter hides a slot or fact of the same name), e.g. ``amount >= 50``.
    """

    effect: Glob = Field(description="Effect name or glob.")
    args: dict[Identifier, EffectArg] | None = Field(
        default=None, description="Only with these argument values, e.g. {item: silver_key}."
    )


class EndedEvent(_EventBase):
    """The conversation ends (a terminal state is entered)."""

    ended: Literal[True]


def _event_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = next((kind for kind in EVENT_KINDS if kind in value), None)
    else:
        kind = next((kind for kind in EVENT_KINDS if hasattr(value, kind)), None)
    return None if kind is None else f"event:{kind}"


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, dict | str) else value


# Tags are not valid keys, so that error locations never mistake them for a key of the file.
Event = Annotated[
    Annotated[StateEvent, Tag("event:state")]
    | Annotated[SayEvent, Tag("event:say")]
    | Annotated[IntentEvent, Tag("event:intent")]
    | Annotated[DecisionEvent, Tag("event:decision")]
    | Annotated[FilledEvent, Tag("event:filled")]
    | Annotated[EffectEvent, Tag("event:effect")]
    | Annotated[EndedEvent, Tag("event:ended")],
    Discriminator(
        _event_kind,
        custom_error_type="event_kind",
        custom_error_message="an event is a mapping with one of the keys"
        " state, say, intent, decision, filled, effect, ended",
    ),
]
Events = Annotated[
    list[Event], BeforeValidator(_one_or_many, json_schema_input_type=Event | list[Event])
]
"""One event, or a list of events any of which counts (read as a list)."""


class _PropertyBase(_Model):
    description: str = Field(default="", max_length=1000)


class NeverProperty(_PropertyBase):
    """An event never happens; with ``before`` or ``after``, not before or after another."""

    never: Events
    before: Events | None = Field(
        default=None, description="Allowed once one of these has happened (X only after Y)."
    )
    after: Events | None = Field(
        default=None, description="Forbidden once one of these has happened."
    )
    reset: Events | None = Field(
        default=None, description="Forgets that `before` or `after` happened (a new order)."
    )

    @model_validator(mode="after")
    def _one_guard(self) -> NeverProperty:
        if self.before is not None and self.after is not None:
            raise ValueError("give either 'before' or 'after', not both")
        if self.reset is not None and self.before is None and self.after is None:
            raise ValueError("'reset' needs 'before' or 'after'")
        return self


class AtMostOnceProperty(_PropertyBase):
    """An event happens at most once (or once between resets)."""

    at_most_once: Events
    reset: Events | None = None


class NeverBothProperty(_PropertyBase):
    """Two events never both happen in one conversation (or between resets)."""

    never_both: tuple[Events, Events]
    reset: Events | None = None


class ReachableProperty(_PropertyBase):
    """From every state the conversation can be in, the user can still get to an event."""

    reachable: Events


class LeadsToProperty(_PropertyBase):
    """An event happens within a number of turns, from any point, while the user says X."""

    leads_to: Events
    within: int = Field(ge=1, le=50, description="Turns.")
    saying: Annotated[
        list[Glob], BeforeValidator(_one_or_many, json_schema_input_type=Glob | list[Glob])
    ] = Field(
        default_factory=list,
        description="The intents the user keeps saying; by default any message.",
    )


PROPERTY_KINDS = ("never", "at_most_once", "never_both", "reachable", "leads_to")
"""The keys that name a property's kind."""


def _property_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = next((kind for kind in PROPERTY_KINDS if kind in value), None)
    else:
        kind = next((kind for kind in PROPERTY_KINDS if hasattr(value, kind)), None)
    return None if kind is None else f"property:{kind}"


Property = Annotated[
    Annotated[NeverProperty, Tag("property:never")]
    | Annotated[AtMostOnceProperty, Tag("property:at_most_once")]
    | Annotated[NeverBothProperty, Tag("property:never_both")]
    | Annotated[ReachableProperty, Tag("property:reachable")]
    | Annotated[LeadsToProperty, Tag("property:leads_to")],
    Discriminator(
        _property_kind,
        custom_error_type="property_kind",
        custom_error_message="a property has one of the keys"
        " never, at_most_once, never_both, reachable, leads_to",
    ),
]


class Limits(_Model):
    """Bounds on what one turn accepts and how long its decision code may run."""

    max_input: int = Field(
        default=4000,
        ge=1,
        le=1_000_000,
        description="Longest user message, in characters. A longer one is not sent to the model"
        " and fills no slot: the turn says `too_long` (or the fallback's lines) and the session"
        " stays as it was, as on a backend failure.",
    )
    too_long: Identifier | None = Field(
        default=None,
        description="Response said for a message longer than max_input; by default the global"
        " fallback's lines, or the error route's when the fallback says nothing.",
    )
    decision_seconds: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Longest run of one decision function, in seconds; a longer one fails the"
        " turn with a DecisionError. Limited calls run on a worker thread (tens of microseconds"
        " each); Python cannot stop a thread, so a call past its limit is abandoned, not killed."
        " None: no limit, decisions run on the caller's thread.",
    )


class Privacy(_Model):
    """How personal values (slots and facts marked ``personal``) appear outside the process.

    Audit events, exports, the server's session and transcript views and handoff events all
    follow it: ``hash`` gives a keyed HMAC (the same value, the same digest, so events can be
    joined), ``mask`` gives ``***`` and at most ``keep_last`` of the last characters, ``drop``
    leaves the value out. Text the user wrote has the personal values found in it replaced.
    """

    personal: Literal["hash", "mask", "drop"] = Field(
        default="hash", description="How a personal value appears."
    )
    keep_last: int = Field(
        default=0, ge=0, le=8, description="With mask: how many last characters are kept."
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
    allow_imports: list[Annotated[str, Field(pattern=_MODULE)]] = Field(
        default_factory=list,
        description="Modules the decision modules may import beyond sopagent and the standard"
        " library's in-process modules (files, network, other packages): what a reviewer"
        " agreed the code may reach. `sopagent check` reports any other import (SOP055).",
    )
    require_approved: bool = Field(
        default=False,
        description="Refuse to run unless a reviewer approved every response of the catalog,"
        " as it is now, in the catalog's lock file (`sopagent approve`).",
    )
    initial: Identifier
    intents: dict[Identifier, Intent] = Field(min_length=1)
    slots: dict[Identifier, Slot] = Field(default_factory=dict)
    facts: dict[Identifier, Fact] = Field(
        default_factory=dict,
        description="Typed values set by the host (at the start and with every turn: the game"
        " state) or by decision functions.",
    )
    effects: dict[Identifier, EffectSpec] = Field(
        default_factory=dict, description="Effects the host applies, with typed parameters."
    )
    translations: list[str] = Field(
        default_factory=list,
        description="Catalogs of the same responses in other locales, relative to this file.",
    )
    remember: int = Field(
        default=200, ge=0, le=10_000, description="How many past turns a session keeps."
    )
    out_of_scope: Intent | None = Field(
        default=None,
        description="How to recognise input the policy does not handle; by default a generic"
        " description with off-topic examples.",
    )
    global_: GlobalRoutes = Field(alias="global")
    limits: Limits = Field(
        default_factory=Limits,
        description="Longest user message and longest decision run a turn accepts.",
    )
    states: dict[Identifier, State] = Field(min_length=1)
    properties: dict[Identifier, Property] = Field(
        default_factory=dict,
        description="What must hold whatever the model says, proved by `sopagent verify`.",
    )
    privacy: Privacy = Field(
        default_factory=Privacy,
        description="How personal values appear in audit logs, exports and the server's views.",
    )

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
    examples: dict[Identifier, list[Annotated[str, Field(min_length=1, max_length=500)]]] = Field(
        default_factory=dict,
        description="Intent -> examples in this catalog's locale (translations only); they"
        " replace the policy's examples for sessions in this locale.",
    )
