"""The rule catalogue of `sopagent check`: every problem code, with its meaning and its fix.

One registry, `RULES`, describes every code the loader and the checker report. `docs/rules.md`
is written from it (`rules_markdown`), ``sopagent check --list-rules`` prints it, and the SARIF
output carries it as the tool's rules. Codes are stable: a code keeps its meaning forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CATEGORIES", "RULES", "Rule", "rule", "rules_listing", "rules_markdown"]

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: a stable code, its default severity, what it finds and how to fix it.

    Attributes:
        code: the stable code, e.g. ``"SOP040"``.
        name: a short kebab-case name, e.g. ``"dead-end-state"``.
        severity: the default severity; ``"error"`` fails `sopagent check`.
        category: the part of the pipeline that reports it (see `CATEGORIES`).
        title: one line saying what is wrong.
        description: what exactly the rule finds, and what it cannot know.
        hint: how to fix it.
        compile: whether `compile_policy` reports it too (errors then stop compilation).
    """

    code: str
    name: str
    severity: Severity
    category: str
    title: str
    description: str
    hint: str
    compile: bool = False

    @property
    def fix(self) -> str:
        """The hint as a finding carries it: ``remove it``, not ``Remove it.``."""
        return self.hint[:1].lower() + self.hint[1:].removesuffix(".")


CATEGORIES: dict[str, str] = {
    "load": "Reading files: the YAML itself and the shape of the formats. A policy whose files"
    " cannot be loaded is not checked further and `sopagent check` exits with 2.",
    "reference": "Cross references between the policy, its catalog and its decision modules."
    " `compile_policy` runs these too and refuses a policy with any of their errors.",
    "graph": "The state machine as a graph, with the model treated as an adversary that may"
    " answer any allowed label in any state and decision functions as returning any outcome"
    " they declare.",
    "data": "What is said, and whether the values it needs are there. Values are followed"
    " along every path of the graph (see *How values are followed* below).",
    "routing": "Inputs that two declared routes compete for, where a rule of the turn order"
    " rather than the policy's author decides which one wins.",
    "code": "Decision modules, read as source without running them.",
    "approval": "Approvals recorded by reviewers in the catalog's lock file (`sopagent approve`).",
    "properties": "The properties a policy declares for `sopagent verify` (docs/verify.md) and"
    " the example values its search tries. `compile_policy` runs these too.",
    "game": "Effects, game state and translations (docs/npc.md). `compile_policy` runs these too.",
    "testing": "Conversation test files (`*.test.yaml`, docs/testing.md), reported by"
    " `sopagent test` and the pytest plugin.",
}

