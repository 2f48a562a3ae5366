"""The retail tools as plain Python functions over the mock database (``db/``).

One function per tool of the retail tool schema (find users, read orders and products, cancel,
modify, return, exchange, update addresses, transfer). Read tools return plain data; write
tools check the store's rules, change the database and append the call to ``DB.actions``, the
log a test compares with a task's expected actions. A rule that is broken raises `ToolError`
and changes nothing.

The decision functions of ``decisions.py`` are the only callers; the language model never is.
"""

from __future__ import annotations

import ast
import copy
import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DB_DIR = Path(__file__).with_name("db")
CANCEL_REASONS = ("no longer needed", "ordered by mistake")

Record = dict[str, Any]


class ToolError(Exception):
    """A tool refused: unknown id, wrong status, a rule of the store broken."""


@dataclass
class Database:
    """Users, orders and products, and the log of write actions taken."""

    users: dict[str, Record]
    orders: dict[str, Record]
    products: dict[str, Record]
    actions: list[Record] = field(default_factory=list)

    @classmethod
    def load(cls, directory: Path = DB_DIR) -> Database:
        """Read the three JSON files of ``directory``."""
        return cls.parse(
            *(_read(directory / n) for n in ("users.json", "orders.json", "products.json"))
        )

    @classmethod
    def parse(cls, users: str, orders: str, products: str) -> Database:
        """Build a database from the JSON texts of its three files."""
        return cls(json.loads(users), json.loads(orders), json.loads(products))

    def copy(self) -> Database:
        """An independent copy (the log included)."""
        return copy.deepcopy(self)

    def record(self, name: str, **kwargs: Any) -> None:
        """Log one write action."""
        self.actions.append({"name": name, "kwargs": copy.deepcopy(kwargs)})


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# Parsing the shipped JSON again is several times faster than deep-copying it.
_PRISTINE = tuple(_read(DB_DIR / n) for n in ("users.json", "orders.json", "products.json"))
DB = Database.parse(*_PRISTINE)


def reset() -> Database:
    """Put the shared database back as shipped (tests call this between conversations)."""
    fresh = Database.parse(*_PRISTINE)
    DB.users, DB.orders, DB.products, DB.actions = (
        fresh.users,
        fresh.orders,
        fresh.products,
        fresh.actions,
    )
    return DB


# --- read tools --------------------------------------------------------------------------------


def find_user_id_by_email(email: str, db: Database = DB) -> str:
    """Return the id of the user with this email (case-insensitive)."""
    wanted = email.strip().lower()
    for user_id, user in db.users.items():
        if user["email"].lower() == wanted:
            return user_id
    raise ToolError("user not found")


def find_user_id_by_name_zip(first_name: str, last_name: str, zip: str, db: Database = DB) -> str:
    """Return the id of the user with this first name, last name and zip code."""
    for user_id, user in db.users.items():
        name = user["name"]
        if (
            name["first_name"].lower() == first_name.strip().lower()
            and name["last_name"].lower() == last_name.strip().lower()
            and user["address"]["zip"] == zip.strip()
        ):
            return user_id
    raise ToolError("user not found")


def get_user_details(user_id: str, db: Database = DB) -> Record:
    """Return the user's profile: name, address, email, payment methods, orders."""
    user = db.users.get(user_id)
    if user is None:
        raise ToolError("user not found")
    return user


def get_order_details(order_id: str, db: Database = DB) -> Record:
    """Return the order: status, items, address, fulfilments, payments."""
    order = db.orders.get(order_id)
    if order is None:
        raise ToolError("order not found")
    return order


def get_product_details(product_id: str, db: Database = DB) -> Record:
    """Return the product and every variant with its options, price and availability."""
    product = db.products.get(product_id)
    if product is None:
        raise ToolError("product not found")
    return product


def list_all_product_types(db: Database = DB) -> dict[str, str]:
    """Return product name -> product id for the 50 product types."""
    return dict(sorted((p["name"], p["product_id"]) for p in db.products.values()))


