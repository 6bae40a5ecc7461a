"""Semantics of audiences and traits (SPEC §1–§2), each on a tiny hand-built dataset run on real DuckDB.

Every test lands a few Segment-shaped rows, computes as of `AS_OF` and asserts exact members or values.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engage_connectors.memory import MemoryConnector
from tests.conftest import Workspace

AS_OF = "2024-03-01T00:00:00"


@pytest.fixture
def ws(workspace: Workspace) -> Workspace:
    return workspace


def module_workspace(factory: pytest.TempPathFactory, name: str) -> Workspace:
    return Workspace(factory.mktemp(name) / "project")


def universe(ws: Workspace, key: str, as_of: str = AS_OF) -> set[str]:
    """The profiles the run computed a row for (the space's profiles)."""
    return set(ws.current(as_of)[key])


# -- event conditions: counts ---------------------------------------------------------------------------


def test_performed_defaults_to_at_least_one(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Buyers
        condition: {performed: Order Completed}
    """)
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u1", revenue=10.0)
    ws.track("Order Completed", "2024-02-02T00:00:00", user_id="u2", revenue=10.0)
    ws.track("Order Completed", "2024-02-03T00:00:00", user_id="u2", revenue=10.0)
    ws.track("Product Viewed", "2024-02-01T00:00:00", user_id="u3")
    assert ws.members("buyers", AS_OF) == {"u1", "u2"}
    assert ws.current(AS_OF)["buyers"]["u3"] is False


COUNTS = {
    "at_least_2": ("at_least: 2", {"u2", "u3"}),
    "at_least_0": ("at_least: 0", {"u0", "u1", "u2", "u3"}),
    "at_most_2": ("at_most: 2", {"u0", "u1", "u2"}),
    "at_most_0": ("at_most: 0", {"u0"}),
    "exactly_2": ("exactly: 2", {"u2"}),
    "exactly_0": ("exactly: 0", {"u0"}),
}


@pytest.fixture(scope="module")
def counts_current(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    ws = module_workspace(tmp_path_factory, "counts")
    ws.define(
        "---\n".join(
            f"kind: audience\nname: {name}\ncondition: {{performed: Order Completed, {count}}}\n"
            for name, (count, _) in COUNTS.items()
        )
    )
    ws.page("2024-02-01T00:00:00", user_id="u0", name="Home")
    for user, n in (("u1", 1), ("u2", 2), ("u3", 3)):
        for i in range(n):
            ws.track("Order Completed", f"2024-02-0{i + 1}T00:00:00", user_id=user, revenue=10.0)
    return ws.current(AS_OF)


@pytest.mark.parametrize("name", list(COUNTS))
def test_count_bounds(counts_current: dict[str, dict[str, Any]], name: str) -> None:
    assert {p for p, v in counts_current[name].items() if v} == COUNTS[name][1]


def test_at_most_matches_every_profile_of_the_space_and_no_one_else(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Few Orders
        condition: {performed: Order Completed, at_most: 2}
    """)
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u_buyer", revenue=1.0)
    ws.track("Order Completed", "2024-02-02T00:00:00", user_id="u_many", revenue=1.0)
    ws.track("Order Completed", "2024-02-03T00:00:00", user_id="u_many", revenue=1.0)
    ws.track("Order Completed", "2024-02-04T00:00:00", user_id="u_many", revenue=1.0)
    ws.identify("2024-02-01T00:00:00", user_id="u_identified", plan="free")
    ws.page("2024-02-01T00:00:00", user_id="u_paged", name="Home")
    ws.track("Signed Up", "2024-02-01T00:00:00", user_id="u_other_event")
    # Only rows after the as-of: not a profile of the space at this as-of.
    ws.track("Signed Up", "2024-03-01T00:00:01", user_id="u_future")
    ws.identify("2024-03-05T00:00:00", user_id="u_future_identify", plan="free")
    members = ws.members("few_orders", AS_OF)
    assert members == {"u_buyer", "u_identified", "u_paged", "u_other_event"}
    assert universe(ws, "few_orders") == members | {"u_many"}


def test_not_performed(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Never Ordered
        condition: {not_performed: Order Completed}
        ---
        kind: audience
        name: No Big Order
        condition:
          not_performed: Order Completed
          where:
            - {property: revenue, op: gte, value: 100}
    """)
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u_small", revenue=20.0)
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u_big", revenue=150.0)
    ws.page("2024-02-01T00:00:00", user_id="u_visitor", name="Home")
    ws.track("Order Completed", "2024-03-02T00:00:00", user_id="u_late", revenue=500.0)
    ws.page("2024-02-01T00:00:00", user_id="u_late", name="Home")
    assert ws.members("never_ordered", AS_OF) == {"u_visitor", "u_late"}
    assert ws.members("no_big_order", AS_OF) == {"u_small", "u_visitor", "u_late"}


def test_zero_counts_with_a_window(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Lapsed
        condition: {not_performed: Order Completed, within: 30d}
        ---
        kind: audience
        name: At Most One Recent
        condition: {performed: Order Completed, at_most: 1, within: 30d}
    """)
    ws.track("Order Completed", "2024-01-01T00:00:00", user_id="u_old", revenue=1.0)
    ws.track("Order Completed", "2024-01-02T00:00:00", user_id="u_old", revenue=1.0)
    ws.track("Order Completed", "2024-02-20T00:00:00", user_id="u_recent", revenue=1.0)
    ws.track("Order Completed", "2024-02-20T00:00:00", user_id="u_twice", revenue=1.0)
    ws.track("Order Completed", "2024-02-21T00:00:00", user_id="u_twice", revenue=1.0)
    assert ws.members("lapsed", AS_OF) == {"u_old"}
    assert ws.members("at_most_one_recent", AS_OF) == {"u_old", "u_recent"}


def test_counts_only_events_passing_every_where_filter(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Repeat Big Buyers
        condition:
          performed: Order Completed
          at_least: 2
          where:
            - {property: revenue, op: gt, value: 50}
            - {property: currency, op: eq, value: USD}
        ---
        kind: audience
        name: Exactly One Big
        condition:
          performed: Order Completed
          exactly: 1
          where:
            - {property: revenue, op: gt, value: 50}
    """)
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u1", revenue=60.0, currency="USD")
    ws.track("Order Completed", "2024-02-02T00:00:00", user_id="u1", revenue=70.0, currency="USD")
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u2", revenue=60.0, currency="USD")
    ws.track("Order Completed", "2024-02-02T00:00:00", user_id="u2", revenue=70.0, currency="EUR")
    ws.track("Order Completed", "2024-02-03T00:00:00", user_id="u2", revenue=10.0, currency="USD")
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u3", revenue=50.0, currency="USD")
    ws.track("Order Completed", "2024-02-02T00:00:00", user_id="u3", revenue=55.0, currency="USD")
    assert ws.members("repeat_big_buyers", AS_OF) == {"u1"}
    assert ws.members("exactly_one_big", AS_OF) == {"u3"}


# -- windows ------------------------------------------------------------------------------------------


def test_within_days_excludes_the_exact_edge_and_includes_one_second_later(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Recent
        condition: {performed: Order Completed, within: 7d}
    """)
    ws.track("Order Completed", "2024-02-23T00:00:00", user_id="u_edge", revenue=1.0)
    ws.track("Order Completed", "2024-02-23T00:00:01", user_id="u_inside", revenue=1.0)
    ws.track("Order Completed", "2024-03-01T00:00:00", user_id="u_at_as_of", revenue=1.0)
    ws.track("Order Completed", "2024-03-01T00:00:01", user_id="u_after", revenue=1.0)
    ws.page("2024-02-01T00:00:00", user_id="u_after", name="Home")
    assert ws.members("recent", AS_OF) == {"u_inside", "u_at_as_of"}


def test_within_hours_and_weeks(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Last Day
        condition: {performed: Order Completed, within: 24h}
        ---
        kind: audience
        name: Last Two Weeks
        condition: {performed: Order Completed, within: 2w}
    """)
    ws.track("Order Completed", "2024-02-29T00:00:00", user_id="u_day_edge", revenue=1.0)
    ws.track("Order Completed", "2024-02-29T00:00:01", user_id="u_in_day", revenue=1.0)
    ws.track("Order Completed", "2024-02-16T00:00:00", user_id="u_weeks_edge", revenue=1.0)
    ws.track("Order Completed", "2024-02-16T00:00:01", user_id="u_in_weeks", revenue=1.0)
    assert ws.members("last_day", AS_OF) == {"u_in_day"}
    assert ws.members("last_two_weeks", AS_OF) == {"u_day_edge", "u_in_day", "u_in_weeks"}


def test_events_after_the_as_of_are_invisible(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Buyers
        condition: {performed: Order Completed}
        ---
        kind: trait
        name: Order Count
        type: count
        event: Order Completed
    """)
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u1", revenue=1.0)
    ws.track("Order Completed", "2024-03-02T00:00:00", user_id="u1", revenue=1.0)
    ws.track("Order Completed", "2024-03-02T00:00:00", user_id="u_future", revenue=1.0)
    assert ws.members("buyers", AS_OF) == {"u1"}
    assert ws.current(AS_OF)["order_count"] == {"u1": 1}
    assert ws.current("2024-03-03T00:00:00")["order_count"] == {"u1": 2, "u_future": 1}


def test_between_is_inclusive_at_both_ends(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: February Ten
        condition:
          performed: Order Completed
          between: ["2024-02-01T00:00:00", "2024-02-10T00:00:00"]
        ---
        kind: trait
        name: Feb Orders
        type: count
        event: Order Completed
        between: ["2024-02-01T00:00:00Z", "2024-02-10T00:00:00Z"]
        ---
        kind: audience
        name: February Ten Offset
        condition:
          performed: Order Completed
          between: ["2024-02-01T02:00:00+02:00", "2024-02-09T19:00:00-05:00"]
    """)
    ws.track("Order Completed", "2024-01-31T23:59:59", user_id="u_before", revenue=1.0)
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u_start", revenue=1.0)
    ws.track("Order Completed", "2024-02-10T00:00:00", user_id="u_end", revenue=1.0)
    ws.track("Order Completed", "2024-02-10T00:00:01", user_id="u_after", revenue=1.0)
    assert ws.members("february_ten", AS_OF) == {"u_start", "u_end"}
    # ISO times with an offset name the same instants in UTC, the warehouse's time.
    assert ws.members("february_ten_offset", AS_OF) == {"u_start", "u_end"}
    assert ws.current(AS_OF)["feb_orders"] == {"u_before": 0, "u_start": 1, "u_end": 1, "u_after": 0}


def test_between_still_hides_rows_after_the_as_of(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: In Range
        condition:
          performed: Order Completed
          between: ["2024-02-01T00:00:00", "2024-04-01T00:00:00"]
    """)
    ws.track("Order Completed", "2024-03-15T00:00:00", user_id="u_future", revenue=1.0)
    ws.track("Order Completed", "2024-02-15T00:00:00", user_id="u_past", revenue=1.0)
    assert ws.members("in_range", AS_OF) == {"u_past"}


# -- property filters ---------------------------------------------------------------------------------

OPS: dict[str, tuple[str, str, Any, set[str]]] = {
    # key: (property, op, value, expected members). u_null has the event with null properties.
    "eq_text": ("plan", "eq", "basic plan", {"u_basic"}),
    "eq_number": ("revenue", "eq", 100, {"u_pro"}),
    "eq_bigint": ("quantity", "eq", 1, {"u_basic"}),
    "eq_bool": ("gift", "eq", True, {"u_pro"}),
    "neq_text": ("plan", "neq", "basic plan", {"u_pro"}),
    "neq_number": ("revenue", "neq", 50, {"u_pro"}),
    "gt": ("revenue", "gt", 50, {"u_pro"}),
    "gte": ("revenue", "gte", 50, {"u_pro", "u_basic"}),
    "lt": ("revenue", "lt", 100, {"u_basic"}),
    "lte": ("revenue", "lte", 100, {"u_pro", "u_basic"}),
    "gt_bigint": ("quantity", "gt", 1, {"u_pro"}),
    "in_text": ("plan", "in", ["basic plan", "enterprise"], {"u_basic"}),
    "in_number": ("quantity", "in", [1, 2], {"u_basic"}),
    "not_in_text": ("plan", "not_in", ["basic plan"], {"u_pro"}),
    "not_in_number": ("quantity", "not_in", [3], {"u_basic"}),
    "contains_upper": ("plan", "contains", "Plan", {"u_pro"}),
    "contains_lower": ("plan", "contains", "plan", {"u_basic"}),
    "contains_middle": ("plan", "contains", "o P", {"u_pro"}),
    "not_contains": ("plan", "not_contains", "Plan", {"u_basic"}),
    "starts_with": ("plan", "starts_with", "Pro", {"u_pro"}),
    "starts_with_case": ("plan", "starts_with", "pro", set()),
    "ends_with": ("plan", "ends_with", "plan", {"u_basic"}),
    "exists": ("plan", "exists", None, {"u_pro", "u_basic"}),
    "not_exists": ("plan", "not_exists", None, {"u_null"}),
    "not_exists_number": ("revenue", "not_exists", None, {"u_null"}),
    "dotted_eq": ("product.sku", "eq", "SKU-1", {"u_pro"}),
    "dotted_starts_with": ("product.sku", "starts_with", "SKU", {"u_pro", "u_basic"}),
    "dotted_not_exists": ("product.sku", "not_exists", None, {"u_null"}),
    "timestamp_gt": ("delivered_at", "gt", "2024-02-10T00:00:00", {"u_pro"}),
    "timestamp_lte": ("delivered_at", "lte", "2024-02-10T00:00:00", {"u_basic"}),
}


def _filter_yaml(name: str, prop: str, op: str, value: Any) -> str:
    if value is None:
        clause = f"{{property: {prop}, op: {op}}}"
    elif isinstance(value, bool):
        clause = f"{{property: {prop}, op: {op}, value: {str(value).lower()}}}"
    elif isinstance(value, list):
        items = ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value)
        clause = f"{{property: {prop}, op: {op}, value: [{items}]}}"
    elif isinstance(value, str):
        clause = f'{{property: {prop}, op: {op}, value: "{value}"}}'
    else:
        clause = f"{{property: {prop}, op: {op}, value: {value}}}"
    return f"kind: audience\nkey: {name}\nname: {name}\ncondition:\n  performed: Order Completed\n  where:\n    - {clause}\n"