_RULES = (
    # --- load ------------------------------------------------------------------------------
    Rule(
        "SOP001",
        "unreadable-file",
        "error",
        "load",
        "The file cannot be read or parsed",
        "The file does not exist or cannot be read, is not UTF-8, is not valid YAML (JSON for"
        " approval lock files), holds more than one document or is larger than 8 MiB.",
        "Correct the file at the reported line and column.",
    ),
    Rule(
        "SOP002",
        "unsupported-yaml",
        "error",
        "load",
        "A YAML construct that is not allowed",
        "Tags (`!!python/object`, `!foo`), merge keys (`<<`) and mappings or lists used as"
        " keys. Only plain scalars, mappings and lists are read.",
        "Write the values out plainly.",
    ),
    Rule(
        "SOP003",
        "duplicate-key",
        "error",
        "load",
        "A key appears twice in one mapping",
        "YAML parsers usually keep the last value silently; sopagent refuses the file.",
        "Remove or rename one of the keys.",
    ),
    Rule(
        "SOP004",
        "document-too-large",
        "error",
        "load",
        "Nesting too deep or too many values",
        "More than 64 levels of nesting or more than 500,000 values once aliases are expanded"
        " (an alias bomb).",
        "Flatten the document; do not use aliases to repeat large values.",
    ),
    Rule(
        "SOP010",
        "invalid-value",
        "error",
        "load",
        "A value of the wrong type, out of range, or breaking a rule of the format",
        "Includes ids that are not `lower_snake_case`, regular expressions that do not"
        " compile, placeholders with attributes or format specs, and state shapes the format"
        " forbids (a deciding state with `on`, a terminal state with routes).",
        "Follow the format in docs/format.md.",
    ),
    Rule(
        "SOP011",
        "unknown-key",
        "error",
        "load",
        "A key the format does not have",
        "Usually a typo; the message suggests the closest key of the format.",
        "Rename the key to the one the format defines, or remove it.",
    ),
    Rule(
        "SOP012",
        "missing-key",
        "error",
        "load",
        "A required key is missing",
        "For example a policy without `initial`, or a catalog without `responses`.",
        "Add the key.",
    ),
    # --- reference -------------------------------------------------------------------------
    Rule(
        "SOP020",
        "unknown-state",
        "error",
        "reference",
        "A route or `initial` names a state that is not declared",
        "Every `to`, route shorthand and `initial` must name a key of `states`.",
        "Declare the state or correct the name.",
        compile=True,
    ),
    Rule(
        "SOP021",
        "unknown-intent",
        "error",
        "reference",
        "A route is written for an intent that is not declared",
        "Keys of `on` must be intents of the policy or the built-in `out_of_scope`.",
        "Declare the intent under `intents` or correct the name.",
        compile=True,
    ),
    Rule(
        "SOP022",
        "unknown-response",
        "error",
        "reference",
        "A response id is not in the catalog",
        "`say`, `choose`, `ask` and `invalid` must name responses of the policy's catalog.",
        "Add the response to the catalog or correct the id.",
        compile=True,
    ),
    Rule(
        "SOP023",
        "unknown-slot",
        "error",
        "reference",
        "An unknown slot, or a name declared both as a slot and as a fact",
        "`collect` and `require` must name slots; slot and fact names share one namespace"
        " because placeholders name either.",
        "Declare the slot or rename one of the two.",
        compile=True,
    ),
    Rule(
        "SOP024",
        "unknown-decision",
        "error",
        "reference",
        "`decide` names no `@decision` function of the declared modules",
        "Only functions marked with `@decision` and defined in a module listed under"
        " `decisions` can be used; a function imported into such a module from elsewhere"
        " does not count, so a policy reaches no code outside its declared modules.",
        "Declare the module that defines the function under `decisions`.",
        compile=True,
    ),
    Rule(
        "SOP025",
        "outcome-not-routed",
        "error",
        "reference",
        "An outcome of a decision function has no route",
        "Every outcome the function declares in `@decision(outcomes=...)` needs a route under"
        " the state's `outcomes`.",
        "Add a route for the outcome.",
        compile=True,
    ),
    Rule(
        "SOP026",
        "outcome-never-returned",
        "error",
        "reference",
        "A route for an outcome the function never returns",
        "The state routes an outcome that the function does not declare.",
        "Remove the route, or declare the outcome in `@decision`.",
        compile=True,
    ),
    Rule(
        "SOP027",
        "bad-placeholder",
        "error",
        "reference",
        "A placeholder that is neither a slot nor a fact, or a placeholder in an error line",
        "Placeholders are filled only from declared slots and facts. Error lines are said when"
        " something failed and the session is rolled back, so they may have none.",
        "Declare the slot or fact, or write the line without the placeholder.",
        compile=True,
    ),
    Rule(
        "SOP028",
        "decision-module-import",
        "error",
        "reference",
        "A decision module cannot be imported, or two define the same function",
        "The module is missing, does not parse, or raises while it is imported.",
        "Fix the module; run `python PATH` to see the traceback.",
        compile=True,
    ),
    Rule(
        "SOP029",
        "state-structure",
        "error",
        "reference",
        "A state's structure: no routes at all, `filled` without `collect`, an error route"
        " with `to`, an outcome without `to`",
        "Shapes the run time cannot follow.",
        "Follow the message: add routes, slots to collect, or a target.",
        compile=True,
    ),
    Rule(
        "SOP030",
        "unreachable-state",
        "warning",
        "reference",
        "No route leads to the state",
        "The state cannot be reached from `initial` through any route, whatever the user"
        " says and whatever the decision functions decide.",
        "Route to the state, or remove it.",
        compile=True,
    ),
    Rule(
        "SOP031",
        "unused-intent",
        "warning",
        "reference",
        "An intent no route accepts",
        "The intent is declared but no state and no global route has a route for it, so the"
        " model can never be asked for it.",
        "Route the intent somewhere, or remove it.",
        compile=True,
    ),
    Rule(
        "SOP032",
        "inline-approval-changed",
        "warning",
        "reference",
        "A response changed since the hash in its `approved` key",
        "The catalog entry carries `approved: sha256:...` and the text's content hash is no"
        " longer that hash. The inline key is the author's pin of approved wording; the"
        " reviewers' record is the lock file (SOP060, SOP061).",
        "Have the new wording reviewed, then update `approved`.",
        compile=True,
    ),
    # --- graph -----------------------------------------------------------------------------
    Rule(
        "SOP040",
        "dead-end-state",
        "error",
        "graph",
        "A waiting state that no route leaves",
        "The state waits for the user, and every route it has (its own, the global ones it"
        " takes, `filled`, the fallback and the confidence rule's `below`) stays where it is."
        " Once there, the conversation can never move on. States with no routes at all are"
        " SOP029.",
        "Give some route a `to`, or mark the state `terminal: true`.",
    ),
    Rule(
        "SOP041",
        "no-way-to-end",
        "warning",
        "graph",
        "No terminal state can be reached from here",
        "From the reported state no sequence of routes and outcomes reaches a terminal state:"
        " the conversation can go on inside a group of states but never end or hand over."
        " Reported once per way into such a group (and once for a policy without any"
        " terminal state).",
        "Route some state of the group to a terminal state, e.g. a global route for"
        " goodbyes or a handover.",
    ),
    Rule(
        "SOP042",
        "decision-loop",
        "warning",
        "graph",
        "Deciding states that can route in a circle without waiting for the user",
        "A cycle a turn can go round without stopping: deciding states, and waiting states"
        " whose slots may still be filled when the turn comes back to them (so `filled`"
        " passes it on at once). Values are followed round the cycle itself: a cycle whose"
        " decisions always clear the slot the waiting state needs is not reported. For some"
        " outcomes of the functions the turn goes round until the run time stops it after 64"
        " states and answers with the error route.",
        "Let one state of the cycle wait for the user, or route an outcome out of it.",
    ),
    Rule(
        "SOP043",
        "intent-never-accepted",
        "warning",
        "graph",
        "An intent whose routes are all where no conversation gets",
        "The intent has routes, but only in unreachable states, or only as a global route"
        " that every reachable waiting state turns off with `globals: false`.",
        "Route the intent in a reachable state, or remove it.",
    ),
    Rule(
        "SOP044",
        "silent-turn",
        "warning",
        "graph",
        "A turn can answer with nothing at all",
        "Following the route says no line and the states it leads to say none on the way"
        " (deciding states say only their outcome routes' lines; a waiting or terminal state"
        " says its own `say`/`choose` when the turn stops there). Also reported for an error"
        " route without lines and for a conversation that opens with silence.",
        "Say a line on the route or on entering the state it leads to.",
    ),
    Rule(
        "SOP045",
        "unused-response",
        "warning",
        "data",
        "A catalog response no policy refers to",
        "No `say`, `choose`, `ask` or `invalid` of the policy names the response. When"
        " several policies checked together share the catalog, a response counts as used if"
        " any of them uses it.",
        "Remove the response from the catalog, or say it somewhere.",
    ),
    Rule(
        "SOP046",
        "response-never-said",
        "warning",
        "data",
        "A response referred to only where it is never said",
        "Every reference is in an unreachable state, on a deciding state (whose own lines are"
        " never said), or on a waiting state that always moves on at once.",
        "Say it where conversations go, or remove it.",
    ),
    Rule(
        "SOP047",
        "placeholder-may-be-empty",
        "error",
        "data",
        "A placeholder may have no value on some path to the line",
        "Lines are rendered at the end of the turn, with the slot and fact values of that"
        " moment. On some path that reaches the line the placeholder's value is not certainly"
        " set then, and the turn would fail with the error route. See *How values are"
        " followed* for what counts as set.",
        "Require the slot on the route (`require`), collect it before, or have a decision"
        " function that runs before declare it in `@decision(sets=...)`.",
    ),
    Rule(
        "SOP048",
        "slot-never-set",
        "error",
        "data",
        "A slot is used where no path can have given it a value",
        "A placeholder, or a `ctx.slots[...]` read of a decision function, needs a slot that"
        " no state collects or requires and no decision function sets on any path before it."
        " The line always fails (facts are not reported: the host may pass any fact in).",
        "Collect or require the slot before, e.g. with `collect` in an earlier state.",
    ),
    Rule(
        "SOP049",
        "decision-reads-maybe-empty",
        "warning",
        "data",
        "A decision function reads a value that may be empty",
        'The function reads `ctx.slots["name"]` or `ctx.facts["name"]` (subscripts raise'
        " `KeyError` when the value is missing; `.get` does not), directly or in a"
        " module-level helper it passes `ctx` to, and on some path into the deciding state"
        ' the value is not certainly set. A guard in the code (`if "name" in ctx.slots`)'
        " is not seen.",
        "Require or collect the value before the decision, or read it with `.get`.",
    ),
    Rule(
        "SOP050",
        "sets-unknown-value",
        "error",
        "data",
        "`@decision(sets=...)` names a slot or fact the policy does not declare",
        "The function promises a value the policy has no slot or fact for; every return of"
        " that outcome would fail.",
        "Declare the slot or fact in the policy, or correct the name in `sets`.",
    ),
    # --- routing ---------------------------------------------------------------------------
    Rule(
        "SOP051",
        "order-decides-route",
        "warning",
        "routing",
        "Two routes compete for a message that only gives slot values",
        "A message that only gives slot values (no intent) takes the first route of the state"
        " that requires one of them, in the order routes are merged (global routes first,"
        " then the state's own), and a state's `filled` route only when no such route"
        " exists. When two such routes, or such a route and `filled`, lead to different"
        " places or say different lines, the order of keys in the YAML, not the author's"
        " intent, decides. A state route overriding a global route of the same intent is"
        " not reported: that override is the documented rule.",
        "Make the competing routes lead to the same place, or require different slots.",
    ),
    Rule(
        "SOP052",
        "example-of-two-intents",
        "warning",
        "routing",
        "The same example is written for two intents",
        "Examples match without a model call (compared in lower case, punctuation"
        " ignored). Where both intents are accepted, the text always means the intent"
        " declared later, and the example of the other one never matches. An example that"
        " is also an example of `out_of_scope` always means the intent.",
        "Keep the example under one intent only.",
    ),
    Rule(
        "SOP053",
        "no-effect",
        "warning",
        "graph",
        "A key that has no effect where it is written",
        "`say`/`choose` on a deciding state (only outcome routes speak there), `require` on a"
        " `filled` route (never checked), `fallback`, `confidence` or `globals` on a deciding"
        " or terminal state, and the lines of a waiting state whose slots are filled on every"
        " path into it (it moves on at once).",
        "Move the key where it acts, or remove it.",
    ),
    # --- code ------------------------------------------------------------------------------
    Rule(
        "SOP055",
        "import-not-allowed",
        "error",
        "code",
        "A decision module imports a module the policy does not allow",
        "Decision modules may import `sopagent`, the other declared decision modules and"
        " standard-library modules that reach nothing outside the process: __future__, abc,"
        " bisect, calendar, collections, contextlib, copy, dataclasses, datetime, decimal,"
        " enum, fractions, functools, hashlib, heapq, hmac, itertools, json, logging, math,"
        " numbers, operator, random, re, secrets, statistics, string, textwrap, time, types,"
        " typing, typing_extensions, unicodedata, uuid, zoneinfo. Anything else (files,"
        " network, processes, other packages) must be listed in the policy's"
        " `allow_imports`, so a reviewer sees what the code can reach. The scan reads"
        " `import` statements anywhere in the module's source; it does not follow what the"
        " imported modules import in turn.",
        "Add the module to `allow_imports` once a reviewer agrees, or remove the import.",
    ),
    Rule(
        "SOP056",
        "dynamic-code",
        "error",
        "code",
        "A decision module runs or imports code by name",
        "Calls to `exec`, `eval`, `compile` or `__import__` let the module reach code no"
        " reviewer can see. Code that gets at them indirectly (through `getattr`,"
        " `builtins`, or an allowed module that does it) is not detected.",
        "Write the code out, or import what it needs with a declared import.",
    ),
    Rule(
        "SOP057",
        "console-or-file-access",
        "warning",
        "code",
        "A decision module calls `open`, `input` or `breakpoint`",
        "Decision functions run inside a conversation turn: reading the console or stopping"
        " in a debugger hangs the turn, and files are better reached through a declared"
        " module the reviewer can see in `allow_imports`.",
        "Read data when the module is imported, through an allowed module.",
    ),
    # --- approval --------------------------------------------------------------------------
    Rule(
        "SOP060",
        "not-approved",
        "warning",
        "approval",
        "A catalog response no reviewer has approved",
        "The catalog has a lock file (`<catalog>.approvals.json`, written by `sopagent"
        " approve`) or the policy sets `require_approved: true`, and the lock file records no"
        " approval of the response. An error when the policy sets `require_approved: true`:"
        " the run time then refuses the catalog.",
        "Have the response reviewed: `sopagent approve CATALOG --by NAME --entry ID`.",
    ),
    Rule(
        "SOP061",
        "changed-since-approval",
        "warning",
        "approval",
        "A response's text changed since a reviewer approved it",
        "The lock file records an approval of different wording (its content hash is not the"
        " text's hash now). An error when the policy sets `require_approved: true`.",
        "Have the new wording reviewed: `sopagent approve CATALOG --by NAME --entry ID`.",
    ),
    Rule(
        "SOP062",
        "stale-approval",
        "warning",
        "approval",
        "The lock file approves a response the catalog no longer has",
        "The record is kept until the next `sopagent approve` of the whole catalog removes"
        " it, so a removed line cannot come back approved by accident.",
        "Run `sopagent approve CATALOG --by NAME` to rewrite the lock file.",
    ),
    Rule(
        "SOP070",
        "property-unknown-state",
        "error",
        "properties",
        "A property names an unknown state",
        "A state event (or `in:`) of a property names a state the policy does not "
        "declare, or a glob that matches none.",
        "Fix the name or the glob; `sopagent check` suggests close names.",
        compile=True,
    ),
    Rule(
        "SOP071",
        "property-unknown-response",
        "error",
        "properties",
        "A property names an unknown response",
        "A `say` event names a response the catalog does not have, or a glob that matches none.",
        "Fix the name or the glob.",
        compile=True,
    ),
    Rule(
        "SOP072",
        "property-unknown-intent",
        "error",
        "properties",
        "A property names an unknown intent",
        "An intent event (or `saying` of `leads_to`) names an intent the policy does not "
        "declare, or a glob that matches none.",
        "Fix the name, or declare the intent.",
        compile=True,
    ),
    Rule(
        "SOP073",
        "property-unknown-decision",
        "error",
        "properties",
        "A property names a decision function no state decides with",
        "A decision event names a function that no state of the policy runs, so the event "
        "can never happen.",
        "Name a function a state runs with `decide`.",
        compile=True,
    ),
    Rule(
        "SOP074",
        "property-unknown-outcome",
        "error",
        "properties",
        "A property names an outcome its decision function does not declare",
        "The decision event's `outcome` is not among the outcomes the function declares "
        "in `@decision(outcomes=...)`.",
        "Use one of the declared outcomes.",
        compile=True,
    ),
    Rule(
        "SOP075",
        "property-unknown-value",
        "error",
        "properties",
        "A property names an unknown slot or fact",
        "A `filled` event, or a name in a `where` condition, is neither a slot nor a fact "
        "of the policy.",
        "Fix the name, or declare the slot or fact.",
        compile=True,
    ),
    Rule(
        "SOP076",
        "property-condition-syntax",
        "error",
        "properties",
        "A `where` condition that cannot be read",
        "The condition is not in the condition language of docs/verify.md (comparisons, "
        "`is set`, `and`, `or`, `not`, parentheses).",
        "Rewrite the condition; the message points at the character where reading stopped.",
        compile=True,
    ),
    Rule(
        "SOP077",
        "property-condition-types",
        "error",
        "properties",
        "A `where` condition compares values of different kinds",
        "A comparison puts a name beside a value or name of another type (a number with a "
        "string, an enum with an unknown value, a date with a non-date).",
        "Compare values of the name's own type.",
        compile=True,
    ),
    Rule(
        "SOP078",
        "invalid-value-example",
        "error",
        "properties",
        "An `examples` value that is not valid for its slot or fact",
        "`examples` of a slot or fact are the values the search engine of `sopagent "
        "verify` tries first; each must pass the type's validation.",
        "Remove the value or make it valid for the type.",
        compile=True,
    ),
    Rule(
        "SOP079",
        "property-unknown-effect",
        "error",
        "properties",
        "A property names an unknown effect, parameter or argument value",
        "An `effect` event names an effect the policy does not declare, an `args` key that "
        "is not one of its parameters, or an argument value its parameter's type refuses.",
        "Fix the name or the value, or declare the effect and its parameters.",
        compile=True,
    ),
    Rule(
        "SOP090",
        "handoff-not-terminal",
        "error",
        "reference",
        "`handoff` on a state that does not end the conversation",
        "Only terminal states can hand the conversation to a human: entering one marks "
        "the session for people and stops the bot.",
        "Mark the state `terminal: true`, or remove `handoff`.",
        compile=True,
    ),
    Rule(
        "SOP091",
        "consequential-not-deciding",
        "error",
        "reference",
        "`consequential` on a state that runs no decision function",
        "A consequential action (money moves, an order changes) is done by a decision "
        "function; the key marks deciding states only.",
        "Put `consequential: true` on the deciding state that acts.",
        compile=True,
    ),
    Rule(
        "SOP100",
        "undeclared-effect",
        "error",
        "game",
        "An effect that is not declared",
        "A route, a state or a decision function's `effects=` names an effect missing "
        "from the policy's `effects` declarations, so it could never be emitted.",
        "Declare the effect with its parameters under `effects`, or fix the name.",
        compile=True,
    ),
    Rule(
        "SOP101",
        "effect-arguments",
        "error",
        "game",
        "An effect's arguments do not match its declaration",
        "An unknown parameter, a missing one, or a constant of the wrong type for the parameter.",
        "Give every declared parameter a value of its type, and only those.",
        compile=True,
    ),
    Rule(
        "SOP102",
        "effect-argument-source",
        "error",
        "game",
        "A `{from: name}` argument that cannot be filled",
        "The argument names neither a slot nor a fact, or one whose type is not the parameter's.",
        "Name a slot or fact of the parameter's type.",
        compile=True,
    ),
    Rule(
        "SOP103",
        "effect-on-error-or-filler",
        "error",
        "game",
        "Effects or moves where only lines are allowed",
        "The error route keeps the session as it was and a filler line is said while the "
        "real turn runs: neither may carry effects, and a filler may not have `to`, "
        "`choose` or `require`.",
        "Move the effects to a route the turn really takes.",
        compile=True,
    ),
    Rule(
        "SOP104",
        "effect-parameter-asked",
        "error",
        "game",
        "An effect parameter with `ask` or `invalid`",
        "Effect parameters are typed values, not slots: they are never asked for.",
        "Remove `ask` and `invalid` from the parameter.",
        compile=True,
    ),
    Rule(
        "SOP105",
        "translation-missing-lines",
        "warning",
        "game",
        "A translation lacks lines of its source catalog",
        "Where a line is missing in a locale, the source line is said instead; voice-over "
        "and string tables for that locale are incomplete.",
        "Translate the missing lines (`sopagent export-lines` lists them).",
        compile=True,
    ),
    Rule(
        "SOP106",
        "translation-extra-lines",
        "warning",
        "game",
        "A line only a translation has",
        "The translation has a line id its source catalog lacks, so it is never said.",
        "Remove it, or add the line to the source catalog.",
        compile=True,
    ),
    Rule(
        "SOP107",
        "translation-placeholder",
        "error",
        "game",
        "A translation uses a placeholder its source line does not fill",
        "Lines are rendered from the values the source line's placeholders name; a "
        "translation may not ask for others.",
        "Use the source line's placeholders only.",
        compile=True,
    ),
    Rule(
        "SOP108",
        "translation-unusable",
        "error",
        "game",
        "A translation that cannot be used",
        "The file does not exist, belongs to another catalog, or repeats a locale already given.",
        "Fix the path, the catalog id or the locale.",
        compile=True,
    ),
    Rule(
        "SOP109",
        "translation-examples",
        "error",
        "game",
        "Intent examples of an unknown intent, or in the source catalog",
        "A translation may carry intent examples in its language for intents the policy "
        "declares; the source language's examples belong in the policy.",
        "Fix the intent name, or move the examples into the policy.",
        compile=True,
    ),
    Rule(
        "SOP110",
        "decision-reads-unknown",
        "error",
        "game",
        "A decision function reads an undeclared value",
        "`@decision(reads=[...])` names neither a slot nor a fact of the policy; the "
        "function's context holds only what it reads.",
        "Fix the name, or declare the slot or fact.",
        compile=True,
    ),
    Rule(
        "SOP112",
        "effect-never-emitted",
        "warning",
        "game",
        "A declared effect that nothing emits",
        "No route, state or decision function emits the effect.",
        "Emit it where the procedure does it, or remove the declaration.",
        compile=True,
    ),
    Rule(
        "SOP140",
        "test-file-format",
        "error",
        "testing",
        "A conversation test file breaks the format",
        "Not a mapping, a required key missing, a wrong type or format version, or an "
        "expected value of the wrong type or invalid for its slot or fact type.",
        "Follow the format of docs/testing.md; the message says which key is wrong.",
    ),
    Rule(
        "SOP141",
        "test-unknown-key",
        "error",
        "testing",
        "An unknown key in a conversation test file",
        "The key is not part of the test format; the message names the closest known one.",
        "Fix the spelling, or remove the key.",
    ),
    Rule(
        "SOP142",
        "test-policy-missing",
        "error",
        "testing",
        "The policy a test file names does not exist",
        "`policy:` is resolved relative to the test file; a policy that exists but does "
        "not load reports its own problems.",
        "Fix the path.",
    ),
    Rule(
        "SOP143",
        "test-unknown-intent",
        "error",
        "testing",
        "A step forces an intent the policy does not have",
        "A forced `intent:` must be one of the policy's intents or out_of_scope.",
        "Use an intent the policy declares.",
    ),
    Rule(
        "SOP144",
        "test-unknown-name",
        "error",
        "testing",
        "An expectation names something the policy does not have",
        "A state, response, slot, fact, intent, outcome or decision function in `expect` "
        "that the policy lacks can never match.",
        "Fix the name.",
    ),
    Rule(
        "SOP145",
        "test-forced-decision",
        "error",
        "testing",
        "A forced decision the policy cannot take",
        "`decisions:` names a function no state decides with, or an outcome the function "
        "does not declare.",
        "Force a declared outcome of a function the policy uses.",
    ),
    Rule(
        "SOP146",
        "test-opening-not-first",
        "error",
        "testing",
        "An opening step that is not the first",
        "A step without `user` is the opening turn, which only happens first.",
        "Move it to the start, or give it a `user` message.",
    ),
    Rule(
        "SOP147",
        "test-bad-facts",
        "error",
        "testing",
        "A conversation's facts are not the policy's",
        "`facts` name an unknown fact or give a value invalid for its type.",
        "Use declared facts with valid values.",
    ),
    Rule(
        "SOP148",
        "test-duplicate-name",
        "error",
        "testing",
        "Two conversations of a file have the same name",
        "Names identify conversations in reports and pytest items.",
        "Give each conversation its own name.",
    ),
    Rule(
        "SOP149",
        "test-no-files",
        "error",
        "testing",
        "A directory holds no conversation tests",
        "`sopagent test DIR` found no `*.test.yaml` file in it.",
        "Point it at test files, or write some (`sopagent test --generate`).",
    ),
)

