"""examples/npc/play.py: the terminal game played through to its end, as a player would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAY = ROOT / "examples" / "npc" / "play.py"
SCRIPT = ROOT / "examples" / "npc" / "script.yaml"


def play(lines: list[str], *options: str, cwd: Path = ROOT) -> str:
    """Run the game with ``lines`` as the player's input; return what it printed."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run(
        [sys.executable, str(PLAY), *options],
        input="".join(line + "\n" for line in lines),
        cwd=cwd, capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


QUEST = [
    "/talk wren",
    "good evening, warden",
    "what's going on with this crypt?",
    "I could take care of those spirits for you",
    "sure, I'll do it",
    "/inv",
    "/talk bramble",
    "what's for sale today?",
    "would you swap it for this moonstone?",
    "deal, take the moonstone",
    "thanks, see you around",
    "/talk wren",
    "Wren, I've got the key now",
    "yes, open it",
    "bye",
]


def test_the_quest_played_to_the_end_on_scripted_labels() -> None:
    """Wren's quest, the shared flag, Bramble's discount and barter, the reward: THE END."""
    out = play(QUEST, "--script", str(SCRIPT))
    assert "Wren: Then take my mother's moonstone." in out
    assert "[quest started: The Restless Crypt]\n[flag: on Wren's quest]\n[+1 moonstone]" in out
    assert "Pack: 1 lantern, 1 moonstone" in out
    assert "Bramble: Wren sent you, did she?" in out
    assert "silver key is yours for 40 gold" in out
    assert "[-1 moonstone]\n[+1 silver key]" in out
    assert "[flag: crypt unsealed]\n[quest completed: The Restless Crypt]\n[+30 gold]" in out
    assert out.rstrip().endswith("THE END")


def test_the_quest_in_german() -> None:
    """The same game in German: German lines, German examples, German UI."""
    lines = [
        "/talk wren",
        "kann ich helfen?",
        "ja",
        "/talk bramble",
        "tauschst du den schlüssel gegen meinen mondstein?",
        "ja, abgemacht",
        "/talk wren",
        "ja",
        "ja, öffne es",
        "tschüss",
    ]
    out = play(lines, "--script", str(SCRIPT), "--locale", "de")
    assert "Wren: Dann nimm den Mondstein meiner Mutter." in out
    assert "[Aufgabe begonnen: Die ruhelose Gruft]" in out
    assert "Bramble: Wren schickt dich, was?" in out
    assert "[+1 silberner Schlüssel]" in out
    assert "[+30 Gold]" in out
    assert out.rstrip().endswith("ENDE")


def test_a_saved_game_goes_on_in_a_new_process(tmp_path: Path) -> None:
    """Save mid-haggle, quit; a new game loads it and finishes the quest from there."""
    save = tmp_path / "save.json"
    first = play(
        [*QUEST[:8], "I'd like that silver key", f"/save {save}", "/quit"], "--script", str(SCRIPT)
    )
    assert "So, how much gold are you offering?" in first
    second = play(
        [
            f"/load {save}",
            "/inv",
            "would you swap it for this moonstone?",
            "deal, take the moonstone",
            "/talk wren",
            "Wren, I've got the key now",
            "yes, open it",
            "bye",
        ],
        "--script",
        str(SCRIPT),
    )
    assert "Journal: The Restless Crypt (active)" in second
    assert "Bramble: A moonstone!" in second
    assert second.rstrip().endswith("THE END")


def test_a_rude_player_is_sent_away_and_cannot_take_the_quest() -> None:
    """Two insults and Wren ends the conversation; her trust is down by two."""
    out = play(
        ["/talk wren", "you're useless", "can I help?", "shut up", "/inv"], "--script", str(SCRIPT)
    )
    assert "Wren: Help from you? After that tongue of yours? I think not." in out
    assert "[Wren's trust -1]" in out
    assert "Wren: Enough. Begone, and do not come back." in out
    assert "Wren's trust: -2" in out
    assert "THE END" not in out


@pytest.mark.model
def test_the_quest_on_the_embedded_model() -> None:
    """On the embedded model: free text understood, fillers within the frame budget, THE END."""
    lines = [
        "/talk wren",
        "tell me about this place",
        "I can help you with the spirits",
        "yes",
        "/talk bramble",
        "what are you selling?",
        "take my moonstone",
        "yes",
        "bye",
        "/talk wren",
        "I have the silver key now",
        "yes",
        "bye",
    ]
    out = play(lines, "--debug", "--budget-ms", "20")
    assert "intent=ask_crypt source=model" in out
    assert "intent=offer_help source=model" in out
    assert "intent=ask_wares source=model" in out
    assert "intent=have_key source=model" in out
    assert "Wren: Wren looks you over..." in out or "Wren: Wren shifts her armour..." in out
    assert " pending)" in out
    assert "frames=" in out
    assert "[+1 silver key]" in out
    assert out.rstrip().endswith("THE END")