@pytest.fixture(scope="module")
def ops_current(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    ws = module_workspace(tmp_path_factory, "ops")
    ws.define("---\n".join(_filter_yaml(name, *spec[:3]) for name, spec in OPS.items()))
    types = {"plan": "VARCHAR", "revenue": "DOUBLE", "quantity": "BIGINT", "gift": "BOOLEAN",
             "product_sku": "VARCHAR", "delivered_at": "TIMESTAMP"}  # fmt: skip
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u_pro", types=types, plan="Pro Plan",
             revenue=100.0, quantity=3, gift=True, product_sku="SKU-1",
             delivered_at="2024-02-15T00:00:00")  # fmt: skip
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u_basic", types=types, plan="basic plan",
             revenue=50.0, quantity=1, gift=False, product_sku="SKU-2",
             delivered_at="2024-02-10T00:00:00")  # fmt: skip
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u_null", types=types, plan=None,
             revenue=None, quantity=None, gift=None, product_sku=None, delivered_at=None)  # fmt: skip
    ws.page("2024-02-01T00:00:00", user_id="u_no_orders", name="Home")
    return ws.current(AS_OF)


@pytest.mark.parametrize("name", list(OPS))
def test_property_filter_op(ops_current: dict[str, dict[str, Any]], name: str) -> None:
    expected = OPS[name][3]
    assert {p for p, v in ops_current[name].items() if v} == expected
    # Every profile of the space is computed; a profile without the event never matches.
    assert ops_current[name]["u_no_orders"] is False


