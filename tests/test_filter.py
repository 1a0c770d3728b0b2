"""The filter language: Mongo-style specs compiled into predicates over records."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ce_daemon.errors import CeDaemonError
from ce_daemon.filter import FilterError, FilterProblem, compile_filter, describe, match_all


def matches(spec: object, record: Mapping[str, Any]) -> bool:
    return compile_filter(spec)(record)


def problems_of(spec: object) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(FilterError) as caught:
        compile_filter(spec)
    return [(p.loc, p.message) for p in caught.value.problems]


ALERT: dict[str, Any] = {
    "_id": "f3a1",
    "alert_type": "DLP",
    "severity": "high",
    "cci": 42,
    "score": 7.5,
    "acked": False,
    "app": "Dropbox",
    "user": "alice@example.com",
    "note": None,
    "tags": ["pii", "finance"],
    "counts": [1, 5, 9],
    "user_info": {"department": "finance", "groups": ["staff", "admins"], "manager": {"name": "bob"}},
    "policies": [{"name": "Block uploads", "action": "block"}, {"name": "Alert", "action": "alert"}],
}


# --- empty specs and spec forms -----------------------------------------------------------------


@pytest.mark.parametrize("spec", [None, {}], ids=["none", "empty-mapping"])
def test_empty_spec_matches_everything(spec: object) -> None:
    """None and {} compile to the shared match-all predicate."""
    predicate = compile_filter(spec)
    assert predicate is match_all
    assert predicate({}) is True


def test_json_string_spec_is_accepted() -> None:
    """A CE-style `mongo` JSON string compiles like the mapping it holds."""
    spec = '{"$and": [{"alert_type": {"$in": ["DLP", "Malware"]}}, {"cci": {"$gte": 40}}]}'
    assert matches(spec, ALERT) is True
    assert matches(spec, {**ALERT, "cci": 10}) is False


def test_invalid_json_string_is_a_filter_error() -> None:
    """A string that is not JSON is reported at the root of the spec."""
    [(loc, message)] = problems_of('{"severity": ')
    assert loc == ()
    assert message.startswith("invalid JSON filter:")


def test_json_string_of_a_list_is_rejected() -> None:
    """A JSON string must hold a mapping."""
    assert problems_of('["severity"]') == [((), "a filter must be a mapping, got list")]


def test_blank_string_is_rejected() -> None:
    """An empty string is refused rather than silently matching everything."""
    assert problems_of("  ") == [((), "empty filter string; use {} to match everything")]


@pytest.mark.parametrize(("spec", "kind"), [(5, "int"), (["a"], "list"), (True, "bool")])
def test_non_mapping_spec_is_rejected(spec: object, kind: str) -> None:
    """Anything but a mapping, a JSON string or None is a filter error naming the type."""
    assert problems_of(spec) == [((), f"a filter must be a mapping, got {kind}")]


# --- equality ------------------------------------------------------------------------------------


def test_bare_value_means_eq() -> None:
    """`{field: value}` is `{field: {$eq: value}}`."""
    assert matches({"severity": "high"}, ALERT) is True
    assert matches({"severity": "low"}, ALERT) is False


@pytest.mark.parametrize(
    ("operand", "expected"),
    [("DLP", True), ("dlp", False), (42, False), (None, False)],
    ids=["same-string", "case-differs", "other-type", "null"],
)
def test_eq_on_strings(operand: object, expected: bool) -> None:
    """$eq on a string field is exact, case-sensitive, and false across types."""
    assert matches({"alert_type": {"$eq": operand}}, ALERT) is expected


def test_int_and_float_compare_alike() -> None:
    """42 and 42.0 are equal, in $eq and in $in."""
    assert matches({"cci": 42.0}, ALERT) is True
    assert matches({"score": {"$in": [7.5, 8]}}, ALERT) is True
    assert matches({"cci": {"$in": [42.0]}}, ALERT) is True


@pytest.mark.parametrize(
    ("spec", "record"),
    [
        ({"flag": 1}, {"flag": True}),
        ({"flag": True}, {"flag": 1}),
        ({"flag": 0}, {"flag": False}),
        ({"flag": {"$in": [1, 2]}}, {"flag": True}),
        ({"flag": {"$in": [True]}}, {"flag": 1}),
        ({"flag": {"$gt": 0}}, {"flag": True}),
        ({"flag": [1]}, {"flag": [True]}),
    ],
    ids=["eq-1-vs-true", "eq-true-vs-1", "eq-0-vs-false", "in-numbers", "in-bools", "gt", "list-equality"],
)
def test_bool_is_not_a_number(spec: dict[str, Any], record: dict[str, Any]) -> None:
    """Booleans never equal or order with numbers, even though Python says True == 1."""
    assert matches(spec, record) is False


def test_eq_on_booleans() -> None:
    """A boolean matches only the same boolean."""
    assert matches({"acked": False}, ALERT) is True
    assert matches({"acked": True}, ALERT) is False


def test_null_matches_null_and_missing() -> None:
    """`{field: null}` matches a null field and a missing one, but not a falsy value."""
    spec = {"note": None}
    assert matches(spec, {"note": None}) is True
    assert matches(spec, {}) is True
    assert matches(spec, {"note": 0}) is False
    assert matches(spec, {"note": ""}) is False


def test_mapping_without_operators_is_whole_equality() -> None:
    """A plain mapping value compares the whole sub-document, as Mongo does."""
    manager = {"user_info.manager": {"name": "bob"}}
    assert matches(manager, ALERT) is True
    assert matches({"user_info.manager": {"name": "bob", "extra": 1}}, ALERT) is False
    assert matches({"user_info": {"department": "finance"}}, ALERT) is False


def test_ne_is_the_negation_of_eq() -> None:
    """$ne matches a different value and refuses the same one."""
    assert matches({"severity": {"$ne": "low"}}, ALERT) is True
    assert matches({"severity": {"$ne": "high"}}, ALERT) is False
    assert matches({"cci": {"$ne": 42}}, ALERT) is False
    assert matches({"cci": {"$ne": "42"}}, ALERT) is True


def test_ne_holds_when_field_is_missing() -> None:
    """A record without the field is 'not equal' to anything but null."""
    assert matches({"department": {"$ne": "sales"}}, ALERT) is True
    assert matches({"department": {"$ne": None}}, ALERT) is False


def test_ne_null_requires_a_present_non_null_value() -> None:
    """`$ne: null` is the idiom for 'present and not null'."""
    assert matches({"note": {"$ne": None}}, ALERT) is False
    assert matches({"app": {"$ne": None}}, ALERT) is True


# --- membership ----------------------------------------------------------------------------------


def test_in_matches_any_listed_value() -> None:
    """$in matches when the field equals one of the values."""
    assert matches({"alert_type": {"$in": ["Malware", "DLP"]}}, ALERT) is True
    assert matches({"alert_type": {"$in": ["Malware", "Compromised Credential"]}}, ALERT) is False


def test_in_with_mixed_types() -> None:
    """$in may mix strings, numbers, booleans and null, each compared by its own type."""
    spec = {"value": {"$in": ["42", 7, False, None]}}
    assert matches(spec, {"value": 7}) is True
    assert matches(spec, {"value": False}) is True
    assert matches(spec, {"value": "42"}) is True
    assert matches(spec, {}) is True
    assert matches(spec, {"value": 42}) is False
    assert matches(spec, {"value": 0}) is False


def test_empty_in_matches_nothing_and_empty_nin_everything() -> None:
    """`$in: []` can never hold; `$nin: []` always does."""
    assert matches({"severity": {"$in": []}}, ALERT) is False
    assert matches({"severity": {"$nin": []}}, ALERT) is True


def test_nin_refuses_listed_values() -> None:
    """$nin matches values that are not listed."""
    assert matches({"severity": {"$nin": ["low", "medium"]}}, ALERT) is True
    assert matches({"severity": {"$nin": ["high", "critical"]}}, ALERT) is False


def test_nin_holds_when_field_is_missing() -> None:
    """A missing field is in no list, unless the list holds null."""
    assert matches({"department": {"$nin": ["sales"]}}, ALERT) is True
    assert matches({"department": {"$nin": ["sales", None]}}, ALERT) is False


# --- order ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "operand", "expected"),
    [
        ("$gt", 41, True),
        ("$gt", 42, False),
        ("$gte", 42, True),
        ("$gte", 42.5, False),
        ("$lt", 42.5, True),
        ("$lt", 42, False),
        ("$lte", 42, True),
        ("$lte", 41, False),
    ],
)
def test_numeric_comparisons(operator: str, operand: float, expected: bool) -> None:
    """$gt/$gte/$lt/$lte compare numbers by value, int and float alike."""
    assert matches({"cci": {operator: operand}}, ALERT) is expected


def test_string_comparisons_are_lexicographic() -> None:
    """Strings order as strings."""
    assert matches({"app": {"$gt": "Box"}}, ALERT) is True
    assert matches({"app": {"$lt": "Box"}}, ALERT) is False


@pytest.mark.parametrize(
    "value",
    ["42", None, {"a": 1}, [{"a": 1}], True, datetime.date(2024, 1, 1), b"42"],
    ids=["string", "null", "mapping", "list-of-mappings", "bool", "date", "bytes"],
)
def test_comparisons_across_types_are_false(value: object) -> None:
    """A number bound against any non-number is false both ways, never an error."""
    assert matches({"x": {"$gt": 1}}, {"x": value}) is False
    assert matches({"x": {"$lte": 1}}, {"x": value}) is False


def test_comparison_on_missing_field_is_false() -> None:
    """Order operators do not hold for a missing field."""
    assert matches({"missing": {"$lt": 100}}, ALERT) is False


def test_range_of_operators_on_one_field_and_together() -> None:
    """Several operators under one field must all hold."""
    assert matches({"cci": {"$gt": 40, "$lt": 50}}, ALERT) is True
    assert matches({"cci": {"$gt": 40, "$lt": 42}}, ALERT) is False


# --- strings -------------------------------------------------------------------------------------


def test_regex_searches_anywhere() -> None:
    """$regex uses search, not a full match."""
    assert matches({"user": {"$regex": "@example\\.com$"}}, ALERT) is True
    assert matches({"user": {"$regex": "^bob"}}, ALERT) is False


@pytest.mark.parametrize(
    ("pattern", "options", "text"),
    [("^dropbox$", "i", "Dropbox"), ("^b$", "m", "a\nb"), ("a.b", "s", "a\nb"), ("d r o p", "x", "drop")],
    ids=["i", "m", "s", "x"],
)
def test_regex_options(pattern: str, options: str, text: str) -> None:
    """$options i/m/s/x change the regex as in Mongo, and the pattern fails without them."""
    assert matches({"t": {"$regex": pattern, "$options": options}}, {"t": text}) is True
    assert matches({"t": {"$regex": pattern}}, {"t": text}) is False


def test_regex_on_non_string_is_false() -> None:
    """A regex never matches a number, null or mapping (no stringification)."""
    assert matches({"cci": {"$regex": "42"}}, ALERT) is False
    assert matches({"note": {"$regex": ".*"}}, ALERT) is False
    assert matches({"user_info": {"$regex": ".*"}}, ALERT) is False


def test_contains_is_a_case_sensitive_substring_test() -> None:
    """$contains looks for a substring in a string field."""
    assert matches({"user": {"$contains": "example"}}, ALERT) is True
    assert matches({"user": {"$contains": "EXAMPLE"}}, ALERT) is False
    assert matches({"cci": {"$contains": "4"}}, ALERT) is False


def test_startswith_tests_a_prefix() -> None:
    """$startswith matches a string field's prefix."""
    assert matches({"app": {"$startswith": "Drop"}}, ALERT) is True
    assert matches({"app": {"$startswith": "box"}}, ALERT) is False


