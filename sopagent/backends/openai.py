"""A backend over any OpenAI-compatible chat completion API, answering in a JSON Schema.

One chat completion per turn: a system message describes the policy's intents (the part shared
by every state of a policy comes first, so providers' prompt caching reuses it), then the
message; the answer is constrained by a JSON Schema whose ``intent`` is an enum of the labels
allowed in the current state, with one enum property per slot the model must fill. The answer
is validated again here before the agent sees it.

The caller passes its own ``openai.OpenAI`` client, so ``base_url`` points it at OpenAI or any
compatible server (vLLM, llama.cpp's server, Ollama). Servers differ in how they take a schema:

* ``dialect="openai"`` sends ``{"type": "json_schema", "json_schema": {..., "strict": True}}``
  (OpenAI, vLLM, Ollama);
* ``dialect="llamacpp"`` sends ``{"type": "json_object", "schema": ...}``, the form
  llama-cpp-python's server enforces (it rejects the other one).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import pydantic

from sopagent.backends import (
    Choice,
    ChooseRequest,
    Classification,
    ClassifyRequest,
    Label,
    Usage,
)
from sopagent.backends._prompt import one_line
from sopagent.errors import (
    BackendAnswerError,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
)

if TYPE_CHECKING:
    import openai

__all__ = ["Dialect", "OpenAIBackend", "from_openai", "system_message"]

Dialect = Literal["openai", "llamacpp"]
"""How a server takes a JSON Schema for structured output; see the module docstring."""

_OUT_OF_SCOPE = "out_of_scope"
_INTENT = "intent"
_RESPONSE = "response"
_EXAMPLES = 3
_MISMATCH = (
    "this server does not accept OpenAI's json_schema response format; use dialect='llamacpp'"
)


@dataclass(frozen=True)
class _Prompt:
    """A system message, the schema answers follow, and the validator of those answers."""

    system: str
    schema: dict[str, Any]
    validator: type[pydantic.BaseModel]
    field: str


class OpenAIBackend:
    """Intent classification by one structured-output chat completion per turn.

    Args:
        client: an ``openai.OpenAI`` client; its ``base_url`` picks the server.
        model: the model name the server knows.
        dialect: how the server takes a JSON Schema (``"openai"`` or ``"llamacpp"``).
        timeout: seconds allowed per request.
        max_retries: retries of transport errors, 429 and 5xx answers, done by the client.
        logprobs: ask for token log-probabilities and score the answer with them; otherwise
            every answer scores 1.0.
        max_prompts: how many built system messages and schemas to keep.
    """

    name = "openai"

    def __init__(
        self,
        client: openai.OpenAI,
        *,
        model: str,
        dialect: Dialect = "openai",
        timeout: float = 20.0,
        max_retries: int = 2,
        logprobs: bool = False,
        max_prompts: int = 64,
    ) -> None:
        if dialect not in ("openai", "llamacpp"):
            raise ValueError(f"unknown dialect {dialect!r}: use 'openai' or 'llamacpp'")
        self.client = client.with_options(max_retries=max_retries)
        self.model = model
        self.dialect: Dialect = dialect
        self.timeout = timeout
        self.logprobs = logprobs
        self._prompts: OrderedDict[tuple[object, ...], _Prompt] = OrderedDict()
        self._max_prompts = max_prompts
        self._lock = threading.Lock()

    # -- Backend protocol ----------------------------------------------------------------------

    def classify(self, request: ClassifyRequest) -> Classification:
        """Ask for one allowed intent and the enum slots; validate the answer."""
        labels = tuple(label.name for label in request.choices)
        slots = tuple(
            (name, tuple(value.name for value in values))
            for name, values in request.slot_choices.items()
        )
        scope = request.key or (
            request.instructions,
            tuple(label.name for label in request.vocabulary),
        )
        prompt = self._prompt(("classify", scope, labels, slots), lambda: _classify_prompt(request))
        answer, score, usage = self._ask(prompt, request.text, 64 + 24 * len(slots))
        intent = str(answer[_INTENT])
        filled = {name: str(answer[name]) for name, _ in slots}
        return Classification(intent, score, {intent: score}, filled, usage)

    def choose(self, request: ChooseRequest) -> Choice:
        """Ask for one allowed response id; validate the answer."""
        options = tuple(option.name for option in request.options)
        scope = request.key or request.instructions
        prompt = self._prompt(("choose", scope, options), lambda: _choose_prompt(request))
        answer, score, usage = self._ask(prompt, request.text, 64)
        return Choice(str(answer[_RESPONSE]), score, usage)

    # -- requests ------------------------------------------------------------------------------

    def _prompt(self, key: tuple[object, ...], build: Callable[[], _Prompt]) -> _Prompt:
        with self._lock:
            prompt = self._prompts.get(key)
            if prompt is not None:
                self._prompts.move_to_end(key)
                return prompt
        prompt = build()
        with self._lock:
            self._prompts[key] = prompt
            while len(self._prompts) > self._max_prompts:
                self._prompts.popitem(last=False)
        return prompt

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.dialect == "llamacpp":
            return {"type": "json_object", "schema": schema}
        return {
            "type": "json_schema",
            "json_schema": {"name": "classification", "strict": True, "schema": schema},
        }

    def _ask(
        self, prompt: _Prompt, text: str, max_tokens: int
    ) -> tuple[dict[str, Any], float, Usage]:
        import openai  # noqa: PLC0415 (optional dependency)
        from openai.types.chat import ChatCompletion  # noqa: PLC0415

        options: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": text},
            ],
            "response_format": self._response_format(prompt.schema),
            "temperature": 0,
            "max_tokens": max_tokens,
            "timeout": self.timeout,
        }
        if self.logprobs:
            options["logprobs"] = True
            options["top_logprobs"] = 5
        deadline = time.monotonic() + self.timeout
        try:
            # Streamed, so that the body too must arrive by the deadline: the client's own
            # timeout bounds each read, and an answer trickled slowly would never meet it.
            with self.client.chat.completions.with_streaming_response.create(**options) as raw:
                body = self._read(raw, deadline)
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from exc
        except openai.APITimeoutError as exc:
            raise BackendTimeout(
                f"request timed out after {self.timeout} s", provider=self.name, retryable=True
            ) from exc
        except openai.APIConnectionError as exc:
            raise BackendUnavailable(
                f"cannot reach the server: {exc}", provider=self.name, retryable=True
            ) from exc
        except openai.OpenAIError as exc:
            raise BackendError(f"request failed: {exc}", provider=self.name) from exc
        try:
            data: object = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            # A server (or a proxy before it) that answers garbage may answer well next time.
            raise BackendError(
                f"the server's answer is not a JSON object: {one_line(body[:200])!r}",
                provider=self.name,
                retryable=True,
            )
        # Built as the SDK builds answers, without validation: the fields used are checked below.
        response = ChatCompletion.model_construct(**data)
        usage = _usage(response)
        choices = getattr(response, "choices", None)
        if not choices or not isinstance(choices, list):
            raise BackendAnswerError("the server answered no choice", provider=self.name)
        choice = choices[0]
        message = getattr(choice, "message", None)
        if message is None:
            raise BackendAnswerError("the server's choice has no message", provider=self.name)
        refusal = getattr(message, "refusal", None)
        if refusal:
            raise BackendAnswerError(f"the model refused: {one_line(refusal)}", provider=self.name)
        if getattr(choice, "finish_reason", None) == "length":
            raise BackendAnswerError(
                f"the answer was cut at {max_tokens} tokens (finish_reason 'length')",
                provider=self.name,
            )
        content = getattr(message, "content", None) or ""
        if not isinstance(content, str):
            raise BackendAnswerError(f"the answer is {type(content).__name__}, not text",
                                     provider=self.name)  # fmt: skip
        try:
            answer = prompt.validator.model_validate_json(content).model_dump()
        except pydantic.ValidationError as exc:
            raise BackendAnswerError(
                f"answer {one_line(content)!r} does not follow the schema: "
                f"{one_line(str(exc.errors(include_url=False)))}",
                provider=self.name,
            ) from exc
        score = 1.0
        if self.logprobs:
            allowed = prompt.schema["properties"][prompt.field]["enum"]
            score = _score(content, prompt.field, allowed, getattr(choice, "logprobs", None))
        return answer, score, usage

    def _read(self, raw: Any, deadline: float) -> str:
        """The whole body of ``raw``, or `BackendTimeout` once ``deadline`` has passed."""
        chunks: list[bytes] = []
        try:
            for chunk in raw.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise BackendTimeout(
                        f"the answer took longer than {self.timeout} s to arrive",
                        provider=self.name,
                        retryable=True,
                    )
        except BackendError:
            raise
        except Exception as exc:  # the HTTP library's own errors, whichever it is
            if "timeout" in type(exc).__name__.lower():
                raise BackendTimeout(
                    f"the answer stalled for {self.timeout} s", provider=self.name, retryable=True
                ) from exc
            raise BackendUnavailable(
                f"the answer broke off: {type(exc).__name__}: {exc}",
                provider=self.name,
                retryable=True,
            ) from exc
        return b"".join(chunks).decode("utf-8", errors="replace")

    def _status_error(self, exc: openai.APIStatusError) -> BackendError:
        status = exc.status_code
        text = one_line(str(exc.message))
        if self.dialect == "openai" and ("json_object" in text or "'text'" in text):
            return BackendError(f"{_MISMATCH} (HTTP {status}: {text})", provider=self.name)
        if status in (408, 409, 429) or status >= 500:
            return BackendUnavailable(
                f"HTTP {status}: {text}",
                provider=self.name,
                retryable=True,
                retry_after=_retry_after(exc.response.headers.get("retry-after")),
            )
        return BackendError(f"HTTP {status}: {text}", provider=self.name)


def _retry_after(header: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds; None for a date or nonsense."""
    if header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:
        return None
    return seconds if 0.0 <= seconds < float("inf") else None


