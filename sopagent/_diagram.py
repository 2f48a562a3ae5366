"""The state diagram of a compiled policy, as a graph, a layered SVG drawing, DOT and Mermaid.

The graph has one node per state, a start marker, and one edge per pair of states a route
connects (labelled by the intents, outcomes and rules that take it). Routes every waiting state
inherits from ``global:`` are drawn once, from an "any waiting state" node, instead of once per
state: on a policy of thirty states that is the difference between a readable diagram and a
thicket of identical arrows.

`svg` draws the graph with a layered layout of its own (no dependency, no network, the same
drawing on every machine): cycles are broken by a depth-first search from the initial state,
states are ranked by longest path, edges that span ranks get bend points, every label gets a
slot of its own in the rank between its two states (so labels never overlap states or each
other), the order within ranks is improved by barycenter sweeps that keep the ordering with
the fewest crossings, and positions are pulled toward the neighbours' median. `dot_svg` asks
Graphviz for the same graph when ``dot`` is installed.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from sopagent._compile import CompiledPolicy

__all__ = ["Edge", "Graph", "Node", "dot_source", "dot_svg", "graph_of", "mermaid", "svg"]

START = "__start__"
GLOBAL = "__global__"
NodeKind = Literal["wait", "decide", "terminal", "start", "global"]


@dataclass(frozen=True)
class Node:
    """A node of the diagram: a state, the start marker or the global-routes node."""

    id: str
    kind: NodeKind
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Edge:
    """All the routes from one node to another, with their labels in declaration order."""

    source: str
    dest: str
    labels: tuple[str, ...]
    dashed: bool = False


@dataclass(frozen=True)
class Graph:
    """The diagram as plain data."""

    name: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    def node(self, node_id: str) -> Node:
        """The node named ``node_id``."""
        return next(n for n in self.nodes if n.id == node_id)


def _label(trigger: str) -> str:
    kind, _, name = trigger.partition(":")
    return name or kind


def graph_of(compiled: CompiledPolicy) -> Graph:
    """The diagram of ``compiled``: its states and the machine's transitions between them."""
    policy = compiled.policy
    inherited: dict[str, set[str]] = {}
    for name, state in policy.states.items():
        if compiled.states[name].kind != "wait" or not state.globals:
            continue
        triggers = {f"intent:{i}" for i in policy.global_.on if i not in state.on}
        if state.fallback is None:
            triggers.add("fallback")
        if state.confidence is None and policy.global_.confidence is not None:
            triggers.add("unsure")
        inherited[name] = triggers
    global_targets: dict[str, list[str]] = {}
    grouped: dict[tuple[str, str], list[str]] = {}
    for item in compiled.machine_config()["transitions"]:
        trigger, source, dest = item["trigger"], item["source"], item["dest"]
        if trigger in inherited.get(source, ()):
            labels = global_targets.setdefault(dest, [])
            if _label(trigger) not in labels:
                labels.append(_label(trigger))
            continue
        labels = grouped.setdefault((source, dest), [])
        if _label(trigger) not in labels:
            labels.append(_label(trigger))
    nodes: list[Node] = [Node(START, "start", ())]
    if global_targets:
        nodes.append(Node(GLOBAL, "global", ("any waiting state", "(global routes)")))
    for name, compiled_state in compiled.states.items():
        if compiled_state.kind == "decide":
            lines = (name, f"decide {compiled_state.decide_name}")
            nodes.append(Node(name, "decide", lines))
        else:
            nodes.append(Node(name, compiled_state.kind, (name,)))
    edges = [Edge(START, policy.initial, ())]
    edges += [
        Edge(GLOBAL, dest, tuple(labels), dashed=True) for dest, labels in global_targets.items()
    ]
    edges += [Edge(s, d, tuple(labels)) for (s, d), labels in grouped.items()]
    return Graph(compiled.name, tuple(nodes), tuple(edges))


# --- layout ----------------------------------------------------------------------------------

_FONT = 12
_CHAR = 7.0  # width of an average character of the font at _FONT px, a little generous
_LINE = 15
_PAD_X = 12
_PAD_Y = 8
_GAP_X = 22
_GAP_Y = 26
_LABEL_WRAP = 26


