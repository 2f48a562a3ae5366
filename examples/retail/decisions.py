"""Decision functions of the retail procedure (policies/retail.yaml).

Every rule of the retail policy that can be checked in code is checked here, against the mock
database, through the tools of ``tools.py``: who the user is, whether an order is theirs and in
the right status, which items and variants they mean, which payment method may be used, and
finally the write itself. The model only labels what the user says; it never picks an order,
an item or a payment method, and it never triggers a write: the consequential functions run
only after the policy's confirmation state received an explicit yes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from sopagent import Context, Outcome, decision
from sopagent.decisions import import_decision_module

tools: Any = import_decision_module("tools.py", Path(__file__).parent)

Record = dict[str, Any]

_REQUESTS = {
    "cancel_order": "cancel",
    "modify_order_address": "modify_address",
    "modify_order_payment": "modify_payment",
    "modify_order_items": "modify_items",
    "return_items": "return",
    "exchange_items": "exchange",
    "modify_user_address": "user_address",
    "order_status": "status",
}
_NEEDS_STATUS = {
    "cancel": "pending",
    "modify_address": "pending",
    "modify_payment": "pending",
    "modify_items": "pending",
    "return": "delivered",
    "exchange": "delivered",
}
_LISTED = 8
_ORDER_FACTS = ["order_ref", "order_status", "order_items", "order_total"]
"""What `check_order` learns of an order the request may use."""


# --- text ----------------------------------------------------------------------------------------

_UNITS = r"ft|inch|l|mp|x|bar|gb|mah|ml|mm|hours|cups?|piece|lbs|degrees|w|k|p"


def _norm(text: str) -> str:
    """Lower-case text with units written one way: ``5-feet`` -> ``5ft``, ``1.5 L`` -> ``1.5l``."""
    t = text.lower().replace("\u2011", "-")  # a non-breaking hyphen is a hyphen
    t = re.sub(r"\b(feet|foot)\b", "ft", t)
    t = re.sub(r"\binches\b", "inch", t)
    t = re.sub(r"\b(liters?|litres?)\b", "l", t)
    t = re.sub(r"[^\w%.+' ]", " ", t)
    t = re.sub(rf"(\d)\s*({_UNITS})\b", r"\1\2", t)
    return " ".join(t.split())


def _mentions(query: str, value: str) -> bool:
    needle = _norm(value)
    return (
        bool(needle) and re.search(rf"(?<![\w.']){re.escape(needle)}(?![\w%])", query) is not None
    )


# Option values that are ordinary words of answers, not descriptions of an item.
_VAGUE = frozenset({"yes", "no", "none"})
_ALL = re.compile(
    r"\b(all (?:of )?(?:the |my )?(?:items|of them|things)|everything|both"
    r"|entire order|whole order)\b"
)
_CHEAPEST = re.compile(r"\b(cheap|cheaper|cheapest|lowest price|less expensive|costs? less)\b")
_SAME = re.compile(r"\b(same|keep|unchanged|otherwise|everything else|rest)\b")
_ITEM_ID = re.compile(r"(?<!\d)(\d{10})(?!\d)")


def _money(value: float | Decimal) -> str:
    return f"${Decimal(str(value)):,.2f}"


def _options(options: Mapping[str, str]) -> str:
    return ", ".join(options.values())


def _describe(item: Mapping[str, Any]) -> str:
    price = _money(item["price"])
    return f"{item['name']} ({_options(item['options'])}; item {item['item_id']}, {price})"


def _variant_line(variant: Mapping[str, Any]) -> str:
    return f"{_options(variant['options'])} (item {variant['item_id']}, {_money(variant['price'])})"


def _ids(text: str | None) -> list[str]:
    return [i for i in (text or "").split(",") if i]


@decision(outcomes=["ready"])
def welcome(ctx: Context) -> Outcome:
    """Open the conversation; nobody is identified yet."""
    return Outcome("ready")


# --- identity ------------------------------------------------------------------------------------


@decision(
    outcomes=["found", "not_found", "need_zip", "need_name", "nothing_given"],
    sets={"found": ["user_id", "user_name"]},
)
def find_user(ctx: Context) -> Outcome:
    """Locate the user by email, else by name and zip code; nothing is done before this."""
    if "email" not in ctx.slots:
        if "full_name" in ctx.slots and "zip" not in ctx.slots:
            return Outcome("need_zip")
        if "zip" in ctx.slots and "full_name" not in ctx.slots:
            return Outcome("need_name")
        if "full_name" not in ctx.slots:
            return Outcome("nothing_given")
    user_id = None
    try:
        if "email" in ctx.slots:
            user_id = tools.find_user_id_by_email(ctx.slots.get("email", ""))
        elif "full_name" in ctx.slots and "zip" in ctx.slots:
            first, _, last = ctx.slots.get("full_name", "").partition(" ")
            user_id = tools.find_user_id_by_name_zip(first, last, ctx.slots.get("zip", ""))
    except tools.ToolError:
        user_id = None
    if user_id is None:
        return Outcome("not_found", slots={"email": None, "full_name": None, "zip": None})
    user = tools.get_user_details(user_id)
    return Outcome("found", facts={"user_id": user_id, "user_name": user["name"]["first_name"]})


# --- requests and orders -------------------------------------------------------------------------


@decision(outcomes=["order_needed", "address_needed"], sets={"order_needed": ["request"]})
def begin_request(ctx: Context) -> Outcome:
    """Start the request the user named; whatever an earlier request had chosen is dropped."""
    request = _REQUESTS.get(ctx.intent or "", "status")
    outcome = "address_needed" if request == "user_address" else "order_needed"
    # Every slot and fact of the request but the order id, written out so that the checker
    # and `sopagent verify` read what is forgotten.
    return Outcome(
        outcome,
        slots={"item_query": None, "payment": None, "reason": None, "address": None},
        facts={
            "request": request,
            "order_ref": None,
            "order_status": None,
            "order_items": None,
            "order_total": None,
            "selected_ids": None,
            "selected_items": None,
            "new_ids": None,
            "changes": None,
            "current_item": None,
            "candidate_ids": None,
            "candidates": None,
            "chosen_id": None,
            "chosen_item": None,
            "difference_text": None,
            "payment_method_id": None,
            "payment_label": None,
            "payment_options": None,
            "refund_note": None,
            "address_text": None,
            "order_details": None,
        },
    )


@decision(
    outcomes=["in_request", "listed", "no_orders"],
    sets={"in_request": ["orders_list"], "listed": ["orders_list"]},
)
def list_orders(ctx: Context) -> Outcome:
    """List the user's orders with their status, so they can name one."""
    user = tools.get_user_details(ctx.facts["user_id"])
    lines = []
    for order_id in user["orders"]:
        order = tools.get_order_details(order_id)
        names = ", ".join(item["name"] for item in order["items"])
        lines.append(f"{order_id} ({order['status']}: {names})")
    if not lines:
        return Outcome("no_orders")
    outcome = "in_request" if ctx.facts.get("request") else "listed"
    return Outcome(outcome, facts={"orders_list": "; ".join(lines)[:1900]})


