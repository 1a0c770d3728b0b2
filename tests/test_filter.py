"""The filter language: Mongo-style specs compiled into predicates over records."""

from __future__ import annotations

import datetime
import re
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ce_daemon.errors import CeDaemonError
from ce_daemon.filter import FilterError, FilterProblem, compile_filter, describe, match_all
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import SIM_TOKEN, backlog_simulator, pipeline_config, run_cli


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


# --- $all $size $elemMatch $type $mod, on the MongoDB manual's own examples -----------------------
# Each collection and expected answer below is the one the MongoDB manual gives for the operator
# (reference/operator/query/<operator>); comments quote where the manual states a rule in words.


def selected(spec: object, collection: list[dict[str, Any]]) -> list[Any]:
    """The ``_id`` of every document of ``collection`` the filter selects, as db.collection.find would."""
    predicate = compile_filter(spec)
    return [document["_id"] for document in collection if predicate(document)]


INVENTORY = [  # $all
    {"_id": "xyz", "tags": ["school", "book", "bag", "headphone", "appliance"],
     "qty": [{"size": "S", "num": 10, "color": "blue"}, {"size": "M", "num": 45, "color": "blue"},
             {"size": "L", "num": 100, "color": "green"}]},
    {"_id": "abc", "tags": ["appliance", "school", "book"],
     "qty": [{"size": "6", "num": 100, "color": "green"}, {"size": "6", "num": 50, "color": "blue"},
             {"size": "8", "num": 100, "color": "brown"}]},
    {"_id": "efg", "tags": ["school", "book"],
     "qty": [{"size": "S", "num": 10, "color": "blue"}, {"size": "M", "num": 100, "color": "blue"},
             {"size": "L", "num": 100, "color": "green"}]},
    {"_id": "ijk", "tags": ["electronics", "school"], "qty": [{"size": "M", "num": 100, "color": "green"}]},
]  # fmt: skip


def test_all_matches_arrays_holding_every_value() -> None:
    """$all: the tags array must contain appliance, school and book (manual: xyz and abc)."""
    assert selected({"tags": {"$all": ["appliance", "school", "book"]}}, INVENTORY) == ["xyz", "abc"]


def test_all_with_elem_match_conditions() -> None:
    """$all of two $elemMatch: some qty element meets each (manual: efg and ijk)."""
    spec = {"qty": {"$all": [
        {"$elemMatch": {"size": "M", "num": {"$gt": 50}}},
        {"$elemMatch": {"num": 100, "color": "green"}},
    ]}}  # fmt: skip
    assert selected(spec, INVENTORY) == ["efg", "ijk"]


def test_all_on_a_non_array_field_is_equality() -> None:
    """Manual: {"qty.num": {$all: [50]}} selects what {"qty.num": 50} selects."""
    assert selected({"qty.num": {"$all": [50]}}, INVENTORY) == selected({"qty.num": 50}, INVENTORY) == ["abc"]


def test_all_of_a_nested_array() -> None:
    """Manual: $all: [["ssl", "security"]] matches a field equal to that array or holding it as an element."""
    spec = {"tags": {"$all": [["ssl", "security"]]}}
    assert matches(spec, {"tags": [["ssl", "security"], "x"]}) is True
    assert matches(spec, {"tags": ["ssl", "security"]}) is True
    assert matches(spec, {"tags": ["security", "ssl"]}) is False


def test_empty_all_matches_nothing() -> None:
    """{$all: []} selects no document: MongoDB parses it as $alwaysFalse (SERVER-3337, SERVER-99098)."""
    assert selected({"tags": {"$all": []}}, INVENTORY) == []


SCORES = [{"_id": 1, "results": [82, 85, 88]}, {"_id": 2, "results": [75, 88, 89]}]  # $elemMatch
SURVEY = [
    {"_id": 1, "results": [{"product": "abc", "score": 10}, {"product": "xyz", "score": 5}]},
    {"_id": 2, "results": [{"product": "abc", "score": 8}, {"product": "xyz", "score": 7}]},
    {"_id": 3, "results": [{"product": "abc", "score": 7}, {"product": "xyz", "score": 8}]},
    {"_id": 4, "results": [{"product": "abc", "score": 7}, {"product": "def", "score": 8}]},
    {"_id": 5, "results": {"product": "xyz", "score": 7}},
]


