"""pytest plugin: conversation test files (``*.test.yaml``) as ordinary pytest items.

Installed with sopagent (entry point ``pytest11``), so ``pytest`` collects every
``*.test.yaml`` file with a ``sopagent_test`` key under its test paths: one item per
conversation, named after it, failing with the step's location and an expected/actual diff
per key. Options:

* ``--sopagent-backend SPEC``: classify messages without a forced label with a real backend
  (``embedded``, ``nearest``, ...) instead of the recorded labels;
* ``--sopagent-coverage``: print the coverage of each policy tested at the end of the run.

A file that cannot be loaded (or whose policy cannot be compiled) is a collection error that
lists every problem at ``file:line:col``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr
    from _pytest.terminal import TerminalReporter

    from sopagent._testing import ConversationResult, Suite
    from sopagent.backends import Backend

__all__ = [
    "ConversationFailedError",
    "SopagentConversation",
    "SopagentTestFile",
    "pytest_addoption",
    "pytest_collect_file",
    "pytest_configure",
    "pytest_terminal_summary",
]

_SUFFIX = ".test.yaml"


class _State:
    """What the plugin keeps for one pytest run: the shared suite, backend and results."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._suite: Suite | None = None
        self._backend: Backend | None = None
        self._backend_built = False
        self.results: list[ConversationResult] = []

    @property
    def suite(self) -> Suite:
        if self._suite is None:
            from sopagent._testing import Suite  # noqa: PLC0415 (only when a file is collected)

            self._suite = Suite()
        return self._suite

    def backend(self) -> Backend | None:
        if not self._backend_built:
            self._backend_built = True
            spec = self.config.getoption("sopagent_backend")
            if spec:
                self._backend = _build_backend(spec)
        return self._backend


_KEY = pytest.StashKey[_State]()


def _state(config: pytest.Config) -> _State:
    state = config.stash.get(_KEY, None)
    if state is None:
        state = config.stash[_KEY] = _State(config)
    return state


def _build_backend(spec: str) -> Backend:
    from sopagent import embedded  # noqa: PLC0415
    from sopagent.backends._spec import SpecBuilder, SpecError  # noqa: PLC0415

    def unavailable() -> Backend:
        raise pytest.UsageError("--sopagent-backend: the scripted backend needs a script")

    try:
        return SpecBuilder({"embedded": embedded, "scripted": unavailable}).build(spec)
    except SpecError as exc:
        raise pytest.UsageError(f"--sopagent-backend: {exc}") from None


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the plugin's options."""
    group = parser.getgroup("sopagent", "sopagent conversation tests (*.test.yaml)")
    group.addoption(
        "--sopagent-backend",
        metavar="SPEC",
        default=None,
        help="classify messages without a forced label with this backend (default: recorded"
        " labels, no model)",
    )
    group.addoption(
        "--sopagent-coverage",
        action="store_true",
        default=False,
        help="report the states, routes, intents and responses the conversation tests reach",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Build the backend asked for up front, so a bad spec is a usage error."""
    if config.getoption("sopagent_backend", None):
        _state(config).backend()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect ``*.test.yaml`` files that are sopagent conversation tests.

    Other projects' ``*.test.yaml`` files (no ``sopagent_test`` key) are left alone.
    """
    if file_path.name.endswith(_SUFFIX) and _is_conversation_test(file_path):
        collector: SopagentTestFile = SopagentTestFile.from_parent(parent, path=file_path)
        return collector
    return None


def _is_conversation_test(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(65536)
    except OSError:
        return True  # let collection report why it cannot be read
    return b"sopagent_test" in head


class SopagentTestFile(pytest.File):
    """A conversation test file: one item per conversation."""

    def collect(self) -> list[pytest.Item]:
        """Load and check the file against its policy."""
        from sopagent.errors import PolicyLoadError  # noqa: PLC0415

        suite = _state(self.config).suite
        before = len(suite.files)
        problems = suite.add(self.path)
        if problems:
            raise PolicyLoadError(problems)
        checked = suite.files[before]
        return [
            SopagentConversation.from_parent(self, name=c.name, checked=checked, index=i)
            for i, c in enumerate(checked.file.conversations)
        ]

    def repr_failure(  # type: ignore[override]
        self, excinfo: pytest.ExceptionInfo[BaseException]
    ) -> str | TerminalRepr:
        """A file that cannot be loaded: every problem at its location."""
        from sopagent.errors import PolicyError  # noqa: PLC0415

        if isinstance(excinfo.value, PolicyError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class ConversationFailedError(Exception):
    """A conversation test failed; carries its result."""

    def __init__(self, result: ConversationResult) -> None:
        super().__init__(result.conversation.name)
        self.result = result


class SopagentConversation(pytest.Item):
    """One conversation of a test file."""

    def __init__(self, *, checked: Any, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.checked = checked
        self.index = index

    def runtest(self) -> None:
        """Run the conversation; fail with its result."""
        state = _state(self.config)
        result = state.suite.run_one(self.checked, self.index, state.backend())
        state.results.append(result)
        if not result.passed:
            raise ConversationFailedError(result)

    def repr_failure(  # type: ignore[override]
        self, excinfo: pytest.ExceptionInfo[BaseException]
    ) -> str | TerminalRepr:
        """The failing step's location and an expected/actual diff per key."""
        from sopagent._testing import render_failure  # noqa: PLC0415

        if isinstance(excinfo.value, ConversationFailedError):
            return render_failure(excinfo.value.result)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """Where the conversation is written."""
        conversation = self.checked.file.conversations[self.index]
        return self.path, conversation.location.line - 1, f"conversation: {self.name}"


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    """With --sopagent-coverage: the coverage of each policy tested."""
    config = terminalreporter.config
    state = config.stash.get(_KEY, None)
    if state is None or not config.getoption("sopagent_coverage") or not state.results:
        return
    from sopagent._coverage import coverage_of  # noqa: PLC0415

    terminalreporter.section("sopagent coverage")
    for item in coverage_of(state.suite.compiled(), state.results):
        for line in item.render():
            terminalreporter.write_line(line)
