"""Decision functions that raise, hang, or return what they did not declare: the turn falls back.

Every faulty decision below runs in the mini policy's ``judge`` state (entered when the user
gives a number). The turn must say the error line, name the function in its error, emit no
effect, and leave the session exactly as it was; the next turn must work normally.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sopagent import Agent, MemorySink, ScriptedBackend, Session, load_agent
from sopagent._limits import DecisionRunner, DecisionTimeoutError

Writer = Callable[..., Path]

HEADER = "from sopagent import Effect, Outcome, decision\n\n\n"


def faulty(body: str, outcomes: str = '["small", "big"]', extra: str = "") -> str:
    """A decision module whose ``judge`` runs ``body``."""
    return HEADER + f"@decision(outcomes={outcomes}{extra})\ndef judge(ctx):\n{body}\n"


def agent_for(
    write_policy: Writer, decisions: str | None, policy: Callable[[str], str] | None = None
) -> Agent:
    """The mini policy's agent with ``decisions`` as its module; the model says give_number."""
    path = write_policy(decisions=decisions, policy=policy)
    return load_agent(path, backend=ScriptedBackend(default="give_number"), audit=MemorySink())


def frozen(session: Session) -> str:
    """Everything a failed turn must leave as it was, except the turn count and history."""
    return session.model_dump_json(include={"state", "slots", "facts", "started", "ended"})


def assert_falls_back(agent: Agent, fragment: str) -> None:
    """One turn into ``judge`` says the error line, keeps the session, reports ``fragment``."""
    session = agent.new_session(seed=1)
    agent.start(session)
    before = frozen(session)
    turn = agent.respond(session, "my number is 7")
    assert turn.response_ids == ("oops",)
    assert turn.error is not None
    assert turn.error.startswith("DecisionError: judge")
    assert fragment in turn.error
    assert turn.effects == ()
    assert frozen(session) == before
    assert session.turns == 1
    event = agent.audit.events[-1]  # type: ignore[attr-defined]
    assert event["error"] == turn.error
    assert event["responses"] == ["oops"]