def _wrap(labels: Sequence[str]) -> list[str]:
    lines: list[str] = []
    current = ""
    for label in labels:
        piece = label if not current else f"{current}, {label}"
        if current and len(piece) > _LABEL_WRAP:
            lines.append(current + ",")
            current = label
        else:
            current = piece
    if current:
        lines.append(current)
    return lines


@dataclass
class _Box:
    id: str
    rank: int
    width: float
    height: float
    kind: str  # a node kind, "dummy" or "label"
    lines: tuple[str, ...] = ()
    x: float = 0.0
    y: float = 0.0
    up: list[str] = field(default_factory=list)
    down: list[str] = field(default_factory=list)


def _size(node: Node) -> tuple[float, float]:
    if node.kind == "start":
        return 14.0, 14.0
    width = max(len(line) for line in node.lines) * _CHAR + 2 * _PAD_X
    height = len(node.lines) * _LINE + 2 * _PAD_Y
    if node.kind == "decide":
        width += 28  # the slanted ends of the hexagon
    return width, height


def _ranks(graph: Graph) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """Longest-path ranks after breaking cycles; the edges reversed to break them."""
    ids = [n.id for n in graph.nodes]
    out: dict[str, list[str]] = {i: [] for i in ids}
    for edge in graph.edges:
        if edge.source != edge.dest:
            out[edge.source].append(edge.dest)
    reversed_edges: set[tuple[str, str]] = set()
    colour: dict[str, int] = {}
    for root in ids:
        if root in colour:
            continue
        stack = [(root, iter(out[root]))]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
            elif colour.get(child) == 1:
                reversed_edges.add((node, child))
            elif child not in colour:
                colour[child] = 1
                stack.append((child, iter(out[child])))
    forward: dict[str, list[str]] = {i: [] for i in ids}
    indegree = dict.fromkeys(ids, 0)
    for source, targets in out.items():
        for dest in targets:
            a, b = (dest, source) if (source, dest) in reversed_edges else (source, dest)
            forward[a].append(b)
            indegree[b] += 1
    rank = dict.fromkeys(ids, 0)
    ready = [i for i in ids if indegree[i] == 0]
    while ready:
        node = ready.pop(0)
        for dest in forward[node]:
            rank[dest] = max(rank[dest], rank[node] + 1)
            indegree[dest] -= 1
            if indegree[dest] == 0:
                ready.append(dest)
    return rank, reversed_edges


@dataclass
class _Route:
    """An edge as drawn: its chain of boxes from the drawn source to the drawn dest."""

    edge: Edge
    chain: list[str]
    reversed: bool
    label: str | None