@decision(
    outcomes=[
        "cancel_ok",
        "address_ok",
        "payment_ok",
        "items_ok",
        "status_shown",
        "not_found",
        "not_yours",
        "wrong_status",
    ],
    sets={
        "cancel_ok": [*_ORDER_FACTS, "refund_note"],
        "address_ok": _ORDER_FACTS,
        "payment_ok": [*_ORDER_FACTS, "payment_options"],
        "items_ok": _ORDER_FACTS,
        "wrong_status": _ORDER_FACTS,
        "status_shown": ["order_details"],
        "not_found": ["order_ref"],
        "not_yours": ["order_ref"],
    },
)
def check_order(ctx: Context) -> Outcome:
    """Look the order up; it must be the user's and in the status the request needs."""
    order_id = "#" + ctx.slots["order_id"].lstrip("#").upper()
    try:
        order = tools.get_order_details(order_id)
    except tools.ToolError:
        return Outcome("not_found", slots={"order_id": None}, facts={"order_ref": order_id})
    if order["user_id"] != ctx.facts["user_id"]:
        # Another user's order: say no more than for a missing one.
        return Outcome("not_yours", slots={"order_id": None}, facts={"order_ref": order_id})
    request = ctx.facts.get("request", "status")
    status = order["status"]
    items = "; ".join(_describe(item) for item in order["items"])
    total = sum(Decimal(str(i["price"])) for i in order["items"])
    if request == "status":
        details = f"{order_id} is {status}. Items: {items}"
        return Outcome(
            "status_shown",
            slots={
                "order_id": None,
                "item_query": None,
                "payment": None,
                "reason": None,
                "address": None,
            },
            facts={"request": None, "order_details": details[:1900]},
        )
    if status != _NEEDS_STATUS[request]:
        return Outcome(
            "wrong_status",
            slots={"order_id": None},
            facts={
                "order_ref": order_id,
                "order_status": status,
                "order_items": items,
                "order_total": total,
            },
        )
    outcome = "items_ok"
    refund_note = None
    payment_options = None
    if request == "cancel":
        outcome = "cancel_ok"
        method = _original_method(order)
        when = "at once" if method["source"] == "gift_card" else "within 5 to 7 business days"
        refund_note = f"{_money(_paid(order))} back to {_label(method)} {when}"
    elif request == "modify_address":
        outcome = "address_ok"
    elif request == "modify_payment":
        outcome = "payment_ok"
        payment_options = _payment_options(ctx.facts["user_id"])
    return Outcome(
        outcome,
        facts={
            "order_ref": order_id,
            "order_status": status,
            "order_items": items,
            "order_total": total,
            "refund_note": refund_note,
            "payment_options": payment_options,
            "selected_ids": None,
            "new_ids": None,
        },
    )


