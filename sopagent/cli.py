"""The ``sopagent`` command: chat with a policy, replay conversations, check, graph, schemas.

Commands:

* ``chat POLICY``: talk to the agent in the terminal (or pipe lines into it);
* ``run POLICY --input FILE``: replay a conversation file, one user message per line;
* ``check POLICY...``: run every rule of the catalogue (docs/rules.md) as text, JSON or SARIF;
* ``approve CATALOG --by NAME``: record a reviewer's approval of catalog wording;
* ``schema``: write the JSON Schemas of the policy and catalog formats;
* ``graph POLICY``: print the compiled state machine as Mermaid or Graphviz;
* ``eval POLICY --data FILE``: intent accuracy, F1, calibration and cost on labelled examples;
* ``export-labels AUDIT...``: labelled examples from audit logs, to review and evaluate on;
* ``export-finetune POLICY --data FILE``: OpenAI chat fine-tuning data from labelled examples;
* ``verify POLICY``: prove the policy's properties, or print shortest counterexamples;
* ``diff OLD NEW``: what changed between two versions, down to the conversations possible;
* ``replay AUDIT... --policy NEW``: logged conversations that a new version would change;
* ``npc POLICY --stdio``: game NPCs for an engine over JSON lines; ``--replay FILE`` replays one;
* ``export-lines POLICY``: every catalog line of every locale as CSV;
* ``serve POLICY...``: the HTTP service (extra ``server``); ``new-key``: an API key for it;
* ``test PATH...``: run conversation tests (``--coverage``, ``--backend``, ``--generate``);
* ``review POLICY -o FILE``: the review document a compliance reviewer signs;
* ``redteam POLICY...``: real attack text as user turns, every line, move and effect checked.

Exit codes: 0 success, 1 findings (``check``, ``approve --status``, ``verify``, ``diff``,
``replay``, ``test``, ``redteam``, an ``npc --replay`` that diverged from its recording), 2
authoring or usage errors (`sopagent.errors.PolicyError`, bad options, malformed input files),
3 run-time faults (`sopagent.errors.RuntimeFault`, the embedded backend missing). Heavy modules
(rich, the embedded model) are imported only by the commands that need them.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sopagent import __version__, embedded
from sopagent.errors import Location, PolicyError, PolicyLoadError, Problem, SopError

if TYPE_CHECKING:
    from rich.console import Console

    from sopagent._agent import Agent
    from sopagent._compile import CompiledPolicy
    from sopagent.audit import AuditSink
    from sopagent.backends import Backend
    from sopagent.session import Session, Turn

__all__ = ["app", "main"]

INSTALL_HINT = "pip install 'sopagent[embedded]'"
_QUIT = frozenset({"/quit", "/exit"})

app = typer.Typer(
    name="sopagent",
    help="Conversational agents that follow standard operating procedures exactly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class GraphFormat(StrEnum):
    """Output format of ``sopagent graph``."""

    mermaid = "mermaid"
    dot = "dot"


PolicyArg = Annotated[Path, typer.Argument(help="Policy YAML file.", show_default=False)]
_BACKEND_HELP = (
    "Model backend: embedded (the offline model, default), scripted (--script), openai (any"
    " OpenAI-compatible server: OPENAI_BASE_URL, OPENAI_API_KEY, SOPAGENT_OPENAI_MODEL,"
    " SOPAGENT_OPENAI_DIALECT=openai|llamacpp), nearest (nearest example, no model), or"
    " wrappers around them: 'shortlist(embedded, k=8)', 'cascade(nearest, embedded,"
    " threshold=0.7)', 'resilient(openai, retries=2, timeout=5)'; rankers: lexical, minilm."
)
BackendOpt = Annotated[
    str | None,
    typer.Option("--backend", metavar="SPEC", help=_BACKEND_HELP, show_default=False),
]
ScriptOpt = Annotated[
    Path | None,
    typer.Option(
        "--script",
        metavar="FILE",
        help="YAML/JSON script for the scripted backend: a mapping of user text to intent "
        "label, or a list of labels used in order. Implies --backend scripted.",
        show_default=False,
    ),
]
AuditOpt = Annotated[
    Path | None,
    typer.Option(
        "--audit",
        metavar="FILE",
        help="Append one JSON audit event per turn to FILE.",
        show_default=False,
    ),
]
RequireApprovedOpt = Annotated[
    bool,
    typer.Option(
        "--require-approved",
        help="Refuse to run unless every catalog response is approved, as it is now, in the"
        " catalog's lock file (sopagent approve).",
    ),
]
FactOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--fact",
        metavar="NAME=VALUE",
        help="A fact the host knows up front; VALUE is parsed as JSON, else taken as text. "
        "Repeatable.",
        show_default=False,
    ),
]


# --- errors ----------------------------------------------------------------------------------


def _err(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


@contextmanager
def _reporting() -> Iterator[None]:
    """Turn sopagent errors into messages on stderr and the family's exit code."""
    try:
        yield
    except PolicyError as exc:
        for problem in exc.problems:
            _err(str(problem))
        if not exc.problems:
            _err(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    except SopError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None


# --- building an agent -----------------------------------------------------------------------


class _NullSink:
    """Drop audit events (the default: structlog's default pipeline would print them)."""

    def emit(self, event: Mapping[str, Any]) -> None:
        """Do nothing."""


def _compile(path: Path, *, require_approved: bool = False) -> CompiledPolicy:
    from sopagent._compile import compile_policy  # noqa: PLC0415 (pydantic, transitions)
    from sopagent._load import load_policy  # noqa: PLC0415

    return compile_policy(load_policy(path), require_approved=require_approved)


def _parse_facts(items: Sequence[str] | None) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for item in items or ():
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise typer.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--fact")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        facts[name] = value
    return facts


def _labels(compiled: CompiledPolicy) -> list[str]:
    from sopagent.policy import OUT_OF_SCOPE  # noqa: PLC0415

    return [*compiled.policy.intents, OUT_OF_SCOPE]


def _unknown_intent(label: object, compiled: CompiledPolicy, location: Location) -> Problem:
    labels = _labels(compiled)
    close = difflib.get_close_matches(str(label), labels, n=1)
    return Problem(
        "SOP021",
        f"unknown intent {label!r}",
        location,
        hint=f"did you mean {close[0]!r}?" if close else f"one of {', '.join(labels)}",
    )


def _scripted_backend(path: Path, compiled: CompiledPolicy) -> Backend:
    from sopagent._yaml import read_yaml  # noqa: PLC0415 (only the scripted backend needs it)
    from sopagent.backends._scripted import ScriptedBackend  # noqa: PLC0415

    document = read_yaml(path)
    data = [] if document.data is None else document.data
    allowed = set(_labels(compiled))
    problems: list[Problem] = []
    script: dict[str, str] | list[str]
    if isinstance(data, dict):
        script = {}
        for text, label in data.items():
            if isinstance(text, bool) or not isinstance(text, str | int):
                problems.append(
                    Problem(
                        "SOP010",
                        f"script keys are user texts, not {type(text).__name__}",
                        document.locate(()),
                        hint="quote the text",
                    )
                )
            elif not isinstance(label, str) or label not in allowed:
                problems.append(_unknown_intent(label, compiled, document.locate((text,))))
            else:
                script[str(text)] = label
    elif isinstance(data, list):
        script = []
        for index, label in enumerate(data):
            if not isinstance(label, str) or label not in allowed:
                problems.append(_unknown_intent(label, compiled, document.locate((index,))))
            else:
                script.append(label)
    else:
        problems.append(
            Problem(
                "SOP010",
                "a script is a mapping of user text to intent label, or a list of labels",
                document.locate(()),
            )
        )
    if problems:
        raise PolicyLoadError(problems)
    return ScriptedBackend(script)


def _embedded_backend() -> Backend:
    try:
        return embedded()  # imports llama.cpp and loads the model: only now
    except ImportError as exc:
        _err(f"error: the embedded backend is not available: {exc}")
        _err(f"install it with: {INSTALL_HINT}  (or use --backend scripted --script FILE)")
        raise typer.Exit(3) from None
    except SopError:
        raise
    except Exception as exc:
        _err(f"error: could not start the embedded backend: {type(exc).__name__}: {exc}")
        raise typer.Exit(3) from None


def _backends(
    specs: Sequence[str], script: Path | None, compiled: CompiledPolicy
) -> list[tuple[str, Backend]]:
    """Build each backend spec (see `sopagent.backends._spec`), sharing base backends.

    Without a spec the backend is ``scripted`` when a script is given, else ``embedded``.
    """
    from sopagent.backends._spec import SpecBuilder, SpecError, base_names  # noqa: PLC0415

    chosen = list(dict.fromkeys(specs)) or ["scripted" if script is not None else "embedded"]
    try:
        bases = set().union(*(base_names(spec) for spec in chosen))
    except SpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--backend") from None
    if script is not None and "scripted" not in bases:
        raise typer.BadParameter("--script is for --backend scripted", param_hint="--script")

    def scripted() -> Backend:
        if script is None:
            raise typer.BadParameter(
                "the scripted backend needs --script FILE", param_hint="--script"
            )
        return _scripted_backend(script, compiled)

    builder = SpecBuilder(
        {"embedded": _embedded_backend, "openai": _openai_backend, "scripted": scripted}
    )
    built: list[tuple[str, Backend]] = []
    for spec in chosen:
        try:
            built.append((spec, builder.build(spec)))
        except SpecError as exc:
            raise typer.BadParameter(str(exc), param_hint="--backend") from None
    return built


def _backend(spec: str | None, script: Path | None, compiled: CompiledPolicy) -> Backend:
    return _backends([spec] if spec else [], script, compiled)[0][1]


def _openai_backend() -> Backend:
    """The OpenAI-compatible backend, configured by the environment like the OpenAI SDK."""
    model = os.environ.get("SOPAGENT_OPENAI_MODEL")
    if not model:
        raise typer.BadParameter(
            "set SOPAGENT_OPENAI_MODEL to the model name the server knows", param_hint="--backend"
        )
    dialect = os.environ.get("SOPAGENT_OPENAI_DIALECT", "openai")
    if dialect not in ("openai", "llamacpp"):
        raise typer.BadParameter(
            f"SOPAGENT_OPENAI_DIALECT is {dialect!r}; use openai or llamacpp",
            param_hint="--backend",
        )
    try:
        import openai  # noqa: PLC0415 (optional dependency)

        from sopagent.backends.openai import from_openai  # noqa: PLC0415
    except ImportError:
        _err("error: the openai backend needs the OpenAI SDK: pip install 'sopagent[openai]'")
        raise typer.Exit(3) from None
    client = openai.OpenAI(api_key=os.environ.get("OPENAI_API_KEY") or "unused")
    return from_openai(client, model=model, dialect=dialect)  # type: ignore[arg-type]


@dataclass
class _Run:
    agent: Agent
    session: Session
    sink: AuditSink

    def close(self) -> None:
        _close(self.sink)


def _close(sink: AuditSink) -> None:
    close = getattr(sink, "close", None)
    if callable(close):
        close()


def _open_sink(path: Path | None) -> AuditSink:
    if path is None:
        return _NullSink()
    from sopagent.audit import JsonLinesSink  # noqa: PLC0415

    try:
        return JsonLinesSink(path)
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot open {path}: {exc.strerror}", param_hint="--audit"
        ) from exc


