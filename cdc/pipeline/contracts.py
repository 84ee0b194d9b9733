"""Event contract registry: each payload checked against its type's model (payloads.py).

A payload that fails its model is a per-event failure (retried, then dead-lettered).
Unknown event types pass by default; `unknown_events="dead_letter"` rejects them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, cast

import orjson
from pydantic import ValidationError
from pydantic_core import CoreConfig, SchemaValidator, core_schema

from cdc.errors import EventError, EventTooLarge
from cdc.pipeline.payloads import DEFAULT_CONTRACTS, Contract


class _Number(str):
    """A JSON number kept as the text PostgreSQL wrote (jsonb keeps 1.50 as 1.50)."""


def key_text(key: Any, text: str) -> str:
    """Return a parsed idempotency key as `payload->>'idempotency_key'` would ("" for none)."""
    if key is None or isinstance(key, str):
        return key or ""
    return jsonb_text(_raw_value(text))


def _raw_value(text: str) -> Any:
    """Return the payload's idempotency_key parsed with its numbers kept as written."""
    parsed = json.loads(text, parse_float=_Number, parse_int=_Number)
    return parsed["idempotency_key"]


def jsonb_text(value: Any) -> str:
    """Return `value` as PostgreSQL's `->>` prints a non-string jsonb value ({"a": 1}, true)."""
    if isinstance(value, _Number):
        return str(value)
    if value is True or value is False or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    return "{" + ", ".join(
        f"{json.dumps(k, ensure_ascii=False)}: {jsonb_text(v)}" for k, v in value.items()
    ) + "}"


class Registry:
    """Validate payloads against the model registered for their event type."""

    def __init__(
        self,
        contracts: Mapping[str, type[Contract]] = DEFAULT_CONTRACTS,
        *,
        unknown: str = "pass",
    ) -> None:
        self._contracts = dict(contracts)
        self._reject_unknown = unknown == "dead_letter"
        # pydantic-core's validators, called directly on the hot path
        self._json = {t: m.__pydantic_validator__.validate_json for t, m in self._contracts.items()}
        # Faster stand-ins for the models that allow one (see _lean_validator)
        lean = {t: _lean_validator(m) for t, m in self._contracts.items()}
        self._lean = {t: v for t, v in lean.items() if v is not None}

    def validate(self, event_type: str, payload: Any) -> None:
        """Raise EventError when `payload` breaks the contract of `event_type`."""
        model = self._contracts.get(event_type)
        if model is None:
            if self._reject_unknown:
                raise EventError(f"no contract registered for event type {event_type}")
            return
        if not isinstance(payload, dict):
            raise EventError(f"{event_type}: payload must be a JSON object")
        try:
            model.model_validate(payload)
        except ValidationError as e:
            raise _broken(event_type, e) from None

    def validate_json(self, event_type: str, text: str) -> str:
        """Validate a JSON payload in one pass; return its idempotency key ("" if none)."""
        lean = self._lean.get(event_type)
        if lean is not None:
            try:
                key: str | None = lean(text).get("idempotency_key")
            except ValidationError:
                pass  # the model's own validator words the error, below
            else:
                return key or ""
        validate = self._json.get(event_type)
        if validate is None:
            if self._reject_unknown:
                raise EventError(f"no contract registered for event type {event_type}")
            if '"idempotency_key"' not in text:
                return ""
            try:
                payload = orjson.loads(text)
            except orjson.JSONDecodeError as e:
                raise EventError(f"payload is not JSON: {e}") from None
            key = payload.get("idempotency_key") if isinstance(payload, dict) else None
            return key_text(key, text)
        try:
            obj: Contract = validate(text)
        except ValidationError as e:
            raise _broken(event_type, e) from None
        return obj.idempotency_key or ""

    def known(self) -> list[str]:
        """Return the registered event types."""
        return sorted(self._contracts)


def check_event(
    registry: Registry, event_type: str, payload: str, max_bytes: int | None
) -> str:
    """Check a JSON payload's size, then its contract; return its idempotency key ("" if none).

    The one check, with one wording, for the relay, a DLQ replay and producers (emit):
    raise EventTooLarge over `max_bytes` (None: no limit), EventError on a broken contract.
    """
    # UTF-8 takes at most 4 bytes a character: encode only when it could matter.
    if max_bytes is not None and len(payload) * 4 > max_bytes:
        size = len(payload.encode())
        if size > max_bytes:
            raise EventTooLarge(
                f"{event_type}: payload is {size} bytes, over the {max_bytes}-byte limit"
                " (CDC_MAX_EVENT_BYTES)", size=size,
            )
    return registry.validate_json(event_type, payload)


_MODEL_KEYS = {"type", "cls", "schema", "config", "custom_init", "root_model", "ref", "metadata"}
_FIELDS_KEYS = {"type", "fields", "model_name", "computed_fields"}
_WRAPPER_KEYS = {"type", "schema", "default", "metadata"}
_LEAVES = {"str", "int", "float", "bool"}


def _lean_validator(model: type[Contract]) -> Callable[[str], dict[str, Any]] | None:
    """Return a validator of `model`'s payloads that builds a dict, not a model; or None.

    Building the instance is about half of a small payload's validation. Only for models
    of plain fields (str, int, float, bool; optional; constant defaults) and no validators:
    a typed dict of the same field schemas and config then accepts exactly the same
    payloads. Failures are re-run through the model, which words the error.
    """
    schema = cast(dict[str, Any], model.__pydantic_core_schema__)
    inner: dict[str, Any] = schema.get("schema", {})
    config = cast(CoreConfig, schema.get("config", {}))
    if (
        schema.get("type") != "model" or schema.keys() - _MODEL_KEYS
        or schema.get("custom_init") or schema.get("root_model")
        or inner.get("type") != "model-fields" or inner.keys() - _FIELDS_KEYS
        or config.get("extra_fields_behavior", "ignore") not in ("allow", "ignore")
    ):
        return None
    fields = {}
    for name, field in inner["fields"].items():
        if field.keys() - {"type", "schema", "metadata"} or not _plain(field["schema"]):
            return None
        # As in the model: a field is required unless its `default` schema supplies a value.
        required = field["schema"]["type"] != "default"
        fields[name] = core_schema.typed_dict_field(field["schema"], required=required)
    # The model's config (str_max_length, strict, ...) applies to its fields: pass it on.
    lean = core_schema.typed_dict_schema(fields, extra_behavior="ignore", config=config)
    validate: Callable[[str], dict[str, Any]] = SchemaValidator(lean).validate_json
    return validate


def _plain(schema: dict[str, Any]) -> bool:
    """Tell whether a field schema validates the same outside its model."""
    if schema.get("type") in ("nullable", "default"):
        return not schema.keys() - _WRAPPER_KEYS and _plain(schema["schema"])
    return schema.get("type") in _LEAVES


def _broken(event_type: str, e: ValidationError) -> EventError:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    if first["type"] == "model_type":
        return EventError(f"{event_type}: payload must be a JSON object")
    return EventError(
        f"{event_type} breaks its contract: {where}: {first['msg']}"
        f" ({e.error_count()} error(s))"
    )