def _order(ctx: Context) -> Record:
    order: Record = tools.get_order_details(ctx.facts["order_ref"])
    return order


def _paid(order: Mapping[str, Any]) -> float:
    payments = [p for p in order["payment_history"] if p["transaction_type"] == "payment"]
    return float(payments[0]["amount"])


def _original_method(order: Mapping[str, Any]) -> Record:
    payments = [p for p in order["payment_history"] if p["transaction_type"] == "payment"]
    user = tools.get_user_details(order["user_id"])
    method: Record = user["payment_methods"][payments[0]["payment_method_id"]]
    return method


def _label(method: Mapping[str, Any]) -> str:
    if method["source"] == "credit_card":
        return f"the {method['brand']} credit card ending in {method['last_four']} ({method['id']})"
    if method["source"] == "gift_card":
        return f"gift card {method['id']} (balance {_money(method['balance'])})"
    return f"PayPal ({method['id']})"


def _payment_options(user_id: str) -> str:
    methods = tools.get_user_details(user_id)["payment_methods"].values()
    return "; ".join(_label(m) for m in methods)


# --- items ---------------------------------------------------------------------------------------


def _name_spans(query: str, name: str) -> list[tuple[int, int, bool]]:
    """Where the query names the product: (start, end, whether by its full name)."""
    full = _norm(name)
    last = full.split()[-1]
    spans = []
    for form in {full, last, last.rstrip("s"), last + "s"}:
        if len(form) > 2:
            for m in re.finditer(rf"(?<![\w.']){re.escape(form)}(?![\w%])", query):
                spans.append((m.start(), m.end(), form == full and " " in full))
    return sorted(spans)


def _named_items(query: str, items: Sequence[Record]) -> list[Record]:
    """The items the query names, in the order it names them.

    "digital camera" names the digital camera, not also the action camera: a mention by the
    last word alone does not count inside another product's full name.
    """
    spans = {item["item_id"]: _name_spans(query, item["name"]) for item in items}
    full = [(a, b) for found in spans.values() for a, b, whole in found if whole]
    named = []
    for item in items:
        kept = [
            a
            for a, b, whole in spans[item["item_id"]]
            if whole or not any(x <= a and b <= y for x, y in full)
        ]
        if kept:
            named.append((min(kept), item))
    return [item for _, item in sorted(named, key=lambda pair: pair[0])]


