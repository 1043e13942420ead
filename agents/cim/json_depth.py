"""How deep a JSON value nests, checked without recursion.

Event bodies and unit metadata come from anyone who may write; a value nested thousands deep
raises RecursionError in json, pydantic and every reader that prints it. CIM's own values
are a few levels deep, so anything past MAX_DEPTH is refused (or, when already stored,
surfaced as a problem and skipped).
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 64


def deeper_than(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Does `value` nest more than `limit` levels of lists and objects? Safe at any depth."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False
