"""The decision-tree engine: a post-training-quantization decision tree kept as data in YAML.

A rules file looks like this::

    version: 1
    start: integer_only                # id of the first node (or of a leaf)
    nodes:
      - id: integer_only
        question: Does the device execute integers only?
        when: {fact: device.integer_only, op: "==", value: true}
        yes: has_data                  # next node or leaf id when the condition holds
        no: fp16_accelerated           # ... when it does not
    leaves:
      - id: full_int8_device
        technique: full_int8           # one of autoptq.techniques.recipe.TECHNIQUES
        summary: Full integer quantization with the device's integer I/O.
        recipe: {activation_dtype: int8}   # autoptq.techniques.recipe.RecipeOverrides
        fallbacks: [percentile_calibration, fp16]
        warnings: []

A condition is a comparison `{fact, op, value}` (op: == != < <= > >= in not_in) or `{all: [...]}`,
`{any: [...]}`, `{not: condition}`.

Decisions of the format:

- `yes:` / `no:` are the branch keys. YAML 1.1 (what PyYAML implements) reads unquoted yes/no/on/off as
  booleans, which would turn those keys into `True`/`False`. Files are therefore read with `_RulesLoader`, a
  `SafeLoader` subclass that resolves only true/True/TRUE/false/False/FALSE as booleans (as YAML 1.2 does).
  So `value: yes` is the string "yes", rejected for a bool fact with a hint to write true/false.
- A key repeated inside one mapping is an error (PyYAML would silently keep the last, e.g. a second `yes:`).
- A fact value may be None ("unknown"). A comparison on an unknown value is False whatever the op, including
  `!=` and `not_in`; `not` negates that False: `not: {fact: f, op: "==", value: 1}` holds when f is unknown.
- Ordering ops (< <= > >=) apply to int and float facts only; an int value is accepted for a float fact, never
  a float for an int fact, and a bool is never a number. `in`/`not_in` take a list, the others a single value.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import networkx as nx
import yaml
from pydantic import ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator
from pydantic_core import ErrorDetails

from autoptq.errors import RulesError
from autoptq.io import safeyaml
from autoptq.io.safeyaml import BoundedSafeLoader
from autoptq.schema import StrictModel
from autoptq.techniques.recipe import RecipeOverrides, TechniqueName

FactValue = bool | int | float | str
"""The value of a fact; None (not part of this alias) means unknown."""

FactType = Literal["bool", "int", "float", "str"]

Op = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in"]

_ORDERING_OPS = frozenset({"<", "<=", ">", ">="})
_LIST_OPS = frozenset({"in", "not_in"})

# Operators by name: evaluation is a table lookup, never eval().
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda actual, expected: actual in expected,
    "not_in": lambda actual, expected: actual not in expected,
}

# Python types accepted for each fact type; bool is excluded separately for numbers (it subclasses int).
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "bool": (bool,),
    "int": (int,),
    "float": (int, float),
    "str": (str,),
}


class FactSpec(StrictModel):
    """A fact the caller can provide to the rules: its name, its type and what it means."""

    name: str
    type: FactType
    description: str


class _RulesModel(StrictModel):
    # strict: YAML already yields native types, so "1" for an int or 1 for a string is a mistake to report.
    model_config = StrictModel.model_config | ConfigDict(strict=True)


class Comparison(_RulesModel):
    """`fact op value`; False when the fact's value is unknown (None)."""

    fact: str = Field(min_length=1)
    op: Op
    value: FactValue | list[FactValue]

    @field_validator("value", mode="before")
    @classmethod
    def _scalar_or_list(cls, value: object) -> object:
        # Checked up front: otherwise pydantic reports one confusing error per member of the union.
        items = value if isinstance(value, list) else [value]
        if all(isinstance(item, (bool, int, float, str)) for item in items):
            return value
        raise ValueError(f"value must be a bool, number or string, or a list of them, got {_short(value)}")

    def fact_names(self) -> list[str]:
        """The facts this condition reads."""
        return [self.fact]

    def holds(self, values: Mapping[str, FactValue | None]) -> bool:
        """Whether the comparison is true for `values` (which must hold the fact)."""
        actual = values[self.fact]
        if actual is None:
            return False
        return _OPS[self.op](actual, self.value)


