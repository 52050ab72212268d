"""Property tests of the Rails-style parameter parser (api/params.py), with Hypothesis.

Whatever a client sends (any query string, form or JSON body, well-formed or not, in any
encoding), reading the parameters and then any typed getter ends in a value or in a 400: never in
another exception (which the API would answer with a 500). And what is well-formed reads as Rails
reads it: bracketed names nest, `[]` makes arrays, a JSON body merges over the query string.
"""

from __future__ import annotations

import asyncio
import json
import string
import urllib.parse
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.exceptions import HTTPException
from starlette.requests import Request

from api.errors import ApiError, error_response
from api.pagination import requested_page
from api.params import Params, nest, read_params

EXAMPLES = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,  # the default suite runs the same cases every time
    suppress_health_check=[HealthCheck.too_slow],
)

# Names made of the characters that matter to the parser, and some that do not.
NAME_CHARS = "ab_[]%=&+;. \x00\n\u00e9\ud800"
names = st.text(alphabet=NAME_CHARS, max_size=12) | st.sampled_from(
    ["page", "per_page", "id", "a", "a[]", "a[b]", "a[b][]", "a[][b]"]
)
values = st.text(max_size=20) | st.sampled_from(
    ["", "1", "-1", str(2**63), "true", "²", "①", "\u0661\u0662", "\uff11", " 7 ", "1_0", "0"]
)
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/vnd.api+json",
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=latin-1",
        "multipart/form-data",
        "multipart/form-data; boundary=xyz",
        "text/plain",
        "application/json; charset=utf-16",
    ]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet=NAME_CHARS, max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def raw_pairs(pairs: list[tuple[str, str]]) -> bytes:
    """A query string or form body as a client could write it, unencodable text included."""
    parts = []
    for name, value in pairs:
        encoded = [
            urllib.parse.quote_plus(s.encode("utf-8", "surrogatepass")) for s in (name, value)
        ]
        parts.append("=".join(encoded))
    return "&".join(parts).encode("ascii")


# Byte strings as they come off the wire: percent-escapes that decode to nothing valid, bare
# non-UTF-8 bytes, brackets and separators.
wire_bytes = st.binary(max_size=40) | st.lists(
    st.sampled_from(
        [b"a", b"[", b"]", b"[]", b"=", b"&", b"%", b"%zz", b"%ff", b"%c3", b"\xff", b"+"]
    ),
    max_size=20,
).map(b"".join)


def read(query: bytes, body: bytes, content_type: str | None) -> Params:
    """`read_params` on a request as the ASGI server hands it over."""
    headers = [(b"content-type", content_type.encode("latin-1"))] if content_type else []
    headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "query_string": query,
        "headers": headers,
        "app": None,  # inside an app, Starlette answers a bad form with a 400
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return asyncio.run(read_params(Request(scope, receive)))


def is_400(error: BaseException) -> bool:
    if isinstance(error, ApiError):
        # The message must render: a lone surrogate in it would fail the JSON encoder.
        assert error_response(error.status, [error.message]).body
        return error.status == 400
    return isinstance(error, HTTPException) and error.status_code == 400


def exercise(params: Params, paths: list[tuple[str, ...]]) -> None:
    """Every getter on every path, and the page: a value or a 400. A number is only ever read
    from ASCII digits (or a JSON number)."""
    for path in paths:
        for getter in (
            params.string,
            params.integer,
            params.boolean,
            params.moment,
            params.strings,
            params.raw,
        ):
            try:
                value = getter(*path)
            except ApiError as error:
                assert is_400(error), error.message
                continue
            if getter == params.integer and value is not None:
                raw = params.raw(*path)
                assert isinstance(raw, int) or raw.strip().lstrip("+").isascii(), raw
    try:
        requested_page(params)
    except ApiError as error:
        assert is_400(error), error.message


