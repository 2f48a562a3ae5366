"""`sopagent npc --stdio`: the tests drive the child process over JSON lines as an engine would."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MERCHANT = str(ROOT / "policies" / "merchant_npc.yaml")
WARDEN = str(ROOT / "policies" / "warden_npc.yaml")
PURSE = {"gold": 80, "inventory": {"moonstone": 1}, "flags": []}

# A child process whose model waits until a file exists: the test decides when it answers.
GATED_SERVER = """
import sys, time
from pathlib import Path
import sopagent
from sopagent._stdio import serve
from sopagent.audit import NullSink
from sopagent.backends import Classification, Choice, Usage

gate = Path(sys.argv[2])

class Gated:
    name = "gated"
    def classify(self, request):
        while not gate.exists():
            time.sleep(0.005)
        return Classification("buy_key", 0.9, {}, {}, Usage(1))
    def choose(self, request):
        return Choice(request.options[0].name, 1.0, Usage(1))

agent = sopagent.Agent(
    sopagent.compile_policy(sopagent.load_policy(sys.argv[1])), Gated(), audit=NullSink()
)
serve(agent)
"""


class Engine:
    """The engine's side of the pipe: write requests, read replies with a timeout."""

    def __init__(self, *command: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=env,
        )
        self.replies: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.replies.put(line)
        self.replies.put(None)

    def send(self, **message: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def send_raw(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def receive(self, timeout: float = 120) -> dict[str, Any]:
        line = self.replies.get(timeout=timeout)
        assert line is not None, self.stderr()
        message: dict[str, Any] = json.loads(line)
        return message

    def ask(self, **message: Any) -> dict[str, Any]:
        self.send(**message)
        return self.receive()

    def nothing_yet(self, wait: float = 0.2) -> bool:
        try:
            line = self.replies.get(timeout=wait)
        except queue.Empty:
            return True
        self.replies.put(line)
        return False

    def finish(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout=60)

    def stderr(self) -> str:
        if self.process.poll() is None:
            return ""
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sopagent", *args]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A merchant NPC process on scripted labels (texts that are not examples: out_of_scope)."""
    script = tmp_path / "labels.yaml"
    script.write_text('"I fancy that key": buy_key\n')
    running = Engine(
        *cli("npc", MERCHANT, "--stdio", "--backend", "scripted", "--script", str(script))
    )
    yield running
    running.stop()


def test_ready_describes_the_policy_for_the_engine(engine: Engine) -> None:
    """The first line says the protocol, policy, locales, intents and typed schemas."""
    ready = engine.receive()
    assert ready["type"] == "ready"
    assert ready["protocol"] == 1
    assert ready["policy"] == "merchant_npc"
    assert ready["policy_hash"].startswith("sha256:")
    assert ready["locales"] == ["en", "de"]
    assert "buy_key" in ready["intents"]
    assert ready["facts"]["inventory"]["type"] == "counts"
    assert ready["facts"]["flags"]["values"] == ["crypt_quest", "crypt_open"]
    assert ready["effects"]["take_gold"] == {"amount": {"type": "integer", "min": 1}}


def test_a_conversation_with_effects_over_the_protocol(engine: Engine) -> None:
    """spawn, then say: each reply carries the request id, line ids, texts and effects."""
    engine.receive()
    opening = engine.ask(id=1, op="spawn", npc="bramble", facts=PURSE, seed=3)
    assert (opening["type"], opening["id"], opening["npc"]) == ("turn", 1, "bramble")
    assert [line["id"] for line in opening["turn"]["lines"]] == ["welcome"]
    asked = engine.ask(id=2, op="say", npc="bramble", text="I fancy that key")
    assert asked["turn"]["intent"] == "buy_key"
    assert asked["turn"]["state"] == "haggle"
    sold = engine.ask(id="three", op="say", npc="bramble", text="60", facts={"gold": 70})
    assert sold["id"] == "three"
    turn = sold["turn"]
    assert [line["id"] for line in turn["lines"]] == ["key_sold"]
    assert turn["lines"][0]["text"].endswith("That leaves you 10 gold for my other fine wares.")
    assert turn["effects"] == [
        {"name": "take_gold", "args": {"amount": 60}},
        {"name": "give_item", "args": {"item": "silver_key"}},
    ]
    assert turn["pending"] is False
    assert engine.finish() == 0


def test_npcs_in_german_save_load_and_despawn(engine: Engine) -> None:
    """A German NPC is saved, despawned, loaded under another name and goes on in German."""
    engine.receive()
    engine.ask(op="spawn", npc="b1", facts=PURSE, locale="de")
    engine.ask(op="say", npc="b1", text="verkauf mir den schlüssel")
    saved = engine.ask(id=5, op="save", npc="b1")
    assert (saved["type"], saved["pending"]) == ("saved", False)
    assert json.loads(saved["state"])["state"] == "haggle"
    assert engine.ask(op="despawn", npc="b1")["type"] == "despawned"
    assert engine.ask(op="say", npc="b1", text="60")["code"] == "unknown_npc"
    loaded = engine.ask(op="load", npc="b2", state=saved["state"])
    assert (loaded["type"], loaded["at"], loaded["turns"]) == ("loaded", "haggle", 1)
    sold = engine.ask(op="say", npc="b2", text="60")["turn"]
    assert sold["lines"][0]["locale"] == "de"
    assert sold["lines"][0]["text"].startswith("Abgemacht!")
    listed = engine.ask(op="list")
    assert listed["npcs"] == [{"npc": "b2", "at": "sold_out", "pending": False, "ended": False}]


def test_bad_requests_get_errors_and_the_process_goes_on(engine: Engine) -> None:
    """Broken JSON, unknown ops and NPCs, bad fields: one error reply each, and the NPCs go on."""
    engine.receive()
    engine.send_raw("{not json")
    assert engine.receive()["code"] == "bad_json"
    engine.send_raw("[1, 2]")
    assert engine.receive()["code"] == "bad_request"
    assert engine.process.stdin is not None
    engine.process.stdin.buffer.write(b'{"op": "ping", "id": "\xff\xfe"}\n')
    engine.process.stdin.flush()
    assert engine.receive() == {"type": "pong", "id": "\ufffd\ufffd"}
    assert engine.ask(id=1, op="dance")["code"] == "unknown_op"
    assert engine.ask(id=2, op="say", text="hi")["code"] == "bad_request"
    assert engine.ask(id=3, op="say", npc="nobody", text="hi")["code"] == "unknown_npc"
    bad_fact = engine.ask(id=4, op="spawn", npc="b", facts={"silver": 3})
    assert (bad_fact["id"], bad_fact["code"]) == (4, "invalid")
    assert "silver" in bad_fact["message"]
    assert engine.ask(op="spawn", npc="b", locale="fr")["code"] == "invalid"
    assert engine.ask(op="spawn", npc="b", facts=PURSE)["type"] == "turn"
    assert engine.ask(op="spawn", npc="b", facts=PURSE)["code"] == "npc_exists"
    assert engine.ask(op="say", npc="b", text="hi", budget_ms=-1)["code"] == "bad_request"
    assert engine.ask(op="say", npc="b", text="hi", facts={"gold": -5})["code"] == "invalid"
    assert engine.ask(op="load", npc="c", state="{}")["code"] == "session"
    assert engine.ask(op="recording", npc="b")["code"] == "not_recording"
    assert engine.ask(id=9, op="ping") == {"type": "pong", "id": 9}
    engine.send(op="quit")
    assert engine.receive() == {"type": "bye"}
    assert engine.process.wait(timeout=30) == 0


def test_a_recording_taken_over_the_protocol_replays_with_the_cli(
    engine: Engine, tmp_path: Path
) -> None:
    """The recording op gives JSON lines that `sopagent npc --replay` replays with no model."""
    engine.receive()
    engine.ask(op="spawn", npc="b", facts=PURSE, record=True)
    for text in ("hello", "I fancy that key", "30", "take my moonstone", "yes", "bye"):
        assert engine.ask(op="say", npc="b", text=text)["type"] == "turn"
    recording = engine.ask(op="recording", npc="b")["recording"]
    path = tmp_path / "bug.jsonl"
    path.write_text(recording)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run(
        cli("npc", MERCHANT, "--replay", str(path), "--json"),
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "7 turns replayed with no model call; every state matches" in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["response_ids"] for r in records][-3:] == [
        ["key_bartered"],
        ["not_understood"],
        ["farewell"],
    ]
    assert records[-3]["effects"][0] == {
        "name": "take_item",
        "args": {"item": "moonstone"},
        "state": "barter",
        "origin": "outcome:bartered",
    }
    assert all(r["model_calls"] == 0 for r in records)
    lines = recording.splitlines()
    tampered = json.loads(lines[5])
    tampered["heard"]["intent"] = "deny"
    lines[5] = json.dumps(tampered)
    path.write_text("\n".join(lines))
    result = subprocess.run(
        cli("npc", MERCHANT, "--replay", str(path)),
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "the replay diverged at turn 4 of 7" in result.stderr


def test_a_slow_model_never_blocks_the_engine(tmp_path: Path) -> None:
    """A turn over budget sends its filler at once; the process answers others meanwhile."""
    gate = tmp_path / "answer"
    engine = Engine(sys.executable, "-c", GATED_SERVER, MERCHANT, str(gate))
    try:
        engine.receive()
        engine.ask(op="spawn", npc="slow", facts=PURSE, seed=2)
        engine.ask(op="spawn", npc="quick", facts=PURSE)
        pending = engine.ask(id=7, op="say", npc="slow", text="I fancy that key", budget_ms=20)
        assert (pending["type"], pending["id"]) == ("pending", 7)
        assert pending["turn"]["pending"] is True
        assert pending["turn"]["lines"][0]["id"] in ("filler_hmm", "filler_beard")
        assert pending["turn"]["state"] == "shop"
        assert engine.ask(op="ping") == {"type": "pong"}
        assert engine.ask(op="say", npc="slow", text="hello")["code"] == "busy"
        saved = engine.ask(op="save", npc="slow")
        assert saved["pending"] is True
        assert json.loads(saved["state"])["state"] == "shop"
        quick = engine.ask(op="say", npc="quick", text="what do you sell?")
        assert quick["turn"]["lines"][0]["id"] == "wares"
        assert engine.nothing_yet()
        gate.write_text("go")
        done = engine.receive()
        assert (done["type"], done["id"], done["npc"]) == ("turn", 7, "slow")
        assert [line["id"] for line in done["turn"]["lines"]] == ["key_pitch", "ask_offer"]
        assert done["turn"]["state"] == "haggle"
        assert engine.finish() == 0
    finally:
        engine.stop()


def test_quitting_waits_for_pending_turns(tmp_path: Path) -> None:
    """End of input with a turn still running: the turn is written, then bye, exit 0."""
    gate = tmp_path / "answer"
    engine = Engine(sys.executable, "-c", GATED_SERVER, MERCHANT, str(gate))
    try:
        engine.receive()
        engine.ask(op="spawn", npc="slow", facts=PURSE)
        engine.send(id=1, op="say", npc="slow", text="I fancy that key")
        assert engine.process.stdin is not None
        engine.process.stdin.close()
        assert engine.nothing_yet()
        gate.write_text("go")
        assert engine.receive()["id"] == 1
        assert engine.receive() == {"type": "bye"}
        assert engine.process.wait(timeout=30) == 0
    finally:
        engine.stop()


def test_export_lines_writes_csv_for_translators(tmp_path: Path) -> None:
    """`sopagent export-lines` writes every line of both locales; an unknown locale exits 2."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    out = tmp_path / "lines.csv"
    result = subprocess.run(
        cli("export-lines", WARDEN, "-o", str(out)),
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    assert text.startswith(
        "id,locale,text,source_text,status,placeholders,description,said_in,hash\n"
    )
    assert text.count("\n") == 1 + 2 * 30
    assert 'crypt_opened,de,"Das Siegel bricht... der Weg ist frei.' in text
    assert result.stderr.strip() == f"60 lines written to {out}"
    result = subprocess.run(
        cli("export-lines", WARDEN, "--locale", "fr"),
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown locale 'fr'" in result.stderr


@pytest.mark.model
def test_the_embedded_model_over_the_protocol() -> None:
    """On the embedded model a turn over a 1 ms budget is pending, then answered by the model."""
    engine = Engine(*cli("npc", WARDEN, "--stdio"))
    try:
        engine.receive()
        engine.ask(
            op="spawn", npc="wren", facts={"gold": 0, "inventory": {}, "flags": [], "trust": 0}
        )
        pending = engine.ask(
            id=1, op="say", npc="wren", text="I can help you with the spirits", budget_ms=1
        )
        assert pending["type"] == "pending"
        done = engine.receive(timeout=300)
        assert (done["type"], done["id"]) == ("turn", 1)
        assert done["turn"]["source"] == "model"
        assert done["turn"]["intent"] == "offer_help"
        assert [line["id"] for line in done["turn"]["lines"]] == ["quest_pitch"]
        accepted = engine.ask(op="say", npc="wren", text="yes")["turn"]
        assert [e["name"] for e in accepted["effects"]] == [
            "start_quest",
            "set_flag",
            "give_item",
            "change_trust",
        ]
        assert engine.finish() == 0
    finally:
        engine.stop()


@pytest.mark.parametrize("modes", [[], ["--stdio", "--replay", "x.jsonl"]])
def test_npc_takes_exactly_one_of_its_two_ways(modes: list[str]) -> None:
    """`sopagent npc` without --stdio or --replay, or with both, is a usage error (exit 2)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run(
        cli("npc", MERCHANT, *modes),
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "exactly one of --stdio and --replay" in result.stderr


def test_replay_of_a_broken_recording_exits_2(tmp_path: Path) -> None:
    """A recording that is not JSON lines is reported with its line number, exit 2."""
    path = tmp_path / "broken.jsonl"
    path.write_text('{"recording": 1, "policy": "merchant_npc"}\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run(
        cli("npc", MERCHANT, "--replay", str(path)),
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{path}: SOP001 line 1: the header lacks 'policy_hash'" in result.stderr
