"""Syncs that resolve identity through Profiles Sync (SPEC §6): audiences and traits per canonical profile,
messages with the profile's identifiers, state that follows merges, and bad identity config."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engage.cli import main
from engage_connectors.memory import MemoryConnector
from tests.conftest import CONFIG, Workspace
from tests.profiles_sync import ProfilesSync

IDENTITY = "    identity: {type: profiles_sync, schema: profiles, output_schema: profiles_out}\n"
TWO_PAGES = """
    kind: audience
    name: Two Pages
    include_anonymous: true
    condition:
      performed: Page Viewed
      at_least: 2
    ---
    kind: trait
    name: Pages Seen
    type: count
    event: Page Viewed
"""
PRICING = """
    kind: audience
    name: Pricing Visitors
    include_anonymous: true
    condition:
      performed: Page Viewed
      where:
        - {property: name, op: eq, value: Pricing}
"""
FUNNEL = """
    kind: audience
    name: Browsed Then Bought
    condition:
      funnel:
        - performed: Page Viewed
        - then_performed: Order Completed
          within: 1d
"""
JANE_A1, JANE_A2 = "5285bc35-05ef-4d21", "b50e18a5-1b8d-451c"


@pytest.fixture
def space(tmp_path: Path) -> Iterator[Workspace]:
    MemoryConnector.sent.clear()
    workspace = Workspace(tmp_path / "project", sources=("profiles",))
    workspace.write_config(CONFIG.format(sources="profiles") + IDENTITY)
    yield workspace
    MemoryConnector.sent.clear()


def profiles_sync(workspace: Workspace) -> ProfilesSync:
    workspace.flush()
    return ProfilesSync(workspace.connect())


def identifies(workspace: Workspace) -> list[tuple[Any, ...]]:
    return sorted(
        (m.get("userId") or "", m.get("anonymousId") or "", json.dumps(m["traits"], sort_keys=True))
        for m in workspace.sent()
        if m["type"] == "identify"
    )


def state(workspace: Workspace, key: str) -> list[tuple[Any, ...]]:
    return workspace.query(
        "SELECT profile_id, value_text FROM engage_default._engage_state"
        f" WHERE definition_key = '{key}' ORDER BY 1"
    )


def land_case_study(workspace: Workspace, merged: bool = True) -> ProfilesSync:
    """The seed's case study: Jane browses as profile_1, later as profile_2 (another anonymous id), which
    merges into profile_1. One page view on each."""
    workspace.page(
        "2022-05-02T14:01:00", anonymous_id=JANE_A1, segment_id="profile_1", name="Home", source="profiles"
    )
    workspace.page(
        "2022-06-22T10:47:15", anonymous_id=JANE_A2, segment_id="profile_2", name="Pricing", source="profiles"
    )
    landed = profiles_sync(workspace)
    landed.profile("profile_1", "2022-05-02 14:01:00")
    landed.external("profile_1", "anonymous_id", JANE_A1, "2022-05-02 14:01:00")
    landed.external("profile_1", "email", "jane@example.com", "2022-05-02 14:01:47")
    landed.profile("profile_2", "2022-06-22 10:47:15")
    landed.external("profile_2", "anonymous_id", JANE_A2, "2022-06-22 10:48:00")
    if merged:
        landed.profile("profile_2", "2022-06-22 10:48:00", into="profile_1")
    landed.con.close()
    return landed


def test_two_page_views_on_two_merged_ids_count_for_the_canonical_profile(space: Workspace) -> None:
    space.define(TWO_PAGES)
    land_case_study(space)
    summary = space.sync("2022-07-01T00:00:00")
    assert {d.key: d.entered for d in summary.definitions} == {"two_pages": 1, "pages_seen": 0}
    assert identifies(space) == [
        ("", JANE_A2, json.dumps({"pages_seen": 2})),  # the most recent anonymous id
        ("", JANE_A2, json.dumps({"two_pages": True})),
    ]
    assert state(space, "two_pages") == [("profile_1", "true")]
    assert space.query("SELECT segment_id, canonical_segment_id FROM profiles_out.id_graph ORDER BY 1") == [
        ("profile_1", "profile_1"),
        ("profile_2", "profile_1"),
    ]


def test_without_identity_the_two_page_views_are_two_people(space: Workspace) -> None:
    space.write_config(CONFIG.format(sources="profiles"))
    space.define(TWO_PAGES)
    land_case_study(space)
    summary = space.sync("2022-07-01T00:00:00")
    assert {d.key: d.size for d in summary.definitions} == {"two_pages": 0, "pages_seen": 2}


def test_a_funnel_from_an_anonymous_page_to_a_signed_in_order_completes_only_with_identity(
    space: Workspace,
) -> None:
    space.define(FUNNEL)
    space.page(
        "2024-03-01T09:00:00", anonymous_id="anon-9", segment_id="s_anon", name="Pricing", source="profiles"
    )
    space.track("Order Completed", "2024-03-01T12:00:00", user_id="u9", anonymous_id="anon-10",
                segment_id="s_user", revenue=20.0, source="profiles")  # fmt: skip
    landed = profiles_sync(space)
    landed.profile("s_anon", "2024-03-01 09:00:00")
    landed.external("s_anon", "anonymous_id", "anon-9", "2024-03-01 09:00:00")
    landed.profile("s_user", "2024-03-01 12:00:00")
    landed.external("s_user", "user_id", "u9", "2024-03-01 12:00:00")
    landed.external("s_user", "anonymous_id", "anon-10", "2024-03-01 12:00:00")
    landed.profile("s_anon", "2024-03-01 12:00:01", into="s_user")  # signing in merges the visit
    landed.con.close()
    summary = space.sync("2024-03-02T00:00:00")
    assert summary.entered == 1
    assert identifies(space) == [("u9", "anon-10", json.dumps({"browsed_then_bought": True}))]

    space.write_config(CONFIG.format(sources="profiles"))
    space.query("DROP SCHEMA engage_default CASCADE")
    assert space.sync("2024-03-02T00:00:00").entered == 0


def test_a_merge_sends_no_exit_for_the_merged_away_id_and_no_resend(space: Workspace) -> None:
    space.define(TWO_PAGES + "    ---" + PRICING)
    land_case_study(space, merged=False)
    first = space.sync("2022-07-01T00:00:00")
    assert {d.key: (d.entered, d.size) for d in first.definitions} == {
        "two_pages": (0, 0),
        "pages_seen": (0, 2),
        "pricing_visitors": (1, 1),
    }
    assert state(space, "pricing_visitors") == [("profile_2", "true")]
    before = len(space.sent())

    with space.connect() as con:
        ProfilesSync(con).profile("profile_2", "2022-06-22 10:48:00", into="profile_1", landed="2022-07-01")
    second = space.sync("2022-07-02T00:00:00")
    # profile_1 takes profile_2's pricing membership: nothing to send for it, and no exit for profile_2.
    assert {d.key: (d.entered, d.exited, d.changed) for d in second.definitions} == {
        "two_pages": (1, 0, 0),
        "pages_seen": (0, 0, 1),
        "pricing_visitors": (0, 0, 0),
    }
    sent = space.sent()[before:]
    assert sorted(
        (m["type"], m.get("event"), m.get("anonymousId"), json.dumps(m.get("traits"))) for m in sent
    ) == [
        ("identify", None, JANE_A2, json.dumps({"pages_seen": 2})),
        ("identify", None, JANE_A2, json.dumps({"two_pages": True})),
        ("track", "Audience Entered", JANE_A2, "null"),
        ("track", "Trait Computed", JANE_A2, "null"),
    ]
    assert state(space, "pricing_visitors") == [("profile_1", "true")]
    assert state(space, "pages_seen") == [("profile_1", "2")]
    assert space.sync("2022-07-03T00:00:00").unchanged_since == second.run_id


def test_a_profile_without_identifiers_sends_nothing_until_it_gains_one(space: Workspace) -> None:
    space.define(PRICING)
    space.page("2024-01-01T00:00:00", anonymous_id="a-x", segment_id="s_x", name="Pricing", source="profiles")
    landed = profiles_sync(space)
    landed.profile("s_x", "2024-01-01 00:00:00")  # no external id landed yet
    landed.con.close()
    first = space.sync("2024-01-02T00:00:00")
    assert first.entered == 0 and space.sent() == []
    assert state(space, "pricing_visitors") == []

    with space.connect() as con:
        ProfilesSync(con).external("s_x", "anonymous_id", "a-x", "2024-01-01 00:00:00", landed="2024-01-02")
    second = space.sync("2024-01-03T00:00:00")
    assert second.entered == 1
    assert identifies(space) == [("", "a-x", json.dumps({"pricing_visitors": True}))]


def test_events_without_a_segment_id_resolve_through_their_identifiers(space: Workspace) -> None:
    space.define(TWO_PAGES)
    land_case_study(space)
    space.page(
        "2022-06-30T00:00:00", anonymous_id=JANE_A1, name="Docs", source="profiles"
    )  # backfilled: no segment_id
    space.sync("2022-07-01T00:00:00")
    assert identifies(space) == [
        ("", JANE_A2, json.dumps({"pages_seen": 3})),
        ("", JANE_A2, json.dumps({"two_pages": True})),
    ]


def _exit_2(workspace: Workspace, *args: str) -> str:
    result = workspace.cli(*args)
    assert result.exit_code == 2, result.output
    assert workspace.query(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name IN ('engage_default', 'profiles_out')"
    ) == [(0,)], "nothing written"
    return result.output


def test_bad_identity_config_exits_2_naming_the_setting_and_writes_nothing(space: Workspace) -> None:
    space.define(PRICING)
    land_case_study(space)
    config = CONFIG.format(sources="profiles")

    space.write_config(config + "    identity: {type: graph}\n")
    output = _exit_2(space, "sync", "--space", "default")
    assert re.search(r"config/engage.yaml:\d+: spaces\.default\.identity", output), output

    space.write_config(
        config + "    identity: {type: profiles_sync, schema: profiles, output_schema: engage_default}\n"
    )
    output = _exit_2(space, "sync", "--space", "default")
    assert re.search(
        r"engage.yaml:\d+: spaces\.default\.identity\.output_schema: .*output schema of space default", output
    )

    space.write_config(config + "    identity: {type: profiles_sync, schema: elsewhere}\n")
    output = _exit_2(space, "sync", "--space", "default")
    assert "Profiles Sync table elsewhere.id_graph_updates not found" in output, output
    assert re.search(r"engage.yaml:\d+: spaces\.default\.identity\.schema", output), output

    space.query("ALTER TABLE profiles.external_id_mapping_updates DROP COLUMN external_id_hash")
    space.write_config(config + IDENTITY)
    output = _exit_2(space, "identity", "--space", "default")
    assert "profiles.external_id_mapping_updates lacks column external_id_hash" in output, output


def test_engage_identity_brings_the_tables_up_to_date_and_prints_counts(space: Workspace) -> None:
    space.write_config(CONFIG.format(sources="profiles"))
    result = space.cli("identity", "--space", "default")
    assert result.exit_code == 2 and "needs `identity: {type: profiles_sync" in result.output, result.output
    space.write_config(CONFIG.format(sources="profiles") + IDENTITY)
    land_case_study(space)
    result = space.cli("identity", "--space", "default", "--json")
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    assert {k: counts[k] for k in ("profiles", "segment_ids", "merged", "depth", "external_ids")} == {
        "profiles": 1, "segment_ids": 2, "merged": 1, "depth": 1, "external_ids": 3,
    }  # fmt: skip
    text = space.cli("identity", "--space", "default", "--full-refresh").output
    assert "1 profiles from 2 ids (1 merged, longest merge chain 1), 3 external ids -> profiles_out" in text
    assert space.query("SELECT count(*) FROM profiles_out.profile_traits") == [(2,)]


def test_a_dry_run_needs_the_identity_tables_and_reads_them_as_they_are(space: Workspace) -> None:
    space.define(TWO_PAGES)
    land_case_study(space)
    result = space.cli("sync", "--space", "default", "--dry-run")
    assert result.exit_code == 2 and "run `engage identity --space default`" in result.output, result.output
    assert space.cli("identity", "--space", "default").exit_code == 0
    result = space.cli("sync", "--space", "default", "--dry-run", "--as-of", "2022-07-01", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["entered"] == 1


def test_the_demo_signup_space_completes_its_pre_signup_funnel_only_with_identity(tmp_path: Path) -> None:
    """The repository's own project: `engage demo` lands a Profiles Sync schema and the `signup` space reads it."""
    repo = Path(__file__).resolve().parents[1]
    for folder in ("config", "audiences"):
        shutil.copytree(repo / folder, tmp_path / folder)
    runner = CliRunner()

    def run(*args: str) -> dict[str, Any]:
        result = runner.invoke(main, ["--project", str(tmp_path), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.output) if "--json" in args else {}

    run("demo", "--profiles", "400", "--events", "6000")
    sizes = {d["key"]: d["size"] for d in run("sync", "--space", "signup", "--json")["definitions"]}
    assert sizes["browsed_before_signing_up"] > 0
    config = tmp_path / "config" / "engage.yaml"
    config.write_text(
        config.read_text().replace("identity: {type: profiles_sync", "identity: {type: none} #")
    )
    unresolved = run("sync", "--space", "signup", "--dry-run", "--full-refresh", "--json")
    assert {d["key"]: d["size"] for d in unresolved["definitions"]}["browsed_before_signing_up"] == 0


STITCH = "    identity: {type: stitch, identifiers: [user_id, email, anonymous_id]}\n"


def test_stitching_joins_anonymous_visits_to_the_user_and_never_merges_two_users(
    workspace: Workspace,
) -> None:
    """engage's own graph (SPEC §6 Stitch): an anonymous page view joins its user through an identify, and
    a device seen with two users links neither."""
    workspace.write_config(CONFIG.format(sources="website") + STITCH)
    workspace.define(FUNNEL + "    ---" + TWO_PAGES)
    workspace.page("2024-03-01T09:00:00", anonymous_id="a1", name="Pricing")
    workspace.identify("2024-03-01T11:00:00", user_id="u1", anonymous_id="a1", email="jo@example.com")
    workspace.track("Order Completed", "2024-03-01T12:00:00", user_id="u1", revenue=5.0)
    # A shared tablet: both users sign in on it, and each views a page there.
    workspace.page("2024-03-02T09:00:00", user_id="u2", anonymous_id="tablet", name="Home")
    workspace.page("2024-03-02T10:00:00", user_id="u3", anonymous_id="tablet", name="Home")
    workspace.page("2024-03-02T11:00:00", anonymous_id="tablet", name="Docs")

    summary = workspace.sync("2024-03-03T00:00:00")
    sizes = {d.key: d.size for d in summary.definitions}
    assert sizes == {"browsed_then_bought": 1, "two_pages": 0, "pages_seen": 4}
    sent = sorted(
        (m.get("userId") or "", m.get("anonymousId") or "", json.dumps(m["traits"]))
        for m in workspace.sent()
        if m["type"] == "identify"
    )
    assert sent == [
        ("", "tablet", json.dumps({"pages_seen": 1})),  # the tablet's own anonymous profile
        ("u1", "a1", json.dumps({"browsed_then_bought": True})),
        ("u1", "a1", json.dumps({"pages_seen": 1})),
        ("u2", "", json.dumps({"pages_seen": 1})),
        ("u3", "", json.dumps({"pages_seen": 1})),
    ]
    assert workspace.sync("2024-03-03T00:00:00").unchanged_since == summary.run_id

    workspace.write_config(CONFIG.format(sources="website"))
    assert workspace.members("browsed_then_bought", "2024-03-03T00:00:00") == set()