@decision(
    outcomes=["matched", "no_match", "ambiguous"],
    sets={"matched": ["selected_ids", "selected_items"]},
)
def match_items(ctx: Context) -> Outcome:
    """Find the order's items the user described (by name, options, id, or "all")."""
    query = _norm(ctx.slots.get("item_query", ""))
    order = _order(ctx)
    items: list[Record] = order["items"]
    selected = _ids(ctx.facts.get("selected_ids"))
    chosen: list[Record] = []
    by_id = set(_ITEM_ID.findall(query))
    if by_id:
        chosen = [item for item in items if item["item_id"] in by_id]
    elif _ALL.search(query):
        chosen = list(items)
    else:
        # In the order the user named them: new items are asked for in that order.
        named = _named_items(query, items)
        groups: dict[str, list[Record]] = {}
        for item in named:
            groups.setdefault(item["product_id"], []).append(item)
        for group in groups.values():
            if len(group) == 1:
                chosen += group
                continue
            scores = [
                sum(
                    _mentions(query, v) for v in item["options"].values() if v.lower() not in _VAGUE
                )
                for item in group
            ]
            best = max(scores)
            winners = [item for item, score in zip(group, scores, strict=True) if score == best]
            if best == 0 or len({w["item_id"] for w in winners}) > 1:
                return Outcome("ambiguous", slots={"item_query": None})
            chosen.append(winners[0])
    if not chosen and not by_id:
        # No product named ("the 80% one"): the options alone may single an item out.
        scores = [
            sum(_mentions(query, v) for v in item["options"].values() if v.lower() not in _VAGUE)
            for item in items
        ]
        best = max(scores, default=0)
        if best > 0 and scores.count(best) == 1:
            chosen = [items[scores.index(best)]]
    if not chosen:
        return Outcome("no_match", slots={"item_query": None})
    remaining = [i["item_id"] for i in items]
    for item_id in selected:
        remaining.remove(item_id)
    for item in chosen:
        if item["item_id"] in remaining:
            remaining.remove(item["item_id"])
            selected.append(item["item_id"])
    lookup = {item["item_id"]: item for item in items}
    return Outcome(
        "matched",
        slots={"item_query": None},
        facts={
            "selected_ids": ",".join(selected),
            "selected_items": "; ".join(_describe(lookup[i]) for i in selected)[:1900],
        },
    )


@decision(
    outcomes=["refund_method", "new_items", "nothing_selected"],
    sets={"refund_method": ["payment_options"]},
)
def after_items(ctx: Context) -> Outcome:
    """Every item is named: a return asks where the refund goes, a swap asks for new items."""
    if not _ids(ctx.facts.get("selected_ids")):
        return Outcome("nothing_selected")
    if ctx.facts.get("request") == "return":
        return Outcome("refund_method", facts={"payment_options": _refund_options(ctx)})
    return Outcome("new_items")


def _refund_options(ctx: Context) -> str:
    order = _order(ctx)
    original = _original_method(order)
    methods = tools.get_user_details(order["user_id"])["payment_methods"].values()
    gift_cards = [m for m in methods if m["source"] == "gift_card" and m["id"] != original["id"]]
    return "; ".join([f"{_label(original)} (the original payment)", *map(_label, gift_cards)])


@decision(
    outcomes=["ask", "all_chosen"],
    sets={
        "ask": ["current_item", "candidate_ids", "candidates", "new_ids"],
        "all_chosen": ["changes", "difference_text", "payment_options"],
    },
)
def next_new_item(ctx: Context) -> Outcome:
    """Ask for the new variant of the next item that has none yet; then show the difference."""
    order = _order(ctx)
    selected = _ids(ctx.facts.get("selected_ids"))
    new = (ctx.facts.get("new_ids") or "").split(",") if ctx.facts.get("new_ids") else []
    new += [""] * (len(selected) - len(new))
    lookup = {item["item_id"]: item for item in order["items"]}
    for item_id, new_id in zip(selected, new, strict=True):
        if not new_id:
            item = lookup[item_id]
            variants = _other_variants(item)
            return Outcome(
                "ask",
                facts={
                    "current_item": _describe(item),
                    "candidate_ids": ",".join(v["item_id"] for v in variants),
                    "candidates": _listing(variants),
                    "new_ids": ",".join(new),
                },
            )
    difference = 0.0
    changes = []
    for item_id, new_id in zip(selected, new, strict=True):
        item = lookup[item_id]
        variant = tools.get_product_details(item["product_id"])["variants"][new_id]
        difference += variant["price"] - item["price"]
        changes.append(
            f"{item['name']} ({_options(item['options'])}, {_money(item['price'])}) -> "
            f"({_options(variant['options'])}, item {new_id}, {_money(variant['price'])})"
        )
    difference = round(difference, 2)
    if difference > 0:
        text = f"you pay {_money(difference)} more"
    elif difference < 0:
        text = f"you receive {_money(-difference)} back"
    else:
        text = "the price stays the same"
    return Outcome(
        "all_chosen",
        facts={
            "changes": "; ".join(changes)[:1900],
            "difference_text": text,
            "payment_options": _payment_options(ctx.facts["user_id"]),
        },
    )