RULES: dict[str, Rule] = {r.code: r for r in _RULES}
"""Every rule by code, in code order."""


def rule(code: str) -> Rule:
    """Return the rule of ``code``.

    Raises:
        KeyError: no rule has that code.
    """
    return RULES[code]


_VALUES = """\
## How values are followed

SOP047, SOP048 and SOP049 follow slot and fact values along every path of the state machine,
treating the model as answering any allowed label and decision functions as returning any
outcome they declare. A value is **certainly set** at a point when it is set on every path
that reaches the point:

- a route with `require: [slot]` has the slot when it is taken;
- a `filled` route (in a turn or on entering its state) has every slot its state collects,
  including the slots its routes require;
- a decision function's outcome sets what the function declares for it in
  `@decision(sets={"outcome": ["name", ...]})` (the run time holds the function to that: an
  outcome returned with a declared value empty is a `DecisionError`), and what its
  `return Outcome("outcome", slots={...}, facts={...})` statements give a constant, an
  f-string or an arithmetic expression;
- a value stays set until a decision function may clear it. A function may clear every key
  its `Outcome(...)` dictionaries name with anything but a constant (a `None` always
  clears). When the source shows no dictionaries (`Outcome(...)` built elsewhere, `**`
  unpacking, a helper that returns the outcome), the function may clear anything;
- facts the host passes to `new_session(facts=...)` are never certain: nothing makes the
  host pass them. Set them in a decision function that runs first and declare them in `sets`.

Lines are rendered at the end of the turn, so a line said on a route needs its values when
the turn stops, after the deciding states that follow it. A value is **possibly set** where
some path may have set it: slots in states that collect or require them, values a decision
function may set, and every fact (the host may pass it); a value stops being possibly set
where a decision function clears it with `None` on every way it returns the outcome. SOP048
reports slots that are not even possibly set; SOP042 follows possibly set values round cycles.
"""