def test_elem_match_operator_form_tests_each_element() -> None:
    """An element both >= 80 and < 85 (manual: _id 1, for its 82)."""
    assert selected({"results": {"$elemMatch": {"$gte": 80, "$lt": 85}}}, SCORES) == [1]


def test_elem_match_query_form_needs_one_element_meeting_every_condition() -> None:
    """An element with product xyz and score >= 8 (manual: _id 3); _id 5 is no array and never matches."""
    spec = {"results": {"$elemMatch": {"product": "xyz", "score": {"$gte": 8}}}}
    assert selected(spec, SURVEY) == [3]


def test_elem_match_single_condition_differs_from_a_dotted_path_only_on_non_arrays() -> None:
    """Manual: $elemMatch {product: xyz} and "results.product": xyz agree on arrays; _id 5 only the latter."""
    assert selected({"results": {"$elemMatch": {"product": "xyz"}}}, SURVEY) == [1, 2, 3]
    assert selected({"results.product": "xyz"}, SURVEY) == [1, 2, 3, 5]


def test_elem_match_with_ne_is_not_a_dotted_ne() -> None:
    """Manual: $elemMatch {product: {$ne: xyz}} gives 1-4 (some product is not xyz); the dotted $ne only 4."""
    arrays = SURVEY[:4]
    assert selected({"results": {"$elemMatch": {"product": {"$ne": "xyz"}}}}, arrays) == [1, 2, 3, 4]
    assert selected({"results.product": {"$ne": "xyz"}}, arrays) == [4]


def test_elem_match_needs_every_condition_on_the_same_element() -> None:
    """Manual: {array: {$elemMatch: {value1: 1, value2: {$gt: 1}}}} needs one element with both."""
    spec = {"array": {"$elemMatch": {"value1": 1, "value2": {"$gt": 1}}}}
    assert matches(spec, {"array": [{"value1": 1, "value2": 0}, {"value1": 2, "value2": 2}]}) is False
    assert matches(spec, {"array": [{"value1": 1, "value2": 0}, {"value1": 1, "value2": 2}]}) is True


def test_elem_match_accepts_logical_operators_on_elements() -> None:
    """A query form may combine element conditions with $or, as any filter."""
    spec = {"results": {"$elemMatch": {"$or": [{"product": "def"}, {"score": {"$gte": 10}}]}}}
    assert selected(spec, SURVEY) == [1, 4]


def test_size_matches_arrays_of_exactly_that_length() -> None:
    """Manual: $size 2 returns [red, green] and [apple, lime], not {field: fruit} nor three elements."""
    collection = [
        {"_id": 1, "field": ["red", "green"]},
        {"_id": 2, "field": ["apple", "lime"]},
        {"_id": 3, "field": "fruit"},
        {"_id": 4, "field": ["orange", "lemon", "grapefruit"]},
        {"_id": 5},
        {"_id": 6, "field": ["one"]},
    ]
    assert selected({"field": {"$size": 2}}, collection) == [1, 2]
    assert selected({"field": {"$size": 1}}, collection) == [6]
    assert selected({"field": {"$size": 0}}, [{"_id": 1, "field": []}, {"_id": 2}]) == [1]


ADDRESS_BOOK = [  # $type; the shell's 43339374 is a double, NumberLong/NumberInt are integers
    {"_id": 1, "zipCode": "90698345"},
    {"_id": 2, "zipCode": 43339374.0},
    {"_id": 3, "zipCode": 3921412},
    {"_id": 4, "zipCode": 88602117},
    {"_id": 5, "zipCode": ["834847278", "1893289032"]},
]
GRADES = [
    {"_id": 1, "classAverage": 87.333333333333333},
    {"_id": 2, "classAverage": "83.52"},
    {"_id": 3, "classAverage": "94.06"},
    {"_id": 4, "classAverage": 93},
]
SENSOR_READINGS = [
    {"_id": 1, "readings": [25, 23, ["Warn: High Temp!", 55], ["ERROR: SYSTEM SHUTDOWN!", 66]]},
    {"_id": 2, "readings": [25, 25, 24, 23]},
    {"_id": 3, "readings": [22, 24, []]},
    {"_id": 4, "readings": []},
    {"_id": 5, "readings": 24},
]


