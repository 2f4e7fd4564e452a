"""The decision-tree engine: loading and validating a YAML tree, and evaluating it with a trace."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from autoptq.decide.rules import Comparison, Decision, FactSpec, RuleSet, load_rules
from autoptq.errors import RulesError
from autoptq.techniques.recipe import RecipeOverrides

FACTS = {
    spec.name: spec
    for spec in (
        FactSpec(name="device.integer_only", type="bool", description="the device computes in integers only"),
        FactSpec(name="device.name", type="str", description="profile name"),
        FactSpec(name="model.macs", type="int", description="multiply-accumulates per inference"),
        FactSpec(name="model.control_flow_fraction", type="float", description="share of compute in loops"),
        FactSpec(name="data.samples", type="int", description="calibration samples given"),
    )
}
FALLBACKS = {"percentile_calibration", "exclude_sensitive", "int16x8", "fp16", "weight_only_int8", "none"}

# `yes:`/`no:` are unquoted on purpose: plain yaml.safe_load would turn them into True/False keys.
TREE = """\
version: 1
start: integer_only
nodes:
  - id: integer_only
    question: Does the device execute integers only?
    when: {fact: device.integer_only, op: "==", value: true}
    yes: has_data
    no: fp16_leaf
  - id: has_data
    question: Is there enough compute and calibration data?
    when:
      all:
        - {fact: model.macs, op: ">=", value: 1000000}
        - not: {fact: model.control_flow_fraction, op: ">", value: 0.5}
        - any:
            - {fact: data.samples, op: ">=", value: 1}
            - {fact: device.name, op: in, value: [x86-vnni, arm-a76]}
    yes: full_int8_leaf
    no: weight_only_leaf
leaves:
  - id: full_int8_leaf
    technique: full_int8
    summary: Full integer quantization with the device's integer I/O.
    recipe: {activation_dtype: int8, per_channel: true}
    fallbacks: [percentile_calibration, fp16]
  - id: weight_only_leaf
    technique: weight_only_int8
    summary: Quantize the weights only.
  - id: fp16_leaf
    technique: fp16
    summary: Run in half precision.
    warnings: [Check the accuracy of reductions.]
"""

INT8_FACTS: dict[str, Any] = {
    "device.integer_only": True,
    "device.name": "edge-npu",
    "model.macs": 5_000_000,
    "model.control_flow_fraction": 0.1,
    "data.samples": 32,
}


def write(tmp_path: Path, text: str, name: str = "tree.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str = TREE) -> RuleSet:
    return load_rules(write(tmp_path, text), FACTS, FALLBACKS)


def replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return edit


def one_node(when: str) -> str:
    """A tree with one question whose `yes` leaf is fp16 and `no` leaf is none."""
    return f"""\
version: 1
start: q
nodes:
  - id: q
    question: Q?
    when: {when}
    yes: leaf_yes
    no: leaf_no
leaves:
  - {{id: leaf_yes, technique: fp16, summary: yes branch}}
  - {{id: leaf_no, technique: none, summary: no branch}}