# --- presence and negation ----------------------------------------------------------------------


def test_exists() -> None:
    """$exists true holds for a present field (even null); false for a missing one."""
    assert matches({"note": {"$exists": True}}, ALERT) is True
    assert matches({"missing": {"$exists": True}}, ALERT) is False
    assert matches({"missing": {"$exists": False}}, ALERT) is True
    assert matches({"app": {"$exists": False}}, ALERT) is False


def test_not_negates_an_operator_mapping() -> None:
    """$not with operators matches where those operators do not hold."""
    assert matches({"cci": {"$not": {"$gt": 50}}}, ALERT) is True
    assert matches({"cci": {"$not": {"$gt": 40, "$lt": 50}}}, ALERT) is False


def test_not_accepts_a_regex_string() -> None:
    """$not with a string negates it as a regular expression."""
    assert matches({"user": {"$not": "^bob"}}, ALERT) is True
    assert matches({"user": {"$not": "^alice"}}, ALERT) is False


def test_not_holds_when_field_is_missing() -> None:
    """A missing field does not satisfy the inner condition, so $not holds."""
    assert matches({"missing": {"$not": {"$gt": 1}}}, ALERT) is True


# --- logical operators --------------------------------------------------------------------------


def test_several_keys_and_together() -> None:
    """Every top-level key must hold."""
    assert matches({"severity": "high", "alert_type": "DLP", "cci": {"$gte": 40}}, ALERT) is True
    assert matches({"severity": "high", "alert_type": "DLP", "cci": {"$gte": 50}}, ALERT) is False