@pytest.mark.parametrize("operand", [2, "string"])
def test_type_string_also_matches_arrays_holding_a_string(operand: object) -> None:
    """Manual: $type 2 / "string" returns _id 1 and the array of strings _id 5."""
    assert selected({"zipCode": {"$type": operand}}, ADDRESS_BOOK) == [1, 5]


@pytest.mark.parametrize("operand", [1, "double"])
def test_type_double(operand: object) -> None:
    """Manual: $type 1 / "double" returns _id 2."""
    assert selected({"zipCode": {"$type": operand}}, ADDRESS_BOOK) == [2]


def test_type_number_matches_every_number_type() -> None:
    """Manual: the "number" alias returns _id 2, 3 and 4."""
    assert selected({"zipCode": {"$type": "number"}}, ADDRESS_BOOK) == [2, 3, 4]


@pytest.mark.parametrize("operand", [[2, 1], ["string", "double"]])
def test_type_list_matches_any_listed_type(operand: object) -> None:
    """Manual: $type [2, 1] / ["string", "double"] returns _id 1, 2 and 3."""
    assert selected({"classAverage": {"$type": operand}}, GRADES) == [1, 2, 3]


def test_type_array_matches_the_field_itself() -> None:
    """Manual: $type "array" returns every document whose readings is an array, empty or not (1-4)."""
    assert selected({"readings": {"$type": "array"}}, SENSOR_READINGS) == [1, 2, 3, 4]


def test_type_null_matches_null_but_not_a_missing_field() -> None:
    """Manual (query for null): {item: {$type: 10}} matches only a null item, not a missing one."""
    assert selected({"item": {"$type": 10}}, [{"_id": 1, "item": None}, {"_id": 2}]) == [1]


@pytest.mark.parametrize(
    ("value", "names"),
    [(True, {"bool"}), ({"a": 1}, {"object"}), (7, {"int", "number"}), (2**31, {"long", "number"}),
     (-(2**31), {"int", "number"}), (7.5, {"double", "number"}), ("s", {"string"}), (None, {"null"})],
)  # fmt: skip
def test_type_of_json_values(value: object, names: set[str]) -> None:
    """JSON values have the types a driver stores them as: integers are int within 32 bits, else long."""
    every = ["double", "string", "object", "array", "bool", "null", "int", "long", "number"]
    assert {name for name in every if matches({"f": {"$type": name}}, {"f": value})} == names


QUANTITIES = [{"_id": 1, "qty": 0}, {"_id": 2, "qty": 5}, {"_id": 3, "qty": 12}]  # $mod


@pytest.mark.parametrize("divisor", [4, 4.0, 4.5, 4.99, -4])
def test_mod_selects_by_remainder(divisor: float) -> None:
    """Manual: qty mod 4 == 0 returns _id 1 and 3; a fraction of 4 counts as 4, and -4 too (-0 is 0)."""
    assert selected({"qty": {"$mod": [divisor, 0]}}, QUANTITIES) == [1, 3]


def test_mod_remainder_is_negative_for_a_negative_dividend() -> None:
    """Manual: "When the dividend is negative, the remainder is also negative" (-5 mod 4 is -1)."""
    assert matches({"qty": {"$mod": [4, -1]}}, {"qty": -5}) is True
    assert matches({"qty": {"$mod": [4, 3]}}, {"qty": -5}) is False


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "12", True, None])
def test_mod_ignores_non_finite_and_non_numbers(value: object) -> None:
    """Manual: a NaN or Infinity field is not included; strings, booleans and null are no numbers."""
    assert matches({"qty": {"$mod": [4, 0]}}, {"qty": value}) is False


def test_mod_on_a_float_field_uses_its_whole_part() -> None:
    """A double value is truncated toward zero first, as Mongo converts it to a 64-bit integer."""
    assert matches({"qty": {"$mod": [4, 0]}}, {"qty": 12.9}) is True
    assert matches({"qty": {"$mod": [4, -1]}}, {"qty": -5.5}) is True


