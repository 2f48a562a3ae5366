"""The review document of a policy: what a compliance reviewer reads and signs.

One self-contained file, HTML (no script, no stylesheet or font to fetch: it renders the same
offline, printed or archived) or Markdown (the diagram as a Mermaid block), with:

* the hash being approved (policy, catalog and decision code, as sessions are pinned to it)
  and the digest of every file it covers;
* the state diagram (`sopagent._diagram`: Graphviz when ``dot`` is installed, else the
  built-in layered layout; both drawn to SVG when the document is made);
* every state with what it says, the slots it collects, the intents it accepts and each of its
  routes (global ones marked);
* the catalog: every response with its wording, content hash, approval status and where it is
  said;
* the findings of the check, the result of each property from both `verify` engines, and the
  coverage of the conversation tests beside the policy;
* a sign-off block.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sopagent._diagram import Graph, dot_svg, graph_of, mermaid, svg
from sopagent.errors import PolicyError, PolicyLoadError, Problem

if TYPE_CHECKING:
    from sopagent._compile import CompiledPolicy, CompiledRoute
    from sopagent._coverage import Coverage
    from sopagent._verify import Report
    from sopagent.policy import Catalog

__all__ = [
    "Approval",
    "Review",
    "RouteRow",
    "approvals",
    "build_review",
    "check_findings",
    "render_html",
    "render_markdown",
]

Layout = Literal["auto", "builtin", "graphviz"]


# --- what goes into the review -----------------------------------------------------------------


def check_findings(compiled: CompiledPolicy) -> list[Problem]:
    """Every finding of `sopagent check` on the policy (its rule catalogue), sorted."""
    from sopagent._analysis import check_loaded  # noqa: PLC0415 (the rule modules are heavy)

    try:
        found = check_loaded(compiled.policy, compiled.catalog)
    except PolicyLoadError as exc:
        found = list(exc.problems)
    return sorted(found, key=Problem.sort_key)


@dataclass(frozen=True)
class Approval:
    """The approval status of one catalog response."""

    status: Literal["approved", "changed", "unapproved"]
    approved: str | None
    by: str | None = None
    at: str | None = None

    @property
    def text(self) -> str:
        """The status in words."""
        if self.status == "approved":
            return f"approved by {self.by} at {self.at}" if self.by else "approved"
        if self.status == "changed":
            return f"changed since approval (approved {self.approved})"
        return "not approved"


def approvals(catalog: Catalog) -> dict[str, Approval]:
    """Each response's approval status.

    The reviewers' lock file beside the catalog (`sopagent approve`) decides when it exists;
    otherwise each entry's inline ``approved:`` content hash does.
    """
    from sopagent._approval import read_lock, statuses  # noqa: PLC0415

    try:
        lock = read_lock(catalog)
    except PolicyLoadError:
        lock = None
    if lock is not None:
        return {
            s.id: Approval(s.status, s.approved_hash, s.by, s.at)
            for s in statuses(catalog, lock)
            if s.status != "stale"
        }
    out: dict[str, Approval] = {}
    for name, entry in catalog.responses.items():
        if entry.approved is None:
            out[name] = Approval("unapproved", None)
        elif entry.approved == entry.hash:
            out[name] = Approval("approved", entry.approved)
        else:
            out[name] = Approval("changed", entry.approved)
    return out


@dataclass(frozen=True)
class RouteRow:
    """One route of a state, as the review lists it."""

    when: str
    to: str | None
    say: tuple[str, ...]
    choose: tuple[str, ...]
    require: tuple[str, ...]
    scope: Literal["state", "global"]


@dataclass(frozen=True)
class TestsSummary:
    """The conversation tests found beside the policy and how they ran."""

    files: tuple[Path, ...]
    conversations: int
    passed: int
    coverage: Coverage | None
    problems: tuple[Problem, ...] = ()
    failures: tuple[str, ...] = ()


@dataclass
class Review:
    """Everything the review document shows."""

    compiled: CompiledPolicy
    source: Path
    created: dt.datetime
    findings: list[Problem]
    approvals: dict[str, Approval]
    graph: Graph
    diagram: str
    diagram_engine: str
    verification: Report | None
    verification_note: str
    tests: TestsSummary
    files: list[tuple[str, Path, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Headline figures, as plain JSON."""
        report = self.verification
        verdicts = [r.verdict for r in report.results] if report is not None else []
        coverage = self.tests.coverage
        return {
            "policy": self.compiled.name,
            "version": self.compiled.policy.version,
            "policy_hash": self.compiled.hash,
            "states": len(self.compiled.states),
            "responses": len(self.compiled.catalog.responses),
            "approved": sum(a.status == "approved" for a in self.approvals.values()),
            "findings": len(self.findings),
            "properties": len(verdicts),
            "proved": verdicts.count("proved"),
            "violated": verdicts.count("violated"),
            "not_refuted": verdicts.count("not_refuted"),
            "test_files": [str(p) for p in self.tests.files],
            "conversations": self.tests.conversations,
            "conversations_passed": self.tests.passed,
            "coverage": None if coverage is None else coverage.to_json(),
            "diagram": self.diagram_engine,
        }


