"""What a conversation keeps between turns (`Session`) and what one turn did (`Turn`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sopagent.errors import SessionError

__all__ = [
    "DecisionRecord",
    "Effect",
    "Session",
    "SessionTurn",
    "SessionUsage",
    "Turn",
    "Utterance",
]

JSONValue = Any


class SessionTurn(BaseModel):
    """One past turn as the session remembers it: labels, not model output."""

    model_config = ConfigDict(frozen=True)

    user: str | None = Field(default=None, description="What the user said.")
    intent: str | None = None
    state: str = Field(description="State after the turn.")
    responses: tuple[str, ...] = ()


class SessionUsage(BaseModel):
    """What a conversation has cost so far, for billing and budgets per conversation."""

    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class Session(BaseModel):
    """A conversation's state: small, plain JSON, restorable on any worker.

    Sessions are created by `Agent.new_session` and advanced by `Agent.respond`.
    """

    model_config = ConfigDict(validate_assignment=False)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    policy: str
    policy_hash: str
    state: str
    started: bool = False
    ended: bool = False
    turns: int = 0
    slots: dict[str, JSONValue] = Field(default_factory=dict)
    facts: dict[str, JSONValue] = Field(default_factory=dict)
    history: list[SessionTurn] = Field(default_factory=list)
    usage: SessionUsage = Field(default_factory=SessionUsage)
    locale: str | None = Field(
        default=None, description="Locale of the lines said; None: the catalog's own."
    )
    seed: int = Field(default=0, description="Seeds the lines picked by `vary`.")

    def to_json(self) -> str:
        """Serialize to compact JSON."""
        return self.model_dump_json(exclude_defaults=False)

    @classmethod
    def from_json(cls, data: str | bytes) -> Session:
        """Restore a session serialized with `to_json`.

        Raises:
            SessionError: the data is not a serialized session.
        """
        try:
            session = cls.model_validate_json(data)
        except ValidationError as exc:
            raise SessionError(f"not a valid session: {exc.error_count()} problem(s)") from exc
        _share_fields(session)
        _share_fields(session.usage)
        return session


class Utterance(BaseModel):
    """One approved line said to the user."""

    model_config = ConfigDict(frozen=True)

    id: str
    text: str
    hash: str = Field(description="content_hash of the catalog template.")
    locale: str | None = Field(default=None, description="Locale of the template rendered.")


class Effect(BaseModel):
    """A declared effect for the host to apply, such as ``give_item(item=silver_key)``.

    Decision functions return them in `sopagent.Outcome` (``Effect(name="take_gold",
    args={"amount": 50})``); a `Turn` lists every effect its turn emitted, in order, with the
    arguments validated against the policy's declaration and in their JSON form.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    args: dict[str, JSONValue] = Field(default_factory=dict)
    state: str | None = Field(default=None, description="The state that emitted it.")
    origin: str | None = Field(
        default=None,
        description="What emitted it: a route's trigger (intent:NAME, outcome:NAME, filled,"
        " fallback, unsure), enter (a state's effects) or decide (the decision function).",
    )


class DecisionRecord(BaseModel):
    """A decision function that ran during a turn and what it decided."""

    model_config = ConfigDict(frozen=True)

    state: str
    function: str
    outcome: str
    forced: bool = Field(
        default=False, description="The outcome was given (a test), the function did not run."
    )


