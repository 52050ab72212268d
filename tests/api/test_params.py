"""Rails-style parameter nesting and the typed getters (pure logic, no server)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from api.errors import ApiError
from api.params import Field, Params, nest, request_body, split_name


def test_split_name() -> None:
    assert split_name("task") == ["task"]
    assert split_name("enrollment[user_id]") == ["enrollment", "user_id"]
    assert split_name("state[]") == ["state", ""]
    assert split_name("a[b][c]") == ["a", "b", "c"]


def test_nest_builds_hashes_and_arrays() -> None:
    pairs = [
        ("enrollment[user_id]", "5"),
        ("enrollment[type]", "TaEnrollment"),
        ("state[]", "active"),
        ("state[]", "invited"),
        ("page", "2"),
        ("weird[][x]", "kept literally"),
    ]
    assert nest(pairs) == {
        "enrollment": {"user_id": "5", "type": "TaEnrollment"},
        "state": ["active", "invited"],
        "page": "2",
        "weird[][x]": "kept literally",
    }


@pytest.mark.parametrize(
    "pairs",
    [
        [("a", "1"), ("a[b]", "2")],
        [("a[b]", "1"), ("a", "2")],
        [("a", "1"), ("a[]", "2")],
        [("", "1")],
        [("[x]", "1")],
    ],
)
def test_nest_refuses_conflicting_or_nameless_parameters(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(ApiError) as raised:
        nest(pairs)
    assert raised.value.status == 400


def test_getters_read_both_form_strings_and_json_values() -> None:
    form = Params(nest([("e[user_id]", "7"), ("flag", "true"), ("when", "2026-11-26T10:00:00")]))
    data = Params({"e": {"user_id": 7}, "flag": True, "when": "2026-11-26T10:00:00+01:00"})
    assert form.integer("e", "user_id") == data.integer("e", "user_id") == 7
    assert form.boolean("flag") is data.boolean("flag") is True
    assert form.moment("when") == dt.datetime(2026, 11, 26, 10, tzinfo=dt.UTC)  # UTC when naive
    assert data.moment("when") == dt.datetime(2026, 11, 26, 9, tzinfo=dt.UTC)
    blank = Params({"e": {"user_id": ""}, "missing": None})
    assert blank.integer("e", "user_id") is None and blank.string("missing") is None


@pytest.mark.parametrize(
    ("data", "read", "message"),
    [
        ({"id": "12x"}, lambda p: p.integer("id"), "must be an integer"),
        ({"id": True}, lambda p: p.integer("id"), "must be an integer"),
        ({"id": str(2**63)}, lambda p: p.integer("id"), "must be an id between"),
        ({"id": "0"}, lambda p: p.integer("id"), "must be an id between"),
        ({"s": "a\x00b"}, lambda p: p.string("s"), "NUL"),
        ({"s": "x" * 256}, lambda p: p.string("s"), "longer than 255"),
        ({"s": "\ud800"}, lambda p: p.string("s"), "UTF-8"),
        ({"s": {"a": "1"}}, lambda p: p.string("s"), "single value"),
        ({"s": "b"}, lambda p: p.string("s", choices=("a",)), "use one of: a"),
        ({"d": "yesterday"}, lambda p: p.moment("d"), "ISO 8601"),
        ({"d": "0001-01-01T00:00:00+05:00"}, lambda p: p.moment("d"), "out of range"),
        ({"b": "maybe"}, lambda p: p.boolean("b"), "true or false"),
        ({"l": [1]}, lambda p: p.strings("l"), "list of strings"),
        ({}, lambda p: p.string("need", required=True), "need is required"),
        ({"s": "a\nb"}, lambda p: p.string("s"), "s must not contain control characters"),
        ({"s": "a\u2029b"}, lambda p: p.strings("s"), "s[] must not contain control"),
        ({"id": "\u0661\u0662"}, lambda p: p.integer("id"), "ASCII digits"),  # Arabic-Indic
        ({"id": "\uff11\uff12"}, lambda p: p.integer("id"), "ASCII digits"),  # fullwidth
        ({"id": "\u00b2"}, lambda p: p.integer("id"), "ASCII digits"),
        ({"id": "1_000"}, lambda p: p.integer("id"), "ASCII digits"),
        ({"id": 2**64}, lambda p: p.integer("id"), "must be an id between"),
        ({"b": "y" * 10_000}, lambda p: p.boolean("b"), "yyy…"),
        ({"s": "z" * 10_000}, lambda p: p.string("s", choices=("a",)), "zzz…"),
    ],
)
def test_getters_refuse_bad_values_by_name(
    data: dict[str, Any], read: Callable[[Params], object], message: str
) -> None:
    with pytest.raises(ApiError) as raised:
        read(Params(data))
    assert raised.value.status == 400 and message in raised.value.message


def test_documented_body_has_flat_form_names_and_nested_json() -> None:
    body = request_body(
        [
            Field("enrollment[user_id]", {"type": "integer"}, "who", required=True),
            Field("enrollment[end_at]", {"type": "string"}, "when"),
        ],
        required=True,
    )
    form = body["content"]["application/x-www-form-urlencoded"]["schema"]
    assert form["required"] == ["enrollment[user_id]"]
    assert form["properties"]["enrollment[end_at]"]["anyOf"][1] == {"type": "string", "const": ""}
    nested = body["content"]["application/json"]["schema"]
    assert nested["required"] == ["enrollment"]
    assert nested["properties"]["enrollment"]["required"] == ["user_id"]
    assert {"type": "null"} in nested["properties"]["enrollment"]["properties"]["end_at"]["anyOf"]


def test_a_message_repeats_a_short_prefix_of_the_value() -> None:
    with pytest.raises(ApiError) as raised:
        Params({"d": "2026-" + "9" * 100_000}).moment("d")
    assert len(raised.value.message) < 200 and raised.value.message.count("9") == 94
    with pytest.raises(ApiError) as raised:
        nest([("a" * 10_000, "1"), ("a" * 10_000 + "[b]", "2")])
    assert len(raised.value.message) < 200
