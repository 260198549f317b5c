"""Transactions from the till, without identifiers: what the gateway accepts, and what it refuses.

A transaction is a time, a basket value, an item count, and optionally the till or zone it was
made at and per-category totals. Nothing else is taken. Every field is named in an allow-list;
a field that is not is refused with the field's path, and one that identifies (or could identify)
a person is refused saying so: card numbers or fragments, loyalty or customer ids, names, emails,
phone numbers, addresses, receipt numbers, free text. The string fields that are taken (till,
zone, category names) must be short identifiers, and a value that looks like a card number, an
email address or a phone number is refused there too. A refused batch stores nothing.

Accepted shapes (JSON, ``POST /v1/transactions``)::

    {"batch": "till-2-2026-12-02T10", "transactions": [
        {"t": "2026-12-02T10:04:31", "basket": 23.80, "items": 3, "till": "till-2",
         "categories": {"grocery": 12.3, "household": 11.5}}]}
    {"hours": [{"hour": "2026-12-02T10:00", "transactions": 41, "basket_total": 912.4, "items": 130,
                "zone": "till-area"}]}

``t``: ISO 8601 local time (or with an offset) or epoch seconds. ``batch`` (optional): an opaque
name; a batch sent twice is taken once. The CSV import (``cuecam gateway import-transactions``)
takes the same fields as columns: ``t,basket,items[,till][,zone]`` and ``cat:NAME`` columns.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

MAX_BATCH = 10_000
MAX_CATEGORIES = 32
MAX_BASKET = 1_000_000.0
MAX_ITEMS = 10_000
MAX_CSV_BYTES = 32 * 1024 * 1024
IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")  # till, zone, category, batch: short identifiers
TRANSACTION_FIELDS = ("t", "basket", "items", "till", "zone", "categories")
HOUR_FIELDS = ("hour", "transactions", "basket_total", "items", "till", "zone")

# Field names that identify a person, or link a sale to one (by substring, case and separators ignored).
IDENTIFYING: tuple[tuple[str, str], ...] = (
    ("card", "a payment card number or fragment"), ("pan", "a payment card number"),
    ("last4", "a card number fragment"), ("lastfour", "a card number fragment"), ("iban", "a bank account"),
    ("account", "an account number"), ("bin", "a card number fragment"), ("expiry", "a card's expiry date"),
    ("cvv", "a card security code"), ("token", "a payment or customer token"),
    ("loyalty", "a loyalty id"), ("member", "a member id"), ("customer", "a customer id or name"),
    ("client", "a customer id or name"), ("shopper", "a shopper id"), ("user", "a user id"),
    ("person", "a person"), ("name", "a name"), ("email", "an email address"), ("mail", "an email address"),
    ("phone", "a phone number"), ("mobile", "a phone number"), ("tel", "a phone number"),
    ("address", "an address"), ("street", "an address"), ("postcode", "a postcode"), ("zip", "a postcode"),
    ("birth", "a birth date"), ("dob", "a birth date"), ("age", "an age"), ("gender", "a gender"),
    ("receipt", "a receipt number (linkable to a card payment)"), ("invoice", "an invoice number"),
    ("order", "an order number"), ("cashier", "a staff member"), ("staff", "a staff member"),
    ("employee", "a staff member"), ("operator", "a staff member"), ("signature", "a signature"),
    ("device", "a device id"), ("ip", "an IP address"), ("mac", "a device address"), ("imei", "a phone id"),
    ("note", "free text"), ("comment", "free text"), ("text", "free text"), ("description", "free text"),
    ("memo", "free text"), ("message", "free text"), ("remark", "free text"), ("id", "an identifier"),
)
_CARD = re.compile(r"(?:\d[ -]?){12,19}")
_DIGITS = re.compile(r"\d{6,}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_PHONE = re.compile(r"^\+?[\d ()./-]{7,}$")


class TransactionError(ValueError):
    """A batch refused: ``field`` is the path of the first offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Txn:
    t: float  # epoch seconds
    basket: float
    items: int
    till: str | None = None
    zone: str | None = None
    categories: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HourTotal:
    hour: float  # epoch seconds of the hour's start (local time)
    transactions: int
    basket_total: float
    items: int
    till: str | None = None
    zone: str | None = None


@dataclass(frozen=True)
class Batch:
    transactions: list[Txn]
    hours: list[HourTotal]
    batch: str | None = None