# -- aggregate conditions -----------------------------------------------------------------------------

AGGREGATES: dict[str, tuple[str, str, float, set[str]]] = {
    # u1 orders 60 + 50 (sum 110, avg 55, min 50, max 60); u2 one order of 100; u3 no orders; u4 only a
    # 5.0 order outside the where filter used below (coupon), so nothing qualifies for it.
    "sum_gt": ("sum", "gt", 100, {"u1"}),
    "sum_gte": ("sum", "gte", 100, {"u1", "u2"}),
    "sum_lt": ("sum", "lt", 105, {"u2"}),
    "sum_lte": ("sum", "lte", 110, {"u1", "u2"}),
    "sum_eq": ("sum", "eq", 110, {"u1"}),
    "sum_eq_zero": ("sum", "eq", 0, set()),
    "sum_neq": ("sum", "neq", 110, {"u2"}),
    "avg_eq": ("avg", "eq", 55, {"u1"}),
    "avg_gt": ("avg", "gt", 55, {"u2"}),
    "min_lt": ("min", "lt", 60, {"u1"}),
    "min_gte": ("min", "gte", 50, {"u1", "u2"}),
    "max_eq": ("max", "eq", 60, {"u1"}),
    "max_lte": ("max", "lte", 60, {"u1"}),
    "max_neq": ("max", "neq", 60, {"u2"}),
}


