"""docs/protocol.md must agree with the models: generated schemas current, every example valid."""

import json
import re
from pathlib import Path

import pytest

import protocol
from protocol.schema import render

DOC = Path(__file__).parent.parent / "docs" / "protocol.md"
EXAMPLE = re.compile(r"```json (\w+)\n(.*?)```", re.S)


def test_generated_schemas_are_current() -> None:
    text = DOC.read_text()
    assert render(text) == text, "docs/protocol.md is stale: run `python -m protocol.schema`"


def test_every_message_has_a_valid_example() -> None:
    examples = EXAMPLE.findall(DOC.read_text())
    names = {name for name, _ in examples}
    assert {"EventBatch", "BatchAck", "Command", "CommandResult", "GatewayStatus"} <= names
    for name, body in examples:
        model = getattr(protocol, name)
        parsed = model.model_validate_json(body)
        # Round trip: every value the example shows comes back unchanged (nothing dropped or renamed).
        assert_subset(json.loads(body), json.loads(parsed.model_dump_json()), name)


def assert_subset(shown: object, dumped: object, where: str) -> None:
    if isinstance(shown, dict):
        assert isinstance(dumped, dict), where
        for key, value in shown.items():
            assert key in dumped, f"{where}.{key} is not in the model"
            assert_subset(value, dumped[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(dumped, list) and len(shown) == len(dumped), where
        for i, (a, b) in enumerate(zip(shown, dumped, strict=True)):
            assert_subset(a, b, f"{where}[{i}]")
    else:
        assert shown == dumped, f"{where}: example says {shown!r}, model gives {dumped!r}"


def test_unknown_fields_and_versions_are_rejected() -> None:
    ack = {"v": 1, "batch_id": "b", "stored": 1, "duplicates": 0}
    protocol.BatchAck.model_validate(ack)
    with pytest.raises(ValueError, match="Extra inputs"):
        protocol.BatchAck.model_validate({**ack, "surprise": 1})
    with pytest.raises(ValueError, match="Input should be 1"):
        protocol.BatchAck.model_validate({**ack, "v": 2})