def paths_of(data: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, child in data.items():
            found += paths_of(child, (*prefix, str(key)))
    return [*found, (*prefix, "missing")]


@EXAMPLES
@given(query=wire_bytes, body=wire_bytes | st.binary(max_size=60), content_type=content_types)
def test_any_bytes_read_as_parameters_or_a_400(
    query: bytes, body: bytes, content_type: str | None
) -> None:
    try:
        params = read(query, body, content_type)
    except (ApiError, HTTPException) as error:
        assert is_400(error)
        return
    exercise(params, paths_of(params.data))


@EXAMPLES
@given(
    pairs=st.lists(st.tuples(names, values), max_size=8),
    body=st.one_of(
        st.lists(st.tuples(names, values), max_size=6).map(lambda p: ("form", p)),
        json_values.map(lambda v: ("json", v)),
    ),
)
def test_any_pairs_and_json_read_as_parameters_or_a_400(
    pairs: list[tuple[str, str]], body: tuple[str, Any]
) -> None:
    kind, content = body
    if kind == "form":
        raw, content_type = raw_pairs(content), "application/x-www-form-urlencoded"
    else:
        raw, content_type = json.dumps(content).encode(), "application/json"
    try:
        params = read(raw_pairs(pairs), raw, content_type)
    except (ApiError, HTTPException) as error:
        assert is_400(error)
        return
    exercise(params, paths_of(params.data))


def test_deep_nesting_is_a_400_not_a_crash() -> None:
    for body in (b"[" * 100_000, b'{"a":' * 100_000):
        with pytest.raises(ApiError) as raised:
            read(b"", body, "application/json")
        assert raised.value.status == 400
    deep = "a" + "[b]" * 5_000
    assert read(f"{deep}=1".encode(), b"", None).raw(*(["a"] + ["b"] * 5_000)) == "1"


# Well-formed parameters: plain names, nested hashes of them and arrays of strings.
keys = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=6)
leaves = st.text(alphabet=string.ascii_letters + string.digits + " -é", max_size=8)
trees: st.SearchStrategy[dict[str, Any]] = st.recursive(
    st.dictionaries(keys, leaves | st.lists(leaves, min_size=1, max_size=3), max_size=3),
    lambda children: st.dictionaries(keys, children, min_size=1, max_size=3),
    max_leaves=12,
)


def flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """A nested hash as the Rails pairs a form would send."""
    pairs: list[tuple[str, str]] = []
    for key, value in tree.items():
        name = f"{prefix}[{key}]" if prefix else key
        if isinstance(value, dict):
            pairs += flatten(value, name)
        elif isinstance(value, list):
            pairs += [(f"{name}[]", item) for item in value]
        else:
            pairs.append((name, value))
    return pairs


def without_empty_hashes(tree: dict[str, Any]) -> dict[str, Any]:
    """What a form can carry: an empty hash has no pair at all."""
    result = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = without_empty_hashes(value)
            if not value:
                continue
        result[key] = value
    return result


@EXAMPLES
@given(tree=trees)
def test_bracketed_names_nest_back_into_the_hash(tree: dict[str, Any]) -> None:
    pairs = flatten(tree)
    assert nest(pairs) == without_empty_hashes(tree)
    assert read(raw_pairs(pairs), b"", None).data == without_empty_hashes(tree)
    form = read(b"", raw_pairs(pairs), "application/x-www-form-urlencoded")
    assert form.data == without_empty_hashes(tree)


def leaves_of(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, dict) and tree:
        found: dict[tuple[str, ...], Any] = {}
        for key, value in tree.items():
            found.update(leaves_of(value, (*prefix, key)))
        return found
    return {prefix: tree}


def overridden(body: dict[str, Any], path: tuple[str, ...]) -> bool:
    """Whether the body replaces the query string's value at `path`: it has a value there, or
    a value that is not a hash on the way to it (Rails's `deep_merge`)."""
    node: Any = body
    for key in path:
        if not isinstance(node, dict):
            return True
        if key not in node:
            return False
        node = node[key]
    return True


@EXAMPLES
@given(query=trees, body=trees)
def test_a_json_body_merges_over_the_query_string_and_wins(
    query: dict[str, Any], body: dict[str, Any]
) -> None:
    params = read(raw_pairs(flatten(query)), json.dumps(body).encode(), "application/json")
    for path, value in leaves_of(body).items():  # the body's values, as sent
        if path and value != {}:  # an empty hash adds nothing to the query's hash
            assert params.raw(*path) == value
    for path, value in leaves_of(without_empty_hashes(query)).items():  # the rest is kept
        if path and not overridden(body, path):
            assert params.raw(*path) == value