class _Layout:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.boxes: dict[str, _Box] = {}
        self.routes: list[_Route] = []
        self.loops: list[Edge] = []
        rank, reversed_edges = _ranks(graph)
        for node in graph.nodes:
            width, height = _size(node)
            self.boxes[node.id] = _Box(
                node.id, 2 * rank[node.id], width, height, node.kind, node.lines
            )
        for number, edge in enumerate(graph.edges):
            if edge.source == edge.dest:
                self.loops.append(edge)
                continue
            back = (edge.source, edge.dest) in reversed_edges
            top, bottom = (edge.dest, edge.source) if back else (edge.source, edge.dest)
            chain = [top]
            label_id: str | None = None
            lines = _wrap(edge.labels)
            for step in range(self.boxes[top].rank + 1, self.boxes[bottom].rank):
                box_id = f"~{number}.{step}"
                # The label sits next to the state the route leaves.
                nearest = self.boxes[bottom].rank - 1 if back else self.boxes[top].rank + 1
                if step == nearest and lines:
                    width = max(len(line) for line in lines) * _CHAR * 0.92 + 10
                    self.boxes[box_id] = _Box(
                        box_id, step, width, len(lines) * 13 + 4, "label", tuple(lines)
                    )
                    label_id = box_id
                else:
                    self.boxes[box_id] = _Box(box_id, step, 8, 8, "dummy")
                chain.append(box_id)
            chain.append(bottom)
            for a, b in itertools.pairwise(chain):
                self.boxes[a].down.append(b)
                self.boxes[b].up.append(a)
            self.routes.append(_Route(edge, chain, back, label_id))
        count = max(b.rank for b in self.boxes.values()) + 1
        self.layers: list[list[str]] = [[] for _ in range(count)]
        for box in self.boxes.values():  # insertion order: declaration order of the policy
            self.layers[box.rank].append(box.id)

    # -- order within ranks -------------------------------------------------------------------

    def crossings(self) -> int:
        total = 0
        for upper, lower in zip(self.layers, self.layers[1:], strict=False):
            position = {b: i for i, b in enumerate(lower)}
            pairs = [
                (i, position[d])
                for i, box in enumerate(upper)
                for d in self.boxes[box].down
                if d in position
            ]
            pairs.sort()
            # Count inversions of the lower positions (pairs ordered by upper position).
            seen: list[int] = []
            for _, low in pairs:
                total += sum(1 for s in seen if s > low)
                seen.append(low)
        return total

    def order(self, sweeps: int = 12) -> None:
        best = [list(layer) for layer in self.layers]
        best_crossings = self.crossings()
        for sweep in range(sweeps):
            down = sweep % 2 == 0
            indices = range(1, len(self.layers)) if down else range(len(self.layers) - 2, -1, -1)
            for index in indices:
                near = self.layers[index - 1] if down else self.layers[index + 1]
                position = {b: i for i, b in enumerate(near)}
                layer = self.layers[index]
                current = {b: i for i, b in enumerate(layer)}
                centres = {b: self._centre(b, position, current[b], down=down) for b in layer}
                layer.sort(key=lambda b: (centres[b], current[b]))
            crossings = self.crossings()
            if crossings < best_crossings:
                best_crossings = crossings
                best = [list(layer) for layer in self.layers]
            if best_crossings == 0:
                break
        self.layers = best

    def _centre(self, box_id: str, position: dict[str, int], now: int, *, down: bool) -> float:
        """The median position of a box's neighbours in the rank swept from."""
        box = self.boxes[box_id]
        linked = sorted(position[n] for n in (box.up if down else box.down) if n in position)
        if not linked:
            return float(now)
        middle = len(linked) // 2
        if len(linked) % 2:
            return float(linked[middle])
        return (linked[middle - 1] + linked[middle]) / 2

    # -- coordinates --------------------------------------------------------------------------

    def place(self, passes: int = 8) -> tuple[float, float]:
        y = 20.0
        for layer in self.layers:
            height = max((self.boxes[b].height for b in layer), default=0.0)
            for box_id in layer:
                self.boxes[box_id].y = y + height / 2
            y += height + _GAP_Y
        for layer in self.layers:
            x = 0.0
            for box_id in layer:
                box = self.boxes[box_id]
                box.x = x + box.width / 2
                x += box.width + _GAP_X
        for number in range(passes):
            down = number % 2 == 0
            layers = self.layers if down else self.layers[::-1]
            for layer in layers:
                desired = []
                for box_id in layer:
                    box = self.boxes[box_id]
                    linked = [self.boxes[n].x for n in (box.up + box.down)]
                    if linked:
                        linked.sort()
                        middle = len(linked) // 2
                        target = (
                            linked[middle]
                            if len(linked) % 2
                            else (linked[middle - 1] + linked[middle]) / 2
                        )
                    else:
                        target = box.x
                    desired.append(target)
                self._pack(layer, desired)
        left = min(b.x - b.width / 2 for b in self.boxes.values())
        right = max(b.x + b.width / 2 for b in self.boxes.values())
        loops = 60.0 if self.loops else 0.0
        for box in self.boxes.values():
            box.x += 20 - left
        return right - left + 40 + loops, y

    def _pack(self, layer: list[str], desired: list[float]) -> None:
        """Move a rank's boxes toward ``desired`` centres, in order, without overlaps."""
        boxes = [self.boxes[b] for b in layer]
        xs = list(desired)
        for i in range(1, len(boxes)):
            least = xs[i - 1] + (boxes[i - 1].width + boxes[i].width) / 2 + _GAP_X
            xs[i] = max(xs[i], least)
        # Shift back left by the mean excess so the rank stays centred on what it wanted.
        excess = sum(x - d for x, d in zip(xs, desired, strict=True)) / max(1, len(xs))
        xs = [x - excess for x in xs]
        for i in range(len(boxes) - 2, -1, -1):
            most = xs[i + 1] - (boxes[i + 1].width + boxes[i].width) / 2 - _GAP_X
            xs[i] = min(xs[i], most)
        for box, x in zip(boxes, xs, strict=True):
            box.x = x


