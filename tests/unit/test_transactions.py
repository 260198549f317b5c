"""Transactions without identifiers: what is taken, and a corpus of what must be refused, each
refusal naming its field."""

from __future__ import annotations

import pytest

from host_tools.gateway.transactions import TransactionError, parse_batch, parse_csv

OK = {"t": "2026-12-02T10:04:31", "basket": 23.8, "items": 3}

# (extra fields of one transaction, the field path the refusal must name)
IDENTIFYING = [
    ({"card_number": "4111 1111 1111 1111"}, "transactions[0].card_number"),
    ({"pan": "4111111111111111"}, "transactions[0].pan"),
    ({"masked_pan": "411111******1111"}, "transactions[0].masked_pan"),
    ({"card_last4": "1111"}, "transactions[0].card_last4"),
    ({"last_four": "1111"}, "transactions[0].last_four"),
    ({"cardBin": "411111"}, "transactions[0].cardBin"),
    ({"loyalty_id": "LY-99812"}, "transactions[0].loyalty_id"),
    ({"loyaltyCard": "99812"}, "transactions[0].loyaltyCard"),
    ({"member_no": "12345"}, "transactions[0].member_no"),
    ({"customer_id": 8812}, "transactions[0].customer_id"),
    ({"customerId": "c-8812"}, "transactions[0].customerId"),
    ({"customer": {"name": "Ann"}}, "transactions[0].customer"),
    ({"client_ref": "x"}, "transactions[0].client_ref"),
    ({"name": "Ann Smith"}, "transactions[0].name"),
    ({"first_name": "Ann"}, "transactions[0].first_name"),
    ({"surname": "Smith"}, "transactions[0].surname"),
    ({"email": "ann@example.com"}, "transactions[0].email"),
    ({"e-mail": "ann@example.com"}, "transactions[0].e-mail"),
    ({"phone": "+44 20 7946 0958"}, "transactions[0].phone"),
    ({"mobile": "07700900123"}, "transactions[0].mobile"),
    ({"tel": "0123456789"}, "transactions[0].tel"),
    ({"address": "1 High St"}, "transactions[0].address"),
    ({"postcode": "SW1A 1AA"}, "transactions[0].postcode"),
    ({"date_of_birth": "1980-01-01"}, "transactions[0].date_of_birth"),
    ({"receipt_no": "R-0001234"}, "transactions[0].receipt_no"),
    ({"order_id": "o-1"}, "transactions[0].order_id"),
    ({"cashier": "Bob"}, "transactions[0].cashier"),
    ({"note": "regular, asked for Ann"}, "transactions[0].note"),
    ({"comment": "nice lady"}, "transactions[0].comment"),
    ({"description": "free text"}, "transactions[0].description"),
    ({"id": "tx-1"}, "transactions[0].id"),
    ({"payment_token": "tok_123"}, "transactions[0].payment_token"),
    ({"iban": "DE89370400440532013000"}, "transactions[0].iban"),
    ({"colour": "red"}, "transactions[0].colour"),  # unknown: refused too (an allow-list)
    # identifying values in the fields that are taken
    ({"till": "ann@example.com"}, "transactions[0].till"),
    ({"till": "4111111111111111"}, "transactions[0].till"),
    ({"zone": "+44 20 7946 0958"}, "transactions[0].zone"),
    ({"zone": "Ann Smith"}, "transactions[0].zone"),  # free text: no spaces
    ({"zone": "cust-00991234"}, "transactions[0].zone"),
    ({"categories": {"ann@example.com": 3.0}}, "transactions[0].categories.ann@example.com"),
    ({"categories": {"4111111111111111": 3.0}}, "transactions[0].categories.4111111111111111"),
    ({"categories": {"a note about her": 3.0}}, "transactions[0].categories.a note about her"),
]


@pytest.mark.parametrize(("extra", "field"), IDENTIFYING, ids=[f for _, f in IDENTIFYING])
def test_identifying_fields_are_refused_naming_the_field(extra, field):
    with pytest.raises(TransactionError) as e:
        parse_batch({"transactions": [{**OK, **extra}, OK]})
    assert e.value.field == field and str(e.value).startswith(field)
    with pytest.raises(TransactionError) as e:  # wherever it is in the batch
        parse_batch({"transactions": [OK, OK, {**OK, **extra}]})
    assert e.value.field == field.replace("transactions[0]", "transactions[2]")