def test_and() -> None:
    """$and holds when all of its filters do."""
    assert matches({"$and": [{"severity": "high"}, {"app": "Dropbox"}]}, ALERT) is True
    assert matches({"$and": [{"severity": "high"}, {"app": "Box"}]}, ALERT) is False


def test_or() -> None:
    """$or holds when any of its filters does."""
    assert matches({"$or": [{"severity": "low"}, {"app": "Dropbox"}]}, ALERT) is True
    assert matches({"$or": [{"severity": "low"}, {"app": "Box"}]}, ALERT) is False


def test_nor() -> None:
    """$nor holds when none of its filters does."""
    assert matches({"$nor": [{"severity": "low"}, {"app": "Box"}]}, ALERT) is True
    assert matches({"$nor": [{"severity": "low"}, {"app": "Dropbox"}]}, ALERT) is False


def test_nested_logical_operators() -> None:
    """Logical operators nest to any depth, beside field keys."""
    spec = {
        "alert_type": "DLP",
        "$or": [{"$and": [{"severity": "high"}, {"cci": {"$lt": 10}}]}, {"$nor": [{"app": "Box"}]}],
    }
    assert matches(spec, ALERT) is True
    assert matches(spec, {**ALERT, "app": "Box"}) is False


def test_empty_filter_inside_and_matches_everything() -> None:
    """An empty entry of $or is the always-true filter."""
    assert matches({"$or": [{}, {"severity": "low"}]}, ALERT) is True


