"""Request parameters the way Rails (and so Canvas) reads them.

Canvas merges the query string, a form-encoded body and a JSON body into one `params` hash, for
every HTTP method, and nests bracketed names: `enrollment[user_id]=5` is `{"enrollment":
{"user_id": "5"}}`, `state[]=active&state[]=invited` is `{"state": ["active", "invited"]}`. Clients
rely on that (canvasapi sends a DELETE's `task` in a form body), so every endpoint reads its
parameters through :class:`Params`, whose typed getters turn a bad value into a 400 that names the
parameter. The same :class:`Field` list documents the endpoint in the OpenAPI document.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.datastructures import UploadFile

from api.errors import bad_request
from models import MAX_ID

# Canvas's string columns are varchar(255).
MAX_STRING = 255
# How much of a client's value an error message repeats: enough to recognise it, never the
# megabyte a client sent (the whole answer would be the value again).
ECHO_LIMIT = 100

_NAME = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SUBKEY = re.compile(r"\[([^\[\]]*)\]")
# ASCII digits only: `\d` and `int()` also take Unicode digits (Arabic-Indic, fullwidth),
# and `int("²")` raises where `"²".isdigit()` is true.
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
ASCII_DIGITS = re.compile(r"[0-9]+")
# Characters no name, login, address or other text parameter may hold: control characters
# (C0, DEL, C1; a line break would split a mail header, a NUL cuts a C string) and Unicode's
# line and paragraph separators, which some readers treat as line breaks too.
_FORBIDDEN_CATEGORIES = ("Cc", "Zl", "Zp")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def split_name(name: str) -> list[str]:
    """`enrollment[user_id]` -> `["enrollment", "user_id"]`; `state[]` -> `["state", ""]`."""
    match = _NAME.fullmatch(name)
    if match is None:
        return [name]
    return [match.group(1), *_SUBKEY.findall(match.group(2))]


def _insert(target: dict[str, Any], name: str, value: Any) -> None:
    if not name or name.startswith("["):
        raise bad_request("a parameter has no name")
    keys = split_name(name)
    is_list = len(keys) > 1 and keys[-1] == ""
    if is_list:
        keys = keys[:-1]
    if "" in keys:
        # No parameter of this API has an empty name or is an array of hashes (`a[][b]`): keep
        # such a pair under its literal name, where nothing reads it, rather than refuse the
        # request for a parameter it does not need.
        keys, is_list = [name], False
    node = target
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise bad_request(f"parameter {display(keys[: i + 1])} is both a value and a hash")
        node = child
    last = keys[-1]
    existing = node.get(last)
    if is_list:
        if existing is None:
            node[last] = [value]
        elif isinstance(existing, list):
            existing.append(value)
        else:
            raise bad_request(f"parameter {display(keys)} is both a value and an array")
    elif isinstance(existing, dict | list):
        raise bad_request(f"parameter {display(keys)} is given twice in different shapes")
    else:
        node[last] = value


def _merge(target: dict[str, Any], source: dict[str, Any]) -> None:
    """Deep-merge a JSON body over what the query string and form gave (the body wins)."""
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def display(path: Sequence[str]) -> str:
    """The Rails name of a parameter path, as the client wrote it (cut to a short prefix: the
    names come from the client too)."""
    head, *rest = path
    return cut(head + "".join(f"[{part}]" for part in rest))


def cut(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text`, or its first `limit` characters and an ellipsis."""
    return text if len(text) <= limit else text[:limit] + "…"


def echo(value: Any) -> str:
    """A client's value as an error message repeats it: its repr, cut to a short prefix."""
    if isinstance(value, str) and len(value) > ECHO_LIMIT:
        value = value[: ECHO_LIMIT + 1]  # repr of a prefix: never of the whole value
    return cut(repr(value))


def is_ascii_integer(text: str) -> bool:
    """Whether `text` is a number written in ASCII digits alone (`"12"`, not `"١٢"` or `"²"`)."""
    return ASCII_DIGITS.fullmatch(text) is not None