def from_openai(
    client: openai.OpenAI,
    *,
    model: str,
    dialect: Dialect = "openai",
    timeout: float = 20.0,
    max_retries: int = 2,
    logprobs: bool = False,
) -> OpenAIBackend:
    """Create a backend over an OpenAI-compatible server.

    Args:
        client: an ``openai.OpenAI`` client, e.g.
            ``openai.OpenAI(base_url="http://localhost:8000/v1", api_key="local")``.
        model: the model name the server knows.
        dialect: ``"openai"`` for OpenAI, vLLM and Ollama; ``"llamacpp"`` for
            llama-cpp-python's server.
        timeout: seconds allowed per request.
        max_retries: retries of transport errors, 429 and 5xx answers.
        logprobs: score answers with token log-probabilities (servers that return them).
    """
    return OpenAIBackend(
        client,
        model=model,
        dialect=dialect,
        timeout=timeout,
        max_retries=max_retries,
        logprobs=logprobs,
    )


# -- prompts and schemas -----------------------------------------------------------------------


def _describe(label: Label, *, examples: int = _EXAMPLES) -> list[str]:
    lines = [f"- {label.name}: {one_line(label.description)}"]
    shown = [json.dumps(one_line(e)) for e in label.examples[:examples]]
    if shown:
        lines.append(f"  examples: {', '.join(shown)}")
    return lines