# --- paths and lists -----------------------------------------------------------------------------


def test_dotted_path_reaches_nested_fields() -> None:
    """`user_info.manager.name` walks nested mappings."""
    assert matches({"user_info.department": "finance"}, ALERT) is True
    assert matches({"user_info.manager.name": {"$in": ["bob", "carol"]}}, ALERT) is True
    assert matches({"user_info.manager.name": "alice"}, ALERT) is False


@pytest.mark.parametrize(
    "record",
    [{}, {"user_info": None}, {"user_info": "finance"}, {"user_info": 3}, {"user_info": {}}],
    ids=["no-parent", "null-parent", "string-parent", "number-parent", "empty-parent"],
)
def test_dotted_path_through_missing_or_scalar_is_missing(record: dict[str, Any]) -> None:
    """A path that cannot be followed is a missing field: $ne and $exists:false hold, $eq does not."""
    assert matches({"user_info.department": "finance"}, record) is False
    assert matches({"user_info.department": {"$ne": "finance"}}, record) is True
    assert matches({"user_info.department": {"$exists": False}}, record) is True


def test_numeric_path_part_indexes_a_list() -> None:
    """`counts.1` is the second element; an index past the end is missing."""
    assert matches({"counts.1": 5}, ALERT) is True
    assert matches({"policies.0.action": "block"}, ALERT) is True
    assert matches({"counts.7": {"$exists": False}}, ALERT) is True


def test_path_through_list_of_objects_looks_into_each() -> None:
    """`policies.action` matches when any policy object's action matches."""
    assert matches({"policies.action": "alert"}, ALERT) is True
    assert matches({"policies.action": {"$in": ["allow", "block"]}}, ALERT) is True
    assert matches({"policies.action": "allow"}, ALERT) is False
    assert matches({"policies.name": {"$regex": "^Block"}}, ALERT) is True


def test_negation_through_list_of_objects_needs_every_object() -> None:
    """$ne and $nin across a list of objects hold only if no object matches."""
    assert matches({"policies.action": {"$ne": "block"}}, ALERT) is False
    assert matches({"policies.action": {"$nin": ["allow"]}}, ALERT) is True
    assert matches({"policies.missing": {"$exists": False}}, ALERT) is True


def test_path_through_nested_lists_of_objects() -> None:
    """Lists of objects inside lists of objects are all looked into."""
    record = {"apps": [{"instances": [{"id": "a"}, {"id": "b"}]}, {"instances": [{"id": "c"}]}]}
    assert matches({"apps.instances.id": "c"}, record) is True
    assert matches({"apps.instances.id": {"$nin": ["a", "b", "c"]}}, record) is False


