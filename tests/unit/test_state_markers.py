"""The handoff and consequential state markers: where they may stand (SOP090, SOP091)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sopagent import PolicyError, compile_policy, load_policy

Writer = Callable[..., Path]


def _codes(path: Path) -> list[tuple[str, int]]:
    with pytest.raises(PolicyError) as info:
        compile_policy(load_policy(path))
    return [(p.code, p.location.line) for p in info.value.problems if p.severity == "error"]


def test_markers_where_they_belong_compile(write_policy: Writer) -> None:
    """handoff on a terminal state and consequential on a deciding one are accepted."""
    path = write_policy(
        policy=lambda text: text.replace(
            "    decide: judge\n", "    decide: judge\n    consequential: true\n"
        ).replace("    terminal: true\n", "    terminal: true\n    handoff: true\n")
    )
    policy = compile_policy(load_policy(path)).policy
    assert policy.states["judge"].consequential
    assert policy.states["done"].handoff
    assert not policy.states["start"].handoff


def test_handoff_on_a_waiting_state_is_sop090(write_policy: Writer) -> None:
    """A handoff state must end the conversation for the agent."""
    path = write_policy(
        policy=lambda text: text.replace(
            "    say: welcome\n", "    say: welcome\n    handoff: true\n", 1
        )
    )
    codes = _codes(path)
    assert [code for code, _ in codes] == ["SOP090"]
    assert codes[0][1] == path.read_text().splitlines().index("    handoff: true") + 1


def test_consequential_on_a_terminal_state_is_sop091(write_policy: Writer) -> None:
    """Only a state that decides can act on the world."""
    path = write_policy(
        policy=lambda text: text.replace(
            "    terminal: true\n", "    terminal: true\n    consequential: true\n"
        )
    )
    assert [code for code, _ in _codes(path)] == ["SOP091"]