# --- drawing ---------------------------------------------------------------------------------

_STYLE = {
    "wait": ("#eef4ff", "#3a5a9a"),
    "decide": ("#fff4d6", "#b8860b"),
    "terminal": ("#e9f7ec", "#2e7d32"),
    "global": ("#f5f5f5", "#777777"),
}


def _text(x: float, y: float, lines: Sequence[str], *, size: int = _FONT, cls: str = "") -> str:
    first = y - (len(lines) - 1) * (size + 2) / 2
    spans = "".join(
        f'<tspan x="{x:.1f}" y="{first + i * (size + 2):.1f}">{escape(line)}</tspan>'
        for i, line in enumerate(lines)
    )
    extra = f' class="{cls}"' if cls else ""
    return (
        f'<text{extra} text-anchor="middle" dominant-baseline="central"'
        f' font-size="{size}">{spans}</text>'
    )


def _node_svg(box: _Box) -> str:
    x, y, w, h = box.x, box.y, box.width, box.height
    if box.kind == "start":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="7" fill="#333"/>'
    fill, stroke = _STYLE[box.kind]
    left, top = x - w / 2, y - h / 2
    parts = []
    if box.kind == "decide":
        points = [
            (left, y), (left + 14, top), (left + w - 14, top),
            (left + w, y), (left + w - 14, top + h), (left + 14, top + h),
        ]  # fmt: skip
        coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        parts.append(f'<polygon points="{coords}" fill="{fill}" stroke="{stroke}"/>')
    else:
        dash = ' stroke-dasharray="5 3"' if box.kind == "global" else ""
        parts.append(
            f'<rect x="{left:.1f}" y="{top:.1f}" width="{w:.1f}" height="{h:.1f}" rx="8"'
            f' fill="{fill}" stroke="{stroke}"{dash}/>'
        )
        if box.kind == "terminal":
            parts.append(
                f'<rect x="{left + 3:.1f}" y="{top + 3:.1f}" width="{w - 6:.1f}"'
                f' height="{h - 6:.1f}" rx="6" fill="none" stroke="{stroke}"/>'
            )
    parts.append(_text(x, y, box.lines))
    kind = {"wait": "waits", "decide": "decides", "terminal": "ends", "global": "global"}
    title = escape(box.lines[0]) if box.kind != "global" else "global routes"
    return (
        f'<g class="state {box.kind}" data-state="{escape(box.id)}"><title>{title}'
        f" ({kind[box.kind]})</title>{''.join(parts)}</g>"
    )


def _path(points: Sequence[tuple[float, float]]) -> str:
    """A smooth path through ``points`` (Catmull-Rom), leaving and entering vertically."""
    x0, y0 = points[0]
    out = [f"M{x0:.1f},{y0:.1f}"]
    # Tangents: vertical at both ends, along the neighbours' chord in between.
    tangents: list[tuple[float, float]] = []
    for i in range(len(points)):
        if i == 0 or i == len(points) - 1:
            span = points[1][1] - points[0][1] if i == 0 else points[-1][1] - points[-2][1]
            tangents.append((0.0, span))
        else:
            (ax, ay), (bx, by) = points[i - 1], points[i + 1]
            tangents.append(((bx - ax) / 2, (by - ay) / 2))
    for i in range(1, len(points)):
        (ax, ay), (bx, by) = points[i - 1], points[i]
        (tax, tay), (tbx, tby) = tangents[i - 1], tangents[i]
        out.append(
            f"C{ax + tax / 3:.1f},{ay + tay / 3:.1f} {bx - tbx / 3:.1f},{by - tby / 3:.1f}"
            f" {bx:.1f},{by:.1f}"
        )
    return " ".join(out)