def test_list_field_matches_eq_if_any_element_does() -> None:
    """$eq on a list field holds when one element equals the value."""
    assert matches({"tags": "pii"}, ALERT) is True
    assert matches({"counts": 9}, ALERT) is True
    assert matches({"user_info.groups": "admins"}, ALERT) is True
    assert matches({"tags": "hr"}, ALERT) is False


def test_list_field_also_matches_whole_list_equality() -> None:
    """$eq with a list value compares the whole list, in order."""
    assert matches({"tags": ["pii", "finance"]}, ALERT) is True
    assert matches({"tags": ["finance", "pii"]}, ALERT) is False


def test_list_field_matches_in_and_regex_per_element() -> None:
    """$in, $regex and comparisons look at each element of a list field."""
    assert matches({"tags": {"$in": ["hr", "finance"]}}, ALERT) is True
    assert matches({"tags": {"$regex": "^fin"}}, ALERT) is True
    assert matches({"counts": {"$gt": 8}}, ALERT) is True
    assert matches({"counts": {"$gt": 9}}, ALERT) is False


def test_ne_on_list_field_needs_every_element_to_differ() -> None:
    """$ne and $nin on a list field are false when any element matches."""
    assert matches({"tags": {"$ne": "pii"}}, ALERT) is False
    assert matches({"tags": {"$nin": ["finance"]}}, ALERT) is False
    assert matches({"tags": {"$nin": ["hr"]}}, ALERT) is True


def test_field_names_are_case_sensitive() -> None:
    """`Severity` is not `severity`."""
    assert matches({"Severity": {"$exists": True}}, ALERT) is False


# --- robustness ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from("abx"), children),
    max_leaves=12,
)
odd_values = st.sampled_from([b"bytes", datetime.date(2024, 1, 1), ("t", 1), object(), frozenset({1})])
ROBUSTNESS_SPECS: list[dict[str, Any]] = [
    {"a": "x"},
    {"a": 1},
    {"a": None},
    {"a": [1, "x"]},
    {"a": {"b": 1}},
    {"a": {"$in": ["x", 1, True, None, [1]]}},
    {"a": {"$nin": ["x", 2.5]}},
    {"a": {"$gt": 0, "$lte": "m"}},
    {"a.b": {"$lt": 3}},
    {"a.b.x": {"$regex": "^.", "$options": "i"}},
    {"a.0.b": {"$exists": True}},
    {"a": {"$not": {"$in": [1, 2]}}},
    {"a.b": {"$contains": "x", "$startswith": "a"}},
    {"$or": [{"a": {"$ne": "x"}}, {"b.a": {"$eq": [1]}}]},
    {"$nor": [{"x": {"$ne": None}}]},
]


@settings(max_examples=200, deadline=None)
@given(record=st.dictionaries(st.sampled_from("abx"), json_values | odd_values))
def test_evaluation_never_raises(record: dict[str, Any]) -> None:
    """Whatever a record holds, every operator returns a bool instead of raising."""
    for spec in ROBUSTNESS_SPECS:
        assert isinstance(compile_filter(spec)(record), bool)


def test_mapping_records_that_are_not_dicts_work() -> None:
    """Any Mapping is a record, including at nested levels."""

    class Frozen(Mapping[str, Any]):
        def __init__(self, data: dict[str, Any]) -> None:
            self._data = data

        def __getitem__(self, key: str) -> Any:
            return self._data[key]

        def __iter__(self) -> Any:
            return iter(self._data)

        def __len__(self) -> int:
            return len(self._data)

    record = Frozen({"info": Frozen({"os": "Linux"}), "severity": "high"})
    assert matches({"info.os": "Linux", "severity": "high"}, record) is True


# --- errors --------------------------------------------------------------------------------------


def test_unknown_field_operator_suggests_the_closest() -> None:
    """A misspelt operator is reported at its key, with a did-you-mean."""
    assert problems_of({"severity": {"$inn": ["high"]}}) == [
        (("severity", "$inn"), "unknown operator '$inn'; did you mean '$in'?")
    ]


def test_unknown_operator_suggestion_ignores_case() -> None:
    """`$GTE` suggests `$gte`."""
    [(loc, message)] = problems_of({"cci": {"$GTE": 5}})
    assert loc == ("cci", "$GTE")
    assert message == "unknown operator '$GTE'; did you mean '$gte'?"