def _digest(path: Path) -> str:
    try:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


def _shown(path: Path) -> Path:
    """A file as the document names it: relative to the working directory when inside it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd())
    except ValueError:
        return resolved


def _files(compiled: CompiledPolicy, source: Path) -> list[tuple[str, Path, str]]:
    out = [("policy", _shown(source), _digest(source))]
    catalog = compiled.catalog.source
    if catalog is not None:
        out.append(("catalog", _shown(catalog), _digest(catalog)))
    seen: set[Path] = set()
    for function in compiled.functions.values():
        module = inspect.getmodule(function)
        name = getattr(module, "__file__", None)
        if name and Path(name) not in seen:
            seen.add(Path(name))
            out.append(("decisions", _shown(Path(name)), _digest(Path(name))))
    return out


def _tests(compiled: CompiledPolicy, source: Path) -> TestsSummary:
    """Run the conversation tests beside the policy that test it."""
    from sopagent._coverage import coverage_of  # noqa: PLC0415
    from sopagent._testing import SUFFIX, Suite, load_test_file, render_failure  # noqa: PLC0415

    target = source.resolve()
    suite = Suite()
    files: list[Path] = []
    problems: list[Problem] = []
    for path in sorted(source.parent.glob(f"*{SUFFIX}")):
        try:
            file = load_test_file(path)
        except PolicyError as exc:
            problems.extend(exc.problems)
            continue
        if file.policy.resolve() != target:
            continue
        found = suite.add(path)
        problems.extend(found)
        if not found:
            files.append(path)
    if not files:
        return TestsSummary((), 0, 0, None, tuple(problems))
    result = suite.run()
    coverage = next(
        (
            c
            for c in coverage_of(suite.compiled(), result.results)
            if c.compiled.hash == compiled.hash
        ),
        None,
    )
    return TestsSummary(
        tuple(files),
        len(result.results),
        len(result.results) - len(result.failed),
        coverage,
        tuple(problems),
        tuple(render_failure(r) for r in result.failed),
    )


def build_review(
    compiled: CompiledPolicy,
    source: Path,
    *,
    layout: Layout = "auto",
    examples: int = 200,
    seed: int = 0,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> Review:
    """Gather everything the review document shows: runs the check, verify and the tests.

    Args:
        compiled: the compiled policy.
        source: its file.
        layout: ``graphviz`` (``dot`` must be installed), ``builtin``, or ``auto`` (Graphviz
            when installed).
        examples: conversations the verify search generates.
        seed: seeds the verify search.
        progress: reports the progress of verify.

    Raises:
        ValueError: ``layout`` is ``graphviz`` and ``dot`` is not installed.
    """
    from sopagent._verify import verify  # noqa: PLC0415

    graph = graph_of(compiled)
    drawing: str | None = None
    engine = "builtin"
    if layout in ("auto", "graphviz"):
        drawing = dot_svg(graph)
        if drawing is None and layout == "graphviz":
            raise ValueError("Graphviz (dot) is not installed; use --layout builtin")
        if drawing is not None:
            engine = "graphviz"
    if drawing is None:
        drawing = svg(graph)
    report = verify(compiled, examples=examples, seed=seed, progress=progress)
    note = "" if report.results else "the policy declares no properties"
    return Review(
        compiled=compiled,
        source=source,
        created=dt.datetime.now(dt.UTC).replace(microsecond=0),
        findings=check_findings(compiled),
        approvals=approvals(compiled.catalog),
        graph=graph,
        diagram=drawing,
        diagram_engine=engine,
        verification=report,
        verification_note=note,
        tests=_tests(compiled, source),
        files=_files(compiled, source),
    )


def state_routes(compiled: CompiledPolicy, name: str) -> list[RouteRow]:
    """Every route of a state in the order a turn considers them, global ones marked."""
    policy = compiled.policy
    state = compiled.states[name]
    written = policy.states[name]
    rows: list[RouteRow] = []

    def row(when: str, route: CompiledRoute, scope: Literal["state", "global"]) -> None:
        rows.append(RouteRow(when, route.to, route.say, route.choose, route.require, scope))

    for intent, route in state.routes.items():
        row(f"intent {intent}", route, "state" if intent in written.on else "global")
    for outcome, route in state.outcomes.items():
        row(f"outcome {outcome}", route, "state")
    if state.filled is not None:
        row("every slot collected (filled)", state.filled, "state")
    if state.kind == "wait":
        if state.unsure is not None:
            scope: Literal["state", "global"] = "state" if written.confidence else "global"
            row(f"model unsure (score below {state.threshold})", state.unsure, scope)
        row("anything else (fallback)", state.fallback, "state" if written.fallback else "global")
    return rows


def _said_in(compiled: CompiledPolicy) -> dict[str, list[str]]:
    """Where each response can be said: states, routes, slots, the error route."""
    out: dict[str, list[str]] = {}

    def add(responses: Iterable[str], where: str) -> None:
        for response in responses:
            places = out.setdefault(response, [])
            if where not in places:
                places.append(where)

    policy = compiled.policy
    for name, state in compiled.states.items():
        add((*state.say, *state.choose), name)
        for item in state_routes(compiled, name):
            add((*item.say, *item.choose), f"{name}: {item.when}")
    for name, slot in policy.slots.items():
        add([r for r in (slot.ask, slot.invalid) if r], f"slot {name}")
    add(policy.global_.error.say, "error route")
    if policy.limits.too_long is not None:
        add([policy.limits.too_long], "input too long")
    return out


# --- HTML -------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 "DejaVu Sans", Helvetica, Arial, sans-serif; color: #1d1d1f;
       margin: 0 auto; max-width: 1180px; padding: 24px 32px 64px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 36px 0 10px;
     border-bottom: 2px solid #d8dde6; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 22px 0 6px; }
h1 code, h3 code { font-size: inherit; }
code, .hash { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 14px; }
th, td { border: 1px solid #d8dde6; padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f9; font-weight: 600; }
.meta td:first-child { width: 210px; color: #555; }
.pill { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px; }
.ok { background: #e3f4e6; color: #1b5e20; } .bad { background: #fde4e1; color: #a11b0e; }
.warn { background: #fff1cc; color: #7a5200; } .muted { color: #666; }
.diagram { overflow: auto; border: 1px solid #d8dde6; padding: 8px; background: #fff; }
.global { color: #666; font-style: italic; }
pre { background: #f6f8fa; padding: 8px 10px; overflow: auto; font-size: 12px; }
.signoff td { height: 34px; } .signoff td:first-child { width: 210px; }
nav ol { columns: 2; margin: 8px 0; }
@media print { .diagram { overflow: visible; border: none; }
  .diagram svg { max-width: 100%; height: auto; } h2 { break-after: avoid; }
  table, .state { break-inside: avoid; } }
"""


