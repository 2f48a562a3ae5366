"""`sopagent check` is sound: what its rules rule out never happens when the policy runs.

Random small policies (tests/strategies.py) are checked, then driven with arbitrary text,
arbitrary backend answers and forced labels. A line rendered without a value its placeholder
needs, a turn that loops through states without waiting, or a turn that succeeds without
saying anything must each have been reported by check beforehand (SOP047/SOP048, SOP042,
SOP044). The converse is not claimed: check may report paths the real functions never take.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    GENERATED_CATALOG,
    GENERATED_RESPONSES,
    Answer,
    DrawnBackend,
    answers,
    generated_labels,
    generated_policies,
    generated_texts,
)

from sopagent import Agent, Catalog, MemorySink, Policy, compile_policy
from sopagent._check import check_policy, resolve_decisions
from sopagent._flow import analyze

STEP = st.tuples(
    generated_texts(),
    answers(generated_labels(), GENERATED_RESPONSES),
    st.one_of(st.none(), st.none(), st.sampled_from(generated_labels())),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=generated_policies(), steps=st.lists(STEP, max_size=15))
def test_what_check_rules_out_never_happens(
    spec: dict[str, Any], steps: list[tuple[str, Answer, str | None]]
) -> None:
    """Missing placeholder values, turn loops and silent turns were all reported by check."""
    policy = Policy.model_validate(spec)
    catalog = Catalog.model_validate(GENERATED_CATALOG)
    functions, problems = resolve_decisions(policy)
    problems += check_policy(policy, catalog, functions)
    assert not [p for p in problems if p.severity == "error"]
    codes = {p.code for p in analyze(policy, catalog, functions)}
    backend = DrawnBackend()
    agent = Agent(compile_policy(policy, catalog), backend, audit=MemorySink())
    session = agent.new_session()
    turns = [agent.start(session)]
    for text, answer, forced in steps:
        if session.ended:
            break
        backend.answer = answer
        turns.append(agent.respond(session, text, intent=forced))
    for turn in turns:
        error = turn.error or ""
        if "which has no value" in error:
            assert codes & {"SOP047", "SOP048"}, (error, codes)
        if "more than 64 states" in error:
            assert "SOP042" in codes, (error, codes)
        if turn.error is None:
            assert turn.responses or "SOP044" in codes, (turn.path, codes)