def _edge_svg(layout: _Layout, route: _Route) -> str:
    boxes = layout.boxes
    chain = route.chain if not route.reversed else route.chain[::-1]
    first, last = boxes[chain[0]], boxes[chain[-1]]
    downward = not route.reversed
    points = [(first.x, first.y + (first.height / 2 if downward else -first.height / 2))]
    points += [(boxes[b].x, boxes[b].y) for b in chain[1:-1]]
    points.append((last.x, last.y - (last.height / 2 + 2 if downward else -last.height / 2 - 2)))
    edge = route.edge
    colour = "#777" if edge.dashed else ("#a0522d" if route.reversed else "#444")
    dash = ' stroke-dasharray="5 3"' if edge.dashed else ""
    marker = "arrow-global" if edge.dashed else ("arrow-back" if route.reversed else "arrow")
    parts = [
        f'<path d="{_path(points)}" fill="none" stroke="{colour}" stroke-width="1.3"{dash}'
        f' marker-end="url(#{marker})"/>'
    ]
    if route.label is not None:
        box = boxes[route.label]
        parts.append(
            f'<rect x="{box.x - box.width / 2:.1f}" y="{box.y - box.height / 2:.1f}"'
            f' width="{box.width:.1f}" height="{box.height:.1f}" rx="3" fill="#ffffff"'
            ' fill-opacity="0.92"/>'
        )
        parts.append(_text(box.x, box.y, box.lines, size=11, cls="label"))
    title = f"{edge.source} -> {edge.dest}" if edge.source != START else "start"
    return f'<g class="edge"><title>{escape(title)}</title>{"".join(parts)}</g>'


def _loop_svg(layout: _Layout, edge: Edge) -> str:
    box = layout.boxes[edge.source]
    right, top, bottom = box.x + box.width / 2, box.y - box.height / 4, box.y + box.height / 4
    path = (
        f"M{right:.1f},{top:.1f} C{right + 36:.1f},{top - 14:.1f} {right + 36:.1f},"
        f"{bottom + 14:.1f} {right + 2:.1f},{bottom:.1f}"
    )
    label = ", ".join(edge.labels)
    return (
        f'<g class="edge loop"><title>{escape(edge.source)} -> itself</title>'
        f'<path d="{path}" fill="none" stroke="#444" stroke-width="1.3"'
        ' marker-end="url(#arrow)"/>'
        f'<text x="{right + 40:.1f}" y="{box.y:.1f}" font-size="11" dominant-baseline="central"'
        f' class="label">{escape(label)}</text></g>'
    )


def _markers() -> str:
    def one(name: str, colour: str) -> str:
        return (
            f'<marker id="{name}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7"'
            f' markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"'
            f' fill="{colour}"/></marker>'
        )

    markers = one("arrow", "#444") + one("arrow-back", "#a0522d") + one("arrow-global", "#777")
    return f"<defs>{markers}</defs>"


def svg(graph: Graph) -> str:
    """The graph drawn as an SVG document fragment (an ``<svg>`` element), no scripts."""
    layout = _Layout(graph)
    layout.order()
    width, height = layout.place()
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="state-diagram" role="img"'
        f' width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}"'
        f' font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
        f"<title>State diagram of {escape(graph.name)}</title>",
        _markers(),
    ]
    parts += [_edge_svg(layout, route) for route in layout.routes]
    parts += [_loop_svg(layout, edge) for edge in layout.loops]
    parts += [_node_svg(box) for box in layout.boxes.values() if box.kind not in ("dummy", "label")]
    parts.append("</svg>")
    return "\n".join(parts)