@pytest.mark.parametrize(
    "spec",
    [{"f": {"$all": ["x"]}}, {"f": {"$size": 0}}, {"f": {"$elemMatch": {"a": 1}}}, {"f": {"$type": "null"}},
     {"f": {"$mod": [2, 0]}}],
)  # fmt: skip
def test_new_operators_never_match_a_missing_field_and_not_inverts_them(spec: dict[str, Any]) -> None:
    """A missing field has no elements, size, type or remainder; $not of each therefore holds."""
    assert matches(spec, {}) is False
    ((field, condition),) = spec.items()
    assert matches({field: {"$not": condition}}, {}) is True


def test_all_with_null_matches_a_missing_field() -> None:
    """$all [null] is {f: null}, which matches null and a missing field."""
    assert matches({"f": {"$all": [None]}}, {}) is True
    assert matches({"f": {"$all": [None]}}, {"f": 1}) is False


def test_array_elements_are_matched_implicitly_by_type_and_mod_but_not_size() -> None:
    """$type and $mod look at each element of a list; $size and $elemMatch look at the list itself."""
    record = {"f": [3, "x", [1, 2]]}
    assert matches({"f": {"$type": "string"}}, record) is True
    assert matches({"f": {"$mod": [3, 0]}}, record) is True
    assert matches({"f": {"$size": 3}}, record) is True
    assert matches({"f": {"$size": 2}}, record) is False


def test_new_operators_follow_a_path_through_a_list_of_objects() -> None:
    """`grades.scores` reaches into every grade, as any dotted path does."""
    record = {"grades": [{"scores": [1, 2]}, {"scores": [3, 4, 5]}, {"kind": "x"}]}
    assert matches({"grades.scores": {"$size": 3}}, record) is True
    assert matches({"grades.scores": {"$elemMatch": {"$gt": 4}}}, record) is True
    assert matches({"grades.kind": {"$type": "string"}}, record) is True
    assert matches({"grades.scores": {"$all": [3, 5]}}, record) is True
    assert matches({"grades.scores": {"$all": [1, 5]}}, record) is True  # any value found, like $and of eqs


SIZE_NEEDS = "$size needs a whole number of elements (0 or more), got"
TYPE_NEEDS = "$type needs a type name such as 'string' or a type code, got"
MOD_NEEDS = "$mod needs [divisor, remainder]"
MOD_FINITE = "must be a finite number that fits in 64 bits"