def _start(
    compiled: CompiledPolicy,
    *,
    backend: str | None,
    script: Path | None,
    audit: Path | None,
    facts: Sequence[str] | None,
) -> _Run:
    from sopagent._agent import Agent  # noqa: PLC0415

    values = _parse_facts(facts)
    agent = Agent(compiled, _backend(backend, script, compiled), audit=_NullSink())
    try:
        session = agent.new_session(facts=values)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fact") from exc
    sink = agent.audit = _open_sink(audit)  # opened last: nothing is written on bad options
    return _Run(agent, session, sink)


# --- chat ------------------------------------------------------------------------------------


def _console() -> Console:
    from rich.console import Console  # noqa: PLC0415 (only the chat display needs rich)

    return Console(soft_wrap=True, highlight=False, markup=False, emoji=False)


def _show_turn(console: Console, turn: Turn, *, debug: bool) -> None:
    from rich.text import Text  # noqa: PLC0415

    said = (turn.text, "green") if turn.text else ("(says nothing)", "dim")
    console.print(Text.assemble(("bot> ", "bold green"), said))
    if debug:
        parts = [
            f"intent={turn.intent or '-'}",
            f"score={turn.score:.2f}",
            f"source={turn.intent_source}",
            "path=" + (" > ".join(turn.path) or turn.state_after),
            "responses=" + (",".join(turn.response_ids) or "-"),
            f"latency={turn.latency_ms:.1f}ms",
        ]
        if turn.model_calls:
            parts.append(f"calls={turn.model_calls}")
        if turn.error:
            parts.append(f"error={turn.error}")
        console.print(Text("     " + "  ".join(parts), style="dim"))
    if turn.ended:
        console.print(Text("(conversation ended)", style="dim"))


def _lines(interactive: bool, console: Console) -> Iterator[str]:
    """Yield what the user types; echo piped lines so the output reads as a transcript."""
    if interactive:
        with suppress(ImportError):  # no readline on Windows
            import readline  # noqa: F401, PLC0415 (line editing and history for input())
        while True:
            try:
                yield input("you> ")
            except EOFError:
                console.print()
                return
    else:
        from rich.text import Text  # noqa: PLC0415

        for raw in sys.stdin:
            line = raw.rstrip("\r\n")
            if line.strip():
                console.print(Text("you> " + line, style="bold"))
            yield line


def _warm(agent: Agent) -> None:
    """Let a backend that can evaluate its prompt early do so while the user types."""
    warm = getattr(agent.backend, "warm", None)
    if callable(warm):
        compiled = agent.compiled
        threading.Thread(
            target=warm, args=(compiled.vocabulary, compiled.hash), daemon=True
        ).start()


@app.command()
def chat(
    policy: PolicyArg,
    *,
    backend: BackendOpt = None,
    script: ScriptOpt = None,
    audit: AuditOpt = None,
    fact: FactOpt = None,
    show_debug: Annotated[
        bool,
        typer.Option(
            "--show-debug", help="After each reply, show intent, score, states and responses."
        ),
    ] = False,
    require_approved: RequireApprovedOpt = False,
) -> None:
    """Talk to the agent. Type /quit (or end the input) to leave; lines can be piped in."""
    with _reporting():
        compiled = _compile(policy, require_approved=require_approved)
        run = _start(compiled, backend=backend, script=script, audit=audit, facts=fact)
        console = _console()
        try:
            turn = run.agent.start(run.session)
            _show_turn(console, turn, debug=show_debug)
            if turn.ended:
                return
            _warm(run.agent)
            for line in _lines(sys.stdin.isatty(), console):
                text = line.strip()
                if not text:
                    continue
                if text in _QUIT:
                    return
                turn = run.agent.respond(run.session, text)
                _show_turn(console, turn, debug=show_debug)
                if turn.ended:
                    return
        except KeyboardInterrupt:
            console.print()
            raise typer.Exit(130) from None
        finally:
            run.close()