def rules_listing(output_format: str) -> str:
    """The catalogue as ``text`` (a table), ``json`` (a list of rules) or ``markdown``.

    Raises:
        ValueError: an unknown format.
    """
    if output_format == "markdown":
        return rules_markdown()
    if output_format == "json":
        import json  # noqa: PLC0415 (only this format needs it)

        items = [
            {
                "code": r.code,
                "name": r.name,
                "severity": r.severity,
                "category": r.category,
                "title": r.title,
                "description": r.description,
                "hint": r.hint,
                "compile": r.compile,
            }
            for r in _RULES
        ]
        return json.dumps(items, indent=2) + "\n"
    if output_format == "text":
        width = max(len(r.name) for r in _RULES)
        return "".join(f"{r.code}  {r.severity:<7}  {r.name:<{width}}  {r.title}\n" for r in _RULES)
    raise ValueError(f"rules are listed as text, json or markdown, not {output_format}")


def rules_markdown() -> str:
    """Return ``docs/rules.md``: the catalogue of every rule, written from `RULES`."""
    lines = [
        "# Rules of `sopagent check`",
        "",
        "<!-- Written from sopagent/_rules.py by `sopagent check --list-rules --format"
        " markdown`; do not edit by hand. -->",
        "",
        "Every problem sopagent reports has a stable code. `sopagent check` runs every rule;"
        " `compile_policy` (and so `load_agent`, `chat` and `run`) runs the load and"
        " reference rules and refuses a policy with any of their errors. Errors make"
        " `sopagent check` exit with 1, warnings only with `--strict`; files that cannot be"
        " loaded make it exit with 2.",
        "",
        "Select or skip rules with `--select CODE` and `--ignore CODE` (a prefix such as"
        " `SOP04` names a group). Silence one finding with a comment on its line,"
        " `# sopagent: ignore[SOP045]`, or every finding of a code in a file with"
        " `# sopagent: ignore-file[SOP045]` anywhere in it; this works in policy, catalog and"
        " decision module files alike.",
        "",
        "| code | name | severity | title |",
        "| --- | --- | --- | --- |",
    ]
    for item in _RULES:
        lines.append(
            f"| [{item.code}](#{item.code.lower()}) | `{item.name}` | {item.severity} |"
            f" {item.title} |"
        )
    for category, text in CATEGORIES.items():
        lines += ["", f"## {category.capitalize()} rules", "", text]
        for item in _RULES:
            if item.category != category:
                continue
            lines += [
                "",
                f"### {item.code}",
                "",
                f"**{item.title}** (`{item.name}`, {item.severity}"
                f"{', also at compile time' if item.compile else ''})",
                "",
                item.description,
                "",
                f"**How to fix:** {item.hint}",
            ]
    return "\n".join(lines) + "\n\n" + _VALUES