class AllOf(_RulesModel):
    """True when every sub-condition holds."""

    conditions: list[Condition] = Field(alias="all", min_length=1)

    def fact_names(self) -> list[str]:
        """The facts this condition reads, in order of first use."""
        return _unique(name for c in self.conditions for name in c.fact_names())

    def holds(self, values: Mapping[str, FactValue | None]) -> bool:
        """Whether every sub-condition holds for `values`."""
        return all(c.holds(values) for c in self.conditions)


class AnyOf(_RulesModel):
    """True when at least one sub-condition holds."""

    conditions: list[Condition] = Field(alias="any", min_length=1)

    def fact_names(self) -> list[str]:
        """The facts this condition reads, in order of first use."""
        return _unique(name for c in self.conditions for name in c.fact_names())

    def holds(self, values: Mapping[str, FactValue | None]) -> bool:
        """Whether at least one sub-condition holds for `values`."""
        return any(c.holds(values) for c in self.conditions)


class Not(_RulesModel):
    """True when the sub-condition does not hold."""

    condition: Condition = Field(alias="not")

    def fact_names(self) -> list[str]:
        """The facts this condition reads."""
        return self.condition.fact_names()

    def holds(self, values: Mapping[str, FactValue | None]) -> bool:
        """Whether the sub-condition does not hold for `values`."""
        return not self.condition.holds(values)


# Union tags show up in pydantic error locations; they are dropped when an error is described.
_CONDITION_TAGS = {"fact": "comparison", "all": "all_of", "any": "any_of", "not": "not_of"}
_TAG_OF_CLASS: dict[type, str] = {Comparison: "comparison", AllOf: "all_of", AnyOf: "any_of", Not: "not_of"}


def _condition_tag(value: object) -> str | None:
    # The key that says what a condition is picks the model; the model then rejects any other stray key.
    if isinstance(value, dict):
        return next((tag for key, tag in _CONDITION_TAGS.items() if key in value), None)
    return _TAG_OF_CLASS.get(type(value))


Condition = Annotated[
    Annotated[Comparison, Tag("comparison")]
    | Annotated[AllOf, Tag("all_of")]
    | Annotated[AnyOf, Tag("any_of")]
    | Annotated[Not, Tag("not_of")],
    Discriminator(
        _condition_tag,
        custom_error_type="invalid_condition",
        custom_error_message="a condition is a mapping with one of the keys 'fact', 'all', 'any', 'not'",
    ),
]

for _model in (AllOf, AnyOf, Not):
    _model.model_rebuild()


class Node(_RulesModel):
    """A question: evaluate `when`, then go to `yes` or `no` (a node or leaf id)."""

    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    when: Condition
    yes: str
    no: str


class Leaf(_RulesModel):
    """An outcome of the tree: the technique, its recipe overrides and what to try when it fails."""

    id: str = Field(min_length=1)
    technique: TechniqueName
    summary: str = Field(min_length=1)
    recipe: RecipeOverrides = Field(default_factory=RecipeOverrides)
    fallbacks: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


class _RulesFile(_RulesModel):
    version: Literal[1]
    start: str
    nodes: list[Node]
    leaves: list[Leaf] = Field(min_length=1)


class TraceStep(StrictModel):
    """One question asked on the way to a leaf, with exactly the facts its condition read (None = unknown)."""

    node: str
    question: str
    facts: dict[str, FactValue | None]
    answer: bool


class Decision(StrictModel):
    """The leaf reached and the questions asked to reach it, in order."""

    leaf: Leaf
    trace: list[TraceStep]