# --- run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Message:
    line: int
    text: str
    intent: str | None


def _json_lines(path: Path) -> tuple[str, list[tuple[int, Any]], list[Problem]]:
    """Read a JSON-lines file (``-`` is standard input): its name, parsed lines, problems.

    Blank lines are skipped; a line that is not JSON becomes a problem at ``file:line:col``.

    Raises:
        PolicyLoadError: the file cannot be read or is not UTF-8.
    """
    name = "<stdin>" if str(path) == "-" else str(path)
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        raise PolicyLoadError(
            [Problem("SOP001", f"cannot read file: {exc.strerror}", Location(name))]
        ) from exc
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PolicyLoadError(
            [Problem("SOP001", "file is not valid UTF-8", Location(name, line, 1))]
        ) from exc
    items: list[tuple[int, Any]] = []
    problems: list[Problem] = []
    for number, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            where = Location(name, number, exc.colno)
            problems.append(Problem("SOP001", f"invalid JSON: {exc.msg}", where))
    return name, items, problems


def _read_conversation(path: Path, compiled: CompiledPolicy) -> list[_Message]:
    """Parse and validate every line of a conversation file before anything runs."""
    name, items, problems = _json_lines(path)
    labels = set(_labels(compiled))
    messages: list[_Message] = []
    shape = 'a line is a JSON object {"text": ..., "intent": ...} or a JSON string'
    for number, item in items:
        at = Location(name, number, 1)
        if isinstance(item, str):
            messages.append(_Message(number, item, None))
            continue
        if not isinstance(item, dict):
            problems.append(Problem("SOP010", shape, at))
            continue
        extra = sorted(set(item) - {"text", "intent"})
        if extra:
            problems.append(
                Problem("SOP011", f"unknown key {extra[0]!r}", at, hint='use "text" and "intent"')
            )
        text, intent = item.get("text"), item.get("intent")
        if not isinstance(text, str):
            problems.append(Problem("SOP010", '"text" must be a string', at))
        if intent is not None and (not isinstance(intent, str) or intent not in labels):
            problems.append(_unknown_intent(intent, compiled, at))
        elif isinstance(text, str) and not extra:
            messages.append(_Message(number, text, intent))
    if problems:
        raise PolicyLoadError(problems)
    return messages


def _record(turn: Turn) -> str:
    data = turn.model_dump(mode="json")
    data["text"] = turn.text
    data["response_ids"] = list(turn.response_ids)
    return json.dumps(data, ensure_ascii=False)


def _transcript(turn: Turn) -> str:
    lines = []
    if turn.user_text is not None:
        lines.append(f"you> {turn.user_text}")
    lines.append(f"bot> {turn.text}")
    if turn.error:
        lines.append(f"     (error route: {turn.error})")
    if turn.ended:
        lines.append(f"(conversation ended in {turn.state_after})")
    return "\n".join(lines)


@app.command()
def run(
    policy: PolicyArg,
    *,
    input_file: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            metavar="FILE",
            help='Conversation as JSON lines: {"text": ...} with an optional "intent" to '
            "force the label, or a JSON string. Use - for stdin.",
            show_default=False,
        ),
    ],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON turn record per line.")
    ] = False,
    backend: BackendOpt = None,
    script: ScriptOpt = None,
    audit: AuditOpt = None,
    fact: FactOpt = None,
    require_approved: RequireApprovedOpt = False,
) -> None:
    """Replay a conversation file through the agent: the opening turn, then one per line."""
    with _reporting():
        compiled = _compile(policy, require_approved=require_approved)
        messages = _read_conversation(input_file, compiled)
        session_run = _start(compiled, backend=backend, script=script, audit=audit, facts=fact)
        show = _record if json_output else _transcript
        out = sys.stdout
        try:
            turn = session_run.agent.start(session_run.session)
            out.write(show(turn) + "\n")
            out.flush()
            for index, message in enumerate(messages):
                if turn.ended:
                    left = len(messages) - index
                    where = f"{input_file}:{messages[index - 1].line}" if index else "the start"
                    _err(
                        f"note: the conversation ended at {where};"
                        f" {left} later line{'s' if left != 1 else ''} not sent"
                    )
                    break
                turn = session_run.agent.respond(
                    session_run.session, message.text, intent=message.intent
                )
                out.write(show(turn) + "\n")
                out.flush()
        finally:
            session_run.close()


# --- schema ----------------------------------------------------------------------------------


@app.command()
def schema(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", metavar="DIR", help="Directory to write the schemas to."),
    ] = Path(),
) -> None:
    """Write policy.schema.json and catalog.schema.json (JSON Schema, for editors)."""
    from sopagent._schema import json_schemas, render  # noqa: PLC0415

    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, document in json_schemas().items():
            target = out / name
            target.write_text(render(document), encoding="utf-8")
            typer.echo(str(target))
    except OSError as exc:
        _err(f"error: cannot write to {out}: {exc.strerror}")
        raise typer.Exit(2) from None


# --- graph -----------------------------------------------------------------------------------

_MERMAID_WORDS = frozenset(
    {"state", "note", "end", "direction", "class", "classdef", "click", "style", "as", "left"}
    | {"right", "of", "over", "fork", "join", "choice", "default"}
)


def _label(trigger: str) -> str:
    return trigger.partition(":")[2] or trigger


def _edges(compiled: CompiledPolicy) -> dict[tuple[str, str], list[str]]:
    """Transitions grouped by (source, dest), labels in declaration order."""
    edges: dict[tuple[str, str], list[str]] = {}
    for item in compiled.machine_config()["transitions"]:
        labels = edges.setdefault((item["source"], item["dest"]), [])
        label = _label(item["trigger"])
        if label not in labels:
            labels.append(label)
    return edges


