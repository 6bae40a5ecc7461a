"""Bad input gets a clear error and loses nothing (SPEC §2, §7).

Every invalid definition or config exits 2 and names the file (definitions relative to the project), the
line and the field; an unknown event, trait or audience is reported before any SQL runs; names and values
never reach SQL as text; and a rejected run writes nothing: no `engage_default` schema on a first run, and
unchanged tables and state after an earlier successful one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import duckdb
import pytest
from click.testing import Result

from tests.conftest import CONFIG, Workspace

AS_OF = "2024-02-01T00:00:00"
DEFS = "audiences/definitions.yml"
CONFIG_FILE = "config/engage.yaml"
INJECTION = "x'; DROP TABLE website.tracks; --"
SEEDED = {"tracks": 1, "order_completed": 1, "identifies": 1}
COMMANDS = {
    "sync": ("sync", "--space", "default", "--as-of", AS_OF),
    "validate": ("validate", "--space", "default"),
    "compile": ("compile", "--space", "default", "--as-of", AS_OF),
}

Where = tuple[str, int, str]  # (file, line, field); an empty field checks only `file:line:`


@dataclass(frozen=True)
class Bad:
    """Bad definition files, where the error must point, and what it must say.

    A field is the path as the user wrote it (`condition.all[1].performed`); a deeper path that starts
    with it is accepted too. A list of places, or a tuple of texts, means any one of them will do."""

    files: dict[str, str]
    where: tuple[Where | list[Where], ...]
    says: tuple[str | tuple[str, ...], ...] = ()


def case(case_id: str, files: str | dict[str, str], *where: Where | list[Where], says: tuple = ()) -> object:
    """One bad-definitions case; a plain string is the content of `audiences/definitions.yml`."""
    named = {"definitions.yml": files} if isinstance(files, str) else files
    return pytest.param(Bad(named, where, says), id=case_id)


def _seed(workspace: Workspace) -> None:
    """One buyer with an `Order Completed` (properties revenue, plan) and a custom trait `plan`."""
    workspace.track("Order Completed", "2024-01-10T00:00:00", user_id="u1", revenue=10.0, plan="pro")
    workspace.identify("2024-01-09T00:00:00", user_id="u1", plan="pro")


def _schema_exists(con: duckdb.DuckDBPyConnection) -> bool:
    sql = "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'engage_default'"
    return con.execute(sql).fetchall() == [(1,)]


def _source_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {t: con.execute(f"SELECT count(*) FROM website.{t}").fetchall()[0][0] for t in SEEDED}


def _assert_nothing_written(workspace: Workspace) -> None:
    """No `engage_default` schema, every seeded source row still there, nothing sent."""
    with workspace.connect() as con:
        assert not _schema_exists(con), "a rejected run must write nothing"
        assert _source_counts(con) == SEEDED
    assert workspace.sent() == []


def _located(output: str, where: Where) -> bool:
    """The output holds `<file>:<line>: <field>` (the CLI prints `path:line: field: message`)."""
    file, line, field_path = where
    if not field_path:
        return f"{file}:{line}:" in output
    return re.search(re.escape(f"{file}:{line}: {field_path}") + r"[.:\[]", output) is not None


def _assert_rejected(workspace: Workspace, result: Result, bad: Bad, command: str) -> None:
    context = f"`{command}` printed:\n{result.output}"
    assert result.exit_code == 2, f"exit code {result.exit_code}; {context}"
    for where in bad.where:
        places = where if isinstance(where, list) else [where]
        assert any(_located(result.output, p) for p in places), f"expected {places}; {context}"
    for text in bad.says:
        texts = text if isinstance(text, tuple) else (text,)
        assert any(t in result.output for t in texts), f"expected {texts}; {context}"
    assert f"{workspace.root}/audiences" not in result.output, f"name definition files relative; {context}"
    assert "Traceback" not in result.output, context


def _sql_trait(sql: str) -> str:
    return f"kind: sql_trait\nname: Bad SQL\nsql: {json.dumps(sql)}\n"


TWENTY_SIX_COLUMNS = (
    "SELECT user_id, " + ", ".join(f"{i} AS c{i}" for i in range(1, 27)) + " FROM website.tracks"
)

DEFINITION_CASES = [
    # -- malformed YAML: the line of the problem ---------------------------------------------------------
    case(
        "yaml_unclosed_bracket_at_end_of_file",
        """\
        kind: audience
        name: Buyers
        condition: [{performed: Order Completed}


        """,
        (DEFS, 3, ""),
        says=("invalid YAML",),
    ),
    case(
        "yaml_unclosed_bracket_then_more_keys",
        """\
        kind: audience
        name: Buyers
        condition: {performed: Order Completed
        description: more keys follow
        """,
        (DEFS, 3, ""),
        says=("invalid YAML",),
    ),
    case(
        "yaml_tab_indentation",
        """\
        kind: audience
        name: Buyers
        condition:
        \tperformed: Order Completed
        """,
        (DEFS, 4, ""),
        says=("invalid YAML",),
    ),
    # -- the shape of a definition -----------------------------------------------------------------------
    case(
        "unknown_top_level_field",
        """\
        kind: audience
        name: Buyers
        colour: red
        condition: {performed: Order Completed}
        """,
        (DEFS, 3, "colour"),
    ),
    case(
        "missing_condition",
        """\
        kind: audience
        name: Buyers
        description: no condition
        """,
        (DEFS, 1, "condition"),
    ),
    case(
        "unknown_kind",
        """\
        kind: segment
        name: Buyers
        condition: {performed: Order Completed}
        """,
        (DEFS, 1, "kind"),
        says=("segment",),
    ),
    case(
        "unknown_trait_type",
        """\
        kind: trait
        name: Spend
        type: total
        event: Order Completed
        property: revenue
        """,
        (DEFS, 3, "type"),
    ),
    case(
        "unknown_filter_op_like",
        """\
        kind: audience
        name: Buyers
        condition:
          performed: Order Completed
          where:
            - property: plan
              op: like
              value: pro
        """,
        (DEFS, 7, "condition.where[0].op"),
    ),
    case(
        "in_with_a_non_list_value",
        """\
        kind: audience
        name: Buyers
        condition:
          performed: Order Completed
          where:
            - {property: plan, op: in, value: pro}
        """,
        (DEFS, 6, "condition.where[0]"),
        says=("list",),
    ),
    case(
        "condition_with_no_known_key",
        """\
        kind: audience
        name: Buyers
        condition:
          performd: Order Completed
        """,
        (DEFS, 3, "condition"),
        says=("performed",),
    ),
    case(
        "unknown_field_in_a_condition",
        """\
        kind: audience
        name: Buyers
        condition: {performed: Order Completed, whithin: 30d}
        """,
        (DEFS, 3, "condition.whithin"),
    ),
    case(
        "at_least_and_at_most_together",
        """\
        kind: audience
        name: Buyers
        condition: {performed: Order Completed, at_least: 1, at_most: 3}
        """,
        (DEFS, 3, "condition"),
        says=("at_least and at_most",),
    ),
    case(
        "aggregate_without_comparator",
        """\
        kind: audience
        name: Big Spenders
        condition: {performed: Order Completed, sum: revenue}
        """,
        (DEFS, 3, "condition"),
        says=("sum",),
    ),
    case(
        "duration_30_days",
        """\
        kind: audience
        name: Buyers
        condition:
          performed: Order Completed
          within: 30 days
        """,
        (DEFS, 5, "condition.within"),
    ),
    case(
        "duration_zero_nested",
        """\
        kind: audience
        name: Buyers
        condition:
          all:
            - performed: Order Completed
            - performed: Order Completed
              within: 0d
        """,
        (DEFS, 7, "condition.all[1].within"),
    ),
    case(
        "between_reversed",
        """\
        kind: audience
        name: Buyers
        condition: {performed: Order Completed, between: ['2024-02-01T00:00:00', '2024-01-01T00:00:00']}
        """,
        (DEFS, 3, "condition"),
        says=("between",),
    ),
    # -- references, checked against the space and its warehouse before any SQL runs ----------------------
    case(
        "unknown_event",
        """\
        kind: audience
        name: Buyers
        condition:
          all:
            - performed: Order Completed
            - performed: Order Refunded
        """,
        (DEFS, 6, "condition.all[1].performed"),
        says=("Order Refunded",),
    ),
    case(
        "unknown_event_of_a_trait",
        """\
        kind: trait
        name: Refunds
        type: count
        event: Order Refunded
        """,
        (DEFS, 4, "event"),
        says=("Order Refunded",),
    ),
    case(
        "unknown_property_in_where",
        """\
        kind: audience
        name: Buyers
        condition:
          performed: Order Completed
          where:
            - {property: colour, op: eq, value: red}
        """,
        (DEFS, 6, "condition.where[0].property"),
        says=("colour",),
    ),
    case(
        "unknown_property_of_a_trait",
        """\
        kind: trait
        name: Spend
        type: sum
        event: Order Completed
        property: total
        """,
        (DEFS, 5, "property"),
        says=("total",),
    ),
    case(
        "unknown_trait",
        """\
        kind: audience
        name: Valuable
        condition:
          trait: lifetime_value
          op: gt
          value: 10
        """,
        (DEFS, 4, "condition.trait"),
        says=("lifetime_value",),
    ),
    case(
        "unknown_audience",
        """\
        kind: audience
        name: Repeat
        condition:
          in_audience: nobody
        """,
        (DEFS, 4, "condition.in_audience"),
        says=("nobody",),
    ),
    case(
        "in_audience_pointing_at_a_trait",
        """\
        kind: trait
        name: Order Count
        type: count
        event: Order Completed
        ---
        kind: audience
        name: Repeat
        condition:
          in_audience: order_count
        """,
        (DEFS, 9, "condition.in_audience"),
        says=("order_count",),
    ),
    case(
        "unknown_destination",
        """\
        kind: audience
        name: Buyers
        destinations: [warehouse, slack]
        condition: {performed: Order Completed}
        """,
        (DEFS, 3, "destinations[1]"),
        says=("slack",),
    ),
    case(
        "membership_cycle_a_b_a",
        """\
        kind: audience
        name: A
        condition: {in_audience: b}
        ---
        kind: audience
        name: B
        condition: {not_in_audience: a}
        """,
        [(DEFS, 3, "condition.in_audience"), (DEFS, 7, "condition.not_in_audience")],
        says=("cycle", ("a → b → a", "b → a → b")),
    ),
    case(
        "membership_self_reference",
        """\
        kind: audience
        name: Loop
        condition:
          any:
            - performed: Order Completed
            - in_audience: loop
        """,
        (DEFS, 6, "condition.any[1].in_audience"),
        says=("cycle", "loop → loop"),
    ),
    # -- keys --------------------------------------------------------------------------------------------
    case(
        "duplicate_key_across_two_files",
        {
            "a.yml": "kind: audience\nname: Buyers\ncondition: {performed: Order Completed}\n",
            "b.yml": "kind: audience\nname: Buyers\ncondition: {performed: Order Completed, at_least: 2}\n",
        },
        [("audiences/b.yml", 2, "name"), ("audiences/a.yml", 2, "name")],
        says=("buyers", "audiences/a.yml:", "audiences/b.yml:"),
    ),
    case(
        "name_snake_cases_to_empty",
        """\
        kind: audience
        name: '!!!'
        condition: {performed: Order Completed}
        """,
        (DEFS, 2, "name"),
        says=("key",),
    ),
    case(
        "key_starting_with_double_underscore",
        """\
        kind: audience
        name: Buyers
        key: __profile
        condition: {performed: Order Completed}
        """,
        (DEFS, 3, "key"),
        says=("__",),
    ),
    # -- SQL traits: one SELECT, never anything that writes -------------------------------------------------
    case("sql_drop_table", _sql_trait("DROP TABLE website.tracks"), (DEFS, 3, "sql")),
    case(
        "sql_two_statements",
        _sql_trait("SELECT user_id, count(*) AS n FROM website.tracks GROUP BY 1; DROP TABLE website.tracks"),
        (DEFS, 3, "sql"),
        says=("2 statements",),
    ),
    case("sql_delete", _sql_trait("DELETE FROM website.tracks"), (DEFS, 3, "sql")),
    case(
        "sql_insert_select",
        _sql_trait("INSERT INTO website.tracks SELECT * FROM website.tracks"),
        (DEFS, 3, "sql"),
    ),
    case(
        "sql_create_table_as",
        _sql_trait("CREATE TABLE website.copy AS SELECT user_id, 1 AS n FROM website.tracks"),
        (DEFS, 3, "sql"),
    ),
    case(
        "sql_select_into",
        _sql_trait("SELECT user_id, 1 AS n INTO website.copy FROM website.tracks"),
        (DEFS, 3, "sql"),
    ),
    case(
        "sql_does_not_parse",
        _sql_trait("SELECT user_id, count( FROM website.tracks"),
        (DEFS, 3, "sql"),
        says=("parse",),
    ),
    case(
        "sql_no_identifier_column",
        _sql_trait("SELECT event AS last_event FROM website.tracks"),
        (DEFS, 3, "sql"),
        says=("identifier",),
    ),
    case(
        "sql_two_identifier_columns",
        _sql_trait("SELECT user_id, anonymous_id, count(*) AS n FROM website.tracks GROUP BY 1, 2"),
        (DEFS, 3, "sql"),
        says=("identifier",),
    ),
    case("sql_select_star", _sql_trait("SELECT * FROM website.tracks"), (DEFS, 3, "sql")),
    case("sql_26_trait_columns", _sql_trait(TWENTY_SIX_COLUMNS), (DEFS, 3, "sql"), says=("25",)),
    # -- a quote in a name reaches no SQL: the name is unknown, and reported ----------------------------------
    case(
        "property_name_with_a_quote",
        """\
        kind: audience
        name: Buyers
        condition:
          performed: Order Completed
          where:
            - property: "plan'; DROP TABLE website.tracks; --"
              op: eq
              value: pro
        """,
        (DEFS, 6, "condition.where[0].property"),
        says=("unknown property",),
    ),
    case(
        "event_name_with_a_quote",
        """\
        kind: audience
        name: Buyers
        condition: {performed: "Order Completed'; DROP TABLE website.tracks; --"}
        """,
        (DEFS, 3, "condition.performed"),
        says=("unknown event",),
    ),
    case(
        "trait_name_with_a_quote",
        """\
        kind: audience
        name: Pro
        condition:
          trait: 'plan" ; DROP TABLE website.tracks; --'
          op: eq
          value: pro
        """,
        (DEFS, 4, "condition.trait"),
        says=("unknown trait",),
    ),
    case(
        "trait_property_with_a_quote",
        """\
        kind: trait
        name: Spend
        type: sum
        event: Order Completed
        property: "revenue\\"; DROP TABLE website.tracks; --"
        """,
        (DEFS, 5, "property"),
        says=("unknown property",),
    ),
    # -- several errors in one file, all in one run ----------------------------------------------------------
    case(
        "two_unknown_events",
        """\
        kind: audience
        name: A
        condition: {performed: Order Refunded}
        ---
        kind: audience
        name: B
        condition: {performed: Cart Viewed}
        """,
        (DEFS, 3, "condition.performed"),
        (DEFS, 7, "condition.performed"),
    ),
    case(
        "two_shape_errors",
        """\
        kind: audience
        name: A
        condition: {performed: Order Completed, within: 3x}
        ---
        kind: audience
        name: B
        colour: red
        condition: {performed: Order Completed}
        """,
        (DEFS, 3, "condition.within"),
        (DEFS, 7, "colour"),
    ),
    case(
        "a_shape_error_and_an_unknown_event",
        """\
        kind: audience
        name: A
        condition: {performed: Order Completed, within: 3x}
        ---
        kind: audience
        name: B
        condition: {performed: Order Refunded}
        """,
        (DEFS, 3, "condition.within"),
        (DEFS, 7, "condition.performed"),
    ),
]


@pytest.mark.parametrize("bad", DEFINITION_CASES)
def test_bad_definition_exits_2_naming_file_line_field_and_writes_nothing(
    workspace: Workspace, bad: Bad
) -> None:
    _seed(workspace)
    for name, text in bad.files.items():
        workspace.define(text, name=name)
    for command, args in COMMANDS.items():
        _assert_rejected(workspace, workspace.cli(*args), bad, command)
    _assert_nothing_written(workspace)


# -- config/engage.yaml -------------------------------------------------------------------------------------
# The harness config: line 3 warehouse, 4 sources, 5 definitions, 6 destinations, 7 `warehouse`, 8 `mem`.
BASE = CONFIG.format(sources="website")


def _config(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new, 1)


def _schedule(value: str) -> str:
    """The base config with `schedule:` on line 6."""
    return _config("    definitions: audiences\n", f"    definitions: audiences\n    schedule: {value}\n")


def _destination(line: str) -> str:
    """The base config with one more destination, on line 9."""
    mem = "      mem: {type: memory, send: [identify, track]}\n"
    return _config(mem, f"{mem}      {line}\n")


MISSING_VAR = _destination(
    'export: {type: jsonl, path: "${ENGAGE_TEST_SECRET}/${ENGAGE_TEST_MISSING_VAR}.jsonl"}'
)
SECRET_THREADS = _config(
    "path: .engage/warehouse.duckdb}", 'path: .engage/warehouse.duckdb, threads: "${ENGAGE_TEST_SECRET}"}'
)
UNKNOWN_DESTINATION_TYPE = _config("warehouse: {type: duckdb, send", "warehouse: {type: duckbd, send")
CONFIG_CASES = [
    pytest.param(BASE, "nope", (CONFIG_FILE, 1, "spaces"), ("nope",), id="unknown_space"),
    pytest.param(
        _schedule('"61 * * * *"'),
        "default",
        (CONFIG_FILE, 6, "spaces.default.schedule"),
        ("cron",),
        id="invalid_cron",
    ),
    pytest.param(
        _schedule("{every: 0m}"),
        "default",
        (CONFIG_FILE, 6, "spaces.default.schedule.every"),
        ("positive",),
        id="interval_every_0m",
    ),
    pytest.param(
        _config("    definitions: audiences\n", "    definitions: audiences\n    retry: {attempts: 0}\n"),
        "default",
        (CONFIG_FILE, 6, "spaces.default.retry.attempts"),
        ("greater than or equal to 1",),
        id="retry_attempts_0",
    ),
    pytest.param(
        MISSING_VAR,
        "default",
        (CONFIG_FILE, 9, "spaces.default.destinations.export.path"),
        ("ENGAGE_TEST_MISSING_VAR",),
        id="missing_env_var_in_a_destination",
    ),
    pytest.param(
        SECRET_THREADS,
        "default",
        (CONFIG_FILE, 3, "spaces.default.warehouse.threads"),
        ("integer",),
        id="secret_in_an_invalid_setting",
    ),
    pytest.param(
        UNKNOWN_DESTINATION_TYPE,
        "default",
        (CONFIG_FILE, 7, "spaces.default.destinations.warehouse.type"),
        ("duckbd", "did you mean 'duckdb'"),
        id="unknown_destination_type",
    ),
    pytest.param(
        _config(
            "{type: duckdb, path: .engage/warehouse.duckdb}",
            "{type: postgres, host: 127.0.0.1, user: u, password: '${ENGAGE_TEST_SECRET}'}",
        ),
        "default",
        (CONFIG_FILE, 3, "spaces.default.warehouse.database"),
        ("Field required",),
        id="postgres_warehouse_without_a_database",
    ),
    pytest.param(
        _destination("remote: {type: warehouse, warehouse: {type: snowflak, account: a}}"),
        "default",
        (CONFIG_FILE, 9, "spaces.default.destinations.remote.warehouse"),
        ("snowflak",),
        id="unknown_engine_of_a_cross_warehouse_destination",
    ),
    pytest.param(
        _config("{type: duckdb, path: .engage/warehouse.duckdb}", "{type: snowflak, path: x}"),
        "default",
        (CONFIG_FILE, 3, "spaces.default.warehouse"),
        ("snowflak",),
        id="unknown_warehouse_type",
    ),
]
SECRET = "s3cr3t-value-never-shown"


@pytest.mark.parametrize(("config", "space", "where", "says"), CONFIG_CASES)
def test_bad_config_exits_2_naming_config_line_and_writes_nothing(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, config: str, space: str, where: Where, says: tuple
) -> None:
    _seed(workspace)
    workspace.define("kind: audience\nname: Buyers\ncondition: {performed: Order Completed}\n")
    monkeypatch.setenv("ENGAGE_TEST_SECRET", SECRET)
    monkeypatch.delenv("ENGAGE_TEST_MISSING_VAR", raising=False)
    workspace.write_config(config)
    for command in ("sync", "validate"):
        args = [arg if arg != "default" else space for arg in COMMANDS[command]]
        result = workspace.cli(*args)
        _assert_rejected(workspace, result, Bad({}, (where,), says), command)
        assert SECRET not in result.output, f"a secret value never appears in an error:\n{result.output}"
    _assert_nothing_written(workspace)


def test_a_source_schema_missing_from_the_warehouse_exits_1_naming_the_setting(workspace: Workspace) -> None:
    """The file is valid; the warehouse lacks what it names: a run-time failure (exit 1), located."""
    _seed(workspace)
    workspace.define("kind: audience\nname: Buyers\ncondition: {performed: Order Completed}\n")
    workspace.write_config(_config("sources: [website]", "sources: [website, mobile]"))
    for command in ("sync", "validate"):
        result = workspace.cli(*COMMANDS[command])
        assert result.exit_code == 1, result.output
        assert _located(result.output, (CONFIG_FILE, 4, "spaces.default.sources")), result.output
        assert "mobile" in result.output and "Traceback" not in result.output
    _assert_nothing_written(workspace)


# -- names and values are data, never SQL text ----------------------------------------------------------------
def test_a_name_full_of_quotes_and_semicolons_with_an_explicit_key_syncs(workspace: Workspace) -> None:
    _seed(workspace)
    workspace.define("""\
        kind: audience
        name: 'O''Brien"; DROP TABLE website.tracks; --'
        key: obrien
        description: "it's a \\"test\\"; DROP TABLE website.tracks; --"
        condition: {performed: Order Completed}
    """)
    result = workspace.cli(*COMMANDS["sync"])
    assert result.exit_code == 0, result.output
    assert workspace.query("SELECT id, obrien FROM engage_default.users") == [("u1", True)]
    with workspace.connect() as con:
        assert _source_counts(con) == SEEDED


def test_values_with_quotes_and_semicolons_are_literals(workspace: Workspace) -> None:
    """`x'; DROP TABLE website.tracks; --` in a filter or trait value matches exactly that string."""
    _seed(workspace)
    value = json.dumps(INJECTION)
    workspace.define(f"""\
        kind: audience
        name: Where Eq
        condition: {{performed: Order Completed, where: [{{property: plan, op: eq, value: {value}}}]}}
        ---
        kind: audience
        name: Where In
        condition: {{performed: Order Completed, where: [{{property: plan, op: in, value: [{value}, "a\\"b"]}}]}}
        ---
        kind: audience
        name: Where Starts With
        condition: {{performed: Order Completed, where: [{{property: plan, op: starts_with, value: {value}}}]}}
        ---
        kind: audience
        name: Trait Eq
        condition: {{trait: plan, op: eq, value: {value}}}
    """)
    keys = {"where_eq", "where_in", "where_starts_with", "trait_eq"}
    first = workspace.cli(*COMMANDS["sync"])
    assert first.exit_code == 0, first.output
    with workspace.connect() as con:
        assert _source_counts(con) == SEEDED
    assert workspace.sent() == [], "no profile has that value yet: the audiences have no members"
    workspace.track("Order Completed", "2024-01-11T00:00:00", user_id="u2", revenue=1.0, plan=INJECTION)
    workspace.identify("2024-01-11T00:00:00", user_id="u2", plan=INJECTION)
    second = workspace.cli(*COMMANDS["sync"])
    assert second.exit_code == 0, second.output
    entered = {(m["userId"], k) for m in workspace.sent() if m["type"] == "identify" for k in m["traits"]}
    assert entered == {("u2", key) for key in keys}
    assert workspace.query("SELECT count(*) FROM website.tracks") == [(2,)]


# -- a later bad run changes nothing that a good run wrote ------------------------------------------------------
GOOD = """\
kind: audience
name: Buyers
condition: {performed: Order Completed}
---
kind: trait
name: Spend
type: sum
event: Order Completed
property: revenue
"""
LATER_BAD = [
    pytest.param(
        {
            "more.yml": "kind: audience\nname: Soon\ncondition: {performed: Order Completed, within: 30 days}\n"
        },
        None,
        id="shape_error",
    ),
    pytest.param(
        {"more.yml": "kind: audience\nname: Refunders\ncondition: {performed: Order Refunded}\n"},
        None,
        id="unknown_event",
    ),
    pytest.param(
        {"more.yml": _sql_trait("DELETE FROM engage_default._engage_state")},
        None,
        id="sql_trait_delete_state",
    ),
    pytest.param({"more.yml": "kind: audience\nname: [broken\n"}, None, id="malformed_yaml"),
    pytest.param({}, UNKNOWN_DESTINATION_TYPE, id="config_unknown_destination_type"),
]


def _snapshot(workspace: Workspace) -> tuple[dict[str, int], list[tuple[object, ...]]]:
    """Row counts of every `engage_default` table, and the whole `_engage_state`."""
    with workspace.connect() as con:
        tables = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'engage_default' ORDER BY 1"
        ).fetchall()
        counts = {
            t: con.execute(f'SELECT count(*) FROM engage_default."{t}"').fetchall()[0][0] for (t,) in tables
        }
        state = con.execute("SELECT * FROM engage_default._engage_state ORDER BY ALL").fetchall()
    return counts, state


@pytest.mark.parametrize(("files", "config"), LATER_BAD)
def test_a_bad_run_after_a_good_one_leaves_outputs_and_state_unchanged(
    workspace: Workspace, files: dict[str, str], config: str | None
) -> None:
    _seed(workspace)
    workspace.define(GOOD)
    first = workspace.cli(*COMMANDS["sync"])
    assert first.exit_code == 0, first.output
    before = _snapshot(workspace)
    assert before[0]["_engage_state"] == 2 and before[0]["users"] == 1
    sent = len(workspace.sent())
    # New data that a run would send: a second buyer, and more spend for the first.
    workspace.track("Order Completed", "2024-01-20T00:00:00", user_id="u2", revenue=5.0, plan="free")
    workspace.track("Order Completed", "2024-01-21T00:00:00", user_id="u1", revenue=7.0, plan="pro")
    for name, text in files.items():
        workspace.define(text, name=name)
    if config is not None:
        workspace.write_config(config)
    result = workspace.cli(*COMMANDS["sync"])
    assert result.exit_code == 2, result.output
    assert _snapshot(workspace) == before
    assert len(workspace.sent()) == sent
    assert workspace.query("SELECT count(*) FROM website.tracks") == [(3,)]


# -- machine-readable failures -----------------------------------------------------------------------------------
def test_validate_json_reports_every_error_with_a_failed_status(workspace: Workspace) -> None:
    _seed(workspace)
    workspace.define("""\
        kind: audience
        name: A
        condition: {performed: Order Refunded}
        ---
        kind: audience
        name: B
        condition: {in_audience: nobody}
    """)
    result = workspace.cli("validate", "--json")
    assert result.exit_code == 2, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "failed"
    assert len(report["errors"]) == 2, report
    assert any(
        e.startswith(f"{DEFS}:3: condition.performed:") and "Order Refunded" in e for e in report["errors"]
    )
    assert any(e.startswith(f"{DEFS}:7: condition.in_audience:") and "nobody" in e for e in report["errors"])
    _assert_nothing_written(workspace)


def test_validate_json_reports_a_yaml_error(workspace: Workspace) -> None:
    _seed(workspace)
    workspace.define("kind: audience\nname: Buyers\ncondition:\n\tperformed: Order Completed\n")
    result = workspace.cli("validate", "--json")
    assert result.exit_code == 2, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "failed"
    assert [e for e in report["errors"] if e.startswith(f"{DEFS}:4:")], report


def test_sync_json_reports_a_bad_definition_with_a_failed_status(workspace: Workspace) -> None:
    _seed(workspace)
    workspace.define("kind: audience\nname: Buyers\ncondition: {performed: Order Refunded}\n")
    result = workspace.cli(*COMMANDS["sync"], "--json")
    assert result.exit_code == 2, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "failed"
    assert any(e.startswith(f"{DEFS}:3: condition.performed:") for e in report["errors"]), report
    _assert_nothing_written(workspace)