def _pill(text: str, kind: str) -> str:
    return f'<span class="pill {kind}">{escape(text)}</span>'


def _codes(names: Sequence[str]) -> str:
    return ", ".join(f"<code>{escape(n)}</code>" for n in names) or '<span class="muted">-</span>'


def _verdict_pill(verdict: str) -> str:
    kinds = {"proved": ("proved", "ok"), "violated": ("FAILS", "bad")}
    text, kind = kinds.get(verdict, ("not refuted", "warn"))
    return _pill(text, kind)


def render_html(review: Review) -> str:
    """The review as one self-contained HTML page."""
    compiled = review.compiled
    policy = compiled.policy
    templates = compiled.templates
    said_in = _said_in(compiled)
    summary = review.summary()
    out: list[str] = []
    add = out.append
    add("<!DOCTYPE html>")
    add('<html lang="en"><head><meta charset="utf-8">')
    add('<meta name="viewport" content="width=device-width, initial-scale=1">')
    add(f"<title>Review of policy {escape(compiled.name)} {escape(compiled.hash)}</title>")
    add(f"<style>{_CSS}</style></head><body>")
    add(f"<h1>Review of policy <code>{escape(compiled.name)}</code></h1>")
    if policy.description:
        add(f"<p>{escape(policy.description)}</p>")
    add('<table class="meta">')
    add(f'<tr><td>Hash being approved</td><td class="hash"><b>{escape(compiled.hash)}</b>'
        ' <span class="muted">(policy, catalog and decision code; every session is pinned to'
        " it)</span></td></tr>")  # fmt: skip
    add(f"<tr><td>Version</td><td>{escape(policy.version)}</td></tr>")
    for role, path, digest in review.files:
        add(
            f"<tr><td>{escape(role.capitalize())} file</td><td><code>{escape(str(path))}</code>"
            f'<br><span class="hash muted">{escape(digest)}</span></td></tr>'
        )
    add(f"<tr><td>Document made</td><td>{review.created.isoformat()}</td></tr>")
    add("</table>")
    figures = [
        f"{summary['states']} states",
        f"{summary['approved']}/{summary['responses']} responses approved",
        f"{summary['findings']} check findings",
        f"{summary['proved']}/{summary['properties']} properties proved,"
        f" {summary['violated']} failing",
        f"{summary['conversations_passed']}/{summary['conversations']} conversation tests pass",
    ]
    add("<p>" + " &middot; ".join(escape(f) for f in figures) + "</p>")
    sections = [
        ("diagram", "State diagram"), ("states", "States and routes"), ("catalog", "Catalog"),
        ("check", "Check findings"), ("verify", "Verification"), ("tests", "Conversation tests"),
        ("signoff", "Sign-off"),
    ]  # fmt: skip
    add("<nav><ol>" + "".join(f'<li><a href="#{i}">{t}</a></li>' for i, t in sections))
    add("</ol></nav>")

    add('<h2 id="diagram">State diagram</h2>')
    add(
        '<p class="muted">Rounded boxes wait for the user, hexagons run a decision function,'
        " double borders end the conversation. Routes every waiting state inherits from"
        " <code>global</code> are drawn once, dashed, from <i>any waiting state</i>."
        + (
            " Routes back up the diagram are drawn in brown."
            if review.diagram_engine == "builtin"
            else ""
        )
        + f" Drawn by {escape(review.diagram_engine)}.</p>"
    )
    add(f'<div class="diagram">{review.diagram}</div>')

    add('<h2 id="states">States and routes</h2>')
    for name, state in compiled.states.items():
        written = policy.states[name]
        kind = {"wait": "waits for the user", "decide": f"decides with {state.decide_name}",
                "terminal": "ends the conversation"}[state.kind]  # fmt: skip
        initial = " (initial)" if name == policy.initial else ""
        add(f'<div class="state" id="state-{escape(name)}">')
        add(f"<h3><code>{escape(name)}</code>{initial} &mdash; {escape(kind)}</h3>")
        if written.description:
            add(f"<p>{escape(written.description)}</p>")
        add("<table>")
        if state.say or state.choose:
            entering = _codes(state.say)
            if state.choose:
                entering += " and one of " + _codes(state.choose) + " (the model picks)"
            add(f"<tr><th>Says on entering</th><td>{entering}</td></tr>")
        if state.collect:
            add(f"<tr><th>Collects</th><td>{_codes(state.collect)}</td></tr>")
        if state.kind == "wait":
            allowed = [label.name for label in state.labels]
            add(f"<tr><th>Allowed intents</th><td>{_codes(allowed)}</td></tr>")
        add("</table>")
        rows = state_routes(compiled, name)
        if rows:
            add("<table><tr><th>When</th><th>Goes to</th><th>Says</th><th>Requires</th></tr>")
            for item in rows:
                said = _codes(item.say)
                if item.choose:
                    said += " + one of " + _codes(item.choose)
                cls = ' class="global"' if item.scope == "global" else ""
                scope = " (global)" if item.scope == "global" else ""
                to = _codes([item.to]) if item.to else '<span class="muted">stays</span>'
                add(
                    f"<tr{cls}><td>{escape(item.when)}{scope}</td><td>{to}</td><td>{said}</td>"
                    f"<td>{_codes(item.require)}</td></tr>"
                )
            add("</table>")
        add("</div>")

    add('<h2 id="catalog">Catalog</h2>')
    catalog = compiled.catalog
    add(
        f"<p>Catalog <code>{escape(catalog.catalog)}</code>, locale"
        f" <code>{escape(catalog.locale)}</code>: every line the agent can ever say."
        " Placeholders are filled only from validated slot and fact values.</p>"
    )
    add("<table><tr><th>Response</th><th>Wording</th><th>Content hash</th><th>Approval</th>"
        "<th>Said in</th></tr>")  # fmt: skip
    for rid in catalog.responses:
        approval = review.approvals[rid]
        kind = {"approved": "ok", "changed": "bad", "unapproved": "warn"}[approval.status]
        places = said_in.get(rid, [])
        where = "<br>".join(escape(p) for p in places) or _pill("never said", "warn")
        add(
            f"<tr><td><code>{escape(rid)}</code></td><td>{escape(templates[rid].text)}</td>"
            f'<td class="hash">{escape(templates[rid].hash)}</td>'
            f"<td>{_pill(approval.text, kind)}</td><td>{where}</td></tr>"
        )
    add("</table>")

    add('<h2 id="check">Check findings</h2>')
    if review.findings:
        add("<table><tr><th>Where</th><th>Code</th><th>Finding</th><th>Hint</th></tr>")
        for problem in review.findings:
            add(
                f"<tr><td><code>{escape(str(problem.location))}</code></td>"
                f"<td>{escape(problem.code)} {_pill(problem.severity, 'warn')}</td>"
                f"<td>{escape(problem.message)}</td><td>{escape(problem.hint)}</td></tr>"
            )
        add("</table>")
    else:
        add(f"<p>{_pill('no findings', 'ok')} The check reports nothing.</p>")

    add('<h2 id="verify">Verification</h2>')
    report = review.verification
    if report is None or not report.results:
        add(f"<p>{escape(review.verification_note or 'not run')}</p>")
    else:
        from sopagent._verify import transcript  # noqa: PLC0415

        add(
            f"<p>Exhaustive engine: {report.nodes} abstract nodes, {report.steps} steps,"
            f" {report.exhaustive_seconds:.2f} s; search engine: {report.conversations}"
            f" conversations with the real decision functions, {report.search_seconds:.2f} s."
            "</p>"
        )
        add("<table><tr><th>Property</th><th>Verdict</th><th>Statement</th><th>Exhaustive"
            "</th><th>Search</th></tr>")  # fmt: skip
        for result in report.results:
            spec = result.spec
            statement = escape(spec.summary())
            if spec.description:
                statement = f"{escape(spec.description)}<br><code>{statement}</code>"
            add(
                f"<tr><td><code>{escape(spec.id)}</code></td><td>{_verdict_pill(result.verdict)}"
                f"</td><td>{statement}</td><td>{escape(result.exhaustive.status)}:"
                f" {escape(result.exhaustive.detail)}</td><td>{escape(result.search.status)}:"
                f" {escape(result.search.detail)}</td></tr>"
            )
        add("</table>")
        for result in report.results:
            example = result.counterexample
            if example is not None:
                add(f"<h3>Counterexample to <code>{escape(result.spec.id)}</code></h3>")
                add("<pre>" + escape("\n".join(transcript(example))) + "</pre>")

    add('<h2 id="tests">Conversation tests</h2>')
    tests = review.tests
    if not tests.files:
        add("<p>No conversation tests (<code>*.test.yaml</code>) beside the policy test it.</p>")
    else:
        names = ", ".join(f"<code>{escape(p.name)}</code>" for p in tests.files)
        kind = "ok" if tests.passed == tests.conversations else "bad"
        add(
            f"<p>{names}: {_pill(f'{tests.passed}/{tests.conversations} pass', kind)}"
            " (recorded labels, no model).</p>"
        )
        if tests.coverage is not None:
            add("<table><tr><th>Coverage</th><th>Reached</th><th>Not reached</th></tr>")
            for kind_name, figures in (
                (k, tests.coverage.to_json()[k])
                for k in ("states", "routes", "intents", "responses")
            ):
                add(
                    f"<tr><td>{kind_name}</td><td>{figures['covered']}/{figures['total']}"
                    f" ({figures['ratio']:.0%})</td><td>{_codes(figures['missing'])}</td></tr>"
                )
            add("</table>")
        for failure in tests.failures:
            add("<pre>" + escape(failure) + "</pre>")
    for problem in tests.problems:
        add(f"<pre>{escape(str(problem))}</pre>")

    add('<h2 id="signoff">Sign-off</h2>')
    add(
        f"<p>I have reviewed policy <code>{escape(compiled.name)}</code> version"
        f' {escape(policy.version)} with hash <b class="hash">{escape(compiled.hash)}</b>,'
        " its catalog and its decision code as shown in this document.</p>"
    )
    add('<table class="signoff">')
    for label in ("Reviewer", "Role", "Decision", "Conditions or comments", "Date", "Signature"):
        value = (
            "&#9744; approved &nbsp;&nbsp; &#9744; changes requested" if label == "Decision" else ""
        )
        add(f"<tr><th>{label}</th><td>{value}</td></tr>")
    add("</table>")
    add("</body></html>")
    return "\n".join(out) + "\n"


