"""The Restless Crypt: a small terminal game with two NPCs that run on sopagent.

Wren, the warden of a sealed crypt, gives a quest and raises the flag ``crypt_quest``; Bramble,
the merchant, reads that flag, lowers his price for the silver key, and trades it for the
moonstone Wren gives you. Bring the key back to Wren and the crypt opens. Both speak English or
German, understand the player through the embedded model, and say only their catalog lines.

The game loop is a real one: every line the player types is one ``Npc.step`` with a frame
budget. When the model has not answered within it, the NPC's filler line shows at once and the
loop keeps ticking frames, polling, until the real answer arrives. Effects (items, gold, flags,
quests, trust) are applied to the game state, which goes back to the NPCs with every turn.

    python examples/npc/play.py                 # English, on the embedded model
    python examples/npc/play.py --locale de     # auf Deutsch
    python examples/npc/play.py --script examples/npc/script.yaml   # labels from a file, no model

Commands: /talk bramble, /talk wren, /inv, /save [FILE], /load [FILE], /help, /quit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sopagent
from sopagent import Agent, Effect, Npc, Turn
from sopagent.audit import NullSink

HERE = Path(__file__).resolve().parent
POLICIES = HERE.parent.parent / "policies"
CAST = {"bramble": POLICIES / "merchant_npc.yaml", "wren": POLICIES / "warden_npc.yaml"}
FRAME_S = 1 / 60

UI: dict[str, dict[str, Any]] = {
    "en": {
        "intro": "You stand in the village square at dusk. Bramble's Curios is to the east; Wren,"
        " the warden, guards the sealed crypt to the north.",
        "help": "Type to talk. /talk bramble or /talk wren, /inv, /save [file], /load [file],"
        " /quit.",
        "nobody": "You are talking to nobody. Try /talk bramble or /talk wren.",
        "unknown": "Nobody called {name} is here.",
        "back": "(You turn back to {name}.)",
        "left": "(You walk back to the square.)",
        "gold": "Gold: {gold}",
        "pack": "Pack: {items}",
        "flags": "Flags: {flags}",
        "journal": "Journal: {quests}",
        "trust": "Wren's trust: {trust}",
        "none": "nothing",
        "saved": "(Saved to {path}.)",
        "loaded": "(Loaded {path}.)",
        "end": "The gate grinds open and cold air rises from below. You light your lantern and"
        " descend. THE END",
        "bye": "Farewell, adventurer.",
        "give_item": "[+1 {item}]",
        "take_item": "[-1 {item}]",
        "take_gold": "[-{amount} gold]",
        "give_gold": "[+{amount} gold]",
        "set_flag": "[flag: {flag}]",
        "start_quest": "[quest started: {quest}]",
        "complete_quest": "[quest completed: {quest}]",
        "change_trust": "[Wren's trust {delta:+d}]",
        "names": {
            "silver_key": "silver key",
            "moonstone": "moonstone",
            "lantern": "lantern",
            "rope": "rope",
            "restless_crypt": "The Restless Crypt",
            "crypt_quest": "on Wren's quest",
            "crypt_open": "crypt unsealed",
        },
    },
    "de": {
        "intro": "Du stehst in der Abenddämmerung auf dem Dorfplatz. Im Osten liegt Brambles"
        " Kuriositätenladen; im Norden bewacht Wren, die Wächterin, die versiegelte Gruft.",
        "help": "Tippe, um zu sprechen. /talk bramble oder /talk wren, /inv, /save [Datei],"
        " /load [Datei], /quit.",
        "nobody": "Du sprichst mit niemandem. Versuch /talk bramble oder /talk wren.",
        "unknown": "Hier ist niemand namens {name}.",
        "back": "(Du wendest dich wieder {name} zu.)",
        "left": "(Du gehst zurück auf den Platz.)",
        "gold": "Gold: {gold}",
        "pack": "Beutel: {items}",
        "flags": "Marken: {flags}",
        "journal": "Tagebuch: {quests}",
        "trust": "Wrens Vertrauen: {trust}",
        "none": "nichts",
        "saved": "(Gespeichert in {path}.)",
        "loaded": "({path} geladen.)",
        "end": "Das Tor öffnet sich knirschend, kalte Luft steigt herauf. Du entzündest deine"
        " Laterne und steigst hinab. ENDE",
        "bye": "Leb wohl, Abenteurer.",
        "give_item": "[+1 {item}]",
        "take_item": "[-1 {item}]",
        "take_gold": "[-{amount} Gold]",
        "give_gold": "[+{amount} Gold]",
        "set_flag": "[Marke: {flag}]",
        "start_quest": "[Aufgabe begonnen: {quest}]",
        "complete_quest": "[Aufgabe erfüllt: {quest}]",
        "change_trust": "[Wrens Vertrauen {delta:+d}]",
        "names": {
            "silver_key": "silberner Schlüssel",
            "moonstone": "Mondstein",
            "lantern": "Laterne",
            "rope": "Seil",
            "restless_crypt": "Die ruhelose Gruft",
            "crypt_quest": "in Wrens Auftrag",
            "crypt_open": "Gruft entsiegelt",
        },
    },
}


@dataclass
class World:
    """The game state: what the NPCs read with every turn and what their effects change."""

    gold: int = 35
    inventory: dict[str, int] = field(default_factory=lambda: {"lantern": 1})
    flags: set[str] = field(default_factory=set)
    trust: int = 0
    journal: dict[str, str] = field(default_factory=dict)

    def facts(self, agent: Agent) -> dict[str, Any]:
        """The snapshot an NPC's policy declares (each takes the facts it declares)."""
        state = {
            "gold": self.gold,
            "inventory": self.inventory,
            "flags": sorted(self.flags),
            "trust": self.trust,
        }
        return {name: value for name, value in state.items() if name in agent.compiled.fact_types}

    def apply(self, effect: Effect) -> None:
        """Apply one effect; the game's own rules (never below zero) still hold."""
        args = effect.args
        if effect.name == "give_item":
            self.inventory[args["item"]] = self.inventory.get(args["item"], 0) + 1
        elif effect.name == "take_item":
            self.inventory[args["item"]] = max(self.inventory.get(args["item"], 0) - 1, 0)
        elif effect.name == "take_gold":
            self.gold = max(self.gold - args["amount"], 0)
        elif effect.name == "give_gold":
            self.gold += args["amount"]
        elif effect.name == "set_flag":
            self.flags.add(args["flag"])
        elif effect.name == "start_quest":
            self.journal[args["quest"]] = "active"
        elif effect.name == "complete_quest":
            self.journal[args["quest"]] = "done"
        elif effect.name == "change_trust":
            self.trust = max(-5, min(5, self.trust + args["delta"]))

    def to_json(self) -> dict[str, Any]:
        return {
            "gold": self.gold,
            "inventory": self.inventory,
            "flags": sorted(self.flags),
            "trust": self.trust,
            "journal": self.journal,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> World:
        return cls(
            gold=data["gold"],
            inventory=dict(data["inventory"]),
            flags=set(data["flags"]),
            trust=data["trust"],
            journal=dict(data["journal"]),
        )


class Game:
    """The game loop around the NPCs."""

    def __init__(self, agents: dict[str, Agent], args: argparse.Namespace) -> None:
        self.agents = agents
        self.locale: str = args.locale
        self.budget_ms: float = args.budget_ms
        self.debug: bool = args.debug
        self.seed: int | None = args.seed
        self.text = UI[self.locale]
        self.world = World()
        self.npcs: dict[str, Npc] = {}
        self.talking: str | None = None

    def say(self, key: str, **values: Any) -> None:
        names: dict[str, str] = self.text["names"]
        shown = {k: names.get(v, v) if isinstance(v, str) else v for k, v in values.items()}
        print(str(self.text[key]).format(**shown), flush=True)

    def name(self, word: str) -> str:
        names: dict[str, str] = self.text["names"]
        return names.get(word, word)

    def show(self, name: str, turn: Turn, frames: int = 0) -> None:
        label = name.capitalize()
        if turn.text:
            print(f"{label}: {turn.text}", flush=True)
        if self.debug:
            parts = [
                f"intent={turn.intent}",
                f"source={turn.intent_source}",
                f"score={turn.score:.2f}",
                f"lines={','.join(turn.response_ids) or '-'}",
                f"state={turn.state_after}",
                f"latency={turn.latency_ms:.1f}ms",
            ]
            if turn.pending:
                parts.append("pending")
            if frames:
                parts.append(f"frames={frames}")
            print("   (" + " ".join(parts) + ")", flush=True)

    def apply(self, turn: Turn) -> None:
        for effect in turn.effects:
            self.world.apply(effect)
            self.say(effect.name, **effect.args)

    def talk(self, name: str) -> None:
        agent = self.agents.get(name)
        if agent is None:
            self.say("unknown", name=name)
            return
        npc = self.npcs.get(name)
        self.talking = name
        if npc is not None and not npc.session.ended:
            self.say("back", name=name.capitalize())
            return
        npc = Npc(agent, facts=self.world.facts(agent), locale=self.locale, seed=self.seed)
        npc.warm()
        self.npcs[name] = npc
        turn = npc.start()
        self.show(name, turn)
        self.apply(turn)

    def speak(self, text: str) -> None:
        name = self.talking
        if name is None:
            self.say("nobody")
            return
        npc = self.npcs[name]
        turn = npc.step(text, facts=self.world.facts(npc.agent), budget_ms=self.budget_ms)
        frames = 0
        if turn.pending:
            self.show(name, turn)  # the filler line, said within the frame budget
            while (done := npc.poll()) is None:
                time.sleep(FRAME_S)  # one frame of the game loop: render, animate, ...
                frames += 1
            turn = done
        self.show(name, turn, frames)
        self.apply(turn)
        if turn.ended:
            self.talking = None
            self.say("left")

    def inventory(self) -> None:
        world, none = self.world, self.text["none"]
        items = ", ".join(
            f"{n} {self.name(item)}" for item, n in sorted(world.inventory.items()) if n
        )
        self.say("gold", gold=world.gold)
        self.say("pack", items=items or none)
        self.say("flags", flags=", ".join(self.name(f) for f in sorted(world.flags)) or none)
        quests = ", ".join(f"{self.name(q)} ({s})" for q, s in sorted(world.journal.items()))
        self.say("journal", quests=quests or none)
        self.say("trust", trust=world.trust)

    def save(self, path: Path) -> None:
        state = {
            "world": self.world.to_json(),
            "npcs": {name: npc.save() for name, npc in self.npcs.items()},
            "talking": self.talking,
        }
        path.write_text(json.dumps(state, ensure_ascii=False, indent=1), encoding="utf-8")
        self.say("saved", path=path)

    def load(self, path: Path) -> None:
        state = json.loads(path.read_text(encoding="utf-8"))
        self.world = World.from_json(state["world"])
        self.npcs = {
            name: Npc.load(self.agents[name], blob) for name, blob in state["npcs"].items()
        }
        self.talking = state["talking"]
        self.say("loaded", path=path)

    def command(self, line: str) -> bool:
        """Run a /command; return whether the game ends."""
        word, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        if word in ("quit", "exit"):
            return True
        if word == "talk":
            self.talk(rest.lower())
        elif word in ("inv", "inventory"):
            self.inventory()
        elif word == "save":
            self.save(Path(rest or "savegame.json"))
        elif word == "load":
            self.load(Path(rest or "savegame.json"))
        else:
            self.say("help")
        return False

    def run(self, lines: Any, echo: bool) -> int:
        self.say("intro")
        self.say("help")
        for raw in lines:
            line = raw.strip()
            if not line:
                continue
            if echo:
                print(f"> {line}", flush=True)
            if line.startswith("/"):
                if self.command(line):
                    break
            else:
                self.speak(line)
            if "crypt_open" in self.world.flags and self.talking is None:
                self.say("end")
                return 0
        self.say("bye")
        return 0


def _prompts(game: Game) -> Any:
    while True:
        who = f"[{game.talking}] " if game.talking else ""
        try:
            yield input(f"{who}> ")
        except EOFError:
            print()
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--locale", choices=sorted(UI), default="en")
    parser.add_argument("--script", type=Path, help="YAML: player text -> intent, no model")
    parser.add_argument("--budget-ms", type=float, default=50.0, help="frame budget of a turn")
    parser.add_argument("--seed", type=int, help="seed of the NPCs' varied lines")
    parser.add_argument("--debug", action="store_true", help="show what each turn understood")
    args = parser.parse_args(argv)
    agents: dict[str, Agent] = {}
    for name, path in CAST.items():
        compiled = sopagent.compile_policy(sopagent.load_policy(path))
        if args.script is not None:
            import yaml  # noqa: PLC0415 (only the scripted game reads YAML here)

            script = yaml.safe_load(args.script.read_text(encoding="utf-8")) or {}
            backend: sopagent.Backend = sopagent.ScriptedBackend(script)
        else:
            # One model per character: each keeps its own prompt in the KV cache, so talking to
            # the other character never re-evaluates it.
            backend = sopagent.embedded()
        agents[name] = Agent(compiled, backend, audit=NullSink())
    game = Game(agents, args)
    for agent in agents.values():
        # Evaluate each character's prompt while the player reads the introduction.
        Npc(agent, locale=args.locale).warm()
    interactive = sys.stdin.isatty()
    return game.run(_prompts(game) if interactive else sys.stdin, echo=not interactive)


if __name__ == "__main__":
    sys.exit(main())
