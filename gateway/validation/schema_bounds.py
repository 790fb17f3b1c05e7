"""Bounds on a client's JSON schema, checked before any worker compiles it into a grammar.

Grammar compilation has no timeout for JSON schemas and its cost grows with the schema:
size, nesting, enum sizes and the number of alternatives (anyOf/oneOf/allOf) all feed
it, and a recursive ``$ref`` can make it unbounded. Every bound here is checked by one
iterative walk (no recursion: a deep schema cannot blow Python's stack). Where OpenAI
publishes a limit for structured outputs we use it (nesting 10, 5,000 properties, 1,000
enum values, 15,000 characters of enum strings); the rest are ours and configurable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from gateway.errors import ErrorCode, GatewayError

# Keywords whose value is one subschema, or a list / an object of subschemas. A step into
# one of them is one level of nesting.
_ONE: Final = frozenset(
    {"items", "additionalProperties", "not", "if", "then", "else", "contains",
     "propertyNames", "unevaluatedItems", "unevaluatedProperties", "additionalItems"}
)  # fmt: skip
_LIST: Final = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_MAP: Final = frozenset({"properties", "patternProperties", "$defs", "definitions"})
_BRANCHES: Final = frozenset({"anyOf", "oneOf", "allOf"})
_REF_PREFIXES: Final = ("#/$defs/", "#/definitions/")


@dataclass(frozen=True, slots=True)
class SchemaLimits:
    max_bytes: int = 32 * 1024
    max_depth: int = 10
    max_properties: int = 5000
    max_enum_values: int = 1000
    max_enum_chars: int = 15_000
    max_branches: int = 64
    max_pattern_chars: int = 256


def _refuse(param: str, what: str) -> GatewayError:
    return GatewayError(ErrorCode.INVALID_JSON_SCHEMA, f"'{param}' {what}.", param=param)


def serialized(schema: Any) -> str:
    """The schema as it travels (compact, key order kept): what size and digest measure."""
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def _subschemas(node: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(definition name or "", subschema) for each subschema directly under ``node``."""
    for key, value in node.items():
        if key in _ONE:
            yield "", value
        elif key in _LIST and isinstance(value, list):
            for item in value:
                yield "", item
        elif key in _MAP and isinstance(value, dict):
            for name, item in value.items():
                yield (name if key in ("$defs", "definitions") else ""), item


def check_schema(schema: Any, param: str, limits: SchemaLimits) -> str:
    """Refuse a schema over the bounds (400 invalid_json_schema); return its serialized
    form (compact, key order kept) for the digest."""
    # Raw JSON nesting first, without recursion: serializing a value nested a thousand
    # levels deep would hit Python's recursion limit. A schema level is two or three
    # JSON levels ("properties" -> name -> subschema).
    if _json_depth(schema) > 4 * limits.max_depth + 4:
        raise _refuse(param, f"is nested more than {limits.max_depth} levels deep")
    text = serialized(schema)
    if len(text.encode("utf-8", "surrogatepass")) > limits.max_bytes:
        raise _refuse(param, f"is larger than {limits.max_bytes} bytes")
    properties = enum_values = enum_chars = branches = 0
    # The $ref graph: which definition each definition (or the root, "") refers to.
    refs: dict[str, set[str]] = {"": set()}
    defined: set[str] = set()
    stack: list[tuple[Any, int, str]] = [(schema, 0, "")]
    while stack:
        node, depth, owner = stack.pop()
        if isinstance(node, bool):
            continue
        if not isinstance(node, dict):
            raise _refuse(param, "contains a subschema that is not an object or a boolean")
        if depth > limits.max_depth:
            raise _refuse(param, f"is nested more than {limits.max_depth} levels deep")
        if isinstance(node.get("properties"), dict):
            properties += len(node["properties"])
        enum = node.get("enum")
        if isinstance(enum, list):
            enum_values += len(enum)
            enum_chars += sum(len(v) for v in enum if isinstance(v, str))
        branches += sum(len(node[k]) for k in _BRANCHES if isinstance(node.get(k), list))
        pattern = node.get("pattern")
        if isinstance(pattern, str) and len(pattern) > limits.max_pattern_chars:
            raise _refuse(param, f"has a 'pattern' longer than {limits.max_pattern_chars}")
        if isinstance(pattern, str) and ("minLength" in node or "maxLength" in node):
            # The grammar backend (xgrammar) refuses this combination: say so here.
            raise _refuse(param, "combines 'pattern' with 'minLength'/'maxLength'")
        ref = node.get("$ref")
        if ref is not None:
            refs[owner].add(_ref_target(ref, param))
        for name, child in _subschemas(node):
            if name:
                defined.add(name)
                refs.setdefault(name, set())
                stack.append((child, 1, name))
            else:
                stack.append((child, depth + 1, owner))
    if properties > limits.max_properties:
        raise _refuse(param, f"has more than {limits.max_properties} properties in all")
    if enum_values > limits.max_enum_values:
        raise _refuse(param, f"has more than {limits.max_enum_values} enum values in all")
    if enum_chars > limits.max_enum_chars:
        raise _refuse(param, f"has more than {limits.max_enum_chars} characters of enum values")
    if branches > limits.max_branches:
        raise _refuse(param, f"has more than {limits.max_branches} anyOf/oneOf/allOf branches")
    _check_refs(refs, defined, param)
    return text


def _json_depth(value: Any) -> int:
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _ref_target(ref: object, param: str) -> str:
    if not isinstance(ref, str) or not ref.startswith(_REF_PREFIXES):
        raise _refuse(param, "may only use '$ref' to '#/$defs/...' or '#/definitions/...'")
    name = ref.split("/", 2)[2]
    if not name or "/" in name:
        raise _refuse(param, "has a '$ref' that does not name one definition")
    return name


def _check_refs(refs: dict[str, set[str]], defined: set[str], param: str) -> None:
    """Every $ref names a definition, and no definition reaches itself (no recursion)."""
    if any(target not in defined for targets in refs.values() for target in targets):
        raise _refuse(param, "has a '$ref' to a definition it does not define")
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in refs:
        if start in state:
            continue
        path: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(refs[start])))]
        state[start] = 1
        while path:
            name, targets = path[-1]
            target = next(targets, None)
            if target is None:
                state[name] = 2
                path.pop()
            elif state.get(target) == 1:
                raise _refuse(param, "is recursive ('$ref' cycles are not supported)")
            elif target not in state:
                state[target] = 1
                path.append((target, iter(sorted(refs[target]))))