@dataclass(frozen=True)
class RuleSet:
    """A validated decision tree. Build it with `load_rules`; nodes and leaves keep the file's order."""

    source: Path
    start: str
    nodes: Mapping[str, Node]
    leaves: Mapping[str, Leaf]
    facts: Mapping[str, FactSpec]

    def leaf_ids(self) -> list[str]:
        """Ids of the leaves, in file order."""
        return list(self.leaves)

    def lower_bound(self, fact: str) -> float | None:
        """The value the tree first requires `fact` to reach (`fact >= value` or `fact > value`, in file order), so
        that other stages hold a candidate to the tree's own threshold rather than restating it; None if none."""
        for node in self.nodes.values():
            for comparison in _comparisons(node.when):
                if (
                    comparison.fact == fact
                    and comparison.op in (">=", ">")
                    and isinstance(comparison.value, (int, float))
                ):
                    return float(comparison.value)
        return None

    def evaluate(self, facts: Mapping[str, FactValue | None]) -> Decision:
        """Walk the tree from `start` with these fact values (None = unknown) and return the leaf and trace.

        Every fact a visited node's condition references must be given, even one short-circuiting would skip,
        since the trace records them all: pass None for an unknown fact. Raises RulesError when a fact is
        missing or its value has the wrong type.
        """
        trace: list[TraceStep] = []
        current = self.start
        # Load-time checks guarantee every target exists and there is no cycle, so this ends on a leaf.
        while current in self.nodes:
            node = self.nodes[current]
            values = {name: self._fact_value(node, name, facts) for name in node.when.fact_names()}
            answer = node.when.holds(values)
            trace.append(TraceStep(node=node.id, question=node.question, facts=values, answer=answer))
            current = node.yes if answer else node.no
        return Decision(leaf=self.leaves[current], trace=trace)

    def _fact_value(self, node: Node, name: str, facts: Mapping[str, FactValue | None]) -> FactValue | None:
        where = f"{self.source}: node {node.id!r}"
        if name not in facts:
            raise RulesError(f"{where}: fact {name!r} is missing from the facts given")
        value = facts[name]
        fact_type = self.facts[name].type
        # Checked here so a wrong-typed fact is a clear error instead of a TypeError or a silent mismatch.
        if value is not None and not _matches(value, fact_type):
            got = f"{type(value).__name__} {_short(value)}"
            raise RulesError(f"{where}: fact {name!r} should be {fact_type}, got {got}")
        return value


def load_rules(path: Path, facts: Mapping[str, FactSpec], fallbacks: Collection[str]) -> RuleSet:
    """Read and validate a rules file against the fact catalogue and the known fallback names.

    Raises RulesError with one line naming the file and, where there is one, the node or leaf at fault.
    """
    for key, spec in facts.items():
        if key != spec.name:
            raise ValueError(f"fact catalogue key {key!r} holds the FactSpec of {spec.name!r}")
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise RulesError(f"{path}: a rules file is a YAML mapping (version, start, nodes, leaves)")
    try:
        parsed = _RulesFile.model_validate(raw)
    except ValidationError as exc:
        raise RulesError(_one_line(f"{path}: {_describe(_first_error(exc), raw)}")) from exc
    problem = _check(parsed, facts, fallbacks)
    if problem is not None:
        raise RulesError(_one_line(f"{path}: {problem}"))
    return RuleSet(
        source=path,
        start=parsed.start,
        nodes={node.id: node for node in parsed.nodes},
        leaves={leaf.id: leaf for leaf in parsed.leaves},
        facts=dict(facts),
    )


# --- YAML ---

_BOOL_TAG = "tag:yaml.org,2002:bool"