def nest(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, value in pairs:
        _insert(data, name, value)
    return data


async def read_params(request: Request) -> Params:
    """FastAPI dependency: the merged parameters of this request."""
    pairs: list[tuple[str, Any]] = list(request.query_params.multi_items())
    body = await request.body()
    json_body: dict[str, Any] | None = None
    if body.strip():
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in FORM_TYPES:
            form = await request.form()
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    raise bad_request(f"parameter {cut(name)}: file uploads are not accepted here")
                pairs.append((name, value))
        elif content_type == "application/json" or content_type.endswith("+json"):
            try:
                parsed = json.loads(body)
            except (ValueError, RecursionError):
                raise bad_request("the JSON body is not valid JSON") from None
            if not isinstance(parsed, dict):
                raise bad_request("the JSON body must be an object")
            json_body = parsed
        else:
            raise bad_request(
                f"Content-Type {cut(content_type) or '(none)'} is not supported: send "
                "application/json or application/x-www-form-urlencoded"
            )
    data = nest(pairs)
    if json_body is not None:
        _merge(data, json_body)
    return Params(data)


class Params:
    """Typed access to the merged parameters; every getter refuses a bad value with a 400."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def raw(self, *path: str) -> Any:
        node: Any = self.data
        for key in path:
            if not isinstance(node, dict):
                raise bad_request(f"parameter {display(path[:-1])} must be a hash")
            node = node.get(key)
            if node is None:
                return None
        return node

    def _scalar(self, path: Sequence[str], required: bool) -> Any:
        value = self.raw(*path)
        if isinstance(value, dict | list):
            raise bad_request(f"parameter {display(path)} must be a single value")
        if value is None or value == "":
            if required:
                raise bad_request(f"parameter {display(path)} is required")
            return None
        return value

    def string(
        self,
        *path: str,
        required: bool = False,
        choices: Sequence[str] | None = None,
        max_length: int = MAX_STRING,
    ) -> str | None:
        value = self._scalar(path, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise bad_request(f"parameter {display(path)} must be a string")
        return check_string(display(path), value, choices=choices, max_length=max_length)

    def integer(self, *path: str, required: bool = False) -> int | None:
        value = self._scalar(path, required)
        if value is None:
            return None
        return parse_integer(display(path), value)

    def boolean(self, *path: str) -> bool | None:
        value = self._scalar(path, False)
        if value is None:
            return None
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise bad_request(f"parameter {display(path)} must be true or false, not {echo(value)}")

    def moment(self, *path: str, required: bool = False) -> dt.datetime | None:
        value = self._scalar(path, required)
        if value is None:
            return None
        return parse_moment(display(path), value)

    def strings(self, *path: str, choices: Sequence[str] | None = None) -> list[str] | None:
        """A list parameter (`state[]=a&state[]=b`); a single `state=a` counts as one item."""
        value = self.raw(*path)
        if value is None or value == "":
            return None
        items = value if isinstance(value, list) else [value]
        name = display(path) + "[]"
        result = []
        for item in items:
            if not isinstance(item, str):
                raise bad_request(f"parameter {name} must be a list of strings")
            result.append(check_string(name, item, choices=choices))
        return result


def check_string(
    name: str, value: str, *, choices: Sequence[str] | None = None, max_length: int = MAX_STRING
) -> str:
    if choices is not None and value not in choices:
        raise bad_request(f"{name} {echo(value)} is not accepted; use one of: {', '.join(choices)}")
    if len(value) > max_length:
        raise bad_request(f"{name} is longer than {max_length} characters")
    if "\x00" in value:
        raise bad_request(f"{name} must not contain NUL characters")
    if any(unicodedata.category(char) in _FORBIDDEN_CATEGORIES for char in value):
        raise bad_request(f"{name} must not contain control characters or line breaks")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{name} is not valid UTF-8 text") from None
    return value


def parse_integer(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise bad_request(f"{name} must be an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        raise bad_request(f"{name} must be an integer in ASCII digits, not {echo(value)}")
    if not 1 <= number <= MAX_ID:
        raise bad_request(f"{name} must be an id between 1 and {MAX_ID}")
    return number


def parse_moment(name: str, value: Any) -> dt.datetime:
    """An ISO 8601 date-time; one without an offset is read as UTC, as Canvas reads them."""
    if not isinstance(value, str):
        raise bad_request(f"{name} must be an ISO 8601 date-time string")
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise bad_request(
            f"{name} {echo(value)} is not an ISO 8601 date-time (e.g. 2026-11-26T14:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError:
        raise bad_request(f"{name} {echo(value)} is out of range") from None


# --------------------------------------------------------------------------------------------
# Documentation: the same parameters, described for the OpenAPI document


@dataclasses.dataclass(frozen=True)
class Field:
    """One documented parameter, by its Rails name (`enrollment[user_id]`, `state[]`)."""

    name: str
    schema: dict[str, Any]
    description: str
    required: bool = False


def integer_schema() -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": MAX_ID}


def string_schema(choices: Sequence[str] | None = None) -> dict[str, Any]:
    if choices is not None:
        return {"type": "string", "enum": list(choices)}
    return {"type": "string", "maxLength": MAX_STRING}


DATE_TIME = {"type": "string", "format": "date-time"}
BOOLEAN = {"type": "boolean"}


def value_schema(field: Field, *, nullable: bool) -> dict[str, Any]:
    """The schema of a field's value as read: an optional field may also be blank (`""`, as a
    form sends an empty input) or, in JSON, null; both mean "not given", as in Rails."""
    if field.required or field.schema.get("type") == "array":
        if field.schema.get("type") == "string" and "enum" not in field.schema:
            return {**field.schema, "minLength": 1}
        return field.schema
    options: list[dict[str, Any]] = [field.schema, {"type": "string", "const": ""}]
    if nullable:
        options.append({"type": "null"})
    return {"anyOf": options}


def query_parameters(fields: Sequence[Field]) -> list[dict[str, Any]]:
    parameters = []
    for field in fields:
        parameter: dict[str, Any] = {
            "name": field.name,
            "in": "query",
            "required": field.required,
            "description": field.description,
            "schema": value_schema(field, nullable=False),
        }
        if field.schema.get("type") == "array":
            parameter.update(style="form", explode=True)
        parameters.append(parameter)
    return parameters


def request_body(fields: Sequence[Field], *, required: bool) -> dict[str, Any]:
    """The body, form-encoded (flat Rails names) or JSON (the same names as nested objects)."""
    form: dict[str, Any] = {"type": "object", "properties": {}}
    form_required = [field.name for field in fields if field.required]
    if form_required:
        form["required"] = form_required
    nested: dict[str, Any] = {"type": "object", "properties": {}}
    for field in fields:
        form["properties"][field.name] = {
            **value_schema(field, nullable=False),
            "description": field.description,
        }
        keys = [key for key in split_name(field.name) if key]
        node = nested
        for key in keys[:-1]:
            node = node["properties"].setdefault(key, {"type": "object", "properties": {}})
        node["properties"][keys[-1]] = {
            **value_schema(field, nullable=True),
            "description": field.description,
        }
        if field.required:
            node.setdefault("required", []).append(keys[-1])
            # Every enclosing hash is then required too.
            parent = nested
            for key in keys[:-1]:
                if key not in parent.setdefault("required", []):
                    parent["required"].append(key)
                parent = parent["properties"][key]
    return {
        "required": required,
        "content": {
            "application/x-www-form-urlencoded": {"schema": form},
            "application/json": {"schema": _nullable_hashes(nested)},
        },
    }


def _nullable_hashes(node: dict[str, Any]) -> dict[str, Any]:
    """In JSON an optional hash may be null too (`{"course": null}` gives no course fields)."""
    properties = node.get("properties", {})
    for key, child in properties.items():
        if child.get("type") == "object":
            child = _nullable_hashes(child)
            if key not in node.get("required", []):
                child = {"anyOf": [child, {"type": "null"}]}
            properties[key] = child
    return node


def documented(
    *,
    query: Sequence[Field] = (),
    body: Sequence[Field] = (),
    body_required: bool = False,
) -> dict[str, Any]:
    """`openapi_extra` for a route whose parameters are read with :func:`read_params`."""
    extra: dict[str, Any] = {}
    if query:
        extra["parameters"] = query_parameters(query)
    if body:
        extra["requestBody"] = request_body(body, required=body_required)
    return extra


# The merged parameters of a request, as a route dependency (one definition for every router).
ParamsDep = Annotated[Params, Depends(read_params)]