@pytest.fixture(scope="module")
def aggregates_current(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    ws = module_workspace(tmp_path_factory, "aggregates")
    docs = [
        f"kind: audience\nname: {name}\ncondition:\n  performed: Order Completed\n  {fn}: revenue\n"
        f"  {cmp}: {value}\n  where:\n    - {{property: coupon, op: not_exists}}\n"
        for name, (fn, cmp, value, _) in AGGREGATES.items()
    ]
    docs.append(
        "kind: audience\nname: not_small_spender\ncondition:\n  not:\n    performed: Order Completed\n"
        "    sum: revenue\n    lt: 70\n    where:\n      - {property: coupon, op: not_exists}\n"
    )
    docs.append(
        "kind: audience\nname: not_big_average\ncondition:\n  not:\n    performed: Order Completed\n"
        "    avg: revenue\n    gte: 100\n    within: 7d\n"
    )
    ws.define("---\n".join(docs))
    types = {"revenue": "DOUBLE", "coupon": "VARCHAR"}
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u1", types=types, revenue=60.0, coupon=None)
    ws.track("Order Completed", "2024-02-02T00:00:00", user_id="u1", types=types, revenue=50.0, coupon=None)
    ws.track("Order Completed", "2024-02-03T00:00:00", user_id="u2", types=types, revenue=100.0, coupon=None)
    ws.page("2024-02-01T00:00:00", user_id="u3", name="Home")
    ws.track("Order Completed", "2024-02-03T00:00:00", user_id="u4", types=types, revenue=5.0, coupon="X")
    return ws.current(AS_OF)


@pytest.mark.parametrize("name", list(AGGREGATES))
def test_aggregate_condition(aggregates_current: dict[str, dict[str, Any]], name: str) -> None:
    members = {p for p, v in aggregates_current[name].items() if v}
    assert members == AGGREGATES[name][3]
    # No qualifying event (u3: none at all; u4: none passing the filter) → false, whatever the comparator.
    assert not (members & {"u3", "u4"})


def test_not_of_an_aggregate_over_no_events_is_true(aggregates_current: dict[str, dict[str, Any]]) -> None:
    members = {p for p, v in aggregates_current["not_small_spender"].items() if v}
    assert members == {"u1", "u2", "u3", "u4"}
    # Nobody ordered within 7 days of the as-of: the inner aggregate is false for everyone.
    assert {p for p, v in aggregates_current["not_big_average"].items() if v} == {"u1", "u2", "u3", "u4"}


# -- trait conditions ---------------------------------------------------------------------------------


def test_custom_trait_is_the_latest_non_null_value(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Pro Users
        condition: {trait: plan, op: eq, value: pro}
        ---
        kind: audience
        name: Free Users
        condition: {trait: plan, op: eq, value: free}
    """)
    ws.identify("2024-02-01T00:00:00", user_id="u1", plan="free")
    ws.identify("2024-02-05T00:00:00", user_id="u1", plan="pro")
    ws.identify("2024-02-06T00:00:00", user_id="u1", plan=None)  # a newer null does not erase it
    ws.identify("2024-03-02T00:00:00", user_id="u1", plan="free")  # after the as-of: invisible
    ws.identify("2024-02-05T00:00:00", user_id="u2", plan="pro")
    ws.identify("2024-02-01T00:00:00", user_id="u2", plan="free")  # older, landed later
    assert ws.members("pro_users", AS_OF) == {"u1", "u2"}
    assert ws.members("free_users", AS_OF) == set()
    assert ws.members("free_users", "2024-03-03T00:00:00") == {"u1"}


def test_custom_trait_numeric_comparisons(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Adults
        condition: {trait: age, op: gte, value: 18}
        ---
        kind: audience
        name: Not Thirty
        condition: {trait: age, op: neq, value: 30}
    """)
    ws.identify("2024-02-01T00:00:00", user_id="u_minor", age=17)
    ws.identify("2024-02-01T00:00:00", user_id="u_grown", age=12)
    ws.identify("2024-02-20T00:00:00", user_id="u_grown", age=18)
    ws.identify("2024-02-01T00:00:00", user_id="u_thirty", age=30)
    ws.identify("2024-02-01T00:00:00", user_id="u_unknown", age=None)
    assert ws.members("adults", AS_OF) == {"u_grown", "u_thirty"}
    assert ws.members("not_thirty", AS_OF) == {"u_minor", "u_grown"}


def test_custom_trait_ties_go_to_later_received_at_then_larger_id(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Gold
        condition: {trait: tier, op: eq, value: gold}
    """)
    when = "2024-02-01T00:00:00"
    # Same timestamp: the later received_at wins, whatever the id.
    ws.identify(when, user_id="u1", received_at="2024-02-01T00:00:09", row_id="a", tier="gold")
    ws.identify(when, user_id="u1", received_at="2024-02-01T00:00:05", row_id="z", tier="silver")
    # Same timestamp and received_at: the larger id wins.
    ws.identify(when, user_id="u2", received_at="2024-02-01T00:00:05", row_id="b", tier="silver")
    ws.identify(when, user_id="u2", received_at="2024-02-01T00:00:05", row_id="c", tier="gold")
    ws.identify(when, user_id="u3", received_at="2024-02-01T00:00:05", row_id="e", tier="silver")
    ws.identify(when, user_id="u3", received_at="2024-02-01T00:00:05", row_id="d", tier="gold")
    # The timestamp decides before received_at.
    ws.identify(when, user_id="u4", received_at="2024-02-09T00:00:00", row_id="f", tier="gold")
    ws.identify("2024-02-01T00:00:01", user_id="u4", received_at="2024-02-02T00:00:00", row_id="g",
                tier="silver")  # fmt: skip
    assert ws.members("gold", AS_OF) == {"u1", "u2"}


NULL_TRAIT_OPS = {
    "t_eq": ("eq", '"x"'),
    "t_neq": ("neq", '"x"'),
    "t_gt": ("gt", "0"),
    "t_gte": ("gte", "0"),
    "t_lt": ("lt", '"zzz"'),
    "t_lte": ("lte", "1000"),
    "t_in": ("in", '["x", "gold"]'),
    "t_not_in": ("not_in", '["x"]'),
    "t_contains": ("contains", '"o"'),
    "t_not_contains": ("not_contains", '"x"'),
    "t_starts_with": ("starts_with", '"g"'),
    "t_ends_with": ("ends_with", '"d"'),
    "t_exists": ("exists", None),
    "t_not_exists": ("not_exists", None),
}


@pytest.fixture(scope="module")
def null_trait_current(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    ws = module_workspace(tmp_path_factory, "null_trait")
    docs = []
    for name, (op, value) in NULL_TRAIT_OPS.items():
        tail = "" if value is None else f", value: {value}"
        docs.append(f"kind: audience\nname: {name}\ncondition: {{trait: tier, op: {op}{tail}}}\n")
        docs.append(f"kind: audience\nname: c_{name}\ncondition: {{trait: best_order, op: {op}{tail}}}\n")
    docs.append("kind: trait\nname: best_order\ntype: max\nevent: Order Completed\nproperty: revenue\n")
    ws.define("---\n".join(docs))
    ws.identify("2024-02-01T00:00:00", user_id="u_gold", tier="gold")
    ws.identify("2024-02-01T00:00:00", user_id="u_null", tier=None)
    ws.identify("2024-02-01T00:00:00", user_id="u_null", tier=None)
    ws.page("2024-02-01T00:00:00", user_id="u_none", name="Home")
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u_gold", revenue=500.0)
    return ws.current(AS_OF)


@pytest.mark.parametrize("name", list(NULL_TRAIT_OPS))
def test_null_trait_fails_every_op_but_not_exists(
    null_trait_current: dict[str, dict[str, Any]], name: str
) -> None:
    expected = name == "t_not_exists"
    for key in (name, f"c_{name}"):  # a custom trait, and a computed trait with no value
        assert null_trait_current[key]["u_null" if key == name else "u_none"] is expected, key
        assert null_trait_current[key]["u_none"] is expected, key


def test_trait_condition_on_a_custom_trait_with_values(null_trait_current: dict[str, dict[str, Any]]) -> None:
    expected = {
        "t_eq": False, "t_neq": True, "t_in": True, "t_not_in": True, "t_contains": True,
        "t_not_contains": True, "t_starts_with": True, "t_ends_with": True, "t_exists": True,
        "t_not_exists": False, "t_lt": True,
    }  # fmt: skip
    got = {k: null_trait_current[k]["u_gold"] for k in expected}
    assert got == expected
    assert null_trait_current["c_t_gt"]["u_gold"] is True
    assert null_trait_current["c_t_lte"]["u_gold"] is True


def test_trait_condition_on_a_computed_trait(ws: Workspace) -> None:
    ws.define("""
        kind: trait
        name: Order Count
        type: count
        event: Order Completed
        ---
        kind: audience
        name: Frequent
        condition: {trait: order_count, op: gte, value: 2}
        ---
        kind: audience
        name: Zero Orders
        condition: {trait: order_count, op: eq, value: 0}
    """)
    for user, n in (("u1", 1), ("u2", 2), ("u3", 3)):
        for i in range(n):
            ws.track("Order Completed", f"2024-02-0{i + 1}T00:00:00", user_id=user, revenue=1.0)
    ws.track("Order Completed", "2024-03-05T00:00:00", user_id="u1", revenue=1.0)  # after the as-of
    ws.page("2024-02-01T00:00:00", user_id="u4", name="Home")
    assert ws.members("frequent", AS_OF) == {"u2", "u3"}
    # u4 has no Order Completed at all: the count trait is null for it, so eq 0 fails.
    assert ws.members("zero_orders", AS_OF) == set()


def test_trait_condition_on_an_sql_trait_column(ws: Workspace) -> None:
    ws.define("""
        kind: sql_trait
        name: Web Stats
        sql: |
          SELECT user_id, COUNT(*) AS web_orders, MAX(plan) AS web_plan
          FROM website.order_completed
          WHERE user_id IS NOT NULL
          GROUP BY user_id
        ---
        kind: audience
        name: Web Repeaters
        condition: {trait: web_orders, op: gt, value: 1}
        ---
        kind: audience
        name: No Web Plan
        condition: {trait: web_plan, op: not_exists}
        ---
        kind: audience
        name: Not Pro On Web
        condition: {trait: web_plan, op: neq, value: pro}
    """)
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u1", plan="pro")
    ws.track("Order Completed", "2024-02-02T00:00:00", user_id="u1", plan="pro")
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u2", plan="free")
    ws.page("2024-02-01T00:00:00", user_id="u3", name="Home")
    assert ws.members("web_repeaters", AS_OF) == {"u1"}
    assert ws.members("no_web_plan", AS_OF) == {"u3"}
    assert ws.members("not_pro_on_web", AS_OF) == {"u2"}


# -- membership and combinators -----------------------------------------------------------------------


def test_in_audience_and_not_in_audience(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Buyers
        condition: {performed: Order Completed}
        ---
        kind: audience
        name: Buyers Again
        condition: {in_audience: buyers}
        ---
        kind: audience
        name: Non Buyers
        condition: {not_in_audience: buyers}
    """)
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u1", revenue=1.0)
    ws.track("Product Viewed", "2024-02-01T00:00:00", user_id="u2")
    ws.identify("2024-02-01T00:00:00", user_id="u3", plan="free")
    ws.track("Order Completed", "2024-03-02T00:00:00", user_id="u3", revenue=1.0)
    assert ws.members("buyers_again", AS_OF) == {"u1"}
    assert ws.members("non_buyers", AS_OF) == {"u2", "u3"}


def test_nested_combinators(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Engaged Non Buyers
        condition:
          all:
            - any:
                - {performed: Product Viewed, at_least: 2}
                - {performed: Product Added}
            - not:
                performed: Order Completed
        ---
        kind: audience
        name: Either Or Neither
        condition:
          any:
            - not:
                any:
                  - {performed: Product Viewed}
                  - {performed: Order Completed}
            - all:
                - {performed: Product Added}
                - {performed: Order Completed}
    """)
    ws.track("Product Viewed", "2024-02-01T00:00:00", user_id="u_two_views")
    ws.track("Product Viewed", "2024-02-02T00:00:00", user_id="u_two_views")
    ws.track("Product Viewed", "2024-02-01T00:00:00", user_id="u_one_view")
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u_added")
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u_added_bought")
    ws.track("Order Completed", "2024-02-02T00:00:00", user_id="u_added_bought")
    ws.page("2024-02-01T00:00:00", user_id="u_idle", name="Home")
    assert ws.members("engaged_non_buyers", AS_OF) == {"u_two_views", "u_added"}
    assert ws.members("either_or_neither", AS_OF) == {"u_added", "u_added_bought", "u_idle"}


# -- include_anonymous --------------------------------------------------------------------------------


def test_include_anonymous(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Viewers
        condition: {performed: Product Viewed}
        ---
        kind: audience
        name: All Viewers
        include_anonymous: true
        condition: {performed: Product Viewed}
        ---
        kind: audience
        name: Anonymous Non Buyers
        include_anonymous: true
        condition: {not_performed: Order Completed}
    """)
    ws.track("Product Viewed", "2024-02-01T00:00:00", user_id="u1", anonymous_id="a_u1")
    ws.track("Product Viewed", "2024-02-01T00:00:00", anonymous_id="a1")
    ws.page("2024-02-01T00:00:00", anonymous_id="a2", name="Home")
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u2")
    assert ws.members("viewers", AS_OF) == {"u1"}
    assert ws.members("all_viewers", AS_OF) == {"u1", "a1"}
    assert ws.members("anonymous_non_buyers", AS_OF) == {"u1", "a1", "a2"}


# -- funnels ------------------------------------------------------------------------------------------


def test_funnel_then_performed_within(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Added Then Bought
        condition:
          funnel:
            - performed: Product Added
            - then_performed: Order Completed
              within: 1d
    """)
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u_fast")
    ws.track("Order Completed", "2024-02-01T12:00:00", user_id="u_fast")
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u_slow")
    ws.track("Order Completed", "2024-02-03T00:00:00", user_id="u_slow")
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u_reversed")
    ws.track("Product Added", "2024-02-01T12:00:00", user_id="u_reversed")
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u_same_time")
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u_same_time")
    ws.track("Product Added", "2024-02-29T20:00:00", user_id="u_after_as_of")
    ws.track("Order Completed", "2024-03-01T01:00:00", user_id="u_after_as_of")
    assert ws.members("added_then_bought", AS_OF) == {"u_fast"}


def test_funnel_step_at_the_window_edge(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Quick Buyers
        condition:
          funnel:
            - performed: Product Added
            - then_performed: Order Completed
              within: 2h
    """)
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u_edge")
    ws.track("Order Completed", "2024-02-01T02:00:00", user_id="u_edge")
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u_past_edge")
    ws.track("Order Completed", "2024-02-01T02:00:01", user_id="u_past_edge")
    assert ws.members("quick_buyers", AS_OF) == {"u_edge"}


def test_funnel_then_not_performed(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Cart Abandoners
        condition:
          funnel:
            - performed: Product Added
            - then_not_performed: Order Completed
              within: 1d
    """)
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u_abandoned")
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u_bought")
    ws.track("Order Completed", "2024-02-01T06:00:00", user_id="u_bought")
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u_bought_late")
    ws.track("Order Completed", "2024-02-02T00:00:01", user_id="u_bought_late")
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u_bought_at_edge")
    ws.track("Order Completed", "2024-02-02T00:00:00", user_id="u_bought_at_edge")
    # The range is capped at the as-of: a parent one hour old with nothing after it qualifies.
    ws.track("Product Added", "2024-02-29T23:00:00", user_id="u_recent")
    ws.track("Order Completed", "2024-02-29T20:00:00", user_id="u_bought_before")
    ws.track("Product Added", "2024-02-29T21:00:00", user_id="u_bought_before")
    ws.page("2024-02-01T00:00:00", user_id="u_no_parent", name="Home")
    assert ws.members("cart_abandoners", AS_OF) == {
        "u_abandoned",
        "u_bought_late",
        "u_recent",
        "u_bought_before",
    }


def test_funnel_step_without_within_runs_to_the_as_of(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Eventually Bought
        condition:
          funnel:
            - performed: Product Added
            - then_performed: Order Completed
        ---
        kind: audience
        name: Never Bought After
        condition:
          funnel:
            - performed: Product Added
            - then_not_performed: Order Completed
    """)
    ws.track("Product Added", "2024-01-01T00:00:00", user_id="u_late")
    ws.track("Order Completed", "2024-02-25T00:00:00", user_id="u_late")
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u_never")
    ws.track("Order Completed", "2024-01-01T00:00:00", user_id="u_never")
    ws.track("Order Completed", "2024-03-05T00:00:00", user_id="u_never")
    assert ws.members("eventually_bought", AS_OF) == {"u_late"}
    assert ws.members("never_bought_after", AS_OF) == {"u_never"}


def test_funnel_then_not_performed_counts_only_qualifying_events(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: No Big Order After Add
        condition:
          funnel:
            - performed: Product Added
            - then_not_performed: Order Completed
              within: 1d
              where:
                - {property: revenue, op: gte, value: 100}
    """)
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u_small")
    ws.track("Order Completed", "2024-02-01T02:00:00", user_id="u_small", revenue=10.0)
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u_big")
    ws.track("Order Completed", "2024-02-01T02:00:00", user_id="u_big", revenue=150.0)
    assert ws.members("no_big_order_after_add", AS_OF) == {"u_small"}


def test_funnel_every_parent_instance_counts(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Added Then Bought
        condition:
          funnel:
            - performed: Product Added
            - then_performed: Order Completed
              within: 1d
        ---
        kind: audience
        name: Added Not Bought
        condition:
          funnel:
            - performed: Product Added
            - then_not_performed: Order Completed
              within: 1d
    """)
    # An early parent fails (the order is 3 days later), a later one succeeds.
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u1")
    ws.track("Product Added", "2024-02-03T12:00:00", user_id="u1")
    ws.track("Order Completed", "2024-02-04T00:00:00", user_id="u1")
    # An early parent is followed by an order, a later one is not.
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u2")
    ws.track("Order Completed", "2024-02-01T01:00:00", user_id="u2")
    ws.track("Product Added", "2024-02-10T00:00:00", user_id="u2")
    # Controls: one parent, followed in time (u3) or not (u4).
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u3")
    ws.track("Order Completed", "2024-02-01T01:00:00", user_id="u3")
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u4")
    ws.track("Order Completed", "2024-02-04T00:00:00", user_id="u4")
    assert ws.members("added_then_bought", AS_OF) == {"u1", "u2", "u3"}
    assert ws.members("added_not_bought", AS_OF) == {"u1", "u2", "u4"}


def test_funnel_first_step_window_and_filters(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Recent Shoe Buyers
        condition:
          funnel:
            - performed: Product Added
              within: 7d
              where:
                - {property: category, op: eq, value: shoes}
            - then_performed: Order Completed
              within: 1d
              where:
                - {property: revenue, op: gte, value: 50}
    """)
    ws.track("Product Added", "2024-02-27T00:00:00", user_id="u_ok", category="shoes")
    ws.track("Order Completed", "2024-02-27T05:00:00", user_id="u_ok", revenue=80.0)
    ws.track("Product Added", "2024-02-27T00:00:00", user_id="u_hats", category="hats")
    ws.track("Order Completed", "2024-02-27T05:00:00", user_id="u_hats", revenue=80.0)
    ws.track("Product Added", "2024-02-27T00:00:00", user_id="u_cheap", category="shoes")
    ws.track("Order Completed", "2024-02-27T05:00:00", user_id="u_cheap", revenue=10.0)
    ws.track("Product Added", "2024-02-10T00:00:00", user_id="u_old", category="shoes")
    ws.track("Order Completed", "2024-02-10T05:00:00", user_id="u_old", revenue=80.0)
    assert ws.members("recent_shoe_buyers", AS_OF) == {"u_ok"}


def test_three_step_funnel_each_step_is_the_parent_of_the_next(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Viewed Added Bought
        condition:
          funnel:
            - performed: Product Viewed
            - then_performed: Product Added
              within: 1d
            - then_performed: Order Completed
              within: 1d
    """)
    # C is 40h after A but 20h after B: it counts from B.
    ws.track("Product Viewed", "2024-02-01T00:00:00", user_id="u_chain")
    ws.track("Product Added", "2024-02-01T20:00:00", user_id="u_chain")
    ws.track("Order Completed", "2024-02-02T16:00:00", user_id="u_chain")
    # C is 30h after B.
    ws.track("Product Viewed", "2024-02-01T00:00:00", user_id="u_late_order")
    ws.track("Product Added", "2024-02-01T20:00:00", user_id="u_late_order")
    ws.track("Order Completed", "2024-02-03T02:00:00", user_id="u_late_order")
    # Two B instances: C is too late for the first, in time for the second.
    ws.track("Product Viewed", "2024-02-01T00:00:00", user_id="u_second_b")
    ws.track("Product Added", "2024-02-01T01:00:00", user_id="u_second_b")
    ws.track("Product Added", "2024-02-01T23:00:00", user_id="u_second_b")
    ws.track("Order Completed", "2024-02-02T22:00:00", user_id="u_second_b")
    # B is too late after A, so it is no parent for C.
    ws.track("Product Viewed", "2024-02-01T00:00:00", user_id="u_b_too_late")
    ws.track("Product Added", "2024-02-02T01:00:00", user_id="u_b_too_late")
    ws.track("Order Completed", "2024-02-02T02:00:00", user_id="u_b_too_late")
    # C comes before B.
    ws.track("Product Viewed", "2024-02-01T00:00:00", user_id="u_out_of_order")
    ws.track("Order Completed", "2024-02-01T01:00:00", user_id="u_out_of_order")
    ws.track("Product Added", "2024-02-01T02:00:00", user_id="u_out_of_order")
    assert ws.members("viewed_added_bought", AS_OF) == {"u_chain", "u_second_b"}


def test_funnel_with_anonymous_profiles(ws: Workspace) -> None:
    ws.define("""
        kind: audience
        name: Anonymous Abandoners
        include_anonymous: true
        condition:
          funnel:
            - performed: Product Added
            - then_not_performed: Order Completed
              within: 1d
        ---
        kind: audience
        name: Known Abandoners
        condition:
          funnel:
            - performed: Product Added
            - then_not_performed: Order Completed
              within: 1d
    """)
    ws.track("Product Added", "2024-02-01T00:00:00", anonymous_id="a1")
    ws.track("Product Added", "2024-02-01T00:00:00", anonymous_id="a2")
    ws.track("Order Completed", "2024-02-01T03:00:00", anonymous_id="a2")
    ws.track("Product Added", "2024-02-01T00:00:00", user_id="u1", anonymous_id="a3")
    assert ws.members("anonymous_abandoners", AS_OF) == {"a1", "u1"}
    assert ws.members("known_abandoners", AS_OF) == {"u1"}


# -- computed traits ----------------------------------------------------------------------------------


def test_count_trait(ws: Workspace) -> None:
    ws.define("""
        kind: trait
        name: Orders
        type: count
        event: Order Completed
        ---
        kind: trait
        name: Big Recent Orders
        type: count
        event: Order Completed
        within: 30d
        where:
          - {property: revenue, op: gt, value: 50}
    """)
    ws.track("Order Completed", "2024-02-10T00:00:00", user_id="u1", revenue=100.0)
    ws.track("Order Completed", "2024-02-11T00:00:00", user_id="u1", revenue=60.0)
    ws.track("Order Completed", "2024-02-12T00:00:00", user_id="u1", revenue=10.0)
    ws.track("Order Completed", "2024-01-01T00:00:00", user_id="u1", revenue=100.0)
    ws.track("Order Completed", "2024-02-10T00:00:00", user_id="u2", revenue=10.0)
    ws.track("Order Completed", "2024-02-10T00:00:00", anonymous_id="a1", revenue=70.0)
    ws.page("2024-02-01T00:00:00", user_id="u3", name="Home")
    current = ws.current(AS_OF)
    assert current["orders"] == {"u1": 4, "u2": 1, "a1": 1, "u3": None}
    assert current["big_recent_orders"] == {"u1": 2, "u2": 0, "a1": 1, "u3": None}


def _numeric_dataset(ws: Workspace) -> None:
    types = {"revenue": "DOUBLE", "coupon": "VARCHAR"}
    ws.track("Order Completed", "2024-02-10T00:00:00", user_id="u1", types=types, revenue=10.0, coupon=None)
    ws.track("Order Completed", "2024-02-11T00:00:00", user_id="u1", types=types, revenue=25.5, coupon=None)
    ws.track("Order Completed", "2024-02-12T00:00:00", user_id="u1", types=types, revenue=4.5, coupon=None)
    ws.track("Order Completed", "2024-02-12T00:00:00", user_id="u1", types=types, revenue=99.0, coupon="Y")
    ws.track("Order Completed", "2024-02-10T00:00:00", user_id="u2", types=types, revenue=30.0, coupon="X")
    ws.track("Order Completed", "2024-02-10T00:00:00", anonymous_id="a1", types=types, revenue=7.0,
             coupon=None)  # fmt: skip
    ws.page("2024-02-01T00:00:00", user_id="u3", name="Home")


@pytest.mark.parametrize(
    ("kind", "u1", "u2"),
    [("sum", 40.0, 0), ("avg", 40.0 / 3, None), ("min", 4.5, None), ("max", 25.5, None)],
)
def test_numeric_traits(ws: Workspace, kind: str, u1: float, u2: float | None) -> None:
    ws.define(f"""
        kind: trait
        name: Value
        type: {kind}
        event: Order Completed
        property: revenue
        where:
          - {{property: coupon, op: not_exists}}
    """)
    _numeric_dataset(ws)
    values = ws.current(AS_OF)["value"]
    assert set(values) == {"u1", "u2", "a1", "u3"}
    assert values["u1"] == pytest.approx(u1)
    assert values["a1"] == pytest.approx(7.0)
    assert values["u2"] == u2  # events of the type, none qualifying: sum 0, the others null
    assert values["u3"] is None  # no event of the type at all


def _categories(ws: Workspace, user: str, values: list[str]) -> None:
    for i, value in enumerate(values):
        ws.track("Product Viewed", f"2024-02-{i + 1:02d}T00:00:00", user_id=user, category=value)


def test_most_frequent(ws: Workspace) -> None:
    ws.define("""
        kind: trait
        name: Favorite
        type: most_frequent
        event: Product Viewed
        property: category
        ---
        kind: trait
        name: Favorite Once
        type: most_frequent
        event: Product Viewed
        property: category
        min_frequency: 1
        ---
        kind: trait
        name: Favorite Thrice
        type: most_frequent
        event: Product Viewed
        property: category
        min_frequency: 3
    """)
    _categories(ws, "u_clear", ["shoes", "hats", "shoes"])
    _categories(ws, "u_once_each", ["shoes", "hats"])
    _categories(ws, "u_tie", ["shoes", "bags", "shoes", "bags"])
    _categories(ws, "u_count_wins", ["shoes", "shoes", "shoes", "bags", "bags"])
    ws.track("Product Viewed", "2024-02-01T00:00:00", user_id="u_null", category=None)
    ws.track("Product Viewed", "2024-02-02T00:00:00", user_id="u_null", category=None)
    ws.page("2024-02-01T00:00:00", user_id="u_none", name="Home")
    current = ws.current(AS_OF)
    assert current["favorite"] == {
        "u_clear": "shoes",
        "u_once_each": None,
        "u_tie": "bags",
        "u_count_wins": "shoes",
        "u_null": None,
        "u_none": None,
    }
    assert current["favorite_once"]["u_once_each"] == "hats"
    assert current["favorite_once"]["u_clear"] == "shoes"
    assert current["favorite_thrice"] == {
        "u_clear": None,
        "u_once_each": None,
        "u_tie": None,
        "u_count_wins": "shoes",
        "u_null": None,
        "u_none": None,
    }


def test_first_and_last_skip_null_properties(ws: Workspace) -> None:
    ws.define("""
        kind: trait
        name: First Currency
        type: first
        event: Order Completed
        property: currency
        ---
        kind: trait
        name: Last Currency
        type: last
        event: Order Completed
        property: currency
        ---
        kind: trait
        name: Last Big Currency
        type: last
        event: Order Completed
        property: currency
        where:
          - {property: revenue, op: gt, value: 1000}
    """)
    types = {"currency": "VARCHAR", "revenue": "DOUBLE"}
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u1", types=types, currency=None, revenue=1.0)
    ws.track("Order Completed", "2024-02-03T00:00:00", user_id="u1", types=types, currency="USD", revenue=1.0)
    ws.track("Order Completed", "2024-02-02T00:00:00", user_id="u1", types=types, currency="EUR", revenue=1.0)
    ws.track("Order Completed", "2024-02-04T00:00:00", user_id="u1", types=types, currency=None, revenue=1.0)
    ws.track("Order Completed", "2024-03-04T00:00:00", user_id="u1", types=types, currency="GBP", revenue=1.0)
    ws.track("Order Completed", "2024-02-01T00:00:00", anonymous_id="a1", types=types, currency="BRL",
             revenue=1.0)  # fmt: skip
    ws.page("2024-02-01T00:00:00", user_id="u2", name="Home")
    current = ws.current(AS_OF)
    assert current["first_currency"] == {"u1": "EUR", "a1": "BRL", "u2": None}
    assert current["last_currency"] == {"u1": "USD", "a1": "BRL", "u2": None}
    assert current["last_big_currency"] == {"u1": None, "a1": None, "u2": None}


def test_unique_list_and_unique_list_count(ws: Workspace) -> None:
    ws.define("""
        kind: trait
        name: Categories
        type: unique_list
        event: Product Viewed
        property: category
        where:
          - {property: price, op: gt, value: 0}
        ---
        kind: trait
        name: Category Count
        type: unique_list_count
        event: Product Viewed
        property: category
        where:
          - {property: price, op: gt, value: 0}
    """)
    types = {"category": "VARCHAR", "price": "DOUBLE"}
    for value in ["shoes", "bags", "hats", "shoes", None, "accessories"]:
        ws.track(
            "Product Viewed", "2024-02-01T00:00:00", user_id="u1", types=types, category=value, price=1.0
        )
    ws.track("Product Viewed", "2024-02-01T00:00:00", user_id="u1", types=types, category="zz", price=0.0)
    ws.track("Product Viewed", "2024-02-01T00:00:00", user_id="u2", types=types, category="shoes", price=0.0)
    ws.track("Product Viewed", "2024-02-01T00:00:00", anonymous_id="a1", types=types, category="x",
             price=5.0)  # fmt: skip
    ws.page("2024-02-01T00:00:00", user_id="u3", name="Home")
    current = ws.current(AS_OF)
    assert current["categories"] == {
        "u1": ["accessories", "bags", "hats", "shoes"],
        "u2": [],
        "a1": ["x"],
        "u3": None,
    }
    assert current["category_count"] == {"u1": 4, "u2": 0, "a1": 1, "u3": None}


def test_trait_over_a_list_of_events(ws: Workspace) -> None:
    ws.define("""
        kind: trait
        name: Product Touches
        type: count
        event: [Product Viewed, Product Added]
        ---
        kind: trait
        name: Touched Categories
        type: unique_list
        event: [Product Viewed, Product Added]
        property: category
        ---
        kind: trait
        name: Favorite Category
        type: most_frequent
        event: [Product Viewed, Product Added]
        property: category
    """)
    ws.track("Product Viewed", "2024-02-01T00:00:00", user_id="u1", category="shoes")
    ws.track("Product Viewed", "2024-02-02T00:00:00", user_id="u1", category="hats")
    ws.track("Product Added", "2024-02-03T00:00:00", user_id="u1", category="shoes")
    ws.track("Product Added", "2024-02-03T00:00:00", user_id="u2", category="bags")
    ws.track("Order Completed", "2024-02-03T00:00:00", user_id="u3", category="bags")
    current = ws.current(AS_OF)
    assert current["product_touches"] == {"u1": 3, "u2": 1, "u3": None}
    assert current["touched_categories"] == {"u1": ["hats", "shoes"], "u2": ["bags"], "u3": None}
    assert current["favorite_category"] == {"u1": "shoes", "u2": None, "u3": None}


def test_trait_on_page_viewed(ws: Workspace) -> None:
    ws.define("""
        kind: trait
        name: Pricing Views
        type: count
        event: Page Viewed
        within: 7d
        where:
          - {property: name, op: eq, value: Pricing}
        ---
        kind: audience
        name: Pricing Visitors
        include_anonymous: true
        condition:
          performed: Page Viewed
          where:
            - {property: name, op: eq, value: Pricing}
    """)
    ws.page("2024-02-28T00:00:00", user_id="u1", name="Pricing")
    ws.page("2024-02-29T00:00:00", user_id="u1", name="Pricing")
    ws.page("2024-02-01T00:00:00", user_id="u1", name="Pricing")
    ws.page("2024-02-29T00:00:00", anonymous_id="a1", name="Home")
    ws.track("Order Completed", "2024-02-29T00:00:00", user_id="u2", revenue=1.0)
    assert ws.current(AS_OF)["pricing_views"] == {"u1": 2, "a1": 0, "u2": None}
    assert ws.members("pricing_visitors", AS_OF) == {"u1"}


# -- SQL traits ---------------------------------------------------------------------------------------

SQL_TRAIT = """
    kind: sql_trait
    name: Web Stats
    sql: |
      SELECT user_id, COUNT(*) AS web_orders, ROUND(SUM(revenue), 2) AS web_revenue
      FROM website.order_completed
      WHERE user_id IS NOT NULL
      GROUP BY user_id
"""


def test_sql_trait_values_per_user_id(ws: Workspace) -> None:
    ws.define(SQL_TRAIT)
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u1", revenue=10.25)
    ws.track("Order Completed", "2024-02-02T00:00:00", user_id="u1", revenue=5.0)
    ws.track("Order Completed", "2024-02-02T00:00:00", user_id="u2", revenue=1.0)
    ws.track("Order Completed", "2024-02-02T00:00:00", anonymous_id="a1", revenue=1.0)
    # It runs as written: the as-of does not filter what it reads.
    ws.track("Order Completed", "2024-03-10T00:00:00", user_id="u2", revenue=2.0)
    ws.page("2024-02-01T00:00:00", user_id="u3", name="Home")
    current = ws.current(AS_OF)
    assert current["web_orders"] == {"u1": 2, "u2": 2, "a1": None, "u3": None}
    assert current["web_revenue"]["u1"] == pytest.approx(15.25)
    assert current["web_revenue"]["u2"] == pytest.approx(3.0)
    assert current["web_revenue"]["u3"] is None


def test_sql_trait_drop_out_sends_nulls_once(ws: Workspace) -> None:
    ws.define(SQL_TRAIT)
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u1", revenue=10.0)
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u2", revenue=20.0)
    ws.sync(AS_OF)
    first = ws.sent()
    identifies = [m for m in first if m["type"] == "identify"]
    assert {m["userId"]: m["traits"] for m in identifies} == {
        "u1": {"web_orders": 1, "web_revenue": 10.0},
        "u2": {"web_orders": 1, "web_revenue": 20.0},
    }
    # u2's orders leave the table: u2 drops out of the result (it stays a profile through `tracks`).
    ws.query("DELETE FROM website.order_completed WHERE user_id = 'u2'")
    ws.sync("2024-03-02T00:00:00")
    second = ws.sent()[len(first) :]
    identifies = [m for m in second if m["type"] == "identify"]
    assert [(m["userId"], m["traits"]) for m in identifies] == [
        ("u2", {"web_orders": None, "web_revenue": None})
    ]
    tracks = [m for m in second if m["type"] == "track"]
    assert [(m["userId"], m["properties"]) for m in tracks] == [
        ("u2", {"trait_key": "web_stats", "web_orders": None, "web_revenue": None})
    ]
    ws.sync("2024-03-03T00:00:00")
    assert ws.sent()[len(first) + len(second) :] == []


# -- several sources ----------------------------------------------------------------------------------


@pytest.fixture
def two_sources(tmp_path: Path) -> Iterator[Workspace]:
    MemoryConnector.sent.clear()
    ws = Workspace(tmp_path / "project", sources=("website", "ios"))
    yield ws
    MemoryConnector.sent.clear()


def test_counts_add_up_across_sources(two_sources: Workspace) -> None:
    ws = two_sources
    ws.define("""
        kind: trait
        name: Orders
        type: count
        event: Order Completed
        ---
        kind: trait
        name: Revenue
        type: sum
        event: Order Completed
        property: revenue
        ---
        kind: audience
        name: Three Orders
        condition: {performed: Order Completed, at_least: 3}
        ---
        kind: audience
        name: No Orders
        condition: {not_performed: Order Completed}
        ---
        kind: audience
        name: Ios Plan
        condition: {trait: plan, op: eq, value: pro}
    """)
    ws.track("Order Completed", "2024-02-01T00:00:00", user_id="u1", source="website", revenue=10.0)
    ws.track("Order Completed", "2024-02-02T00:00:00", user_id="u1", source="website", revenue=20.0)
    ws.track("Order Completed", "2024-02-03T00:00:00", user_id="u1", source="ios", revenue=5.0)
    ws.track("Order Completed", "2024-02-03T00:00:00", user_id="u2", source="ios", revenue=1.0)
    ws.track("Order Completed", "2024-02-03T00:00:00", user_id="u2", source="website", revenue=2.0)
    ws.identify("2024-02-01T00:00:00", user_id="u3", source="ios", plan="pro")
    ws.identify("2024-02-01T00:00:00", user_id="u2", source="website", plan="free")
    ws.identify("2024-02-02T00:00:00", user_id="u2", source="ios", plan="pro")
    current = ws.current(AS_OF)
    assert current["orders"] == {"u1": 3, "u2": 2, "u3": None}
    assert current["revenue"]["u1"] == pytest.approx(35.0)
    assert current["revenue"]["u2"] == pytest.approx(3.0)
    assert ws.members("three_orders", AS_OF) == {"u1"}
    assert ws.members("no_orders", AS_OF) == {"u3"}
    assert ws.members("ios_plan", AS_OF) == {"u2", "u3"}
