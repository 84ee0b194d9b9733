"""The lean validator accepts and rejects exactly what each pydantic contract does, and
idempotency keys read as PostgreSQL's ->> prints them (property tests, hypothesis).

`make test` runs 150 examples per contract; `make check` sets HYPOTHESIS_PROFILE=quick
(30) so the unit tests stay a few seconds.
"""

from __future__ import annotations

import json
import os
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cdc.pipeline.contracts import _lean_validator, key_text
from cdc.pipeline.payloads import DEFAULT_CONTRACTS, Contract

EXAMPLES = {"thorough": 150, "quick": 30}[os.environ.get("HYPOTHESIS_PROFILE", "thorough")]
LEAN = {t: (m, v) for t, m in DEFAULT_CONTRACTS.items() if (v := _lean_validator(m))}
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**40, 2**40), st.text(max_size=8),
    st.floats(allow_nan=False, allow_infinity=False), st.lists(st.integers(-9, 9), max_size=2),
)


def _payload(model: type[Contract]) -> st.SearchStrategy[dict[str, Any]]:
    names = [*model.model_fields, "extra_a", "idempotency_key"]
    return st.dictionaries(st.sampled_from(names), scalars, max_size=len(names))


def test_most_contracts_have_a_lean_validator() -> None:
    assert len(LEAN) >= 5, sorted(LEAN)


@pytest.mark.parametrize("event_type", sorted(LEAN))
@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_lean_validator_agrees_with_the_model(event_type: str, data: st.DataObject) -> None:
    model, lean = LEAN[event_type]
    text = orjson.dumps(data.draw(_payload(model))).decode()
    try:
        obj = model.model_validate_json(text)
        model_ok, model_key = True, obj.idempotency_key
    except ValidationError:
        model_ok, model_key = False, None
    try:
        got = lean(text)
        lean_ok, lean_key = True, got.get("idempotency_key")
    except ValidationError:
        lean_ok, lean_key = False, None
    assert lean_ok == model_ok, text
    assert lean_key == model_key, text


json_values = st.recursive(
    scalars.filter(lambda v: not isinstance(v, float)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_key_text_of_a_string_is_itself_and_of_others_json(value: Any) -> None:
    text = json.dumps({"idempotency_key": value})
    got = key_text(value, text)
    if value is None:
        assert got == ""
    elif isinstance(value, str):
        assert got == value
    else:
        assert json.loads(got) == value  # JSON text of the value (the format: test_delivery)
        assert not isinstance(value, bool) or got in ("true", "false")