def _mermaid(compiled: CompiledPolicy) -> str:
    config = compiled.machine_config()
    states: list[str] = config["states"]
    ids: dict[str, str] = {}
    for name in states:
        node = name
        while node.lower() in _MERMAID_WORDS or node in ids.values():
            node = f"s_{node}"
        ids[name] = node
    edges = _edges(compiled)
    connected = {s for pair in edges for s in pair} | {config["initial"]}
    lines = [f"%% sopagent graph: {compiled.name} {compiled.hash}", "stateDiagram-v2"]
    for name in states:
        state = compiled.states[name]
        if ids[name] != name:
            lines.append(f'    state "{name}" as {ids[name]}')
        if state.kind == "decide":
            lines.append(f"    {ids[name]} : {name} (decide {state.decide_name})")
        elif name not in connected:
            lines.append(f"    {ids[name]}")
    lines.append(f"    [*] --> {ids[config['initial']]}")
    for (source, dest), labels in edges.items():
        lines.append(f"    {ids[source]} --> {ids[dest]} : {', '.join(labels)}")
    for name in states:
        if compiled.states[name].kind == "terminal":
            lines.append(f"    {ids[name]} --> [*]")
    decide = [ids[n] for n in states if compiled.states[n].kind == "decide"]
    if decide:
        lines.append("    classDef decide fill:#fff4d6,stroke:#b8860b")
        lines.extend(f"    class {node} decide" for node in decide)
    return "\n".join(lines) + "\n"


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot(compiled: CompiledPolicy) -> str:
    config = compiled.machine_config()
    lines = [
        f"// sopagent graph: {compiled.name} {compiled.hash}",
        f"digraph {_dot_id(compiled.name)} {{",
        "  rankdir=LR;",
        '  node [shape=box, style=rounded, fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
        '  "__start__" [shape=point, label=""];',
    ]
    for name in config["states"]:
        state = compiled.states[name]
        if state.kind == "decide":
            label = _dot_id(f"{name}\ndecide {state.decide_name}").replace("\n", "\\n")
            lines.append(f"  {_dot_id(name)} [shape=diamond, style=solid, label={label}];")
        elif state.kind == "terminal":
            lines.append(f"  {_dot_id(name)} [peripheries=2];")
        else:
            lines.append(f"  {_dot_id(name)};")
    lines.append(f'  "__start__" -> {_dot_id(config["initial"])};')
    for (source, dest), labels in _edges(compiled).items():
        label = _dot_id(", ".join(labels))
        lines.append(f"  {_dot_id(source)} -> {_dot_id(dest)} [label={label}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


@app.command()
def graph(
    policy: PolicyArg,
    output_format: Annotated[
        GraphFormat, typer.Option("--format", "-f", help="Mermaid stateDiagram or Graphviz dot.")
    ] = GraphFormat.mermaid,
) -> None:
    """Print the compiled state machine: states, and transitions labelled by intent or outcome."""
    with _reporting():
        compiled = _compile(policy)
        render = _mermaid if output_format is GraphFormat.mermaid else _dot
        sys.stdout.write(render(compiled))


# --- eval ------------------------------------------------------------------------------------

if TYPE_CHECKING:
    from sopagent._eval import Example


def _read_examples(path: Path, compiled: CompiledPolicy, default_state: str) -> list[Example]:
    """Parse and validate every line of a labelled data file before anything runs."""
    from sopagent._eval import Example  # noqa: PLC0415

    name, items, problems = _json_lines(path)
    labels = set(_labels(compiled))
    waiting = [n for n, s in compiled.states.items() if s.kind == "wait"]
    examples: list[Example] = []
    shape = 'a line is a JSON object {"text": ..., "intent": ..., "state": ...}'
    for number, item in items:
        at = Location(name, number, 1)
        if not isinstance(item, dict):
            problems.append(Problem("SOP010", shape, at))
            continue
        extra = sorted(set(item) - {"text", "intent", "state"})
        if extra:
            problems.append(
                Problem(
                    "SOP011", f"unknown key {extra[0]!r}", at, hint='use "text", "intent", "state"'
                )
            )
        text, intent = item.get("text"), item.get("intent")
        state = item.get("state", default_state)
        ok = not extra
        if not isinstance(text, str) or not text.strip():
            problems.append(Problem("SOP010", '"text" must be a non-empty string', at))
            ok = False
        if not isinstance(intent, str) or intent not in labels:
            problem = _unknown_intent(intent, compiled, at)
            if intent is None:
                problem = Problem("SOP010", '"intent" (the expected label) is required', at)
            problems.append(problem)
            ok = False
        if not isinstance(state, str) or compiled.states.get(state) is None:
            close = difflib.get_close_matches(str(state), waiting, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"one of {', '.join(waiting)}"
            problems.append(Problem("SOP020", f"unknown state {state!r}", at, hint=hint))
            ok = False
        elif compiled.states[state].kind != "wait":
            problems.append(
                Problem(
                    "SOP020",
                    f"state {state!r} does not wait for the user",
                    at,
                    hint=f"one of {', '.join(waiting)}",
                )
            )
            ok = False
        if ok and isinstance(text, str) and isinstance(intent, str) and isinstance(state, str):
            examples.append(Example(text, intent, state, number))
    if not problems and not examples:
        problems.append(Problem("SOP010", "no examples", Location(name)))
    if problems:
        raise PolicyLoadError(problems)
    return examples


def _eval_table(console: Console, results: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    from rich.table import Table  # noqa: PLC0415

    def show(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        return str(value)

    rows = [
        ("examples", "examples"),
        ("correct", "correct"),
        ("accuracy", "accuracy"),
        ("macro-F1", "macro_f1"),
        ("out-of-scope precision", "oos_precision"),
        ("out-of-scope recall", "oos_recall"),
        ("ECE (model-answered)", "ece"),
        ("model-answered", "model_answered"),
        ("no intent (slots only)", "no_intent"),
        ("error routes", "errors"),
        ("without a model call", "without_model_call"),
        ("  by source", "without_model_call_by_source"),
        ("model calls / example", "model_calls_mean"),
        ("prompt tokens / example", "prompt_tokens_mean"),
        ("completion tokens / example", "completion_tokens_mean"),
        ("latency median (ms)", "latency_ms_median"),
        ("latency p90 (ms)", "latency_ms_p90"),
        ("answered by", "answered_by"),
    ]
    table = Table(title="intent classification")
    table.add_column("figure")
    for name, _ in results:
        table.add_column(name, justify="right")
    for title, key in rows:
        table.add_row(title, *(show(figures.get(key)) for _, figures in results))
    console.print(table)
    for name, figures in results:
        mistakes = figures["confusions"]
        if not mistakes:
            continue
        confusion = Table(title=f"top confusions: {name}")
        confusion.add_column("expected")
        confusion.add_column("predicted")
        confusion.add_column("count", justify="right")
        for item in mistakes:
            confusion.add_row(item["expected"], item["predicted"], str(item["count"]))
        console.print(confusion)


@app.command(name="eval")
def evaluate(
    policy: PolicyArg,
    *,
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            "-d",
            metavar="FILE",
            help='Labelled examples as JSON lines: {"text": ..., "intent": expected label,'
            ' "state": optional state to classify in}.',
            show_default=False,
        ),
    ],
    backend: Annotated[
        list[str] | None,
        typer.Option(
            "--backend",
            metavar="SPEC",
            help=_BACKEND_HELP + " Repeat to compare several side by side.",
            show_default=False,
        ),
    ] = None,
    script: ScriptOpt = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            help="State for examples that name none (default: the policy's initial state).",
            show_default=False,
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print every figure as one JSON object.")
    ] = False,
) -> None:
    """Measure intent classification on labelled examples: accuracy, F1, calibration, cost.

    Each example is classified in a fresh session placed in its state.
    """
    from sopagent._agent import Agent  # noqa: PLC0415
    from sopagent._eval import prediction, summarize  # noqa: PLC0415

    with _reporting():
        compiled = _compile(policy)
        default_state = compiled.policy.initial if state is None else state
        if state is not None and compiled.states.get(state) is None:
            raise typer.BadParameter(f"unknown state {state!r}", param_hint="--state")
        examples = _read_examples(data, compiled, default_state)
        backends = _backends(backend or [], script, compiled)

        from rich.console import Console  # noqa: PLC0415
        from rich.progress import Progress  # noqa: PLC0415

        progress_console = Console(stderr=True)
        results: list[tuple[str, dict[str, Any]]] = []
        with Progress(
            console=progress_console, transient=True, disable=not progress_console.is_terminal
        ) as progress:
            for label, model in backends:
                agent = Agent(compiled, model, audit=_NullSink())
                task = progress.add_task(label, total=len(examples))
                predictions = []
                for example in examples:
                    session = agent.new_session()
                    session.state = example.state
                    session.started = True
                    turn = agent.classify(session, example.text)
                    predictions.append(prediction(example.intent, turn))
                    progress.advance(task)
                results.append((label, summarize(predictions)))
        if json_output:
            document = {
                "policy": compiled.name,
                "policy_hash": compiled.hash,
                "data": str(data),
                "examples": len(examples),
                "backends": [{"backend": name, **figures} for name, figures in results],
            }
            typer.echo(json.dumps(document, indent=2))
        else:
            _eval_table(_console(), results)


# --- export ----------------------------------------------------------------------------------


def _write_lines(records: Iterable[Mapping[str, Any]], out: Path | None) -> int:
    lines = [json.dumps(record, ensure_ascii=False) + "\n" for record in records]
    if out is None:
        sys.stdout.write("".join(lines))
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def _audit_events(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Read JSON-lines audit logs; lines that are not JSON are reported and stop the export."""
    events: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for path in paths:
        _, items, found = _json_lines(path)
        problems += found
        events += [event for _, event in items if isinstance(event, dict)]
    if problems:
        raise PolicyLoadError(problems)
    return events


OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Write here instead of standard output.", show_default=False),
]


@app.command("export-labels")
def export_labels(
    audit: Annotated[
        list[Path], typer.Argument(help="JSON-lines audit logs (--audit).", show_default=False)
    ],
    out: OutOpt = None,
) -> None:
    """Turn audit logs into labelled examples ({"text", "intent", "state"} lines) to review."""
    from sopagent._export import labeled_turns  # noqa: PLC0415

    with _reporting():
        count = _write_lines(labeled_turns(_audit_events(audit)), out)
        _err(f"{count} labelled turn{'s' if count != 1 else ''}")


@app.command("export-finetune")
def export_finetune(
    policy: PolicyArg,
    data: Annotated[
        Path,
        typer.Option("--data", "-d", help="Labelled examples (JSON lines).", show_default=False),
    ],
    out: OutOpt = None,
) -> None:
    """Turn reviewed examples into OpenAI chat fine-tuning JSONL for the policy's classifier."""
    from sopagent._export import fine_tuning_records  # noqa: PLC0415

    with _reporting():
        compiled = _compile(policy)
        examples = _read_examples(data, compiled, compiled.policy.initial)
        rows = [{"text": e.text, "intent": e.intent, "state": e.state} for e in examples]
        count = _write_lines(fine_tuning_records(compiled, rows), out)
        _err(f"{count} fine-tuning record{'s' if count != 1 else ''}")


# --- verify, diff, replay --------------------------------------------------------------------


class Engine(StrEnum):
    """An engine of ``sopagent verify``."""

    exhaustive = "exhaustive"
    search = "search"


@contextmanager
def _progress(label: str) -> Iterator[Callable[[str, int, int | None], None]]:
    """A progress display on stderr (only on a terminal) fed by ``(stage, done, total)``."""
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        tasks: dict[str, Any] = {}
        names = {
            "explore": f"{label}: exploring (nodes)",
            "search": f"{label}: searching (conversations)",
            "product": f"{label}: comparing (pairs)",
        }

        def update(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(names.get(stage, stage), total=total)
            progress.update(tasks[stage], completed=done)

        yield update


@app.command()
def verify(
    policy: PolicyArg,
    *,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON object.")
    ] = False,
    engine: Annotated[
        list[Engine] | None,
        typer.Option(
            "--engine",
            help="exhaustive (every label and outcome, on the abstract machine) or search"
            " (generated conversations with the real decision functions). Default: both.",
            show_default=False,
        ),
    ] = None,
    max_turns: Annotated[
        int,
        typer.Option("--max-turns", min=1, max=200, help="User turns per generated conversation."),
    ] = 12,
    examples: Annotated[
        int, typer.Option("--examples", min=1, help="Conversations the search generates.")
    ] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the search.")] = 0,
    deadline: Annotated[
        float | None,
        typer.Option(
            "--deadline",
            min=0.0,
            help="Seconds after which the search starts no new conversation.",
            show_default=False,
        ),
    ] = None,
    save: Annotated[
        Path | None,
        typer.Option(
            "--save-counterexamples",
            metavar="DIR",
            help="Write each counterexample as a conversation test (*.test.yaml) into DIR.",
            show_default=False,
        ),
    ] = None,
    require_proof: Annotated[
        bool,
        typer.Option(
            "--require-proof",
            help="Fail unless every property is proved for all conversations (not only tested).",
        ),
    ] = False,
) -> None:
    """Prove the policy's properties whatever the model says, or print counterexamples.

    Exits 0 when every property holds, 1 when one fails, 2 on errors in the policy or options.
    """
    from sopagent._verify import render, write_counterexamples  # noqa: PLC0415
    from sopagent._verify import verify as run_verify  # noqa: PLC0415

    with _reporting():
        compiled = _compile(policy)
        engines = [e.value for e in engine] if engine else ["exhaustive", "search"]
        with _progress(compiled.name) as update:
            report = run_verify(
                compiled,
                engines=engines,
                examples=examples,
                max_turns=max_turns,
                seed=seed,
                deadline=deadline,
                progress=update,
            )
        saved: list[tuple[str, Path | None, str]] = []
        if save is not None and report.failed:
            try:
                saved = write_counterexamples(report, compiled, save, policy)
            except OSError as exc:
                _err(f"error: cannot write to {save}: {exc.strerror}")
                raise typer.Exit(2) from None
        if json_output:
            document = report.to_json()
            document["saved"] = [
                {
                    "property": pid,
                    "file": None if path is None else str(path),
                    "reason": why or None,
                }
                for pid, path, why in saved
            ]
            typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
        else:
            sys.stdout.write(render(report))
            if not report.results:
                _err(f"note: {policy} declares no properties")
            for pid, path, why in saved:
                _err(f"saved {pid}: {path}" if path is not None else f"not saved {pid}: {why}")
        unproved = [r for r in report.results if r.verdict != "proved"]
        if report.failed or (require_proof and unproved):
            raise typer.Exit(1)


@app.command(name="diff")
def diff_command(
    old: Annotated[Path, typer.Argument(help="Policy in use.", show_default=False)],
    new: Annotated[Path, typer.Argument(help="New version of the policy.", show_default=False)],
    *,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the diff as one JSON object.")
    ] = False,
    max_turns: Annotated[
        int,
        typer.Option(
            "--max-turns", min=1, max=50, help="User turns the conversation comparison looks ahead."
        ),
    ] = 6,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Shortest witnesses shown per direction.")
    ] = 20,
) -> None:
    """What changed between two versions: structure, wording, approvals, conversations.

    Exits 0 when the versions cannot behave differently, 1 when they can, 2 on load errors.
    """
    from sopagent._diff import diff_policies, render  # noqa: PLC0415

    with _reporting():
        before, after = _compile(old), _compile(new)
        with _progress(after.name) as update:
            result = diff_policies(
                before,
                after,
                max_turns=max_turns,
                limit=limit,
                progress=lambda n: update("product", n, None),
            )
        if json_output:
            typer.echo(json.dumps(result.to_json(), indent=2, ensure_ascii=False, default=str))
        else:
            sys.stdout.write(render(result))
        if result.semantic:
            raise typer.Exit(1)