def _other_variants(item: Mapping[str, Any]) -> list[Record]:
    variants = tools.get_product_details(item["product_id"])["variants"].values()
    return [v for v in variants if v["available"] and v["item_id"] != item["item_id"]]


def _listing(variants: Sequence[Mapping[str, Any]]) -> str:
    lines = [_variant_line(v) for v in variants[:_LISTED]]
    if len(variants) > _LISTED:
        lines.append(f"and {len(variants) - _LISTED} more")
    return "; ".join(lines)[:1900]


@decision(
    outcomes=["chosen", "ambiguous", "no_match"],
    sets={
        "chosen": ["chosen_id", "chosen_item"],
        "ambiguous": ["candidate_ids", "candidates"],
        "no_match": ["candidate_ids", "candidates"],
    },
)
def match_variant(ctx: Context) -> Outcome:
    """Pick the available variant of the same product that the user described.

    Options the user names must match; ``same``/``keep`` keeps the options they did not name;
    ``cheaper`` takes the cheapest of what is left. More than one left: list them and narrow
    down with the next answer.
    """
    query = _norm(ctx.slots.get("item_query", ""))
    order = _order(ctx)
    selected = _ids(ctx.facts.get("selected_ids"))
    new = (ctx.facts.get("new_ids") or "").split(",")
    new += [""] * (len(selected) - len(new))
    item_id = selected[new.index("")]
    item = next(i for i in order["items"] if i["item_id"] == item_id)
    every = _other_variants(item)
    offered = set(_ids(ctx.facts.get("candidate_ids"))) or {v["item_id"] for v in every}
    by_id = [v for v in every if v["item_id"] in set(_ITEM_ID.findall(query))]
    offered_variants = [v for v in every if v["item_id"] in offered]
    narrowed = _narrow(offered_variants, item, query, every)
    if by_id:
        found = by_id
    elif narrowed is None:
        # Nothing named ("which colors are there?"): show what is on offer.
        found = offered_variants or every
        if len(found) == 1:
            found = every
    else:
        # A description that fits none of the offered ones starts afresh from every variant.
        found = narrowed or (_narrow(every, item, query, every) or [])
    if not found:
        return Outcome(
            "no_match",
            slots={"item_query": None},
            facts={
                "candidate_ids": ",".join(v["item_id"] for v in every),
                "candidates": _listing(every),
            },
        )
    if len(found) > 1:
        return Outcome(
            "ambiguous",
            slots={"item_query": None},
            facts={
                "candidate_ids": ",".join(v["item_id"] for v in found),
                "candidates": _listing(found),
            },
        )
    (variant,) = found
    return Outcome(
        "chosen",
        slots={"item_query": None},
        facts={
            "chosen_id": variant["item_id"],
            "chosen_item": f"{item['name']} ({_options(variant['options'])}; item"
            f" {variant['item_id']}, {_money(variant['price'])})",
            "candidate_ids": ",".join(v["item_id"] for v in found),
        },
    )


def _narrow(
    variants: list[Record], item: Mapping[str, Any], query: str, vocabulary: list[Record]
) -> list[Record] | None:
    """The variants that fit what the query names; ``None`` when it names nothing.

    Option values are recognised among all of the product's ``vocabulary`` variants, so that
    a value none of ``variants`` has rules them all out instead of being ignored.
    """
    keys = list(item["options"])
    named: dict[str, set[str]] = {}
    for variant in vocabulary:
        for key in keys:
            value = variant["options"][key]
            if value.lower() not in _VAGUE and _mentions(query, value):
                named.setdefault(key, set()).add(value)
    if not named and not _CHEAPEST.search(query) and not _SAME.search(query):
        return None
    found = [v for v in variants if all(v["options"][k] in vals for k, vals in named.items())]
    if _SAME.search(query):
        kept = [
            v
            for v in found
            if all(v["options"][k] == item["options"][k] for k in keys if k not in named)
        ]
        found = kept or found
    if _CHEAPEST.search(query) and found:
        cheapest = min(v["price"] for v in found)
        found = [v for v in found if v["price"] == cheapest]
    return found