def _classify_prompt(request: ClassifyRequest) -> _Prompt:
    """Build the system message: the policy's part first, then this state's."""
    allowed = [label.name for label in request.choices]
    vocabulary = list(request.vocabulary) or list(request.labels)
    known = {label.name for label in vocabulary}
    vocabulary += [label for label in request.labels if label.name not in known]
    lines = []
    if request.instructions:
        lines += [one_line(request.instructions), ""]
    lines.append("Classify the customer's message into one intent. Intents:")
    for label in vocabulary:
        lines += _describe(label)
    lines += [
        "",
        'Answer with a JSON object: {"intent": <intent>, ...}.',
        "",
        f"Intents allowed now: {', '.join(allowed)}.",
    ]
    if _OUT_OF_SCOPE in allowed:
        lines.append(f"A message that means none of them is {_OUT_OF_SCOPE}.")
    for slot, values in request.slot_choices.items():
        human = slot.replace("_", " ")
        lines.append(f'Also set "{slot}": which {human} the message means, one of:')
        lines += [f"- {value.name}: {one_line(value.description)}" for value in values]
    properties: dict[str, Sequence[str]] = {_INTENT: allowed}
    for slot, values in request.slot_choices.items():
        if slot in properties:
            raise BackendError(f"slot {slot!r} clashes with the intent field", provider="openai")
        properties[slot] = [value.name for value in values]
    return _build("\n".join(lines), properties, _INTENT)