@app.command()
def replay(
    audit: Annotated[
        list[Path], typer.Argument(help="JSON-lines audit logs (--audit).", show_default=False)
    ],
    *,
    policy: Annotated[
        Path, typer.Option("--policy", help="The version to replay on.", show_default=False)
    ],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per conversation, as a list.")
    ] = False,
    fact: FactOpt = None,
) -> None:
    """Replay logged conversations on a policy version, with their recorded labels.

    Reports every conversation whose path or responses change, with the first turn that
    differs. Exits 0 when none changed, 1 when some did, 2 on errors in the files.
    """
    from sopagent._replay import replay as run_replay  # noqa: PLC0415

    with _reporting():
        compiled = _compile(policy)
        events: list[tuple[Location, dict[str, Any]]] = []
        problems: list[Problem] = []
        for path in audit:
            name, items, found = _json_lines(path)
            problems += found
            events += [(Location(name, n, 1), e) for n, e in items if isinstance(e, dict)]
        if problems:
            raise PolicyLoadError(problems)
        try:
            results = run_replay(compiled, events, facts=_parse_facts(fact))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--fact") from exc
        changed = [r for r in results if r.status == "changed"]
        if json_output:
            typer.echo(json.dumps([r.to_json() for r in results], indent=2, ensure_ascii=False))
        else:
            for result in results:
                if result.status == "changed":
                    typer.echo(
                        f"{result.location}: {result.session_id}: changed at turn {result.turn}"
                    )
                    for key in result.differs:
                        typer.echo(f"    {key}: {result.old.get(key)} -> {result.new.get(key)}")
                elif result.status == "unreplayable":
                    typer.echo(
                        f"{result.location}: {result.session_id}: not replayed from turn"
                        f" {result.turn}: {result.reason}"
                    )
            unreplayable = sum(1 for r in results if r.status == "unreplayable")
            _err(
                f"{len(results)} conversation{'s' if len(results) != 1 else ''} replayed on"
                f" {compiled.name} {compiled.hash}: {len(changed)} changed,"
                f" {len(results) - len(changed) - unreplayable} the same,"
                f" {unreplayable} not replayable"
            )
        if changed:
            raise typer.Exit(1)