@decision(outcomes=["accepted"], sets={"accepted": ["new_ids"]})
def accept_variant(ctx: Context) -> Outcome:
    """Record the chosen variant for the item being swapped."""
    selected = _ids(ctx.facts.get("selected_ids"))
    new = (ctx.facts.get("new_ids") or "").split(",")
    new += [""] * (len(selected) - len(new))
    new[new.index("")] = ctx.facts["chosen_id"]
    return Outcome(
        "accepted",
        facts={"new_ids": ",".join(new), "candidate_ids": None, "chosen_id": None},
    )


# --- payment -------------------------------------------------------------------------------------

_EXPLICIT = re.compile(r"(paypal|credit_card|gift_card)_\d+")


def _method(ctx: Context) -> tuple[Record | None, str, Record]:
    """The user's payment method that the ``payment`` slot names.

    Returns the method (or ``None``), ``"not_found"`` / ``"ambiguous"`` / ``""``, and the
    order's original payment method.
    """
    said = ctx.slots.get("payment", "").lower()
    order = _order(ctx)
    methods: dict[str, Record] = tools.get_user_details(order["user_id"])["payment_methods"]
    original = _original_method(order)
    explicit = _EXPLICIT.search(said)
    if explicit:
        candidates = [m for m in methods.values() if m["id"] == explicit.group()]
    elif "original" in said or "same" in said:
        candidates = [original]
    else:
        if "pal" in said:
            source = "paypal"
        elif any(word in said for word in ("gift", "website credit", "store credit")):
            source = "gift_card"
        else:
            source = "credit_card"
        candidates = [m for m in methods.values() if m["source"] == source]
    if not candidates:
        return None, "not_found", original
    if len(candidates) > 1:
        return None, "ambiguous", original
    return candidates[0], "", original


_CHOSEN = ["payment_method_id", "payment_label"]
"""The facts of the payment method an outcome chose."""


@decision(
    outcomes=["ok", "not_found", "ambiguous", "insufficient", "same_method"],
    sets={"ok": _CHOSEN},
)
def resolve_new_payment(ctx: Context) -> Outcome:
    """The method a pending order should be paid with: another one, covering the total."""
    method, problem, original = _method(ctx)
    if method is None:
        return Outcome("not_found" if problem == "not_found" else "ambiguous", {"payment": None})
    if method["id"] == original["id"]:
        return Outcome("same_method", slots={"payment": None})
    if method["source"] == "gift_card" and method["balance"] < _paid(_order(ctx)):
        return Outcome("insufficient", slots={"payment": None})
    return Outcome("ok", facts={"payment_method_id": method["id"], "payment_label": _label(method)})


@decision(outcomes=["ok", "not_found", "ambiguous", "not_allowed"], sets={"ok": _CHOSEN})
def resolve_refund(ctx: Context) -> Outcome:
    """Where a return's refund goes: the original method or one of the user's gift cards."""
    method, problem, original = _method(ctx)
    if method is None:
        return Outcome("not_found" if problem == "not_found" else "ambiguous", {"payment": None})
    if method["id"] != original["id"] and method["source"] != "gift_card":
        return Outcome("not_allowed", slots={"payment": None})
    return Outcome("ok", facts={"payment_method_id": method["id"], "payment_label": _label(method)})


