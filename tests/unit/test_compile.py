"""The compile step: the machine config as data, global routes, and overrides."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from pathlib import Path

from conftest import GOLDEN, REFUND_POLICY

from sopagent import compile_policy, load_policy
from sopagent._compile import machine_config_json

Writer = Callable[..., Path]


def transitions_from(config: dict, source: str) -> dict[str, str]:
    return {t["trigger"]: t["dest"] for t in config["transitions"] if t["source"] == source}


def test_refund_machine_matches_golden_file() -> None:
    """The refund policy compiles to exactly the reviewed machine in tests/golden."""
    expected = (GOLDEN / "refund_machine.json").read_text(encoding="utf-8")
    actual = machine_config_json(compile_policy(load_policy(REFUND_POLICY)))
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            "tests/golden/refund_machine.json",
            "compiled",
        )
    )
    assert actual == expected, "compiled machine differs from the golden file:\n" + diff


def test_machine_config_is_plain_stable_json() -> None:
    """The config is plain JSON data and compiling twice gives the same text."""
    first = machine_config_json(compile_policy(load_policy(REFUND_POLICY)))
    second = machine_config_json(compile_policy(load_policy(REFUND_POLICY)))
    assert first == second
    data = json.loads(first)
    assert set(data) == {"initial", "states", "transitions"}
    assert all(set(t) == {"trigger", "source", "dest"} for t in data["transitions"])


def test_transitions_machine_is_built_from_the_config() -> None:
    """Every transition of the config is an event of the transitions machine, and no other."""
    compiled = compile_policy(load_policy(REFUND_POLICY))
    config = compiled.machine_config()
    declared = {(t["trigger"], t["source"], t["dest"]) for t in config["transitions"]}
    built = {
        (trigger, source, transition.dest)
        for trigger, event in compiled.machine.events.items()
        for source, transitions in event.transitions.items()
        for transition in transitions
    }
    assert built == declared
    assert set(compiled.machine.states) == set(config["states"])


def test_global_intents_only_in_waiting_states() -> None:
    """Global intents route from every waiting state but never from decide or terminal states."""
    compiled = compile_policy(load_policy(REFUND_POLICY))
    config = compiled.machine_config()
    for name, state in compiled.states.items():
        triggers = transitions_from(config, name)
        if state.kind == "wait":
            handover = "handoff" if name == "confirm_handoff" else "confirm_handoff"
            assert triggers["intent:talk_to_human"] == handover, name
            assert triggers["intent:goodbye"] == "closed", name
            assert "ask_refund_policy" in state.routes, name
            assert "talk_to_human" in state.allowed, name
        else:
            assert not any(t.startswith("intent:") for t in triggers), name
            assert state.routes == {}, name
            assert state.allowed == frozenset(), name
    kinds = {name: state.kind for name, state in compiled.states.items()}
    assert kinds["handoff"] == kinds["closed"] == "terminal"
    assert kinds["lookup_order"] == kinds["check_code"] == "decide"
    assert transitions_from(config, "handoff") == {}
    assert transitions_from(config, "closed") == {}


def test_allowed_labels_are_the_state_intents_plus_out_of_scope() -> None:
    """A waiting state's labels are its intents in policy order, then out_of_scope."""
    compiled = compile_policy(load_policy(REFUND_POLICY))
    confirm = compiled.states["confirm_refund"]
    assert [label.name for label in confirm.labels] == [
        "affirm",
        "deny",
        "ask_refund_policy",
        "greet",
        "talk_to_human",
        "goodbye",
        "out_of_scope",
    ]
    assert confirm.allowed == {label.name for label in confirm.labels}
    assert confirm.examples["yes please"] == "affirm"
    assert "i want a refund" not in confirm.examples


def test_required_slots_are_collected() -> None:
    """Slots a route requires are extracted in that state even without `collect`."""
    compiled = compile_policy(load_policy(REFUND_POLICY))
    assert compiled.states["greeting"].collect == ("order_id",)
    assert compiled.states["verify"].collect == ("verification_code",)


def test_state_overrides_a_global_intent(write_policy: Writer) -> None:
    """A state's own route for a global intent replaces the global one in that state only."""
    path = write_policy(
        policy=lambda t: t.replace(
            "      greet: {say: welcome}", "      greet: {say: welcome}\n      stop: {say: sorry}"
        )
    )
    compiled = compile_policy(load_policy(path))
    start = compiled.states["start"]
    assert start.routes["stop"].to is None
    assert start.routes["stop"].say == ("sorry",)
    assert "intent:stop" not in transitions_from(compiled.machine_config(), "start")


def test_globals_false_drops_global_intents(write_policy: Writer) -> None:
    """A state with `globals: false` has no global routes and no global labels."""
    path = write_policy(
        policy=lambda t: t.replace("    say: welcome\n", "    say: welcome\n    globals: false\n")
    )
    compiled = compile_policy(load_policy(path))
    start = compiled.states["start"]
    assert "stop" not in start.routes
    assert "stop" not in start.allowed
    assert transitions_from(compiled.machine_config(), "start") == {"intent:give_number": "judge"}


def test_global_fallback_target_only_leaves_waiting_states(write_policy: Writer) -> None:
    """A global fallback with `to` leaves waiting states only, never terminal or decide ones."""
    path = write_policy(
        policy=lambda t: t.replace(
            "  fallback: {say: sorry}", "  fallback: {say: sorry, to: start}"
        )
    )
    compiled = compile_policy(load_policy(path))
    config = compiled.machine_config()
    assert transitions_from(config, "start")["fallback"] == "start"
    assert transitions_from(config, "done") == {}
    assert set(transitions_from(config, "judge")) == {"outcome:small", "outcome:big"}


def test_policy_hash_pins_policy_catalog_and_code(write_policy: Writer) -> None:
    """The policy hash changes when the catalog wording or decision code changes."""
    base = compile_policy(load_policy(write_policy())).hash
    again = compile_policy(load_policy(write_policy())).hash
    reworded = compile_policy(
        load_policy(write_policy(catalog=lambda t: t.replace("Bye.", "Goodbye.")))
    ).hash
    recoded = compile_policy(
        load_policy(write_policy(decisions=lambda t: t.replace("< 50", "< 60")))
    ).hash
    assert base == again
    assert len({base, reworded, recoded}) == 3