@pytest.mark.parametrize(("key", "word"), [("card_number", "card"), ("loyalty_id", "loyalty"), ("email", "email"),
                                           ("phone", "phone"), ("customer_id", "customer"), ("name", "name"),
                                           ("note", "free text")])
def test_a_refusal_says_why(key, word):
    with pytest.raises(TransactionError) as e:
        parse_batch({"transactions": [{**OK, key: "x"}]})
    assert "identifies a person" in e.value.message and word in e.value.message


def test_batch_level_identifiers_are_refused():
    with pytest.raises(TransactionError) as e:
        parse_batch({"transactions": [OK], "customer": "ann"})
    assert e.value.field == "customer"
    with pytest.raises(TransactionError) as e:
        parse_batch({"hours": [{"hour": "2026-12-02T10:00", "transactions": 4, "basket_total": 80, "email": "a@b.c"}]})
    assert e.value.field == "hours[0].email"


def test_what_is_taken():
    b = parse_batch({"batch": "till-2-10h", "transactions": [
        {"t": "2026-12-02T10:04:31", "basket": 23.8, "items": 3, "till": "till-2",
         "categories": {"grocery": 12.3, "household": 11.5}},
        {"t": 1764669871, "basket": 0, "items": 0, "zone": "till-area"}],
        "hours": [{"hour": "2026-12-02T09:30", "transactions": 41, "basket_total": 912.4, "items": 130}]})
    assert b.batch == "till-2-10h" and len(b.transactions) == 2
    assert b.transactions[0].categories == {"grocery": 12.3, "household": 11.5} and b.transactions[0].till == "till-2"
    assert b.transactions[1].zone == "till-area" and b.transactions[1].t == 1764669871.0
    assert b.hours[0].transactions == 41
    from datetime import datetime
    assert datetime.fromtimestamp(b.hours[0].hour).strftime("%H:%M") == "09:00"  # the hour it is in


@pytest.mark.parametrize(("tx", "field"), [
    ({"basket": 1, "items": 1}, "transactions[0].t"),
    ({"t": "yesterday", "basket": 1, "items": 1}, "transactions[0].t"),
    ({"t": "1990-01-01T00:00", "basket": 1, "items": 1}, "transactions[0].t"),
    ({"t": OK["t"], "basket": -1, "items": 1}, "transactions[0].basket"),
    ({"t": OK["t"], "basket": "12", "items": 1}, "transactions[0].basket"),
    ({"t": OK["t"], "basket": float("nan"), "items": 1}, "transactions[0].basket"),
    ({"t": OK["t"], "basket": 1, "items": 1.5}, "transactions[0].items"),
    ({"t": OK["t"], "basket": 1, "items": True}, "transactions[0].items"),
    ({"t": OK["t"], "basket": 1, "items": 1, "categories": [1]}, "transactions[0].categories"),
])
def test_bad_values_are_refused(tx, field):
    with pytest.raises(TransactionError) as e:
        parse_batch({"transactions": [tx]})
    assert e.value.field == field


def test_empty_and_oversized_batches():
    for body in ({}, {"transactions": []}, [], "x", {"transactions": {}}):
        with pytest.raises(TransactionError):
            parse_batch(body)
    with pytest.raises(TransactionError, match="at most"):
        parse_batch({"transactions": [OK] * 10_001})


def test_csv_import(tmp_path):
    f = tmp_path / "till.csv"
    f.write_text("t,basket,items,till,cat:grocery,cat:household\n2026-12-02T10:04:31,23.80,3,till-2,12.3,11.5\n"
                 "2026-12-02T10:07:02,5.00,1,till-1,5.0,\n")
    txs = parse_csv(f)
    assert [t.basket for t in txs] == [23.8, 5.0] and txs[1].categories == {"grocery": 5.0}
    bad = tmp_path / "bad.csv"
    bad.write_text("t,basket,items,loyalty_card\n2026-12-02T10:04:31,23.80,3,998811\n")
    with pytest.raises(TransactionError) as e:
        parse_csv(bad)
    assert "loyalty_card" in e.value.field and "identifies a person" in e.value.message
    bad.write_text("t,basket,items,till\n2026-12-02T10:04:31,23.80,3,till-2\n2026-12-02T10:05:00,x,1,till-2\n")
    with pytest.raises(TransactionError) as e:
        parse_csv(bad)
    assert e.value.field == f"{bad}:3: basket"
    bad.write_text("t,basket,items,till\n2026-12-02T10:04:31,23.80,3,ann@example.com\n")
    with pytest.raises(TransactionError, match="email"):
        parse_csv(bad)
