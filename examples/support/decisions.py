"""Decision functions of the refund procedure (policies/refund.yaml).

The business rules live here, in code: the model never decides whether money moves.
The order data comes from ``orders.json`` beside this file, standing in for an order service.
"""

from __future__ import annotations

import json
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Any

from sopagent import Context, Outcome, decision

VERIFICATION_THRESHOLD = Decimal("100.00")
REFUND_WINDOW_DAYS = 30
MAX_CODE_ATTEMPTS = 3

_ORDERS: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).with_name("orders.json")).read_text(encoding="utf-8")
)
_REFUNDED: set[str] = set()


def _order(ctx: Context) -> dict[str, Any]:
    return _ORDERS[ctx.slots["order_id"]]


@decision(outcomes=["found", "not_found"])
def find_order(ctx: Context) -> Outcome:
    """Look the order up; forget an unknown number so it is asked again."""
    order = _ORDERS.get(ctx.slots.get("order_id", ""))
    if order is None:
        return Outcome("not_found", slots={"order_id": None})
    return Outcome("found", facts={"order_total": order["total"]})


@decision(
    outcomes=["eligible", "needs_verification", "not_delivered", "too_old", "already_refunded"],
    sets={"eligible": ["refund_amount"]},
)
def check_refund(ctx: Context) -> Outcome | str:
    """Apply the refund rules: delivered, within the window, once, verified above $100."""
    order = _order(ctx)
    if order["refunded"] or ctx.slots["order_id"] in _REFUNDED:
        return "already_refunded"
    if order["status"] != "delivered":
        return "not_delivered"
    if order["days_since_delivery"] > REFUND_WINDOW_DAYS:
        return "too_old"
    total = Decimal(order["total"])
    if total > VERIFICATION_THRESHOLD and not ctx.facts.get("verified", False):
        return "needs_verification"
    return Outcome("eligible", facts={"refund_amount": total})


@decision(outcomes=["verified", "wrong_code", "locked"], sets={"verified": ["refund_amount"]})
def verify_identity(ctx: Context) -> Outcome:
    """Compare the code with the one emailed; three misses lock the refund."""
    order = _order(ctx)
    if secrets.compare_digest(ctx.slots["verification_code"], order["email_code"]):
        return Outcome(
            "verified",
            facts={"verified": True, "refund_amount": Decimal(order["total"])},
        )
    attempts = ctx.facts.get("failed_attempts", 0) + 1
    outcome = "locked" if attempts >= MAX_CODE_ATTEMPTS else "wrong_code"
    return Outcome(outcome, slots={"verification_code": None}, facts={"failed_attempts": attempts})


@decision(outcomes=["issued", "failed"], sets={"issued": ["refund_reference"]})
def issue_refund(ctx: Context) -> Outcome:
    """Issue the refund once; re-check the rules so no path can skip them."""
    order = _order(ctx)
    total = Decimal(order["total"])
    if total > VERIFICATION_THRESHOLD and not ctx.facts.get("verified", False):
        return Outcome("failed")
    _REFUNDED.add(ctx.slots["order_id"])
    reference = f"RF-{int(ctx.slots['order_id']) * 7 % 1_000_000:06d}"
    return Outcome("issued", facts={"refund_reference": reference})


@decision(outcomes=["ready"])
def start_over(ctx: Context) -> Outcome:
    """Forget the previous order so a new one can be handled."""
    return Outcome(
        "ready",
        slots={"order_id": None, "verification_code": None},
        facts={
            "order_total": None,
            "refund_amount": None,
            "refund_reference": None,
            "verified": None,
            "failed_attempts": None,
        },
    )