def _norm(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.lower())


def identifying(key: str) -> str | None:
    """What a field name would carry about a person, or None: a word of the list anywhere in the
    name (4 letters or more), or as one of its words (shorter ones: ``id``, ``pan``, ``tel``...)."""
    k = _norm(key)
    words = set(re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", key).lower()))
    for word, what in IDENTIFYING:
        if (len(word) >= 4 and word in k) or word in words:
            return what
    return None


def _refuse_field(path: str, key: str, allowed: tuple[str, ...]) -> TransactionError:
    what = identifying(key)
    if what is not None:
        return TransactionError(path, f"refused: this field would carry {what}, which identifies a person or links "
                                      f"a sale to one; send only {', '.join(allowed)}")
    return TransactionError(path, f"unknown field; a transaction carries only {', '.join(allowed)} (nothing that "
                                  "identifies a person, no free text)")


def _identifier(path: str, v: Any) -> str:
    if not isinstance(v, str):
        raise TransactionError(path, "must be a short identifier (a string)")
    looks = _looks_identifying(v)
    if looks is not None:
        raise TransactionError(path, f"refused: the value looks like {looks}")
    if not IDENT.match(v):
        raise TransactionError(path, "must be a short identifier: 1-32 letters, digits, '.', '_' or '-' (no spaces: "
                                     "no free text)")
    return v


def _looks_identifying(v: str) -> str | None:
    if _EMAIL.search(v):
        return "an email address"
    digits = re.sub(r"\D", "", v)
    if _CARD.search(v) and 12 <= len(digits) <= 19 and _luhn(digits):
        return "a payment card number"
    if _PHONE.match(v) and len(digits) >= 7:
        return "a phone number"
    if _DIGITS.search(v):
        return "a number long enough to be a card fragment, account or customer number"
    return None


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return total % 10 == 0


def _number(path: str, v: Any, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        raise TransactionError(path, "must be a number")
    f = float(v)
    if not 0 <= f <= hi:
        raise TransactionError(path, f"must be between 0 and {hi:g}")
    return f


def _count(path: str, v: Any, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TransactionError(path, "must be a whole number")
    if not 0 <= v <= hi:
        raise TransactionError(path, f"must be between 0 and {hi}")
    return v


def parse_time(path: str, v: Any) -> float:
    """Epoch seconds from an ISO 8601 string (local time unless it has an offset) or a number."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        t = float(v)
    elif isinstance(v, str) and len(v) <= 40:
        try:
            t = datetime.fromisoformat(v.strip().replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise TransactionError(path, f"not a time: {v[:40]!r} (ISO 8601, e.g. 2026-12-02T10:04:31, or epoch "
                                         "seconds)") from None
    else:
        raise TransactionError(path, "must be a time: ISO 8601 or epoch seconds")
    if not (946684800 <= t <= 4102444800):  # 2000..2100
        raise TransactionError(path, "time out of range (years 2000-2100)")
    return t


def _place(path: str, obj: dict[str, Any]) -> tuple[str | None, str | None]:
    till = None if obj.get("till") is None else _identifier(f"{path}.till", obj["till"])
    zone = None if obj.get("zone") is None else _identifier(f"{path}.zone", obj["zone"])
    return till, zone


def _fields(path: str, obj: Any, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict[str, Any]:
    """An entry that is an object with only allowed fields (an identifying one refused as such) and
    every required one."""
    if not isinstance(obj, dict):
        raise TransactionError(path, "must be an object")
    for k in obj:
        if k not in allowed:
            raise _refuse_field(f"{path}.{str(k)[:64]}", str(k), allowed)
    for k in required:
        if k not in obj:
            raise TransactionError(f"{path}.{k}", "required")
    return obj


def parse_transaction(path: str, obj: Any) -> Txn:
    obj = _fields(path, obj, TRANSACTION_FIELDS, ("t", "basket", "items"))
    till, zone = _place(path, obj)
    cats: dict[str, float] = {}
    raw = obj.get("categories")
    if raw is not None:
        if not isinstance(raw, dict) or len(raw) > MAX_CATEGORIES:
            raise TransactionError(f"{path}.categories", f"must be an object of at most {MAX_CATEGORIES} "
                                                         "category: amount pairs")
        for name, amount in raw.items():
            p = f"{path}.categories.{str(name)[:64]}"
            cats[_identifier(p, name)] = _number(p, amount, MAX_BASKET)
    return Txn(parse_time(f"{path}.t", obj["t"]), _number(f"{path}.basket", obj["basket"], MAX_BASKET),
               _count(f"{path}.items", obj["items"], MAX_ITEMS), till, zone, cats)


def parse_hour(path: str, obj: Any) -> HourTotal:
    obj = _fields(path, obj, HOUR_FIELDS, ("hour", "transactions", "basket_total"))
    t = parse_time(f"{path}.hour", obj["hour"])
    start = datetime.fromtimestamp(t).replace(minute=0, second=0, microsecond=0).timestamp()
    till, zone = _place(path, obj)
    return HourTotal(start, _count(f"{path}.transactions", obj["transactions"], 10_000_000),
                     _number(f"{path}.basket_total", obj["basket_total"], 1e10),
                     _count(f"{path}.items", obj.get("items", 0), 100_000_000), till, zone)


def parse_batch(body: Any) -> Batch:
    """A POST /v1/transactions body; TransactionError naming the first bad field."""
    if not isinstance(body, dict):
        raise TransactionError("(body)", 'must be a JSON object: {"transactions": [...]} or {"hours": [...]}')
    for k in body:
        if k not in ("batch", "transactions", "hours"):
            raise _refuse_field(str(k)[:64], str(k), ("batch", "transactions", "hours"))
    batch = None if body.get("batch") is None else _identifier("batch", body["batch"])
    txs, hours = body.get("transactions", []), body.get("hours", [])
    if not isinstance(txs, list) or not isinstance(hours, list):
        raise TransactionError("transactions" if not isinstance(txs, list) else "hours", "must be a list")
    if not txs and not hours:
        raise TransactionError("transactions", "empty: nothing to take")
    if len(txs) + len(hours) > MAX_BATCH:
        raise TransactionError("transactions", f"at most {MAX_BATCH} entries per batch")
    return Batch([parse_transaction(f"transactions[{i}]", o) for i, o in enumerate(txs)],
                 [parse_hour(f"hours[{i}]", o) for i, o in enumerate(hours)], batch)


def parse_csv(path: Path) -> list[Txn]:
    """A till export: header t,basket,items[,till][,zone][,cat:NAME...]; one transaction a row.
    Every row is checked before anything is taken (file:line in the error)."""
    try:
        size = path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise TransactionError(str(path), f"{size} bytes; at most {MAX_CSV_BYTES}")
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise TransactionError(str(path), f"cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise TransactionError(str(path), f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    if not header:
        raise TransactionError(f"{path}:1", "empty file; the first line is the header t,basket,items[,till][,zone]")
    cols: list[tuple[str, str | None]] = []
    for h in header:
        if h.lower().startswith("cat:"):
            cols.append(("categories", h[4:]))
        elif h in TRANSACTION_FIELDS and h != "categories":
            cols.append((h, None))
        else:
            raise _refuse_field(f"{path}:1: column {h[:64]!r}", h, ("t", "basket", "items", "till", "zone", "cat:NAME"))
    for need in ("t", "basket", "items"):
        if (need, None) not in cols:
            raise TransactionError(f"{path}:1", f"the header has no {need!r} column")
    out: list[Txn] = []
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(cols):
            raise TransactionError(f"{path}:{line}", f"{len(row)} fields; the header has {len(cols)}")
        obj: dict[str, Any] = {}
        for (name, cat), raw in zip(cols, row, strict=True):
            v = raw.strip()
            if name == "categories":
                if v:
                    obj.setdefault("categories", {})[cat] = _csv_number(f"{path}:{line}: cat:{cat}", v)
            elif name in ("basket",):
                obj[name] = _csv_number(f"{path}:{line}: {name}", v)
            elif name == "items":
                obj[name] = int(_csv_number(f"{path}:{line}: items", v, whole=True))
            elif v:
                obj[name] = v
        out.append(parse_transaction(f"{path}:{line}", obj))
    return out


def _csv_number(path: str, v: str, whole: bool = False) -> float:
    try:
        f = float(v) if not whole else float(int(v))
    except ValueError:
        raise TransactionError(path, f"not a {'whole ' if whole else ''}number: {v[:40]!r}") from None
    return f
