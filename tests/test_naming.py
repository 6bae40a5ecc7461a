from __future__ import annotations

import pytest

from engage.naming import snakecase

# Every case of TestSnakecase in segmentio/go-snakecase's snake_test.go, in upstream order.
UPSTREAM_CASES = [
    pytest.param("@49L0S145_¬fwHƒ0TSLNVp", "49l0s145_fw_h_0tslnvp", id="non-ascii-mixed"),
    pytest.param("lk0B@bFmjrLQ_Z6YL", "lk0_b_b_fmjr_lq_z6yl", id="random-mixed"),
    pytest.param("samPLE text", "sam_ple_text", id="inner-upper-run"),
    pytest.param("sample text", "sample_text", id="space"),
    pytest.param("sample-text", "sample_text", id="hyphen"),
    pytest.param("sample_text", "sample_text", id="already-snake"),
    pytest.param("sample___text", "sample_text", id="repeated-underscores"),
    pytest.param("sampleText", "sample_text", id="camel"),
    pytest.param("inviteYourCustomersAddInvites", "invite_your_customers_add_invites", id="long-camel"),
    pytest.param("sample 2 Text", "sample_2_text", id="digit-word"),
    pytest.param("   sample   2    Text   ", "sample_2_text", id="surrounding-spaces"),
    pytest.param("   $#$sample   2    Text   ", "sample_2_text", id="leading-symbols"),
    pytest.param("SAMPLE 2 TEXT", "sample_2_text", id="all-caps"),
    pytest.param("___$$Base64Encode", "base64_encode", id="leading-underscores-symbols"),
    pytest.param("FOO:BAR$BAZ", "foo_bar_baz", id="colon-dollar"),
    pytest.param("FOO#BAR#BAZ", "foo_bar_baz", id="hashes"),
    pytest.param("something.com", "something_com", id="dot"),
    pytest.param("$something%", "something", id="wrapped-in-symbols"),
    pytest.param("something.com", "something_com", id="dot-again"),
    pytest.param("•¶§ƒ˚foo˙∆˚¬", "foo", id="non-ascii-symbols"),
    pytest.param("CStringRef", "cstring_ref", id="acronym-glued-to-word"),
    pytest.param("5test", "5test", id="leading-digit"),
    pytest.param("test5", "test5", id="trailing-digit"),
    pytest.param("THE5r", "the5r", id="caps-digit-lower"),
    pytest.param("5TEst", "5test", id="digit-caps-lower"),
    pytest.param("_5TEst", "5test", id="underscore-digit-caps-lower"),
    pytest.param("@%#&5TEst", "5test", id="symbols-digit-caps-lower"),
    pytest.param("edf_6N", "edf_6n", id="digit-segment-then-upper"),
    pytest.param("f_pX9", "f_p_x9", id="lower-segment-then-upper"),
    pytest.param("p_z9Rg", "p_z9_rg", id="lower-digit-segment-then-upper"),
    pytest.param("2FA Enabled", "2fa_enabled", id="digit-acronym-first"),
    pytest.param("Enabled 2FA", "enabled_2fa", id="digit-acronym-last"),
]

EXTRA_CASES = [
    pytest.param("iOS Users", "i_os_users", id="lower-then-acronym"),
    pytest.param("getHTTPServer", "get_httpserver", id="acronym-not-split"),
    pytest.param("caféBar", "caf_bar", id="non-ascii-letter-is-separator"),
    pytest.param("a_B", "a_b", id="underscore-before-upper"),
    pytest.param("ab_", "ab", id="trailing-underscore"),
    pytest.param("", "", id="empty"),
]


@pytest.mark.parametrize(("name", "expected"), UPSTREAM_CASES)
def test_snakecase_matches_upstream(name: str, expected: str) -> None:
    assert snakecase(name) == expected


@pytest.mark.parametrize(("name", "expected"), EXTRA_CASES)
def test_snakecase_extra_cases(name: str, expected: str) -> None:
    assert snakecase(name) == expected


@pytest.mark.parametrize("name", ["!!!", "___", "ƒ˚¬ é"])
def test_snakecase_without_ascii_alphanumerics_is_empty(name: str) -> None:
    assert snakecase(name) == ""


def test_snakecase_returns_snake_case_input_unchanged() -> None:
    assert snakecase("a_1b_c2") == "a_1b_c2"
