"""Reading YAML written by someone else: PyYAML's safe loader, bounded in size and depth, refusing duplicate keys.

`yaml.safe_load` refuses Python tags but not an alias bomb ("billion laughs": nine aliases of nine aliases ...
expand to 10^9 nodes from a few hundred bytes) nor a document nested 20,000 deep (a RecursionError in the
composer). Aliases stay allowed for honest reuse (the shipped profiles share op tables with them): this loader
counts the nodes a document expands to, aliases included, and stops at `MAX_NODES`; it stops at `MAX_DEPTH`
levels of nesting; and it refuses a key repeated in one mapping (PyYAML silently keeps the last value).
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_NODES = 200_000
"""Expanded nodes allowed in one document: the largest shipped file has a few thousand."""
MAX_DEPTH = 64
"""Nesting levels allowed: the deepest shipped file has about ten."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


class BoundedSafeLoader(yaml.SafeLoader):
    """A SafeLoader that refuses alias bombs, deep nesting and duplicate keys (with a YAML error naming where)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._expanded: dict[int, int] = {}  # id(node) -> nodes it expands to, aliases counted in full

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        # Refuse before recursing further: PyYAML's composer is recursive and would otherwise hit Python's limit.
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark
            )
        try:
            node = super().compose_node(parent, index)  # type: ignore[no-untyped-call]
        finally:
            self._depth -= 1
        size = self._size(node)
        if size > MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"expands to more than {MAX_NODES} nodes (aliases counted in full)", node.start_mark
            )
        return node

    def _size(self, node: yaml.Node) -> int:
        known = self._expanded.get(id(node))
        if known is not None:  # an alias to an anchored node: its full expansion counts again
            return known
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._expanded.get(id(child), 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._expanded.get(id(k), 1) + self._expanded.get(id(v), 1) for k, v in node.value)
        else:
            size = 1
        self._expanded[id(node)] = size
        return size

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key_node.value!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(text: str, loader: type[BoundedSafeLoader] = BoundedSafeLoader) -> Any:
    """Parse one YAML document with `loader` (a BoundedSafeLoader or a subclass); raises yaml.YAMLError."""
    instance = loader(text)
    try:
        return instance.get_single_data()
    finally:
        instance.dispose()


def describe(exc: BaseException) -> str:
    """One line: `line L, column C: problem` for a YAML error with a position, else the message folded."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if mark is not None:
            return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
        return problem
    return " ".join(str(exc).split())