def system_message(request: ClassifyRequest) -> str:
    """Return the system message `OpenAIBackend.classify` sends for ``request``."""
    return _classify_prompt(request).system


def _choose_prompt(request: ChooseRequest) -> _Prompt:
    lines = []
    if request.instructions:
        lines += [one_line(request.instructions), ""]
    lines.append("Pick the reply that fits the customer's message best. Replies:")
    lines += [f"- {option.name}: {one_line(option.description)}" for option in request.options]
    lines += ["", 'Answer with a JSON object: {"response": <reply id>}.']
    ids = [option.name for option in request.options]
    return _build("\n".join(lines), {_RESPONSE: ids}, _RESPONSE)


def _build(system: str, properties: Mapping[str, Sequence[str]], field: str) -> _Prompt:
    """Build the JSON Schema and the pydantic model of an answer of enum properties."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            name: {"type": "string", "enum": list(values)} for name, values in properties.items()
        },
        "required": list(properties),
        "additionalProperties": False,
    }
    enum = cast("Any", Literal)
    fields: dict[str, Any] = {
        name: (enum[tuple(values)], ...) for name, values in properties.items() if values
    }
    empty = [name for name, values in properties.items() if not values]
    if empty:
        raise BackendError(f"no allowed values for {', '.join(empty)}", provider="openai")
    validator = pydantic.create_model(
        "Answer", __config__=pydantic.ConfigDict(extra="forbid", strict=True), **fields
    )
    return _Prompt(system, schema, validator, field)


# -- answers -----------------------------------------------------------------------------------


def _usage(response: Any) -> Usage:
    usage = getattr(response, "usage", None)
    if usage is None:
        return Usage(calls=1)
    details = getattr(usage, "prompt_tokens_details", None)
    return Usage(
        calls=1,
        prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        cached_tokens=getattr(details, "cached_tokens", 0) or 0,
    )


def _score(content: str, field: str, allowed: Sequence[str], logprobs: Any) -> float:
    """Return the probability of the first token of the chosen label, among allowed ones.

    The token that starts the label's value is found in the returned tokens; its probability is
    renormalized over those of the top alternatives that could also start an allowed label (the
    ones the schema leaves open). Without log-probabilities the score is 1.0.
    """
    tokens = getattr(logprobs, "content", None)
    found = re.search(rf'"{re.escape(field)}"\s*:\s*"', content)
    if not tokens or found is None:
        return 1.0
    start = found.end()
    offset = 0
    for token in tokens:
        end = offset + len(token.token)
        if offset <= start < end:
            head = token.token[: start - offset]
            candidates = {token.token: token.logprob}
            for alt in getattr(token, "top_logprobs", None) or ():
                candidates.setdefault(alt.token, alt.logprob)
            kept = [
                lp
                for text, lp in candidates.items()
                if text.startswith(head) and _opens(text[len(head) :], allowed)
            ]
            total = sum(math.exp(lp) for lp in kept)
            if total <= 0.0:
                return 1.0
            return min(max(math.exp(token.logprob) / total, 0.0), 1.0)
        offset = end
    return 1.0


def _opens(tail: str, allowed: Sequence[str]) -> bool:
    """Whether ``tail`` can start the quoted value of one of ``allowed``."""
    return bool(tail) and any(
        f'{label}"'.startswith(tail) or tail.startswith(f'{label}"') for label in allowed
    )