@pytest.mark.parametrize(
    ("condition", "loc", "message"),
    [
        ({"$all": 5}, ("f", "$all"), "$all needs a list of values, got int"),
        ({"$all": [{"$gt": 1}]}, ("f", "$all", 0),
         "$all takes values or {$elemMatch: ...} conditions, not other operators"),
        ({"$all": [{"$elemMatch": {"a": 1}}, "x"]}, ("f", "$all"),
         "$all cannot mix {$elemMatch: ...} conditions with plain values"),
        ({"$size": -1}, ("f", "$size"), f"{SIZE_NEEDS} -1"),
        ({"$size": 2.5}, ("f", "$size"), f"{SIZE_NEEDS} 2.5"),
        ({"$size": "2"}, ("f", "$size"), f"{SIZE_NEEDS} '2'"),
        ({"$size": True}, ("f", "$size"), f"{SIZE_NEEDS} True"),
        ({"$elemMatch": [1]}, ("f", "$elemMatch"), "$elemMatch needs a mapping of conditions, got list"),
        ({"$elemMatch": {"$gte": 1, "a": 2}}, ("f", "$elemMatch", "a"),
         "cannot mix operators and plain keys in one condition"),
        ({"$elemMatch": {"a": {"$gtt": 1}}}, ("f", "$elemMatch", "a", "$gtt"),
         "unknown operator '$gtt'; did you mean '$gt'?"),
        ({"$type": "strin"}, ("f", "$type"), "unknown $type 'strin'; did you mean 'string'?"),
        ({"$type": "String"}, ("f", "$type"), "unknown $type 'String'; did you mean 'string'?"),
        ({"$type": 0}, ("f", "$type"), f"{TYPE_NEEDS} 0"),
        ({"$type": 2.5}, ("f", "$type"), f"{TYPE_NEEDS} 2.5"),
        ({"$type": []}, ("f", "$type"), "$type needs at least one type"),
        ({"$type": ["string", None]}, ("f", "$type", 1), f"{TYPE_NEEDS} null"),
        ({"$mod": "4"}, ("f", "$mod"), f"{MOD_NEEDS}, got str"),
        ({"$mod": [4]}, ("f", "$mod"), f"{MOD_NEEDS}: not enough elements (1)"),
        ({"$mod": []}, ("f", "$mod"), f"{MOD_NEEDS}: not enough elements (0)"),
        ({"$mod": [4, 1, 2, 3]}, ("f", "$mod"), f"{MOD_NEEDS}: too many elements (4)"),
        ({"$mod": ["4", 0]}, ("f", "$mod", 0), "$mod divisor must be a number, got str"),
        ({"$mod": [4, True]}, ("f", "$mod", 1), "$mod remainder must be a number, got bool"),
        ({"$mod": [float("nan"), 0]}, ("f", "$mod", 0), f"$mod divisor {MOD_FINITE}"),
        ({"$mod": [4, float("inf")]}, ("f", "$mod", 1), f"$mod remainder {MOD_FINITE}"),
        ({"$mod": [2**63, 0]}, ("f", "$mod", 0), f"$mod divisor {MOD_FINITE}"),
        ({"$mod": [0.5, 0]}, ("f", "$mod", 0),
         "$mod divisor cannot be 0 (a fraction counts as its whole part)"),
    ],
)  # fmt: skip
def test_wrong_operand_shapes_are_placed_compile_errors(
    condition: dict[str, Any], loc: tuple[str | int, ...], message: str
) -> None:
    """Each wrong operand is a compile error at its exact place in the spec, never a traceback."""
    assert problems_of({"f": condition}) == [(loc, message)]


# --- warnings ------------------------------------------------------------------------------------


def warnings_of(spec: object) -> list[tuple[tuple[str | int, ...], str]]:
    warnings: list[FilterProblem] = []
    compile_filter(spec, warnings=warnings)
    return [(warning.loc, warning.message) for warning in warnings]


def test_list_literal_warns_and_keeps_whole_list_equality() -> None:
    """`severity: [high, critical]` warns with the $in it probably meant, and still compares whole lists."""
    spec = {"severity": ["high", "critical"]}
    assert warnings_of(spec) == [
        (
            ("severity",),
            (
                'matches only a field equal to the whole list ["high","critical"]; to match any one of these '
                'values write {$in: ["high","critical"]} ({$eq: [...]} keeps whole-list equality, unwarned)'
            ),
        )
    ]
    assert matches(spec, {"severity": "high"}) is False
    assert matches(spec, {"severity": ["high", "critical"]}) is True


@pytest.mark.parametrize(
    "spec",
    [{"severity": {"$eq": ["high"]}}, {"severity": {"$in": ["high"]}}, {"tags": {"$all": [["a"]]}},
     {"severity": "high"}, {"f": {"$type": ["string", "number"]}}, {"tags": []}],
)  # fmt: skip
def test_no_warning_for_meant_forms(spec: dict[str, Any]) -> None:
    """Explicit $eq of a list, $in, $all, plain values and an empty list (an empty field) do not warn."""
    assert warnings_of(spec) == []


def test_warnings_are_placed_inside_logical_operators_and_elem_match() -> None:
    """A list literal anywhere is found, with its full place."""
    spec = {"$or": [{"a": 1}, {"b": {"$elemMatch": {"c": ["x", "y"]}}}]}
    assert [loc for loc, _ in warnings_of(spec)] == [("$or", 1, "b", "$elemMatch", "c")]