@decision(
    outcomes=["exchange_ok", "modify_ok", "not_found", "ambiguous", "insufficient"],
    sets={"exchange_ok": _CHOSEN, "modify_ok": _CHOSEN},
)
def resolve_difference(ctx: Context) -> Outcome:
    """The method that pays or receives a swap's price difference; a gift card must cover it."""
    method, problem, _ = _method(ctx)
    if method is None:
        return Outcome("not_found" if problem == "not_found" else "ambiguous", {"payment": None})
    difference = _difference(ctx, _order(ctx))
    if method["source"] == "gift_card" and difference > 0 and method["balance"] < difference:
        return Outcome("insufficient", slots={"payment": None})
    outcome = "exchange_ok" if ctx.facts.get("request") == "exchange" else "modify_ok"
    return Outcome(
        outcome, facts={"payment_method_id": method["id"], "payment_label": _label(method)}
    )


def _difference(ctx: Context, order: Mapping[str, Any]) -> float:
    total = 0.0
    lookup = {item["item_id"]: item for item in order["items"]}
    for item_id, new_id in zip(
        _ids(ctx.facts["selected_ids"]), (ctx.facts.get("new_ids") or "").split(","), strict=True
    ):
        item = lookup[item_id]
        total += tools.get_product_details(item["product_id"])["variants"][new_id]["price"]
        total -= item["price"]
    return round(total, 2)


# --- addresses -----------------------------------------------------------------------------------

_STATE_ZIP = re.compile(r"^([A-Z]{2}),?\s+(\d{5}(?:-\d{4})?)$")


def _parse_address(text: str) -> dict[str, str] | None:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    country = "USA"
    if parts and parts[-1].upper() in ("USA", "US", "UNITED STATES"):
        country = "USA"
        parts = parts[:-1]
    if len(parts) < 3:
        return None
    found = _STATE_ZIP.match(parts[-1])
    if found is None:
        return None
    line2 = ", ".join(parts[1:-2])
    return {
        "address1": parts[0],
        "address2": line2,
        "city": parts[-2],
        "state": found.group(1),
        "country": country,
        "zip": found.group(2),
    }


@decision(outcomes=["ok", "invalid"], sets={"ok": ["address_text"]})
def parse_address(ctx: Context) -> Outcome:
    """Split the address into its lines: street, second line, city, state, zip, country."""
    parsed = _parse_address(ctx.slots.get("address", ""))
    if parsed is None:
        return Outcome("invalid", slots={"address": None})
    shown = ", ".join(v for v in parsed.values() if v)
    return Outcome("ok", facts={"address_text": shown})


# --- the writes (reached only through a confirmation) ------------------------------------------


def _run(tool: str, **kwargs: Any) -> str | None:
    """Call a write tool; return why it failed, or ``None`` when it succeeded."""
    try:
        getattr(tools, tool)(**kwargs)
    except tools.ToolError as exc:
        return str(exc)[:190]
    return None


# Each write ends the request: its slots are forgotten (written out, so that the checker and
# `sopagent verify` read what changes). The request's facts stay until the next request
# begins, since the lines said at the end of this turn (rendered once the turn is over) still
# name the order.


@decision(outcomes=["ok"], sets={"ok": ["cancel_reason"]})
def cancel_reason(ctx: Context) -> Outcome:
    """Which of the two reasons the user's words are: no longer needed, or ordered by mistake."""
    said = ctx.slots["reason"]
    reason = "ordered_by_mistake" if "mistake" in said or "accident" in said else "no_longer_needed"
    return Outcome("ok", facts={"cancel_reason": reason})


@decision(outcomes=["done", "failed"], sets={"failed": ["refund_note"]})
def do_cancel(ctx: Context) -> Outcome:
    """Cancel the pending order with the reason the user gave."""
    reason = str(ctx.facts["cancel_reason"]).replace("_", " ")
    error = _run("cancel_pending_order", order_id=ctx.facts["order_ref"], reason=reason)
    return Outcome(
        "failed" if error is not None else "done",
        slots={
            "order_id": None,
            "item_query": None,
            "payment": None,
            "reason": None,
            "address": None,
        },
        facts={"request": None, "refund_note": error},
    )


@decision(outcomes=["done", "failed"], sets={"failed": ["refund_note"]})
def do_modify_address(ctx: Context) -> Outcome:
    """Change the pending order's shipping address."""
    parsed = _parse_address(ctx.slots["address"]) or {}
    error = _run("modify_pending_order_address", order_id=ctx.facts["order_ref"], **parsed)
    return Outcome(
        "failed" if error is not None else "done",
        slots={
            "order_id": None,
            "item_query": None,
            "payment": None,
            "reason": None,
            "address": None,
        },
        facts={"request": None, "refund_note": error},
    )