def test_unknown_operator_without_close_match_lists_operators() -> None:
    """A far-off name lists the known operators instead of guessing."""
    [(loc, message)] = problems_of({"$where": "this.a > 1"})
    assert loc == ("$where",)
    assert message.startswith("unknown operator '$where'; known operators: $and, $contains")


def test_field_operator_at_top_level_is_explained() -> None:
    """`{$in: ...}` without a field says where the operator belongs."""
    assert problems_of({"$in": ["a"]}) == [(("$in",), "$in applies to a field: write {field: {$in: ...}}")]


def test_logical_operator_under_a_field_is_explained() -> None:
    """`{field: {$or: ...}}` says $or goes above the field."""
    [(loc, message)] = problems_of({"severity": {"$or": [{"a": 1}]}})
    assert loc == ("severity", "$or")
    assert "put it above the field" in message


@pytest.mark.parametrize("operator", ["$in", "$nin"])
def test_in_needs_a_list(operator: str) -> None:
    """$in/$nin with a scalar is an error at that operator."""
    assert problems_of({"severity": {operator: "high"}}) == [
        (("severity", operator), f"{operator} needs a list, got str")
    ]


def test_invalid_regex_is_a_compile_error() -> None:
    """A regex that does not compile is reported at $regex with the reason."""
    [(loc, message)] = problems_of({"app": {"$regex": "(unclosed"}})
    assert loc == ("app", "$regex")
    assert message.startswith("invalid regular expression: missing ), unterminated subpattern")


def test_regex_needs_a_string() -> None:
    """$regex with a number is refused."""
    assert problems_of({"app": {"$regex": 5}}) == [(("app", "$regex"), "$regex needs a string, got int")]


def test_unknown_regex_option() -> None:
    """An option letter other than i/m/s/x is reported at $options."""
    assert problems_of({"app": {"$regex": "a", "$options": "ig"}}) == [
        (("app", "$options"), "unknown regex option 'g'; use i, m, s or x")
    ]


def test_options_without_regex() -> None:
    """$options alone has nothing to modify."""
    assert problems_of({"app": {"$options": "i"}}) == [
        (("app", "$options"), "$options needs a $regex beside it")
    ]


def test_exists_needs_a_boolean() -> None:
    """$exists: 1 is refused (write true)."""
    assert problems_of({"app": {"$exists": 1}}) == [
        (("app", "$exists"), "$exists needs true or false, got int")
    ]


@pytest.mark.parametrize(
    ("operand", "message"),
    [
        (True, "$gt needs a number or a string, got bool"),
        ([1], "$gt needs a number or a string, got list"),
        (None, "$gt needs a number or a string, got null"),
        (
            datetime.date(2024, 1, 1),
            "$gt needs a number or a string, got date; quote it, or compare epoch seconds",
        ),
    ],
    ids=["bool", "list", "null", "yaml-date"],
)
def test_comparison_needs_a_number_or_string(operand: object, message: str) -> None:
    """Order operators only accept numbers and strings as bounds."""
    assert problems_of({"timestamp": {"$gt": operand}}) == [(("timestamp", "$gt"), message)]


@pytest.mark.parametrize("operator", ["$contains", "$startswith"])
def test_substring_operators_need_a_string(operator: str) -> None:
    """$contains and $startswith take text only."""
    assert problems_of({"app": {operator: 3}}) == [(("app", operator), f"{operator} needs a string, got int")]


@pytest.mark.parametrize("operand", [5, {"a": 1}, None], ids=["number", "mapping-without-operators", "null"])
def test_not_needs_operators_or_a_regex(operand: object) -> None:
    """$not takes an operator mapping or a regex string, nothing else."""
    [(loc, message)] = problems_of({"app": {"$not": operand}})
    assert loc == ("app", "$not")
    assert message.startswith("$not needs operators such as {$in: [...]} or a regex")


def test_problems_inside_not_point_inside_it() -> None:
    """A bad operator under $not is reported with the $not in its loc."""
    assert problems_of({"app": {"$not": {"$in": "Box"}}}) == [
        (("app", "$not", "$in"), "$in needs a list, got str")
    ]