CASES: dict[str, tuple[str, str, str]] = {
    "raises": ('    raise RuntimeError("database down")', "raised RuntimeError: database down", ""),
    "raises_key_error": ('    return ctx.slots["missing"]', "raised KeyError", ""),
    "returns_none": ("    return None", "returned NoneType, not an outcome", ""),
    "returns_int": ("    return 3", "returned int, not an outcome", ""),
    "returns_list": ('    return ["small"]', "returned list, not an outcome", ""),
    "undeclared_outcome": ('    return "medium"', "undeclared outcome 'medium'", ""),
    "undeclared_outcome_object": ('    return Outcome("huge")', "undeclared outcome 'huge'", ""),
    "undeclared_slot": (
        '    return Outcome("small", slots={"colour": "red"})',
        "set undeclared slot 'colour'",
        "",
    ),
    "undeclared_fact": (
        '    return Outcome("small", facts={"mood": "fine"})',
        "set undeclared fact 'mood'",
        "",
    ),
    "slot_out_of_range": (
        '    return Outcome("small", slots={"number": 1000})',
        "set slot 'number' to an invalid value",
        "",
    ),
    "slot_wrong_type": (
        '    return Outcome("small", slots={"number": "seven"})',
        "set slot 'number' to an invalid value",
        "",
    ),
    "fact_too_long": (
        '    return Outcome("small", facts={"verdict": "x" * 10_000})',
        "set fact 'verdict' to an invalid value",
        "",
    ),
    "promised_value_missing": (
        '    return Outcome("small")',
        "without a value for verdict",
        ', sets={"small": ["verdict"]}',
    ),
    "effect_not_an_effect": (
        '    return Outcome("small", effects=[{"name": "ping"}])',
        "among its effects, not an Effect",
        ', effects={"small": ["ping"]}',
    ),
    "undeclared_effect": (
        '    return Outcome("small", effects=[Effect(name="ping")])',
        "returned effect 'ping', which it does not declare",
        "",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_faulty_decision_falls_back_and_keeps_the_session(write_policy: Writer, case: str) -> None:
    """Each kind of faulty decision says the error line and leaves the session unchanged."""
    body, fragment, extra = CASES[case]
    agent = agent_for(write_policy, faulty(body, extra=extra), policy=_with_ping_effect)
    assert_falls_back(agent, fragment)


def _with_ping_effect(policy: str) -> str:
    return policy.replace("global:\n", "effects:\n  ping: {description: A test effect.}\nglobal:\n")


def test_a_failed_decision_does_not_spoil_the_next_turn(write_policy: Writer) -> None:
    """After a decision failed once, the same session completes the procedure."""
    module = faulty(
        "    calls.append(1)\n"
        "    if len(calls) == 1:\n"
        '        raise RuntimeError("first call fails")\n'
        '    return "small"',
    ).replace(HEADER, HEADER + "calls = []\n\n\n")
    agent = agent_for(write_policy, module)
    session = agent.new_session()
    agent.start(session)
    first = agent.respond(session, "my number is 7")
    assert first.error is not None
    assert session.state == "start"
    second = agent.respond(session, "my number is 7")
    assert second.error is None
    assert second.response_ids == ("small", "bye")
    assert session.state == "done"


def test_a_hanging_decision_is_abandoned_after_its_limit(write_policy: Writer) -> None:
    """With ``limits.decision_seconds``, a decision that hangs fails the turn; it is abandoned."""
    module = faulty(
        "    release.wait(30)\n    return 'small'",
    ).replace(HEADER, HEADER + "import threading\n\nrelease = threading.Event()\n\n\n")
    agent = agent_for(write_policy, module, policy=_limited(0.2))
    release = agent.compiled.functions["judge"].__globals__["release"]
    try:
        assert_falls_back(agent, "ran longer than 0.2 s and was abandoned")
        runner = agent._runner
        assert runner is not None
        assert runner.hung == 1
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while runner.hung and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner.hung == 0, "the abandoned call did not end once it was released"


def test_a_limited_decision_runs_normally_within_its_limit(write_policy: Writer) -> None:
    """A decision within its time limit gives its outcome and values as without a limit."""
    agent = agent_for(write_policy, None, policy=_limited(30))
    session = agent.new_session()
    agent.start(session)
    turn = agent.respond(session, "my number is 70")
    assert turn.error is None
    assert turn.response_ids == ("big", "bye")
    assert session.facts == {"verdict": "big"}
    assert [t.name for t in threading.enumerate()].count("sopagent-decision") >= 1


def test_a_limited_decision_that_raises_reports_its_exception(write_policy: Writer) -> None:
    """An exception raised on the worker thread reaches the turn as the function's error."""
    agent = agent_for(
        write_policy, faulty('    raise ValueError("no judge today")'), policy=_limited(30)
    )
    assert_falls_back(agent, "raised ValueError: no judge today")


def _limited(seconds: float) -> Callable[[str], str]:
    def edit(policy: str) -> str:
        return policy.replace("global:\n", f"limits: {{decision_seconds: {seconds}}}\nglobal:\n")

    return edit


def test_runner_refuses_calls_while_too_many_hang() -> None:
    """Past its cap of abandoned calls the runner refuses at once instead of adding threads."""
    release = threading.Event()
    runner = DecisionRunner(0.05, max_abandoned=2)

    def hang(_: Any) -> str:
        release.wait(30)
        return "late"

    try:
        for _ in range(2):
            with pytest.raises(DecisionTimeoutError, match="abandoned"):
                runner.call(hang, None)
        assert runner.hung == 2
        with pytest.raises(DecisionTimeoutError, match="still running"):
            runner.call(lambda _: "quick", None)
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while runner.hung and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner.hung == 0
    assert runner.call(lambda value: value * 2, 21) == 42


def test_runner_reuses_its_worker_thread() -> None:
    """Calls that return in time share one worker thread rather than starting one each."""
    runner = DecisionRunner(5)
    names = {runner.call(lambda _: threading.get_ident(), None) for _ in range(20)}
    assert len(names) == 1