# --- npc -------------------------------------------------------------------------------------


@app.command()
def npc(
    policy: PolicyArg,
    *,
    stdio: Annotated[
        bool,
        typer.Option(
            "--stdio",
            help="Serve the JSON-lines NPC protocol on standard input and output, for game"
            " engines (docs/npc.md).",
        ),
    ] = False,
    replay_file: Annotated[
        Path | None,
        typer.Option(
            "--replay",
            metavar="FILE",
            help="Replay a recording (labels, no model call) and check every turn's state"
            " digest; exit 1 if one differs.",
            show_default=False,
        ),
    ] = None,
    backend: BackendOpt = None,
    script: ScriptOpt = None,
    audit: AuditOpt = None,
    budget_ms: Annotated[
        float | None,
        typer.Option(
            "--budget-ms",
            min=0,
            help="--stdio: budget of 'say' requests that give none; a turn over it sends its"
            " filler line at once and the turn when done.",
            show_default=False,
        ),
    ] = None,
    record: Annotated[
        bool, typer.Option("--record", help="--stdio: NPCs record their turns by default.")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="--replay: print one JSON turn record per line.")
    ] = False,
) -> None:
    """Run game NPCs of a policy for an engine (--stdio), or replay a recorded session."""
    if stdio == (replay_file is not None):
        raise typer.BadParameter("give exactly one of --stdio and --replay FILE")
    with _reporting():
        compiled = _compile(policy)
        if replay_file is not None:
            _replay(compiled, replay_file, json_output=json_output)
            return
        from sopagent._agent import Agent  # noqa: PLC0415
        from sopagent._stdio import serve  # noqa: PLC0415

        agent = Agent(compiled, _backend(backend, script, compiled), audit=_NullSink())
        sink = agent.audit = _open_sink(audit)
        _warm(agent)
        try:
            serve(agent, budget_ms=budget_ms, record=record)
        finally:
            _close(sink)


def _replay(compiled: CompiledPolicy, path: Path, *, json_output: bool) -> None:
    from sopagent._npc import Recording, replay  # noqa: PLC0415
    from sopagent.errors import SessionError  # noqa: PLC0415

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyLoadError(
            [Problem("SOP001", f"cannot read the recording: {exc}", Location(str(path)))]
        ) from exc
    try:
        result = replay(compiled, Recording.from_jsonl(text))
    except SessionError as exc:
        # A broken recording, or one of another policy version, is bad input: exit 2.
        raise PolicyLoadError([Problem("SOP001", str(exc), Location(str(path)))]) from exc
    show = _record if json_output else _transcript
    for turn in result.turns:
        sys.stdout.write(show(turn) + "\n")
    sys.stdout.flush()
    count = len(result.turns)
    if result.diverged is not None:
        _err(
            f"the replay diverged at turn {result.diverged} of {count}: state digest"
            f" {result.actual}, recorded {result.expected}"
        )
        raise typer.Exit(1)
    _err(
        f"{count} turn{'s' if count != 1 else ''} replayed with no model call; every state matches"
    )