@pytest.mark.parametrize(
    ("operand", "kind"),
    [({"a": 1}, "mapping"), ([], "list"), ("a", "str")],
    ids=["mapping", "empty", "string"],
)
def test_logical_operators_need_a_non_empty_list(operand: object, kind: str) -> None:
    """$and/$or/$nor take a non-empty list of filters."""
    assert problems_of({"$or": operand}) == [(("$or",), f"$or needs a non-empty list of filters, got {kind}")]


def test_logical_entries_must_be_filters() -> None:
    """Each entry of $and is a mapping; the bad entry is reported by its index."""
    assert problems_of({"$and": [{"a": 1}, "b", None]}) == [
        (("$and", 1), "each entry of $and must be a filter, got str"),
        (("$and", 2), "each entry of $and must be a filter, got null"),
    ]


def test_mixing_operators_and_plain_keys() -> None:
    """A condition with both `$gt` and a plain key is reported at the plain key."""
    assert problems_of({"cci": {"$gt": 1, "max": 5}}) == [
        (("cci", "max"), "cannot mix operators and plain keys in one condition")
    ]


def test_field_name_must_be_a_string() -> None:
    """A YAML key that parsed as a number is refused, located by its text."""
    assert problems_of({1: "x"}) == [(("1",), "field names must be strings, got int")]


@pytest.mark.parametrize("path", ["user_info..os", ".os", "os."])
def test_path_with_empty_part(path: str) -> None:
    """Doubled or edge dots in a path are an error at that key."""
    assert problems_of({path: 1}) == [((path,), f"field path '{path}' has an empty part")]


def test_empty_field_name() -> None:
    """An empty key is an error."""
    assert problems_of({"": 1}) == [(("",), "empty field name")]


def test_problems_say_whether_the_key_or_its_value_is_at_fault() -> None:
    """A misspelt operator or bad field name is flagged at_key; a bad operand is not."""
    with pytest.raises(FilterError) as caught:
        compile_filter({"severity": {"$inn": [1], "$nin": 2}, "a..b": 1, "$orr": [], "c": {"$gt": 1, "d": 2}})
    assert [(p.loc, p.at_key) for p in caught.value.problems] == [
        (("severity", "$inn"), True),
        (("severity", "$nin"), False),
        (("a..b",), True),
        (("$orr",), True),
        (("c", "d"), True),
    ]


def test_every_problem_is_collected_with_its_exact_loc() -> None:
    """Problems anywhere in the spec are all reported, in order, each at its own place."""
    spec = {
        "$and": [
            {"alert_type": "DLP"},
            {"severity": {"$in": "high"}, "cci": {"$gtt": 5}},
        ],
        "app": {"$regex": "[", "$options": "q"},
        "$or": [{"user_info.groups": {"$exists": "yes"}}],
    }
    assert [loc for loc, _ in problems_of(spec)] == [
        ("$and", 1, "severity", "$in"),
        ("$and", 1, "cci", "$gtt"),
        ("app", "$options"),
        ("app", "$regex"),
        ("$or", 0, "user_info.groups", "$exists"),
    ]


def test_json_string_problems_use_locs_into_the_parsed_json() -> None:
    """Errors inside a JSON-string spec carry locs into its parsed document."""
    assert problems_of('{"$or": [{"severity": {"$nin": "low"}}]}') == [
        (("$or", 0, "severity", "$nin"), "$nin needs a list, got str")
    ]


def test_filter_error_is_a_value_error_with_readable_text() -> None:
    """FilterError is a ValueError (and a CeDaemonError) whose text names each place and problem."""
    with pytest.raises(FilterError) as caught:
        compile_filter({"$and": [{"severity": {"$in": "high"}}], "x": {"$exits": True}})
    error = caught.value
    assert isinstance(error, ValueError)
    assert isinstance(error, CeDaemonError)
    assert str(error) == (
        "2 problems in filter: $and[0].severity.$in: $in needs a list, got str; "
        "x.$exits: unknown operator '$exits'; did you mean '$exists'?"
    )
    assert error.problems[0] == FilterProblem(("$and", 0, "severity", "$in"), "$in needs a list, got str")


def test_single_problem_text() -> None:
    """One problem reads as one clause."""
    with pytest.raises(
        FilterError, match=r"^invalid filter: \(filter\): a filter must be a mapping, got int$"
    ):
        compile_filter(3)


# --- describe ------------------------------------------------------------------------------------