class _RulesLoader(BoundedSafeLoader):
    """A bounded SafeLoader (no alias bombs, no deep nesting, no repeated key) that reads only true/false as
    booleans (so `yes:`/`no:` keys stay strings)."""

    # PyYAML's class-level registry, copied without the YAML 1.1 bool rule so SafeLoader itself is untouched.
    yaml_implicit_resolvers = {  # noqa: RUF012
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_YAML12_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_RulesLoader.add_implicit_resolver(_BOOL_TAG, _YAML12_BOOL, list("tTfF"))


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(_one_line(f"{path}: cannot read the rules file: {exc}")) from exc
    try:
        return safeyaml.load(text, _RulesLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = ""
        if mark is not None:
            entry = _entry_at(text, mark.line)
            where = f"{entry + ': ' if entry else ''}line {mark.line + 1}, column {mark.column + 1}: "
        raise RulesError(_one_line(f"{path}: {where}invalid YAML: {exc.problem or exc.context}")) from exc
    except yaml.YAMLError as exc:
        raise RulesError(_one_line(f"{path}: invalid YAML: {exc}")) from exc


_SECTION = re.compile(r"^(nodes|leaves)\s*:")
_OTHER_KEY = re.compile(r"^[^\s#-]")
_ENTRY = re.compile(r"^(?P<indent>\s*)-\s(?:\s*\{)?\s*(?:id\s*:\s*[\"']?(?P<id>[^\"'\s,}#]+))?")


def _entry_at(text: str, line: int) -> str | None:
    """`node 'x'` / `leaf 'x'` whose entry holds 0-based `line`, read off the text (the YAML did not parse).

    Best effort, for the usual layout: entries of the top-level `nodes:`/`leaves:` lists start with their id.
    """
    section: str | None = None
    entry_indent: str | None = None
    ident: str | None = None
    for current in text.splitlines()[: line + 1]:
        header = _SECTION.match(current)
        if header or _OTHER_KEY.match(current):
            section = header.group(1) if header else None
            entry_indent, ident = None, None
            continue
        entry = _ENTRY.match(current)
        if section and entry and entry_indent in (None, entry["indent"]):
            # Dashes nested deeper (e.g. items of `all:`) belong to the current entry.
            entry_indent, ident = entry["indent"], entry["id"]
    if section is None or ident is None:
        return None
    return f"{'node' if section == 'nodes' else 'leaf'} {ident!r}"


# --- checks beyond the schema ---


def _check(parsed: _RulesFile, facts: Mapping[str, FactSpec], fallbacks: Collection[str]) -> str | None:
    """The first problem of a schema-valid file (ids, facts, types, targets, fallbacks, graph), or None."""
    seen: set[str] = set()
    for kind, item in [*(("node", n) for n in parsed.nodes), *(("leaf", leaf) for leaf in parsed.leaves)]:
        if item.id in seen:
            return f"{kind} {item.id!r}: duplicate id {item.id!r}"
        seen.add(item.id)
    for node in parsed.nodes:
        for comparison in _comparisons(node.when):
            problem = _check_comparison(comparison, facts)
            if problem is not None:
                return f"node {node.id!r}: {problem}"
        for branch, target in (("yes", node.yes), ("no", node.no)):
            if target not in seen:
                return f"node {node.id!r}: {branch} target {target!r} is not a node or leaf"
    for leaf in parsed.leaves:
        for name in leaf.fallbacks:
            if name not in fallbacks:
                return f"leaf {leaf.id!r}: unknown fallback {name!r} (known: {', '.join(sorted(fallbacks))})"
        if len(set(leaf.fallbacks)) != len(leaf.fallbacks):
            return f"leaf {leaf.id!r}: a fallback is listed twice"
    if parsed.start not in seen:
        return f"start {parsed.start!r} is not a node or leaf"
    graph = _branch_graph(parsed.start, parsed.nodes)
    cycle = _find_cycle(parsed.start, graph)
    if cycle is not None:
        return f"node {cycle[0]!r}: cycle {' -> '.join(cycle)}"
    reachable = {parsed.start, *nx.descendants(graph, parsed.start)}
    for kind, item in [*(("node", n) for n in parsed.nodes), *(("leaf", leaf) for leaf in parsed.leaves)]:
        if item.id not in reachable:
            return f"{kind} {item.id!r} is unreachable from start {parsed.start!r}"
    return None


def _comparisons(condition: Condition) -> Iterator[Comparison]:
    if isinstance(condition, Comparison):
        yield condition
    elif isinstance(condition, Not):
        yield from _comparisons(condition.condition)
    else:
        for sub in condition.conditions:
            yield from _comparisons(sub)


def _check_comparison(comparison: Comparison, facts: Mapping[str, FactSpec]) -> str | None:
    spec = facts.get(comparison.fact)
    if spec is None:
        return f"condition uses unknown fact {comparison.fact!r}"
    op, value, name = comparison.op, comparison.value, comparison.fact
    if op in _LIST_OPS and not isinstance(value, list):
        return f"op {op!r} on fact {name!r} needs a list value, got {_short(value)}"
    if op not in _LIST_OPS and isinstance(value, list):
        return f"op {op!r} on fact {name!r} needs a single value, got a list"
    if op in _ORDERING_OPS and spec.type not in ("int", "float"):
        return f"op {op!r} does not apply to {spec.type} fact {name!r}"
    for item in value if isinstance(value, list) else [value]:
        if not _matches(item, spec.type):
            hint = " (write true or false)" if spec.type == "bool" and isinstance(item, str) else ""
            return f"value {_short(item)} for {spec.type} fact {name!r} is a {type(item).__name__}{hint}"
    return None


def _matches(value: object, fact_type: str) -> bool:
    # bool subclasses int: True must not pass for an int or float fact.
    return isinstance(value, _PYTHON_TYPES[fact_type]) and (fact_type == "bool") == isinstance(value, bool)


def _branch_graph(start: str, nodes: Iterable[Node]) -> nx.DiGraph:
    """The tree as a directed graph from `start`: an edge from each node to its `yes` target, then to its `no` target
    (the order the walk for cycles follows them: the cycle reported is the first a yes-first walk meets)."""
    graph = nx.DiGraph()
    graph.add_node(start)
    for node in nodes:
        graph.add_edges_from([(node.id, node.yes), (node.id, node.no)])
    return graph


def _find_cycle(start: str, graph: nx.DiGraph) -> list[str] | None:
    """A cycle reachable from `start` as [a, b, ..., a], or None. Leaves end every path."""
    try:
        edges = nx.find_cycle(graph, source=start)
    except nx.NetworkXNoCycle:
        return None
    return [edges[0][0], *(head for _, head in edges)]


# --- error messages ---


def _first_error(exc: ValidationError) -> ErrorDetails:
    """The error to report: the first one, except that a misspelt key beats the missing key it stands for."""
    errors = exc.errors()
    first = errors[0]
    if first["type"] == "missing":
        for error in errors:
            if error["type"] == "extra_forbidden" and error["loc"][:-1] == first["loc"][:-1]:
                return error
    return first


def _describe(error: ErrorDetails, raw: Mapping[str, Any]) -> str:
    """One line for a pydantic error: the node or leaf (by id when it has one), where in it, what is wrong."""
    loc = list(error["loc"])
    owner = ""
    if len(loc) >= 2 and loc[0] in ("nodes", "leaves") and isinstance(loc[1], int):
        entry = raw[loc[0]][loc[1]]
        ident = entry.get("id") if isinstance(entry, dict) else None
        kind = "node" if loc[0] == "nodes" else "leaf"
        owner = f"{kind} {ident!r}" if isinstance(ident, str) else f"{kind} #{loc[1] + 1}"
        loc = loc[2:]
    error_type = error["type"]
    if error_type in ("extra_forbidden", "missing", "literal_error") and loc and isinstance(loc[-1], str):
        last = loc.pop()
        if error_type == "extra_forbidden":
            message = f"unknown key {last!r}"
        elif error_type == "missing":
            message = f"missing key {last!r}"
        else:
            expected = error.get("ctx", {}).get("expected")
            message = f"unknown {last} {_short(error['input'])} (expected {expected})"
    elif error_type == "value_error":
        message = str(error.get("ctx", {}).get("error", error["msg"]))
        if loc and isinstance(loc[-1], str) and message.startswith(f"unknown {loc[-1]} "):
            loc.pop()  # the message names the key already
    else:
        message = f"{error['msg']}, got {_short(error['input'])}"
    where = _dotted(part for part in loc if part not in _CONDITION_TAGS.values())
    return ": ".join(part for part in (owner, where, message) if part)


def _dotted(parts: Iterable[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))
