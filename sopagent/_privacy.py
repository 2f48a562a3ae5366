"""Personal values on their way out: audit events, exports, server views, handoff events.

A `Redactor` is made from a policy and a key. It shows each personal slot, fact or effect
parameter the way the policy's ``privacy`` block (or the slot's own ``privacy``) says:
``hash`` (a keyed HMAC), ``mask`` (``***`` and a few last characters) or ``drop`` (left out);
and it replaces the personal values found in free text (what the user wrote, lines rendered
with a placeholder) by how they are shown. Sessions and their stores keep the real values:
the conversation needs them; only what leaves the process is redacted.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sopagent.policy import Policy

__all__ = ["Redactor"]

_MIN_SCRUBBED = 3  # shorter values would blank out ordinary words of the text


class Redactor:
    """Show personal values of one policy as its privacy settings say.

    Args:
        policy: the policy, whose slots, facts and effect parameters marked personal are
            redacted.
        key: the HMAC key of ``hash``.
    """

    def __init__(self, policy: Policy, key: bytes) -> None:
        self.key = key
        self.keep_last = policy.privacy.keep_last
        default = policy.privacy.personal
        self.modes: dict[str, str] = {
            name: spec.privacy or default
            for name, spec in [*policy.slots.items(), *policy.facts.items()]
            if spec.personal
        }
        self.params: dict[str, dict[str, str]] = {
            effect: {p: s.privacy or default for p, s in spec.params.items() if s.personal}
            for effect, spec in policy.effects.items()
        }

        self._active = bool(self.modes) or any(self.params.values())

    @property
    def active(self) -> bool:
        """Whether the policy has any personal value at all."""
        return self._active

    def shown(self, mode: str, value: Any) -> str:
        """How one personal value appears under ``mode`` (``hash`` or ``mask``)."""
        text = str(value)
        if mode == "mask":
            tail = text[-self.keep_last :] if 0 < self.keep_last < len(text) else ""
            return "***" + tail
        digest = hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()
        return "hmac:" + digest[:12]

    def values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Slot or fact values with the personal ones shown, or left out for ``drop``."""
        return _apply(self.modes, values, self.shown)

    def effect_args(self, effect: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """An effect's arguments with its personal parameters shown, or left out."""
        return _apply(self.params.get(effect, {}), args, self.shown)

    def personal(self, *sources: Mapping[str, Any], within: str | None = None) -> dict[str, str]:
        """Raw personal values (their text) -> how each is shown, from slot/fact mappings.

        With ``within``, only the values that occur in that text (any letter case) are shown.
        """
        folded = within.casefold() if within is not None else None
        found: dict[str, str] = {}
        for values in sources:
            if not values:
                continue
            for name, mode in self.modes.items():
                value = values.get(name)
                if value is None or (folded is not None and not _occurs(value, folded)):
                    continue
                shown = "[redacted]" if mode == "drop" else self.shown(mode, value)
                _collect(found, value, shown)
        return found

    def effect_values(self, effects: Iterable[Mapping[str, Any]]) -> dict[str, str]:
        """Raw personal effect arguments -> how each is shown, from effect records."""
        found: dict[str, str] = {}
        for effect in effects:
            modes = self.params.get(str(effect.get("name")), {})
            args = effect.get("args") or {}
            for param, mode in modes.items():
                if args.get(param) is not None:
                    value = args[param]
                    shown = "[redacted]" if mode == "drop" else self.shown(mode, value)
                    _collect(found, value, shown)
        return found

    def scrub_values(self, text: str, *sources: Mapping[str, Any]) -> str:
        """``text`` with the personal values of ``sources`` in it replaced.

        What ``scrub(text, personal(*sources))`` gives, with only the values that occur in
        the text hashed or masked.
        """
        if not text or not self.modes:
            return text
        for name in self.modes:
            for values in sources:
                if name in values:
                    return self.scrub(text, self.personal(*sources, within=text))
        return text  # no personal value is known yet

    def scrub(self, text: str, personal: Mapping[str, str]) -> str:
        """``text`` with every personal value in it (any letter case) replaced."""
        if not personal or not text:
            return text
        folded = text.casefold()
        personal = {raw: shown for raw, shown in personal.items() if raw.casefold() in folded}
        if not personal:
            return text
        pattern = _pattern(tuple(sorted(personal, key=len, reverse=True)))
        if pattern is None:
            return text
        lowered = {raw.casefold(): shown for raw, shown in personal.items()}
        return pattern.sub(lambda m: lowered.get(m.group(0).casefold(), "[redacted]"), text)

    def record(self, record: dict[str, Any], personal: Mapping[str, str]) -> dict[str, Any]:
        """A server transcript record (a turn as answered) with personal values redacted."""
        turn = record.get("turn")
        if not isinstance(turn, dict):
            return record
        effects = turn.get("effects") or []
        known = {**personal, **self.personal(turn.get("slots") or {})}
        known.update(self.effect_values(effects))
        turn = dict(turn)
        turn["slots"] = self.values(turn.get("slots") or {})
        turn["effects"] = [
            {**e, "args": self.effect_args(str(e.get("name")), e.get("args") or {})}
            for e in effects
        ]
        if isinstance(turn.get("user_text"), str):
            turn["user_text"] = self.scrub(turn["user_text"], known)
        turn["responses"] = [
            {**u, "text": self.scrub(u["text"], known)} if isinstance(u.get("text"), str) else u
            for u in turn.get("responses") or []
        ]
        if isinstance(turn.get("error"), str):
            turn["error"] = self.scrub(turn["error"], known)
        out = {**record, "turn": turn}
        if isinstance(out.get("text"), str):
            out["text"] = self.scrub(out["text"], known)
        return out


def _apply(modes: Mapping[str, str], values: Mapping[str, Any], shown: Any) -> dict[str, Any]:
    if not modes:
        return dict(values)
    out: dict[str, Any] = {}
    for name, value in values.items():
        mode = modes.get(name)
        if mode is None or value is None:
            out[name] = value
        elif mode != "drop":
            out[name] = shown(mode, value)
    return out


def _occurs(value: Any, folded: str) -> bool:
    """Whether any text ``value`` may appear as (see `_collect`) is in ``folded``."""
    if type(value) is str:
        return len(value) >= _MIN_SCRUBBED and value.casefold() in folded
    pieces: dict[str, str] = {}
    _collect(pieces, value, "")
    return any(piece.casefold() in folded for piece in pieces)


def _collect(found: dict[str, str], value: Any, shown: str) -> None:
    """Every piece of text a value may appear as: itself, or each member of a list or map."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            _collect(found, key, shown)
            _collect(found, item, shown)
        return
    if isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _collect(found, item, shown)
        return
    text = str(value)
    if len(text) >= _MIN_SCRUBBED:
        found[text] = shown


_PATTERNS: dict[tuple[str, ...], re.Pattern[str] | None] = {}


def _pattern(raws: tuple[str, ...]) -> re.Pattern[str] | None:
    pattern = _PATTERNS.get(raws)
    if pattern is None and raws not in _PATTERNS:
        if len(_PATTERNS) > 1024:
            _PATTERNS.clear()
        usable = [re.escape(r) for r in raws if r]
        pattern = re.compile("|".join(usable), re.IGNORECASE) if usable else None
        _PATTERNS[raws] = pattern
    return pattern