@decision(outcomes=["done", "failed"], sets={"failed": ["refund_note"]})
def do_modify_user_address(ctx: Context) -> Outcome:
    """Change the user's default address."""
    parsed = _parse_address(ctx.slots["address"]) or {}
    error = _run("modify_user_address", user_id=ctx.facts["user_id"], **parsed)
    return Outcome(
        "failed" if error is not None else "done",
        slots={
            "order_id": None,
            "item_query": None,
            "payment": None,
            "reason": None,
            "address": None,
        },
        facts={"request": None, "refund_note": error},
    )


@decision(outcomes=["done", "failed"], sets={"failed": ["refund_note"]})
def do_modify_payment(ctx: Context) -> Outcome:
    """Pay the pending order with the new method."""
    error = _run(
        "modify_pending_order_payment",
        order_id=ctx.facts["order_ref"],
        payment_method_id=ctx.facts["payment_method_id"],
    )
    return Outcome(
        "failed" if error is not None else "done",
        slots={
            "order_id": None,
            "item_query": None,
            "payment": None,
            "reason": None,
            "address": None,
        },
        facts={"request": None, "refund_note": error},
    )


@decision(outcomes=["done", "failed"], sets={"failed": ["refund_note"]})
def do_modify_items(ctx: Context) -> Outcome:
    """Swap the pending order's items (possible once per order)."""
    error = _run(
        "modify_pending_order_items",
        order_id=ctx.facts["order_ref"],
        item_ids=_ids(ctx.facts["selected_ids"]),
        new_item_ids=(ctx.facts.get("new_ids") or "").split(","),
        payment_method_id=ctx.facts["payment_method_id"],
    )
    return Outcome(
        "failed" if error is not None else "done",
        slots={
            "order_id": None,
            "item_query": None,
            "payment": None,
            "reason": None,
            "address": None,
        },
        facts={"request": None, "refund_note": error},
    )


@decision(outcomes=["done", "failed"], sets={"failed": ["refund_note"]})
def do_return(ctx: Context) -> Outcome:
    """Request the return of the delivered items."""
    error = _run(
        "return_delivered_order_items",
        order_id=ctx.facts["order_ref"],
        item_ids=_ids(ctx.facts["selected_ids"]),
        payment_method_id=ctx.facts["payment_method_id"],
    )
    return Outcome(
        "failed" if error is not None else "done",
        slots={
            "order_id": None,
            "item_query": None,
            "payment": None,
            "reason": None,
            "address": None,
        },
        facts={"request": None, "refund_note": error},
    )


@decision(outcomes=["done", "failed"], sets={"failed": ["refund_note"]})
def do_exchange(ctx: Context) -> Outcome:
    """Request the exchange of the delivered items (possible once per order)."""
    error = _run(
        "exchange_delivered_order_items",
        order_id=ctx.facts["order_ref"],
        item_ids=_ids(ctx.facts["selected_ids"]),
        new_item_ids=(ctx.facts.get("new_ids") or "").split(","),
        payment_method_id=ctx.facts["payment_method_id"],
    )
    return Outcome(
        "failed" if error is not None else "done",
        slots={
            "order_id": None,
            "item_query": None,
            "payment": None,
            "reason": None,
            "address": None,
        },
        facts={"request": None, "refund_note": error},
    )


@decision(outcomes=["dropped"])
def drop_request(ctx: Context) -> Outcome:
    """The user said no: forget the request; nothing was changed."""
    return Outcome(
        "dropped",
        slots={
            "order_id": None,
            "item_query": None,
            "payment": None,
            "reason": None,
            "address": None,
        },
        facts={"request": None},
    )


@decision(outcomes=["done"])
def do_transfer(ctx: Context) -> Outcome:
    """Hand the conversation to a person, with a summary of where it stood."""
    who = ctx.facts.get("user_id", "an unidentified user")
    request = ctx.facts.get("request") or "no request yet"
    order = ctx.facts.get("order_ref") or "no order"
    tools.transfer_to_human_agents(f"{who}; request: {request}; order: {order}")
    return Outcome("done")
