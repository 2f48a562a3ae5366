"""Tests of the state diagram: the graph, the built-in layered layout, DOT and Mermaid."""

from __future__ import annotations

import itertools
import re
import shutil
import sys
from pathlib import Path

import pytest

from sopagent._compile import compile_policy
from sopagent._diagram import GLOBAL, START, _Layout, dot_source, dot_svg, graph_of, mermaid, svg
from sopagent._load import load_policy

ROOT = Path(__file__).resolve().parents[2]
REFUND = ROOT / "policies" / "refund.yaml"


def refund_graph():  # type: ignore[no-untyped-def]
    """The refund policy's diagram."""
    return graph_of(compile_policy(load_policy(REFUND)))


def test_global_routes_are_drawn_once() -> None:
    """talk_to_human and goodbye come from one 'any waiting state' node, not from each state."""
    graph = refund_graph()
    globals_ = [e for e in graph.edges if e.source == GLOBAL]
    assert {(e.dest, e.labels) for e in globals_} == {
        ("confirm_handoff", ("talk_to_human",)),
        ("closed", ("goodbye",)),
    }
    assert all(e.dashed for e in globals_)
    # confirm_handoff declares its own talk_to_human route: drawn as its own edge.
    own = [e for e in graph.edges if e.source == "confirm_handoff" and e.dest == "handoff"]
    assert own[0].labels == ("talk_to_human", "affirm")
    assert not any(e.source == "verify" and e.dest == "closed" for e in graph.edges)
    assert (START, "greeting") in {(e.source, e.dest) for e in graph.edges}


def test_every_route_of_the_machine_is_in_the_graph() -> None:
    """Each transition is an edge label, from its state or from the global node."""
    compiled = compile_policy(load_policy(REFUND))
    graph = graph_of(compiled)
    drawn = {(e.source, e.dest, label) for e in graph.edges for label in e.labels}
    for item in compiled.machine_config()["transitions"]:
        label = item["trigger"].partition(":")[2] or item["trigger"]
        assert (item["source"], item["dest"], label) in drawn or (
            GLOBAL,
            item["dest"],
            label,
        ) in drawn


def bench_policy(directory: Path, states: int) -> Path:
    """A policy of ``states`` states from bench/generate_policy.py (bench is no package)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from generate_policy import generate  # noqa: PLC0415 (found only on this path)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    path: Path = generate(directory, states=states, intents=8)
    return path


def _overlap(a, b) -> bool:  # type: ignore[no-untyped-def]
    return not (
        a.x + a.width / 2 <= b.x - b.width / 2
        or b.x + b.width / 2 <= a.x - a.width / 2
        or a.y + a.height / 2 <= b.y - b.height / 2
        or b.y + b.height / 2 <= a.y - a.height / 2
    )


@pytest.mark.parametrize("states", [14, 30, 120])
def test_the_layout_keeps_boxes_and_labels_apart(tmp_path: Path, states: int) -> None:
    """No two boxes (states, labels, bend points) overlap; edges only go down the ranks."""
    if states == 14:
        graph = refund_graph()
    else:
        policy = bench_policy(tmp_path, states)
        graph = graph_of(compile_policy(load_policy(policy)))
    layout = _Layout(graph)
    before = layout.crossings()
    layout.order()
    assert layout.crossings() <= before
    layout.place()
    boxes = list(layout.boxes.values())
    for layer in layout.layers:
        placed = [layout.boxes[b] for b in layer]
        for first, second in itertools.pairwise(placed):
            assert first.x + first.width / 2 <= second.x - second.width / 2 + 0.01
    real = [b for b in boxes if b.kind not in ("dummy",)]
    for i, first in enumerate(real):
        for second in real[i + 1 :]:
            assert not _overlap(first, second), (first.id, second.id)
    for route in layout.routes:
        ranks = [layout.boxes[b].rank for b in route.chain]
        assert ranks == sorted(ranks)
        assert len(set(ranks)) == len(ranks)


def test_the_svg_names_every_state_and_needs_nothing_else() -> None:
    """Every state is a group with its name; no script, no external reference."""
    graph = refund_graph()
    drawing = svg(graph)
    assert drawing.startswith("<svg ")
    for node in graph.nodes:
        if node.kind in ("wait", "decide", "terminal"):
            assert f'data-state="{node.id}"' in drawing
            assert f">{node.id}</tspan>" in drawing
    assert "<script" not in drawing
    assert not re.search(r'(href|src)="(?!#)', drawing)
    width = int(re.search(r'width="(\d+)"', drawing).group(1))  # type: ignore[union-attr]
    assert 300 < width < 2000


def test_mermaid_and_dot() -> None:
    """Mermaid: a state diagram with the global node; DOT: every node and edge."""
    graph = refund_graph()
    text = mermaid(graph)
    assert text.startswith("stateDiagram-v2\n")
    assert "    [*] --> greeting\n" in text
    assert "    any_waiting_state --> closed : goodbye\n" in text
    assert "    lookup_order : lookup_order (decide find_order)\n" in text
    source = dot_source(graph)
    assert '"lookup_order" -> "check_eligibility" [label="found"];' in source


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz (.ci/run installs it)")
def test_graphviz_draws_the_same_graph() -> None:
    """With dot installed, its SVG has every state."""
    graph = refund_graph()
    drawing = dot_svg(graph)
    assert drawing is not None
    assert drawing.startswith('<svg class="state-diagram"')
    for node in graph.nodes:
        if node.kind in ("wait", "decide", "terminal"):
            assert f">{node.id}</text>" in drawing