"""


def answer(tmp_path: Path, when: str, facts: dict[str, Any]) -> bool:
    decision = load(tmp_path, one_node(when)).evaluate(facts)
    return decision.trace[0].answer


# --- loading and evaluation ---


def test_load_exposes_the_tree(tmp_path: Path) -> None:
    rules = load(tmp_path)
    assert rules.start == "integer_only"
    assert rules.source == tmp_path / "tree.yaml"
    assert list(rules.nodes) == ["integer_only", "has_data"]
    assert rules.leaf_ids() == ["full_int8_leaf", "weight_only_leaf", "fp16_leaf"]
    node = rules.nodes["integer_only"]
    assert (node.yes, node.no) == ("has_data", "fp16_leaf")
    leaf = rules.leaves["full_int8_leaf"]
    assert leaf.recipe == RecipeOverrides(activation_dtype="int8", per_channel=True)
    assert leaf.fallbacks == ["percentile_calibration", "fp16"]
    assert rules.leaves["fp16_leaf"].warnings == ["Check the accuracy of reductions."]
    assert rules.leaves["weight_only_leaf"].fallbacks == []


def test_evaluate_records_the_path_and_exactly_the_facts_read(tmp_path: Path) -> None:
    decision = load(tmp_path).evaluate({**INT8_FACTS, "unrelated.fact": 1})
    assert isinstance(decision, Decision)
    assert decision.leaf.id == "full_int8_leaf"
    assert decision.leaf.technique == "full_int8"
    assert [(step.node, step.answer) for step in decision.trace] == [
        ("integer_only", True),
        ("has_data", True),
    ]
    assert decision.trace[0].question == "Does the device execute integers only?"
    assert decision.trace[0].facts == {"device.integer_only": True}
    assert decision.trace[1].facts == {
        "model.macs": 5_000_000,
        "model.control_flow_fraction": 0.1,
        "data.samples": 32,
        "device.name": "edge-npu",
    }


def test_evaluate_no_branches(tmp_path: Path) -> None:
    rules = load(tmp_path)
    fp16 = rules.evaluate({**INT8_FACTS, "device.integer_only": False})
    assert fp16.leaf.id == "fp16_leaf"
    assert [step.node for step in fp16.trace] == ["integer_only"]
    no_data = rules.evaluate({**INT8_FACTS, "data.samples": 0})
    assert no_data.leaf.id == "weight_only_leaf"
    assert no_data.trace[-1].answer is False
    listed_device = rules.evaluate({**INT8_FACTS, "data.samples": 0, "device.name": "arm-a76"})
    assert listed_device.leaf.id == "full_int8_leaf"


def test_unknown_values_make_comparisons_false_and_show_as_null(tmp_path: Path) -> None:
    rules = load(tmp_path)
    # not(unknown > 0.5) holds; any(unknown >= 1, listed device) holds through the device.
    facts = {
        **INT8_FACTS,
        "model.control_flow_fraction": None,
        "data.samples": None,
        "device.name": "x86-vnni",
    }
    decision = rules.evaluate(facts)
    assert decision.leaf.id == "full_int8_leaf"
    dumped = decision.model_dump(mode="json")
    assert dumped["trace"][1]["facts"]["model.control_flow_fraction"] is None
    assert dumped["trace"][1]["facts"]["data.samples"] is None
    # An unknown integer_only is not "true": the comparison is False, so the `no` branch is taken.
    assert rules.evaluate({**INT8_FACTS, "device.integer_only": None}).leaf.id == "fp16_leaf"


def test_missing_fact_at_evaluation_names_it(tmp_path: Path) -> None:
    rules = load(tmp_path)
    facts = {k: v for k, v in INT8_FACTS.items() if k != "data.samples"}
    with pytest.raises(RulesError, match=r"node 'has_data': fact 'data.samples' is missing"):
        rules.evaluate(facts)


def test_wrong_fact_type_at_evaluation_is_an_error(tmp_path: Path) -> None:
    rules = load(tmp_path)
    with pytest.raises(RulesError, match=r"fact 'model.macs' should be int, got str"):
        rules.evaluate({**INT8_FACTS, "model.macs": "many"})
    with pytest.raises(RulesError, match=r"fact 'device.integer_only' should be bool, got int"):
        rules.evaluate({**INT8_FACTS, "device.integer_only": 1})


def test_start_may_be_a_leaf(tmp_path: Path) -> None:
    text = "version: 1\nstart: only\nnodes: []\nleaves:\n  - {id: only, technique: none, summary: Nothing.}\n"
    decision = load(tmp_path, text).evaluate({})
    assert decision.leaf.id == "only"
    assert decision.trace == []


# --- conditions ---


@pytest.mark.parametrize(
    ("when", "facts", "expected"),
    [
        ('{fact: model.macs, op: "==", value: 3}', {"model.macs": 3}, True),
        ('{fact: model.macs, op: "==", value: 3}', {"model.macs": 4}, False),
        ('{fact: model.macs, op: "!=", value: 3}', {"model.macs": 4}, True),
        ('{fact: model.macs, op: "!=", value: 3}', {"model.macs": 3}, False),
        ('{fact: model.macs, op: "<", value: 3}', {"model.macs": 2}, True),
        ('{fact: model.macs, op: "<", value: 3}', {"model.macs": 3}, False),
        ('{fact: model.macs, op: "<=", value: 3}', {"model.macs": 3}, True),
        ('{fact: model.macs, op: "<=", value: 3}', {"model.macs": 4}, False),
        ('{fact: model.macs, op: ">", value: 3}', {"model.macs": 4}, True),
        ('{fact: model.macs, op: ">", value: 3}', {"model.macs": 3}, False),
        ('{fact: model.macs, op: ">=", value: 3}', {"model.macs": 3}, True),
        ('{fact: model.macs, op: ">=", value: 3}', {"model.macs": 2}, False),
        ("{fact: device.name, op: in, value: [a, b]}", {"device.name": "b"}, True),
        ("{fact: device.name, op: in, value: [a, b]}", {"device.name": "c"}, False),
        ("{fact: device.name, op: not_in, value: [a, b]}", {"device.name": "c"}, True),
        ("{fact: device.name, op: not_in, value: [a, b]}", {"device.name": "a"}, False),
        (
            '{fact: model.control_flow_fraction, op: "<", value: 1}',
            {"model.control_flow_fraction": 0.5},
            True,
        ),
        (
            '{fact: model.control_flow_fraction, op: "==", value: 1}',
            {"model.control_flow_fraction": 1.0},
            True,
        ),
        ('{fact: device.integer_only, op: "==", value: FALSE}', {"device.integer_only": False}, True),
        ('{fact: device.integer_only, op: "!=", value: True}', {"device.integer_only": True}, False),
    ],
)
def test_comparison_ops(tmp_path: Path, when: str, facts: dict[str, Any], expected: bool) -> None:
    assert answer(tmp_path, when, facts) is expected


@pytest.mark.parametrize(
    "when",
    [
        '{fact: model.macs, op: "==", value: 3}',
        '{fact: model.macs, op: "!=", value: 3}',
        '{fact: model.macs, op: "<", value: 3}',
        '{fact: model.macs, op: "<=", value: 3}',
        '{fact: model.macs, op: ">", value: 3}',
        '{fact: model.macs, op: ">=", value: 3}',
        "{fact: model.macs, op: in, value: [3]}",
        "{fact: model.macs, op: not_in, value: [3]}",
    ],
)
def test_comparison_with_unknown_value_is_false(tmp_path: Path, when: str) -> None:
    decision = load(tmp_path, one_node(when)).evaluate({"model.macs": None})
    assert decision.trace[0].answer is False
    assert decision.trace[0].facts == {"model.macs": None}
    assert decision.leaf.id == "leaf_no"


MACS_POSITIVE = '{fact: model.macs, op: ">", value: 0}'
SAMPLES_POSITIVE = '{fact: data.samples, op: ">", value: 0}'
SAMPLES_ZERO = '{fact: data.samples, op: "==", value: 0}'
NESTED = f"{{not: {{any: [{MACS_POSITIVE}, {{all: [{{not: {SAMPLES_ZERO}}}]}}]}}}}"


@pytest.mark.parametrize(
    ("when", "macs", "samples", "expected"),
    [
        (f"{{all: [{MACS_POSITIVE}, {SAMPLES_POSITIVE}]}}", 1, 1, True),
        (f"{{all: [{MACS_POSITIVE}, {SAMPLES_POSITIVE}]}}", 1, 0, False),
        (f"{{any: [{MACS_POSITIVE}, {SAMPLES_POSITIVE}]}}", 0, 1, True),
        (f"{{any: [{MACS_POSITIVE}, {SAMPLES_POSITIVE}]}}", 0, 0, False),
        (f"{{not: {MACS_POSITIVE}}}", 0, 0, True),
        (f"{{not: {MACS_POSITIVE}}}", 1, 0, False),
        (f"{{not: {MACS_POSITIVE}}}", None, 0, True),
        (NESTED, 0, 0, True),
        (NESTED, 0, 5, False),
    ],
)
def test_all_any_not(tmp_path: Path, when: str, macs: int | None, samples: int, expected: bool) -> None:
    facts = {"model.macs": macs, "data.samples": samples}
    decision = load(tmp_path, one_node(when)).evaluate(facts)
    assert decision.trace[0].answer is expected
    # The trace holds exactly the facts the condition mentions.
    assert set(decision.trace[0].facts) == {name for name in facts if name in when}


PY_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
NUMBERS = st.one_of(st.integers(min_value=-(10**12), max_value=10**12), st.floats(allow_nan=True))


@given(op=st.sampled_from(sorted(PY_OPS)), actual=NUMBERS, value=NUMBERS)
def test_comparison_matches_python_operators(op: str, actual: float, value: float) -> None:
    assert Comparison(fact="x", op=op, value=value).holds({"x": actual}) is PY_OPS[op](actual, value)


@given(actual=NUMBERS, values=st.lists(NUMBERS, max_size=4))
def test_membership_matches_python(actual: float, values: list[float]) -> None:
    assert Comparison(fact="x", op="in", value=values).holds({"x": actual}) is (actual in values)
    assert Comparison(fact="x", op="not_in", value=values).holds({"x": actual}) is (actual not in values)
    assert Comparison(fact="x", op="in", value=values).holds({"x": None}) is False


# --- YAML reading ---


def test_yes_no_keys_are_strings_not_booleans(tmp_path: Path) -> None:
    # The reason for the custom loader: YAML 1.1 would read these keys as booleans.
    assert True in yaml.safe_load(TREE)["nodes"][0]
    # Ids spelt like YAML 1.1 booleans stay strings too.
    text = one_node(MACS_POSITIVE).replace("leaf_yes", "on").replace("leaf_no", "off")
    rules = load(tmp_path, text)
    assert (rules.nodes["q"].yes, rules.nodes["q"].no) == ("on", "off")
    assert rules.evaluate({"model.macs": 0}).leaf.id == "off"


def test_python_tags_are_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = one_node(f"!!python/object/apply:pathlib.Path.touch [{str(marker)!r}]")
    expected = r"node 'q': line \d+, column \d+: invalid YAML: could not determine"
    with pytest.raises(RulesError, match=expected):
        load(tmp_path, text)
    assert not marker.exists()
    with pytest.raises(RulesError, match=r"could not determine a constructor"):
        load(tmp_path, one_node("!!python/object:builtins.object {}"))


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match=r"absent\.yaml: cannot read"):
        load_rules(tmp_path / "absent.yaml", FACTS, FALLBACKS)
    with pytest.raises(RulesError, match=r"tree\.yaml: a rules file is a YAML mapping"):
        load(tmp_path, "")


def test_int_values_are_fine_for_float_facts(tmp_path: Path) -> None:
    assert answer(tmp_path, '{fact: model.control_flow_fraction, op: "<", value: 1}', INT8_FACTS) is True


def test_catalogue_keys_must_match_fact_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="catalogue key"):
        load_rules(write(tmp_path, TREE), {"other": FACTS["model.macs"]}, FALLBACKS)


# --- load-time errors: one line, naming the file and the node or leaf ---

WHEN_0 = 'when: {fact: device.integer_only, op: "==", value: true}'
MACS = '- {fact: model.macs, op: ">=", value: 1000000}'

LONELY = f"{{id: lonely, question: Lonely, when: {SAMPLES_POSITIVE}, yes: fp16_leaf, no: fp16_leaf}}"
LONELY_NODE = f"  - {LONELY}\n"

LOAD_ERRORS = [
    pytest.param(
        replace(WHEN_0, "when: {fact: device.integer_only, op: [}"),
        "node 'integer_only'",
        "invalid YAML",
        id="yaml_syntax",
    ),
    pytest.param(
        replace(WHEN_0, "when: !!python/object:os.system {}"),
        "node 'integer_only'",
        "constructor",
        id="python_tag",
    ),
    pytest.param(
        replace("    yes: has_data\n", "    yes: has_data\n    yes: fp16_leaf\n"),
        "node 'integer_only'",
        "found duplicate key 'yes'",
        id="duplicate_key",
    ),
    pytest.param(
        replace("    yes: full_int8_leaf\n", "    yes: full_int8_leaf\n    colour: red\n"),
        "node 'has_data'",
        "unknown key 'colour'",
        id="unknown_node_key",
    ),
    pytest.param(
        replace(MACS, MACS[:-1] + ", unit: MACs}"),
        "node 'has_data'",
        "when.all[0]: unknown key 'unit'",
        id="unknown_condition_key",
    ),
    pytest.param(
        replace(WHEN_0, "when: {fakt: device.integer_only}"),
        "node 'integer_only'",
        "a condition is a mapping with one of the keys",
        id="not_a_condition",
    ),
    pytest.param(
        replace("    no: fp16_leaf\n", ""),
        "node 'integer_only'",
        "missing key 'no'",
        id="missing_key",
    ),
    pytest.param(
        replace(WHEN_0, "when: {all: []}"),
        "node 'integer_only'",
        "when.all: List should have at least 1",
        id="empty_all",
    ),
    pytest.param(
        replace("per_channel: true}", "per_channel: true, turbo: true}"),
        "leaf 'full_int8_leaf'",
        "recipe: unknown key 'turbo'",
        id="unknown_recipe_key",
    ),
    pytest.param(
        replace("activation_dtype: int8", "activation_dtype: int4"),
        "leaf 'full_int8_leaf'",
        "unknown activation_dtype 'int4'",
        id="bad_recipe_value",
    ),
    pytest.param(
        replace("fact: model.macs", "fact: model.mac"),
        "node 'has_data'",
        "condition uses unknown fact 'model.mac'",
        id="unknown_fact",
    ),
    pytest.param(
        replace("value: 1000000}", 'value: "1000000"}'),
        "node 'has_data'",
        "value '1000000' for int fact 'model.macs' is a str",
        id="str_for_int",
    ),
    pytest.param(
        replace("value: 1000000}", "value: 1000000.0}"),
        "node 'has_data'",
        "is a float",
        id="float_for_int",
    ),
    pytest.param(
        replace("value: 0.5}", "value: half}"),
        "node 'has_data'",
        "value 'half' for float fact 'model.control_flow_fraction' is a str",
        id="str_for_float",
    ),
    pytest.param(
        replace("value: 1000000}", "value: true}"),
        "node 'has_data'",
        "is a bool",
        id="bool_for_int",
    ),
    pytest.param(
        replace("value: true}", "value: yes}"),
        "node 'integer_only'",
        "write true or false",
        id="yes_for_bool",
    ),
    pytest.param(
        replace("value: [x86-vnni, arm-a76]", "value: x86-vnni"),
        "node 'has_data'",
        "op 'in' on fact 'device.name' needs a list value",
        id="in_needs_list",
    ),
    pytest.param(
        replace('op: "==", value: true', 'op: "==", value: [true]'),
        "node 'integer_only'",
        "needs a single value",
        id="list_for_eq",
    ),
    pytest.param(
        replace("op: in, value: [x86-vnni, arm-a76]", 'op: "<", value: x86'),
        "node 'has_data'",
        "op '<' does not apply to str fact 'device.name'",
        id="ordering_on_str",
    ),
    pytest.param(
        replace("value: true}", "value: null}"),
        "node 'integer_only'",
        "value must be a bool",
        id="null_value",
    ),
    pytest.param(
        replace('op: ">=", value: 1000000', 'op: "=>", value: 1000000'),
        "node 'has_data'",
        "unknown op '=>'",
        id="unknown_op",
    ),
    pytest.param(
        replace("id: weight_only_leaf", "id: has_data"),
        "leaf 'has_data'",
        "duplicate id 'has_data'",
        id="duplicate_id",
    ),
    pytest.param(
        replace("no: fp16_leaf", "no: fp32_leaf"),
        "node 'integer_only'",
        "no target 'fp32_leaf' is not a node or leaf",
        id="bad_target",
    ),
    pytest.param(
        replace("start: integer_only", "start: nowhere"),
        "start 'nowhere'",
        "is not a node or leaf",
        id="bad_start",
    ),
    pytest.param(
        replace("no: weight_only_leaf", "no: integer_only"),
        "node 'integer_only'",
        "cycle integer_only -> has_data -> integer_only",
        id="cycle",
    ),
    pytest.param(
        lambda text: text + "  - {id: orphan, technique: none, summary: Never.}\n",
        "leaf 'orphan'",
        "is unreachable from start 'integer_only'",
        id="unreachable_leaf",
    ),
    pytest.param(
        replace("leaves:\n", LONELY_NODE + "leaves:\n"),
        "node 'lonely'",
        "is unreachable",
        id="unreachable_node",
    ),
    pytest.param(
        replace("technique: fp16", "technique: int4"),
        "leaf 'fp16_leaf'",
        "unknown technique 'int4'",
        id="unknown_technique",
    ),
    pytest.param(
        replace("[percentile_calibration, fp16]", "[percentile_calibration, magic]"),
        "leaf 'full_int8_leaf'",
        "unknown fallback 'magic'",
        id="unknown_fallback",
    ),
    pytest.param(
        replace("[percentile_calibration, fp16]", "[fp16, fp16]"),
        "leaf 'full_int8_leaf'",
        "listed twice",
        id="duplicate_fallback",
    ),
]


@pytest.mark.parametrize(("edit", "owner", "expected"), LOAD_ERRORS)
def test_load_errors_name_the_file_and_the_node(
    tmp_path: Path, edit: Callable[[str], str], owner: str, expected: str
) -> None:
    path = write(tmp_path, edit(TREE), name="broken.yaml")
    with pytest.raises(RulesError) as caught:
        load_rules(path, FACTS, FALLBACKS)
    message = str(caught.value)
    assert message.startswith(f"{path}: {owner}")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (replace("version: 1", "version: 2"), "version"),
        (lambda t: t + "author: me\n", "unknown key 'author'"),
        (replace("nodes:", "nodez:"), "unknown key 'nodez'"),
    ],
)
def test_top_level_errors_name_the_file(tmp_path: Path, edit: Callable[[str], str], expected: str) -> None:
    path = write(tmp_path, edit(TREE))
    with pytest.raises(RulesError, match=r"^\S*tree\.yaml: ") as caught:
        load_rules(path, FACTS, FALLBACKS)
    assert expected in str(caught.value)


def test_nan_is_never_equal() -> None:
    # Documented consequence of following Python's operators.
    assert not Comparison(fact="x", op="==", value=math.nan).holds({"x": math.nan})