# --- Markdown ---------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_codes(names: Sequence[str]) -> str:
    return ", ".join(f"`{n}`" for n in names) or "-"


def render_markdown(review: Review) -> str:
    """The review as Markdown; the diagram is a Mermaid block."""
    compiled = review.compiled
    policy = compiled.policy
    summary = review.summary()
    said_in = _said_in(compiled)
    lines = [f"# Review of policy `{compiled.name}`", ""]
    if policy.description:
        lines += [_cell(policy.description), ""]
    lines += [
        "| | |",
        "| --- | --- |",
        f"| Hash being approved | **`{compiled.hash}`** (policy, catalog and decision code) |",
        f"| Version | {_cell(policy.version)} |",
    ]
    lines += [
        f"| {role.capitalize()} file | `{path}` `{digest}` |" for role, path, digest in review.files
    ]
    lines += [f"| Document made | {review.created.isoformat()} |", ""]
    lines += [
        f"{summary['states']} states, {summary['approved']}/{summary['responses']} responses"
        f" approved, {summary['findings']} check findings, {summary['proved']}/"
        f"{summary['properties']} properties proved ({summary['violated']} failing),"
        f" {summary['conversations_passed']}/{summary['conversations']} conversation tests pass.",
        "",
        "## State diagram",
        "",
        "Routes every waiting state inherits from `global` are drawn from `any_waiting_state`.",
        "",
        "```mermaid",
        mermaid(review.graph).rstrip("\n"),
        "```",
        "",
        "## States and routes",
    ]
    for name, state in compiled.states.items():
        kind = {"wait": "waits for the user", "decide": f"decides with `{state.decide_name}`",
                "terminal": "ends the conversation"}[state.kind]  # fmt: skip
        initial = " (initial)" if name == policy.initial else ""
        lines += ["", f"### `{name}`{initial}: {kind}", ""]
        written = policy.states[name]
        if written.description:
            lines += [_cell(written.description), ""]
        if state.say or state.choose:
            extra = (
                f" and one of {_md_codes(state.choose)} (the model picks)" if state.choose else ""
            )
            lines.append(f"- says on entering: {_md_codes(state.say)}{extra}")
        if state.collect:
            lines.append(f"- collects: {_md_codes(state.collect)}")
        if state.kind == "wait":
            lines.append(f"- allowed intents: {_md_codes([lab.name for lab in state.labels])}")
        rows = state_routes(compiled, name)
        if rows:
            lines += ["", "| When | Goes to | Says | Requires |", "| --- | --- | --- | --- |"]
            for item in rows:
                said = _md_codes(item.say) + (
                    f" + one of {_md_codes(item.choose)}" if item.choose else ""
                )
                scope = " (global)" if item.scope == "global" else ""
                to = f"`{item.to}`" if item.to else "stays"
                lines.append(
                    f"| {_cell(item.when)}{scope} | {to} | {said} | {_md_codes(item.require)} |"
                )
    catalog = compiled.catalog
    lines += [
        "",
        "## Catalog",
        "",
        f"Catalog `{catalog.catalog}`, locale `{catalog.locale}`.",
        "",
        "| Response | Wording | Content hash | Approval | Said in |",
        "| --- | --- | --- | --- | --- |",
    ]
    for rid in catalog.responses:
        template = compiled.templates[rid]
        places = "; ".join(said_in.get(rid, [])) or "never said"
        lines.append(
            f"| `{rid}` | {_cell(template.text)} | `{template.hash}` |"
            f" {_cell(review.approvals[rid].text)} | {_cell(places)} |"
        )
    lines += ["", "## Check findings", ""]
    if review.findings:
        lines += ["| Where | Code | Finding | Hint |", "| --- | --- | --- | --- |"]
        lines += [
            f"| `{p.location}` | {p.code} ({p.severity}) | {_cell(p.message)} | {_cell(p.hint)} |"
            for p in review.findings
        ]
    else:
        lines.append("No findings.")
    lines += ["", "## Verification", ""]
    report = review.verification
    if report is None or not report.results:
        lines.append(review.verification_note or "Not run.")
    else:
        from sopagent._verify import transcript  # noqa: PLC0415

        marks = {"proved": "proved", "violated": "**FAILS**", "not_refuted": "not refuted"}
        lines += [
            "| Property | Verdict | Statement | Exhaustive | Search |",
            "| --- | --- | --- | --- | --- |",
        ]
        for result in report.results:
            spec = result.spec
            lines.append(
                f"| `{spec.id}` | {marks[result.verdict]} | {_cell(spec.description)}"
                f" `{_cell(spec.summary())}` | {result.exhaustive.status}:"
                f" {_cell(result.exhaustive.detail)} | {result.search.status}:"
                f" {_cell(result.search.detail)} |"
            )
        for result in report.results:
            example = result.counterexample
            if example is not None:
                lines += ["", f"Counterexample to `{result.spec.id}`:", "", "```"]
                lines += [*transcript(example), "```"]
    lines += ["", "## Conversation tests", ""]
    tests = review.tests
    if not tests.files:
        lines.append("No conversation tests (`*.test.yaml`) beside the policy test it.")
    else:
        names = ", ".join(f"`{p.name}`" for p in tests.files)
        lines.append(f"{names}: {tests.passed}/{tests.conversations} pass (recorded labels).")
        if tests.coverage is not None:
            data = tests.coverage.to_json()
            lines += ["", "| Coverage | Reached | Not reached |", "| --- | --- | --- |"]
            for kind in ("states", "routes", "intents", "responses"):
                figures = data[kind]
                lines.append(
                    f"| {kind} | {figures['covered']}/{figures['total']} ({figures['ratio']:.0%})"
                    f" | {_cell(_md_codes(figures['missing']))} |"
                )
        for failure in tests.failures:
            lines += ["", "```", failure, "```"]
    for problem in tests.problems:
        lines += ["", f"    {problem}"]
    lines += [
        "",
        "## Sign-off",
        "",
        f"I have reviewed policy `{compiled.name}` version {_cell(policy.version)} with hash"
        f" **`{compiled.hash}`**, its catalog and its decision code as shown in this document.",
        "",
        "| | |",
        "| --- | --- |",
        "| Reviewer | |",
        "| Role | |",
        "| Decision | [ ] approved  [ ] changes requested |",
        "| Conditions or comments | |",
        "| Date | |",
        "| Signature | |",
        "",
    ]
    return "\n".join(lines)