class Turn(BaseModel):
    """Everything one call of `Agent.respond` did, typed, for callers and the audit log."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    index: int = Field(description="0 for the opening turn, then 1, 2, ... per user message")
    user_text: str | None
    state_before: str
    state_after: str
    path: tuple[str, ...] = Field(description="States entered during the turn, in order.")
    intent: str | None
    score: float
    intent_source: Literal["model", "example", "slots", "forced", "none", "error"]
    answered_by: str | None = Field(
        default=None, description="The backend whose answer was used, when a model answered."
    )
    accepted: bool = Field(description="Whether the intent's route was taken.")
    slots: dict[str, JSONValue] = Field(description="Valid slot values found this turn.")
    invalid_slots: dict[str, str] = Field(default_factory=dict)
    decisions: tuple[DecisionRecord, ...] = ()
    responses: tuple[Utterance, ...]
    effects: tuple[Effect, ...] = Field(
        default=(), description="Effects for the host to apply, in the order emitted."
    )
    pending: bool = Field(
        default=False,
        description="A filler said because the turn missed its time budget; the real turn"
        " follows (`sopagent.Npc.poll`).",
    )
    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    latency_ms: float = 0.0
    error: str | None = Field(default=None, description="Why the error route was taken.")
    ended: bool = False

    @property
    def text(self) -> str:
        """The rendered responses joined as one message."""
        return " ".join(u.text for u in self.responses)

    @property
    def response_ids(self) -> tuple[str, ...]:
        """Ids of the responses said, in order."""
        return tuple(u.id for u in self.responses)

    @property
    def outcome(self) -> str | None:
        """The outcome of the last decision function that ran, if any."""
        return self.decisions[-1].outcome if self.decisions else None


_Model = TypeVar("_Model", bound=BaseModel)


class _Shape:
    """What `trusted` needs to know of a model class, worked out once per class."""

    __slots__ = ("defaults", "factories", "fields", "names", "required")

    def __init__(self, cls: type[BaseModel]) -> None:
        # In the fields' declared order: serialization follows it, and updating a copy of
        # this dict keeps it.
        self.defaults: dict[str, Any] = {}
        # (name, factory, whether it takes the values built so far), so that building a
        # model does not inspect the factory's signature every time.
        self.factories: list[tuple[str, Callable[..., Any], bool]] = []
        required: list[str] = []
        for name, info in cls.model_fields.items():
            self.defaults[name] = None if info.is_required() else info.default
            if info.default_factory is not None:
                takes_data = bool(getattr(info, "default_factory_takes_validated_data", False))
                self.factories.append((name, info.default_factory, takes_data))
            elif info.is_required():
                required.append(name)
        self.required = frozenset(required)
        # Every instance built here has every field set, so they all share one set. (A
        # mutable model's assignment adds the name it sets, which is already there.)
        self.fields = set(cls.model_fields)
        self.names = tuple(cls.model_fields)


_SHAPES: dict[type[BaseModel], _Shape] = {}


def _shape(cls: type[BaseModel]) -> _Shape:
    """Work out ``cls``'s shape and remember it (callers look in `_SHAPES` first)."""
    shape = _SHAPES[cls] = _Shape(cls)
    return shape


def trusted(cls: type[_Model], **fields: Any) -> _Model:
    """Build ``cls`` from values the turn loop has already validated, without validating again.

    Missing fields take their defaults. Only for the run step's own values: anything from
    outside goes through the model's validation.
    """
    shape = _SHAPES.get(cls) or _shape(cls)
    if tuple(fields) == shape.names:
        # Every field given, in the declared order (the turn loop's usual case): the keyword
        # dict can be the instance's own.
        values = fields
    else:
        if not shape.required <= fields.keys() <= shape.fields:
            missing = sorted(shape.required - fields.keys())
            if missing:
                raise TypeError(f"{cls.__name__} needs a value for {missing[0]!r}")
            unknown = sorted(fields.keys() - shape.fields)
            raise TypeError(f"{cls.__name__} has no field {unknown[0]!r}")
        values = shape.defaults.copy()
        values.update(fields)
        for name, factory, takes_data in shape.factories:
            if name not in fields:
                values[name] = factory(values) if takes_data else factory()
    return _adopt(cls, shape.fields, values)


def blank(cls: type[BaseModel]) -> dict[str, Any]:
    """A dict with a key for each field of ``cls``, in order, to copy and fill for `adopt`."""
    return dict.fromkeys(cls.model_fields)


def adopt(cls: type[_Model], values: dict[str, Any]) -> _Model:
    """Build ``cls`` around ``values``, which has every field in declared order, without validating.

    The hot path's `trusted`. ``values`` is a dict display of a few fields, or a filled copy of
    ``blank(cls)`` for many: either costs well under passing the same values as keywords,
    whose dict grows one key at a time. Every value must already have its field's type.
    """
    shape = _SHAPES.get(cls) or _shape(cls)
    return _adopt(cls, shape.fields, values)


def _adopt(cls: type[_Model], fields: set[str], values: dict[str, Any]) -> _Model:
    model = _new(cls)
    _set_dict(model, values)
    _set_fields_set(model, fields)
    _set_extra(model, None)
    _set_private(model, None)
    return model


# What a model's own __new__ and __setattr__ come down to, without their bookkeeping: the
# slots BaseModel declares are written through their descriptors, as __setattr__ would.
_new = object.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def _share_fields(model: BaseModel) -> None:
    """Give a model whose every field was set the set of names `trusted` models share."""
    shape = _SHAPES.get(type(model)) or _shape(type(model))
    if model.__pydantic_fields_set__ == shape.fields:
        object.__setattr__(model, "__pydantic_fields_set__", shape.fields)