@app.command("export-lines")
def export_lines(
    policy: PolicyArg,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Write here instead of standard output.", show_default=False
        ),
    ] = None,
    locale: Annotated[
        list[str] | None,
        typer.Option(
            "--locale",
            metavar="LOCALE",
            help="Only these locales (repeatable).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write every line of every locale as CSV, for translators and voice studios.

    One row per line id and locale, source text beside the translation, status missing,
    unapproved, approved or changed, and where the policy says the line.
    """
    from sopagent._locales import lines_csv  # noqa: PLC0415

    with _reporting():
        compiled = _compile(policy)
        try:
            text = lines_csv(compiled, locale)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--locale") from None
        if out is None:
            sys.stdout.write(text)
            return
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            _err(f"error: cannot write {out}: {exc.strerror}")
            raise typer.Exit(2) from None
        rows = text.count("\n") - 1
        _err(f"{rows} line{'s' if rows != 1 else ''} written to {out}")


# --- check and approve -----------------------------------------------------------------------


class CheckFormat(StrEnum):
    """Output format of ``sopagent check``."""

    text = "text"
    json = "json"
    sarif = "sarif"
    markdown = "markdown"


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot write {out}: {exc.strerror}", param_hint="--output"
        ) from None


@app.command()
def check(
    policies: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Policy YAML files, or directories of them (*.test.yaml left out).",
            show_default=False,
        ),
    ] = None,
    *,
    json_output: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    output_format: Annotated[
        CheckFormat,
        typer.Option(
            "--format",
            "-f",
            help="text (one finding a line), json, or sarif (GitHub code scanning); with"
            " --list-rules also markdown (docs/rules.md).",
        ),
    ] = CheckFormat.text,
    select: Annotated[
        list[str] | None,
        typer.Option(
            "--select",
            metavar="CODE",
            help="Report only these rules: codes or prefixes (SOP04), repeatable or"
            " comma-separated.",
            show_default=False,
        ),
    ] = None,
    ignore: Annotated[
        list[str] | None,
        typer.Option(
            "--ignore", metavar="CODE", help="Do not report these rules.", show_default=False
        ),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too (exit 1).")] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the report to FILE.", show_default=False),
    ] = None,
    list_rules: Annotated[
        bool, typer.Option("--list-rules", help="Print the rule catalogue and exit.")
    ] = False,
) -> None:
    """Run every rule on policies, their catalogs and decision modules (docs/rules.md).

    Exits 0 when clean (warnings allowed unless --strict), 1 on findings, 2 when a file cannot
    be loaded or the options are wrong.
    """
    from sopagent._analysis import check_paths, render, summary_line  # noqa: PLC0415
    from sopagent._rules import rules_listing  # noqa: PLC0415

    chosen = CheckFormat.json if json_output else output_format
    if list_rules:
        if chosen is CheckFormat.sarif:
            raise typer.BadParameter(
                "rules are listed as text, json or markdown", param_hint="--format"
            )
        _emit(rules_listing(chosen.value), output)
        return
    if not policies:
        raise typer.BadParameter("give at least one policy file", param_hint="POLICIES")
    if chosen is CheckFormat.markdown:
        raise typer.BadParameter("markdown is for --list-rules", param_hint="--format")
    try:
        report = check_paths(policies, select=select or (), ignore=ignore or ())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--select/--ignore") from exc
    _emit(render(report, chosen.value, strict=strict), output)
    if chosen is CheckFormat.text:
        _err(summary_line(report))
    raise typer.Exit(report.exit_code(strict=strict))


@app.command()
def approve(
    catalog: Annotated[Path, typer.Argument(help="Catalog YAML file.", show_default=False)],
    *,
    by: Annotated[
        str | None,
        typer.Option("--by", metavar="NAME", help="Who approves.", show_default=False),
    ] = None,
    entry: Annotated[
        list[str] | None,
        typer.Option(
            "--entry",
            metavar="ID",
            help="Approve only this response (repeatable); by default every one not approved"
            " as it is now.",
            show_default=False,
        ),
    ] = None,
    status: Annotated[
        bool,
        typer.Option(
            "--status",
            help="Show approved, unapproved, changed and stale entries; exit 1"
            " unless every response is approved.",
        ),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON document.")] = False,
) -> None:
    """Record a reviewer's approval of catalog wording in NAME.approvals.json beside it."""
    from sopagent import _approval  # noqa: PLC0415
    from sopagent._load import load_catalog  # noqa: PLC0415

    with _reporting():
        loaded = load_catalog(catalog)
        if status:
            if by is not None or entry:
                raise typer.BadParameter("--status only shows; drop --by and --entry")
            lock = _approval.read_lock(loaded)
            if json_output:
                typer.echo(json.dumps(_approval.status_document(loaded, lock), indent=2))
            else:
                for line in _approval.status_lines(loaded, lock):
                    typer.echo(line)
            raise typer.Exit(0 if _approval.fully_approved(loaded, lock) else 1)
        if by is None:
            raise typer.BadParameter("say who approves with --by NAME", param_hint="--by")
        try:
            approved, path = _approval.approve(loaded, by=by, entries=entry or None)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--by/--entry") from exc
        except OSError as exc:
            _err(f"error: cannot write the lock file: {exc.strerror}")
            raise typer.Exit(2) from None
        lock = _approval.read_lock(loaded)
        if json_output:
            document = _approval.status_document(loaded, lock, approved)
            typer.echo(json.dumps(document, indent=2))
        else:
            count = len(approved)
            _err(f"{count} response{'s' if count != 1 else ''} approved by {by.strip()} in {path}")
            for name in approved:
                typer.echo(name)


# --- serve -----------------------------------------------------------------------------------


@app.command()
def serve(
    policies: Annotated[
        list[Path],
        typer.Argument(
            help="Policy YAML files; several versions may be served side by side.",
            show_default=False,
        ),
    ],
    *,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).")] = 8000,
    store: Annotated[
        str,
        typer.Option(
            help="Session store: a SQLite file (sqlite:///FILE or a path) or redis://HOST:PORT/DB."
        ),
    ] = "sopagent-sessions.db",
    keys: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="API keys file (sopagent new-key writes it). Required.",
            show_default=False,
        ),
    ] = None,
    audit: Annotated[
        Path, typer.Option(metavar="FILE", help="Audit log: JSON lines, rotated by size.")
    ] = Path("sopagent-audit.jsonl"),
    no_audit: Annotated[bool, typer.Option("--no-audit", help="Write no audit log.")] = False,
    audit_max_mb: Annotated[
        int, typer.Option(min=1, help="Rotate the audit log at this many MiB.")
    ] = 64,
    audit_backups: Annotated[int, typer.Option(min=1, help="Rotated audit files kept.")] = 10,
    handoff_webhook: Annotated[
        str | None,
        typer.Option(
            metavar="URL", help="POST handoff events (JSON) to this URL.", show_default=False
        ),
    ] = None,
    handoff_stream: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="XADD handoff events to redis://HOST:PORT/DB#STREAM.",
            show_default=False,
        ),
    ] = None,
    backend: BackendOpt = None,
    script: ScriptOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    lock_ttl: Annotated[
        float, typer.Option(min=0.1, help="Seconds a turn may hold a session's lease.")
    ] = 15.0,
    backend_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds one call to a remote model (openai) may take."),
    ] = 10.0,
    access_log: Annotated[bool, typer.Option(help="Log every request on stderr.")] = False,
) -> None:
    """Serve policies over HTTP: sessions in SQLite or Redis, API keys, audit, handoffs.

    Exit codes: 0 stopped by SIGINT/SIGTERM, 2 invalid policy, keys file or options,
    3 the store, the backend or the address cannot be used.
    """
    try:
        import fastapi  # noqa: F401, PLC0415 (checked here for a clear message)
        import uvicorn  # noqa: F401, PLC0415

        from sopagent.server._run import ConfigError, ServeConfig  # noqa: PLC0415
        from sopagent.server._run import serve as run_server  # noqa: PLC0415
    except ImportError as exc:
        _err(
            f"error: sopagent serve needs the server extra: pip install 'sopagent[server]' ({exc})"
        )
        raise typer.Exit(3) from None
    name = backend if backend is not None else ("scripted" if script else "embedded")
    config = ServeConfig(
        policies=tuple(str(p) for p in policies),
        host=host,
        port=port,
        store=store,
        keys=str(keys) if keys is not None else "",
        audit=None if no_audit else str(audit),
        audit_max_bytes=audit_max_mb * 1024 * 1024,
        audit_backups=audit_backups,
        handoff_webhook=handoff_webhook,
        handoff_stream=handoff_stream,
        backend=name,
        script=str(script) if script is not None else None,
        workers=workers,
        lock_ttl=lock_ttl,
        backend_timeout=backend_timeout,
        access_log=access_log,
    )

    def ready(url: str) -> None:
        _err(f"sopagent serve: listening on {url} ({len(policies)} policy file(s), store {store})")

    with _reporting():
        try:
            code = run_server(config, ready=ready)
        except ConfigError as exc:
            _err(f"error: {exc}")
            raise typer.Exit(2) from None
        except ImportError as exc:
            _err(f"error: a backend is not available: {exc}")
            raise typer.Exit(3) from None
        except OSError as exc:
            _err(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}")
            raise typer.Exit(3) from None
    raise typer.Exit(code)


@app.command("new-key")
def new_key(
    tenant: Annotated[str, typer.Option(help="The tenant that owns sessions made with the key.")],
    policy: Annotated[
        list[str],
        typer.Option(help="A policy name the key may use (repeatable; * for every policy)."),
    ],
    keys: Annotated[
        Path, typer.Option(metavar="FILE", help="Keys file to append the entry to.")
    ] = Path("sopagent-keys.yaml"),
    key_id: Annotated[
        str | None,
        typer.Option(
            "--id", help="Public name of the key (default: TENANT-N).", show_default=False
        ),
    ] = None,
) -> None:
    """Make an API key: print it once and append its hash to the keys file."""
    from sopagent.server._auth import KeyRing, hash_key  # noqa: PLC0415
    from sopagent.server._auth import new_key as make_key  # noqa: PLC0415

    with _reporting():
        existing = len(KeyRing.from_file(keys)) if keys.exists() else 0
        secret = make_key()
        entry = {
            "id": key_id or f"{tenant}-{existing + 1}",
            "tenant": tenant,
            "policies": list(policy),
            "hash": hash_key(secret),
        }
        text = keys.read_text(encoding="utf-8") if keys.exists() else "keys:\n"
        if not text.endswith("\n"):
            text += "\n"
        # JSON scalars and lists are YAML too, and quote whatever needs quoting.
        text += f"  - id: {json.dumps(entry['id'])}\n"
        text += "".join(
            f"    {k}: {json.dumps(entry[k])}\n" for k in ("tenant", "policies", "hash")
        )
        keys.write_text(text, encoding="utf-8")
        KeyRing.from_file(keys)  # the file must still be valid
    typer.echo(secret)
    _err(f"key {entry['id']} for tenant {tenant} added to {keys}; it is shown only now")


