"""Structural mutations of plan data, shared by the plan fuzz test (hypothesis) and the full
fuzzer (tools/fuzz_plans.py): every path into a YAML tree, and one mutation at one path."""

from __future__ import annotations

from typing import Any

OPS = ("drop", "replace", "swap_type", "insert", "unknown_key", "huge")


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (tuple of keys / indexes) into node, the root () first."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


def swapped(current: Any) -> Any:
    """The value at a path with another type."""
    if isinstance(current, bool):
        return "yes" if current else 0
    if isinstance(current, int):
        return str(current)
    if isinstance(current, str):
        return len(current) if len(current) % 2 else [current]
    if isinstance(current, list):
        return current[0] if current else {}
    if isinstance(current, dict):
        return list(current.values())
    return [current]


def mutate(data: Any, path: tuple[Any, ...], op: str, value: Any) -> Any:
    """Apply op at path in place (the root only by `replace`); returns the (new) root."""
    if not path:
        return value if op == "replace" else data
    parent = data
    for el in path[:-1]:
        parent = parent[el]
    last = path[-1]
    current = parent[last]
    if op == "drop":
        del parent[last]
    elif op in ("replace", "huge"):
        parent[last] = value
    elif op == "swap_type":
        parent[last] = swapped(current)
    elif op in ("insert", "unknown_key") and isinstance(current, dict):
        current[("unknown_" if op == "unknown_key" else "") + (str(value)[:10] or "k")] = value
    elif op in ("insert", "unknown_key") and isinstance(current, list):
        current.append(value)
    return data