def test_type_no_json_value_has_warns() -> None:
    """$type date (or any BSON-only type) is accepted, as Mongo does, with a warning that it never matches."""
    assert warnings_of({"f": {"$type": ["string", "date", 127]}}) == [
        (("f", "$type", 1), "$type 'date' never matches a value of a JSON record"),
        (("f", "$type", 2), "$type 'maxKey' never matches a value of a JSON record"),
    ]
    assert matches({"f": {"$type": "date"}}, {"f": "2024-01-01"}) is False


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
    {"a": {"$all": [1, "x", [None]]}},
    {"a.b": {"$all": [{"$elemMatch": {"x": {"$gt": 0}}}]}},
    {"a": {"$size": 1}},
    {"a": {"$elemMatch": {"b": 1, "$or": [{"x": None}]}}},
    {"a": {"$elemMatch": {"$gt": 0, "$type": "string"}}},
    {"a.b": {"$type": ["string", "number", "array", "object", "null", "bool"]}},
    {"a": {"$mod": [3, 1]}},
    {"x": {"$not": {"$mod": [-2, 0], "$size": 0}}},
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
    assert message.startswith("unknown operator '$where'; known operators: $all, $and, $contains")


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


@settings(max_examples=300, deadline=None)
@given(values=st.lists(scalars, min_size=1, max_size=3), record=flat_records)
def test_all_is_an_and_of_equalities(values: list[Any], record: dict[str, Any]) -> None:
    """Manual: {tags: {$all: [ssl, security]}} is equivalent to {$and: [{tags: ssl}, {tags: security}]}."""
    spec = {"a": {"$all": values}}
    assert matches(spec, record) is matches({"$and": [{"a": value} for value in values]}, record)


# --- warnings reach the operator: `check` and the daemon's log --------------------------------------


def warned_pipeline(tmp_path: Path, url: str) -> Path:
    """A valid pipeline: its filter compares to a list literal, its mute (a JSON string) asks $type date."""
    route = {
        "name": "alerts",
        "tenant": "sim",
        "alerts": ["dlp"],
        "filter": {"severity": ["high", "critical"]},
        "mute": [
            {
                "name": "never",
                "start": "2026-01-01T00:00:00Z",
                "end": "2026-01-02T00:00:00Z",
                "filter": '{"timestamp": {"$type": "date"}}',
            }
        ],
        "sink": {"type": "file", "path": "out/alerts.cef"},
    }
    return write_pipeline(tmp_path / "pipeline.yaml", pipeline_config(tmp_path, url, [route]))


async def test_check_prints_warnings_with_their_place_and_exits_0(tmp_path: Path) -> None:
    """`check` prints each warning as file:line:col: path: warning: …, and the file still checks OK."""
    config = warned_pipeline(tmp_path, "https://acme.goskope.com")
    code, output = await run_cli("check", "-c", str(config), env={"SIM_TOKEN": SIM_TOKEN})
    assert code == 0, output
    lines = output.splitlines()
    assert any(line.endswith("1 stream(s) to pull, 2 warning(s)") for line in lines), output
    first, second = [line for line in lines if ": warning: " in line]
    place = rf"{re.escape(str(config))}:\d+:\d+: logs\.routes\[0\]"
    assert re.fullmatch(
        rf"{place}\.filter\.severity: warning: matches only a field equal to the whole list "
        r'\["high","critical"\]; .*\{\$in: \["high","critical"\]\}.*',
        first,
    ), first
    # a JSON-string filter is placed at its key, as its errors are
    assert re.fullmatch(
        rf"{place}\.mute\[0\]\.filter: warning: \$type 'date' never matches a value of a JSON record",
        second,
    ), second


async def test_daemon_logs_each_warning_once_at_start_and_at_reload(tmp_path: Path) -> None:
    """The daemon logs config.warning for each warning at start, and again when a reload loads the file."""
    async with backlog_simulator(SIM_TOKEN, 0) as sim:
        assert sim.url is not None
        config = warned_pipeline(tmp_path, sim.url)
        async with DaemonProcess(config, env={"SIM_TOKEN": SIM_TOKEN}) as daemon:
            await daemon.wait_for_event("config.warning", count=2)
            daemon.signal(signal.SIGHUP)
            await daemon.wait_for_event("daemon.reload_applied")
            warnings = daemon.events("config.warning")
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
    assert len(warnings) == 4
    assert [w["warning"].split(": warning: ")[0].rsplit(": ", 1)[1] for w in warnings] == [
        "logs.routes[0].filter.severity",
        "logs.routes[0].mute[0].filter",
    ] * 2
    assert all(w["file"] == str(config) for w in warnings)
