"""JSON Schemas of the wire messages, and the generated part of docs/protocol.md.

``python -m protocol.schema`` rewrites the block between the markers in docs/protocol.md;
a test fails when the file and the models disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from protocol.models import BatchAck, Command, CommandResult, EventBatch, GatewayStatus, WireModel

BEGIN = "<!-- BEGIN GENERATED SCHEMAS: python -m protocol.schema -->"
END = "<!-- END GENERATED SCHEMAS -->"
MESSAGES: list[tuple[str, type[WireModel]]] = [
    ("up/events", EventBatch),
    ("down/acks", BatchAck),
    ("down/commands", Command),
    ("up/results", CommandResult),
    ("up/status", GatewayStatus),
]


def generated_block() -> str:
    parts = [BEGIN, ""]
    for topic, model in MESSAGES:
        schema = json.dumps(model.model_json_schema(), indent=2, sort_keys=True)
        parts += [f"### `{topic}`: `{model.__name__}`", "", "```json", schema, "```", ""]
    parts.append(END)
    return "\n".join(parts)


def render(doc: str) -> str:
    head, sep, rest = doc.partition(BEGIN)
    if not sep:
        raise ValueError("docs/protocol.md has no generated-schemas marker")
    _, sep2, tail = rest.partition(END)
    if not sep2:
        raise ValueError("docs/protocol.md has no end marker")
    return head + generated_block() + tail


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/protocol.md")
    path.write_text(render(path.read_text()))
    print(f"updated {path}")


if __name__ == "__main__":
    main()