_OPERATORS: dict[type[ast.AST], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression of numbers, + - * / and parentheses, rounded to cents."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        raise ToolError("only numbers, + - * / and parentheses are allowed")

    try:
        tree = ast.parse(expression, mode="eval")
        return round(float(value(tree.body)), 2)
    except (SyntaxError, ZeroDivisionError) as exc:
        raise ToolError(f"cannot calculate {expression!r}: {exc}") from exc


def think(thought: str) -> None:
    """Note a thought; changes nothing."""


# --- write tools -------------------------------------------------------------------------------


def _status(order: Record, *allowed: str) -> None:
    if order["status"] not in allowed:
        raise ToolError(f"the order is {order['status']}, not {' or '.join(allowed)}")


def _payment_method(db: Database, order: Record, payment_method_id: str) -> Record:
    methods: dict[str, Record] = db.users[order["user_id"]]["payment_methods"]
    method = methods.get(payment_method_id)
    if method is None:
        raise ToolError("payment method not found")
    return method


def _original_payment(order: Record) -> str:
    payments = [p for p in order["payment_history"] if p["transaction_type"] == "payment"]
    method: str = payments[0]["payment_method_id"]
    return method


def _swaps(
    db: Database, order: Record, item_ids: Sequence[str], new_item_ids: Sequence[str]
) -> float:
    """Check item swaps (same product, available, not the same item); return the difference."""
    if len(item_ids) != len(new_item_ids) or not item_ids:
        raise ToolError("each item needs exactly one new item")
    in_order = [item["item_id"] for item in order["items"]]
    for item_id in item_ids:
        if item_ids.count(item_id) > in_order.count(item_id):
            raise ToolError(f"item {item_id} is not in the order")
    difference = 0.0
    for item_id, new_id in zip(item_ids, new_item_ids, strict=True):
        item = next(i for i in order["items"] if i["item_id"] == item_id)
        variant = db.products[item["product_id"]]["variants"].get(new_id)
        if variant is None:
            raise ToolError(f"new item {new_id} is not a variant of {item['name']}")
        if not variant["available"]:
            raise ToolError(f"new item {new_id} is not available")
        if new_id == item_id:
            raise ToolError(f"new item {new_id} is the same item")
        difference += variant["price"] - item["price"]
    return round(difference, 2)


def _can_pay(method: Record, amount: float) -> None:
    if method["source"] == "gift_card" and amount > 0 and method["balance"] < amount:
        raise ToolError("the gift card balance is not enough")


def cancel_pending_order(order_id: str, reason: str, db: Database = DB) -> Record:
    """Cancel a pending order and refund every payment (gift cards at once)."""
    order = get_order_details(order_id, db)
    _status(order, "pending")
    if reason not in CANCEL_REASONS:
        raise ToolError(f"the reason must be one of {CANCEL_REASONS}")
    refunds = []
    for payment in order["payment_history"]:
        refunds.append({**payment, "transaction_type": "refund"})
        method = db.users[order["user_id"]]["payment_methods"].get(payment["payment_method_id"])
        if method is not None and method["source"] == "gift_card":
            method["balance"] = round(method["balance"] + payment["amount"], 2)
    order["status"] = "cancelled"
    order["cancel_reason"] = reason
    order["payment_history"].extend(refunds)
    db.record("cancel_pending_order", order_id=order_id, reason=reason)
    return order


def modify_pending_order_address(
    order_id: str,
    address1: str,
    address2: str,
    city: str,
    state: str,
    country: str,
    zip: str,
    db: Database = DB,
) -> Record:
    """Change the shipping address of a pending order."""
    order = get_order_details(order_id, db)
    _status(order, "pending")
    address = {
        "address1": address1,
        "address2": address2,
        "city": city,
        "country": country,
        "state": state,
        "zip": zip,
    }
    order["address"] = address
    db.record("modify_pending_order_address", order_id=order_id, **address)
    return order


def modify_pending_order_items(
    order_id: str,
    item_ids: Sequence[str],
    new_item_ids: Sequence[str],
    payment_method_id: str,
    db: Database = DB,
) -> Record:
    """Swap items of a pending order for other variants; once per order."""
    order = get_order_details(order_id, db)
    _status(order, "pending")
    difference = _swaps(db, order, item_ids, new_item_ids)
    method = _payment_method(db, order, payment_method_id)
    _can_pay(method, difference)
    kind = "payment" if difference > 0 else "refund"
    order["payment_history"].append(
        {
            "transaction_type": kind,
            "amount": abs(difference),
            "payment_method_id": payment_method_id,
        }
    )
    if method["source"] == "gift_card":
        method["balance"] = round(method["balance"] - difference, 2)
    for item_id, new_id in zip(item_ids, new_item_ids, strict=True):
        item = next(i for i in order["items"] if i["item_id"] == item_id)
        variant = db.products[item["product_id"]]["variants"][new_id]
        item.update(item_id=new_id, price=variant["price"], options=dict(variant["options"]))
    order["status"] = "pending (item modified)"
    db.record(
        "modify_pending_order_items",
        order_id=order_id,
        item_ids=list(item_ids),
        new_item_ids=list(new_item_ids),
        payment_method_id=payment_method_id,
    )
    return order


def modify_pending_order_payment(
    order_id: str, payment_method_id: str, db: Database = DB
) -> Record:
    """Pay a pending order with another of the user's methods; the old one is refunded."""
    order = get_order_details(order_id, db)
    _status(order, "pending")
    original = _original_payment(order)
    if payment_method_id == original:
        raise ToolError("the new payment method must differ from the original one")
    method = _payment_method(db, order, payment_method_id)
    payments = [p for p in order["payment_history"] if p["transaction_type"] == "payment"]
    amount = payments[0]["amount"]
    _can_pay(method, amount)
    order["payment_history"].extend(
        [
            {
                "transaction_type": "payment",
                "amount": amount,
                "payment_method_id": payment_method_id,
            },
            {"transaction_type": "refund", "amount": amount, "payment_method_id": original},
        ]
    )
    if method["source"] == "gift_card":
        method["balance"] = round(method["balance"] - amount, 2)
    old = db.users[order["user_id"]]["payment_methods"].get(original)
    if old is not None and old["source"] == "gift_card":
        old["balance"] = round(old["balance"] + amount, 2)
    db.record(
        "modify_pending_order_payment", order_id=order_id, payment_method_id=payment_method_id
    )
    return order


def modify_user_address(
    user_id: str,
    address1: str,
    address2: str,
    city: str,
    state: str,
    country: str,
    zip: str,
    db: Database = DB,
) -> Record:
    """Change the user's default address."""
    user = get_user_details(user_id, db)
    address = {
        "address1": address1,
        "address2": address2,
        "city": city,
        "country": country,
        "state": state,
        "zip": zip,
    }
    user["address"] = address
    db.record("modify_user_address", user_id=user_id, **address)
    return user


def return_delivered_order_items(
    order_id: str, item_ids: Sequence[str], payment_method_id: str, db: Database = DB
) -> Record:
    """Request the return of items of a delivered order, refunded to the original method or a
    gift card."""
    order = get_order_details(order_id, db)
    _status(order, "delivered")
    method = _payment_method(db, order, payment_method_id)
    if payment_method_id != _original_payment(order) and method["source"] != "gift_card":
        raise ToolError("refunds go to the original payment method or a gift card")
    if not item_ids:
        raise ToolError("name at least one item to return")
    in_order = [item["item_id"] for item in order["items"]]
    for item_id in item_ids:
        if item_ids.count(item_id) > in_order.count(item_id):
            raise ToolError(f"item {item_id} is not in the order")
    order["status"] = "return requested"
    order["return_items"] = sorted(item_ids)
    order["return_payment_method_id"] = payment_method_id
    db.record(
        "return_delivered_order_items",
        order_id=order_id,
        item_ids=list(item_ids),
        payment_method_id=payment_method_id,
    )
    return order


def exchange_delivered_order_items(
    order_id: str,
    item_ids: Sequence[str],
    new_item_ids: Sequence[str],
    payment_method_id: str,
    db: Database = DB,
) -> Record:
    """Request the exchange of items of a delivered order for other variants; once per order."""
    order = get_order_details(order_id, db)
    _status(order, "delivered")
    difference = _swaps(db, order, item_ids, new_item_ids)
    method = _payment_method(db, order, payment_method_id)
    _can_pay(method, difference)
    pairs = sorted(zip(item_ids, new_item_ids, strict=True))
    order["status"] = "exchange requested"
    order["exchange_items"] = [old for old, _ in pairs]
    order["exchange_new_items"] = [new for _, new in pairs]
    order["exchange_payment_method_id"] = payment_method_id
    order["exchange_price_difference"] = difference
    db.record(
        "exchange_delivered_order_items",
        order_id=order_id,
        item_ids=list(item_ids),
        new_item_ids=list(new_item_ids),
        payment_method_id=payment_method_id,
    )
    return order


def transfer_to_human_agents(summary: str, db: Database = DB) -> str:
    """Hand the conversation to a person, with a summary of the user's issue."""
    db.record("transfer_to_human_agents", summary=summary)
    return "Transfer successful"


WRITE_TOOLS: dict[str, Callable[..., Any]] = {
    "cancel_pending_order": cancel_pending_order,
    "modify_pending_order_address": modify_pending_order_address,
    "modify_pending_order_items": modify_pending_order_items,
    "modify_pending_order_payment": modify_pending_order_payment,
    "modify_user_address": modify_user_address,
    "return_delivered_order_items": return_delivered_order_items,
    "exchange_delivered_order_items": exchange_delivered_order_items,
    "transfer_to_human_agents": transfer_to_human_agents,
}
"""Every tool that changes the database, by its schema name."""