def test_describe_is_compact_json_on_one_line() -> None:
    """describe() renders a spec as compact one-line JSON."""
    assert describe({"severity": "high", "cci": {"$gte": 5}}) == '{"severity":"high","cci":{"$gte":5}}'


def test_describe_accepts_json_strings_and_empty_specs() -> None:
    """A JSON-string spec is normalised; None and {} describe as {}."""
    assert describe('{ "a" :\n 1 }') == '{"a":1}'
    assert describe(None) == "{}"
    assert describe({}) == "{}"


def test_describe_truncates_long_specs() -> None:
    """A long spec is cut to 200 characters ending in an ellipsis."""
    text = describe({"alert_type": {"$in": [f"type-{n}" for n in range(100)]}})
    assert len(text) == 200
    assert text.endswith("…")


def test_describe_never_raises_on_odd_input() -> None:
    """Non-JSON strings and non-JSON values still describe, on one line."""
    assert describe("not {json\n at all") == "not {json at all"
    assert describe({"when": datetime.date(2024, 1, 2), 3: "x"}) == '{"when":"2024-01-02","3":"x"}'


# --- agreement with a reference evaluator --------------------------------------------------------

_ABSENT = object()


def _ref_same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return bool(a == b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_ref_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _ref_eq(value: Any, operand: Any) -> bool:
    if value is _ABSENT:
        return operand is None
    if _ref_same(value, operand):
        return True
    return isinstance(value, list) and any(_ref_same(element, operand) for element in value)


def _ref_order(value: Any, operator: str, bound: Any) -> bool:
    def one(item: Any) -> bool:
        if isinstance(bound, str):
            if not isinstance(item, str):
                return False
        elif isinstance(item, bool) or not isinstance(item, int | float):
            return False
        outcomes: dict[str, bool] = {
            "$gt": item > bound,
            "$gte": item >= bound,
            "$lt": item < bound,
            "$lte": item <= bound,
        }
        return outcomes[operator]

    if value is _ABSENT:
        return False
    return one(value) or (isinstance(value, list) and any(one(element) for element in value))


def reference(spec: dict[str, dict[str, Any]], record: dict[str, Any]) -> bool:
    """A direct, slow reading of the rules for flat records."""
    for field, condition in spec.items():
        value = record.get(field, _ABSENT)
        for operator, operand in condition.items():
            if operator == "$eq":
                ok = _ref_eq(value, operand)
            elif operator == "$ne":
                ok = not _ref_eq(value, operand)
            elif operator == "$in":
                ok = any(_ref_eq(value, candidate) for candidate in operand)
            elif operator == "$nin":
                ok = not any(_ref_eq(value, candidate) for candidate in operand)
            else:
                ok = _ref_order(value, operator, operand)
            if not ok:
                return False
    return True


FIELDS = ["a", "b", "c"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.sampled_from([0.0, 1.0, 2.5, -1.5])
    | st.text(alphabet="xyZ", max_size=2)
)
values = scalars | st.lists(scalars, max_size=3)
flat_records = st.dictionaries(st.sampled_from(FIELDS), values)
bounds = st.integers(-3, 3) | st.sampled_from([0.0, 1.0, 2.5]) | st.text(alphabet="xyZ", max_size=2)
conditions = st.one_of(
    st.tuples(st.sampled_from(["$eq", "$ne"]), values),
    st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(values, max_size=4)),
    st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), bounds),
)
flat_specs = st.dictionaries(
    st.sampled_from([*FIELDS, "d"]), st.lists(conditions, min_size=1, max_size=2).map(dict), max_size=3
)


@settings(max_examples=500, deadline=None)
@given(spec=flat_specs, record=flat_records)
def test_agrees_with_reference_evaluator(spec: dict[str, dict[str, Any]], record: dict[str, Any]) -> None:
    """On flat records, $eq/$ne/$in/$nin/$gt… agree with the reference reading of the rules."""
    assert compile_filter(spec)(record) is reference(spec, record)


@settings(max_examples=300, deadline=None)
@given(spec=flat_specs, record=flat_records)
def test_nested_path_agrees_with_top_level(spec: dict[str, dict[str, Any]], record: dict[str, Any]) -> None:
    """The dotted-path code path gives the same answers as the top-level fast paths."""
    nested_spec = {f"inner.{field}": condition for field, condition in spec.items()}
    assert compile_filter(nested_spec)({"inner": record}) is reference(spec, record)
