"""The one rule for every id the service takes (user, item, category, profile and context values).

An id is a JSON integer in the signed 64-bit range, or a non-empty string of at most 256
characters. Nothing is coerced: ``1`` and ``"1"`` are different ids, exactly as they are different
keys of a training vocabulary, and ``true`` or ``1.5`` is no id at all. ``1.0`` is the integer 1,
as JSON Schema defines an integer (the published schema says "integer", and a client's JSON
library may write whole numbers that way). Checked by pydantic-core in one pass over the body, so
a few hundred candidates cost no Python per value.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, StringConstraints
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
MAX_STR_LEN = 256
ID_RULE = (
    f"must be an integer from {INT_MIN} to {INT_MAX} or a non-empty string of at most {MAX_STR_LEN} "
    "characters"
)
INT_ID_SCHEMA: dict[str, Any] = {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX}
STR_ID_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_STR_LEN}
ANY_ID_SCHEMA: dict[str, Any] = {"anyOf": [INT_ID_SCHEMA, STR_ID_SCHEMA]}


def is_id(v: Any) -> bool:
    """The id rule on a decoded JSON value (the API checks it with ``RawId``)."""
    return (type(v) is int and INT_MIN <= v <= INT_MAX) or (type(v) is str and 0 < len(v) <= MAX_STR_LEN)


def _whole_float(ge: int) -> CoreSchema:
    """A JSON float with no fraction (``3.0``), as the integer it is. Tried only after the strict
    branches, so integer and string ids never reach this Python function; and a JSON integer out
    of range never reaches it as a float, which would round it into range."""

    def whole(value: Any) -> int:
        if type(value) is float and value.is_integer() and ge <= value <= INT_MAX:
            return int(value)
        raise ValueError("not a whole number in range")  # the union's own message replaces it

    return core_schema.no_info_plain_validator_function(whole)


def integer_schema(ge: int = INT_MIN) -> CoreSchema:
    """A JSON integer from ``ge`` to INT_MAX; a whole float such as ``3.0`` is the integer 3."""
    return core_schema.union_schema(
        [core_schema.int_schema(strict=True, ge=ge, le=INT_MAX), _whole_float(ge)],
        mode="left_to_right",
        custom_error_type="integer_type",
        custom_error_message=f"must be an integer from {ge} to {INT_MAX}",
    )


class WholeNumber:
    """``Annotated[int, WholeNumber(ge=1)]``: a count or a time, by the same integer rule as ids."""

    def __init__(self, ge: int):
        self.ge = ge

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return integer_schema(self.ge)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "integer", "minimum": self.ge, "maximum": INT_MAX}


class _IdRule:
    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.union_schema(
            [
                core_schema.int_schema(strict=True, ge=INT_MIN, le=INT_MAX),
                core_schema.str_schema(strict=True, min_length=1, max_length=MAX_STR_LEN),
                _whole_float(INT_MIN),
            ],
            mode="left_to_right",
            # One error at the field itself, not one per union member ("int", "str" are no fields).
            custom_error_type="id_type",
            custom_error_message=ID_RULE,
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return dict(ANY_ID_SCHEMA)


RawId = Annotated[int | str, _IdRule()]


# A request id ties an answer's impressions to the clicks they earn (body field or X-Request-Id):
# printable ASCII without spaces, as a header value can carry it.
REQUEST_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"
RequestId = Annotated[str, StringConstraints(pattern=REQUEST_ID_PATTERN)]