# --- Graphviz and Mermaid ----------------------------------------------------------------------


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot_source(graph: Graph) -> str:
    """The graph in Graphviz's DOT language, drawn top to bottom."""
    lines = [
        f"digraph {_dot_id(graph.name)} {{",
        "  rankdir=TB; nodesep=0.35; ranksep=0.45;",
        '  node [shape=box, style="rounded,filled", fontname="DejaVu Sans", fontsize=11,'
        ' fillcolor="#eef4ff", color="#3a5a9a"];',
        '  edge [fontname="DejaVu Sans", fontsize=9, color="#444444"];',
    ]
    for node in graph.nodes:
        label = _dot_id("\n".join(node.lines)).replace("\n", "\\n")
        if node.kind == "start":
            lines.append(f'  {_dot_id(node.id)} [shape=point, width=0.15, label=""];')
        elif node.kind == "decide":
            lines.append(
                f'  {_dot_id(node.id)} [shape=hexagon, style=filled, fillcolor="#fff4d6",'
                f' color="#b8860b", label={label}];'
            )
        elif node.kind == "terminal":
            lines.append(
                f'  {_dot_id(node.id)} [peripheries=2, fillcolor="#e9f7ec", color="#2e7d32",'
                f" label={label}];"
            )
        elif node.kind == "global":
            lines.append(f'  {_dot_id(node.id)} [style="rounded,dashed", label={label}];')
        else:
            lines.append(f"  {_dot_id(node.id)} [label={label}];")
    for edge in graph.edges:
        label = _dot_id("\n".join(_wrap(edge.labels))).replace("\n", "\\n")
        style = ", style=dashed" if edge.dashed else ""
        lines.append(f"  {_dot_id(edge.source)} -> {_dot_id(edge.dest)} [label={label}{style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def dot_svg(graph: Graph, *, timeout: float = 30.0) -> str | None:
    """The graph drawn by Graphviz as an ``<svg>`` element, or None without ``dot``."""
    dot = shutil.which("dot")
    if dot is None:
        return None
    try:
        done = subprocess.run(
            [dot, "-Tsvg"],
            input=dot_source(graph),
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or "<svg" not in done.stdout:
        return None
    drawing = done.stdout[done.stdout.index("<svg") :]
    return drawing.replace("<svg ", '<svg class="state-diagram" ', 1)


_MERMAID_WORDS = frozenset(
    {"state", "note", "end", "direction", "class", "classdef", "click", "style", "as", "left"}
    | {"right", "of", "over", "fork", "join", "choice", "default"}
)


def mermaid(graph: Graph) -> str:
    """The graph as a Mermaid ``stateDiagram-v2``."""
    ids: dict[str, str] = {}
    for node in graph.nodes:
        if node.kind == "start":
            continue
        name = "any_waiting_state" if node.kind == "global" else node.id
        while name.lower() in _MERMAID_WORDS or name in ids.values():
            name = f"s_{name}"
        ids[node.id] = name
    lines = ["stateDiagram-v2"]
    for node in graph.nodes:
        if node.kind == "start":
            continue
        if node.kind == "decide":
            lines.append(f"    {ids[node.id]} : {node.lines[0]} ({node.lines[1]})")
        elif node.kind == "global":
            lines.append(f"    {ids[node.id]} : any waiting state (global routes)")
        elif ids[node.id] != node.id:
            lines.append(f'    state "{node.id}" as {ids[node.id]}')
    for edge in graph.edges:
        source = "[*]" if edge.source == START else ids[edge.source]
        label = f" : {', '.join(edge.labels)}" if edge.labels else ""
        lines.append(f"    {source} --> {ids[edge.dest]}{label}")
    for node in graph.nodes:
        if node.kind == "terminal":
            lines.append(f"    {ids[node.id]} --> [*]")
    decide = [ids[n.id] for n in graph.nodes if n.kind == "decide"]
    if decide:
        lines.append("    classDef decide fill:#fff4d6,stroke:#b8860b")
        lines.extend(f"    class {name} decide" for name in decide)
    return "\n".join(lines) + "\n"


def names_in(graph: Graph) -> Iterable[str]:
    """The state names the diagram shows."""
    return (n.id for n in graph.nodes if n.kind in ("wait", "decide", "terminal"))