# --- test, review ----------------------------------------------------------------------------


@app.command(name="test")
def conversation_tests(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Conversation test files (*.test.yaml), or directories to search for them.",
            show_default=False,
        ),
    ] = None,
    *,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            metavar="SPEC",
            help="Classify messages without a forced label with this backend and measure its"
            " intent accuracy (default: recorded labels, no model). " + _BACKEND_HELP,
            show_default=False,
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the results as one JSON object.")
    ] = False,
    show_coverage: Annotated[
        bool,
        typer.Option(
            "--coverage", help="Report the states, routes, intents and responses reached."
        ),
    ] = False,
    generate: Annotated[
        Path | None,
        typer.Option(
            "--generate",
            metavar="POLICY",
            help="Write a minimal suite covering every route of POLICY (with -o FILE).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", metavar="FILE", help="Where --generate writes the suite."),
    ] = None,
) -> None:
    """Run conversation tests; report expected/actual diffs per step and coverage.

    Exits 0 when every conversation passes, 1 when one fails, 2 on invalid files or options.
    """
    from sopagent._coverage import coverage_of  # noqa: PLC0415
    from sopagent._testing import Suite, render_summary  # noqa: PLC0415

    with _reporting():
        if generate is not None:
            if out is None:
                raise typer.BadParameter("--generate needs -o FILE", param_hint="--out")
            from sopagent._generate import generate_suite  # noqa: PLC0415

            compiled = _compile(generate)
            suite_text, report = generate_suite(compiled, generate, out)
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(suite_text, encoding="utf-8")
            except OSError as exc:
                _err(f"error: cannot write {out}: {exc.strerror}")
                raise typer.Exit(2) from None
            for line in report.lines():
                _err(line)
            if report.uncovered:
                raise typer.Exit(1)
            return
        if not paths:
            raise typer.BadParameter("give test files or directories", param_hint="PATHS")
        suite = Suite.load(paths)
        model = None
        if backend is not None:
            compiled_policies = suite.compiled()
            model = _backend(backend, None, compiled_policies[0])
        result = suite.run(model)
        coverages = coverage_of(suite.compiled(), result.results) if show_coverage else None
        if json_output:
            document: dict[str, Any] = {
                "ok": not result.failed,
                "passed": len(result.results) - len(result.failed),
                "failed": len(result.failed),
                "conversations": [r.to_json() for r in result.results],
                "classification": result.classification(),
            }
            if coverages is not None:
                document["coverage"] = [c.to_json() for c in coverages]
            typer.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))
        else:
            typer.echo(render_summary(result, coverages))
        if result.failed:
            raise typer.Exit(1)


class ReviewLayout(StrEnum):
    """How ``sopagent review`` draws the state diagram."""

    auto = "auto"
    builtin = "builtin"
    graphviz = "graphviz"


@app.command()
def review(
    policy: PolicyArg,
    *,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE",
            help="The document to write: .html (self-contained page) or .md (Markdown).",
            show_default=False,
        ),
    ],
    layout: Annotated[
        ReviewLayout,
        typer.Option(
            "--layout",
            help="Draw the diagram with Graphviz (dot), the built-in layered layout, or"
            " Graphviz when installed (auto).",
        ),
    ] = ReviewLayout.auto,
    examples: Annotated[
        int, typer.Option("--examples", min=1, help="Conversations the verify search generates.")
    ] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the verify search.")] = 0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the document's headline figures as JSON.")
    ] = False,
) -> None:
    """Write the review document a compliance reviewer reads and signs.

    Diagram, states and routes, catalog with approvals and hashes, check findings, verify
    results, coverage of the conversation tests beside the policy, and a sign-off block for
    the policy hash. Exits 0 when written, 2 on errors in the policy or options.
    """
    from sopagent._review import build_review, render_html, render_markdown  # noqa: PLC0415

    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".md", ".markdown"):
        raise typer.BadParameter("write a .html or a .md file", param_hint="--out")
    with _reporting():
        compiled = _compile(policy)
        with _progress(compiled.name) as update:
            try:
                document = build_review(
                    compiled, policy, layout=layout.value, examples=examples, seed=seed,
                    progress=update,
                )  # fmt: skip
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--layout") from None
        text = (
            render_markdown(document) if suffix in (".md", ".markdown") else render_html(document)
        )
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            _err(f"error: cannot write {out}: {exc.strerror}")
            raise typer.Exit(2) from None
        summary = document.summary()
        if json_output:
            typer.echo(json.dumps({"file": str(out), **summary}, indent=2, ensure_ascii=False))
        else:
            _err(
                f"wrote {out}: {compiled.name} {compiled.hash}; {summary['findings']} findings;"
                f" {summary['proved']}/{summary['properties']} properties proved,"
                f" {summary['violated']} failing; {summary['conversations_passed']}/"
                f"{summary['conversations']} conversation tests pass"
            )


# --- red team ----------------------------------------------------------------------------------

_ATTACKS = (
    Path(__file__).resolve().parent.parent / "tests" / "data" / "injection" / "attacks_ci.jsonl"
)


@app.command()
def redteam(
    policies: Annotated[list[Path], typer.Argument(help="Policy YAML files.", show_default=False)],
    *,
    attacks: Annotated[
        Path,
        typer.Option(
            "--attacks",
            metavar="FILE",
            help='Attack strings as JSON lines: {"id": ..., "text": ..., "corpus": ...}.'
            " By default the 336 attacks of tests/data/injection/attacks_ci.jsonl.",
        ),
    ] = _ATTACKS,
    sample: Annotated[
        int | None,
        typer.Option(
            "--sample",
            metavar="N",
            help="Play a deterministic sample of N attacks, stratified by corpus.",
            show_default=False,
        ),
    ] = None,
    backend: BackendOpt = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print counts, breakdowns and every attack's label.")
    ] = False,
) -> None:
    """Play every attack as a user turn, at the start and mid-conversation; check what got out.

    Lines said must be catalog templates with the session's values, moves declared
    transitions, consequential actions backed by the procedure's preconditions. Exit code 1
    when any check fails.
    """
    from sopagent._agent import Agent  # noqa: PLC0415
    from sopagent._redteam import load_attacks, markdown, red_team, sample_attacks  # noqa: PLC0415

    with _reporting():
        try:
            strings = load_attacks(attacks)
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--attacks") from None
        if sample is not None:
            strings = sample_attacks(strings, sample)
        compiled_all = [_compile(path) for path in policies]
        model = _backend(backend, None, compiled_all[0])
        reports = []
        for compiled in compiled_all:
            agent = Agent(compiled, model, audit=_NullSink())
            _err(f"{compiled.name}: {len(strings)} attacks")
            reports.append(red_team(agent, strings))
        failed = sum(len(r.findings) for r in reports)
        if json_output:
            document = {
                "attacks": str(attacks),
                "tried": len(strings),
                "findings": failed,
                "policies": [r.to_json(attacks=True) for r in reports],
            }
            typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
        else:
            typer.echo(markdown(reports, attacks=len(strings)), nl=False)
        if failed:
            raise typer.Exit(1)


# --- entry point -----------------------------------------------------------------------------


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sopagent {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Conversational agents that follow standard operating procedures exactly.

    A policy YAML file and an approved response catalog compile to a state machine; a
    language model only classifies what the user says.
    """


def main() -> None:
    """Run the ``sopagent`` command."""
    app(prog_name="sopagent")
