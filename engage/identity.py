"""Profile resolution: which profile a source row belongs to. The compiler groups by what this returns.

Only `none` exists today (SPEC §1: user_id when the row has one, else anonymous_id). Profiles Sync and
stitching (SPEC §6) will resolve through an identity graph table; they plug in here without touching the
compiler.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from sqlglot import exp

from engage.config import IdentityConfig


class ProfileResolver(ABC):
    """Maps the rows of a source table to profile ids, as sqlglot expressions over the row's alias."""

    @abstractmethod
    def profile(self, row: str) -> exp.Expr:
        """The profile id of a row of any source table aliased `row`."""

    @abstractmethod
    def anonymous_id(self, profile: exp.Expr, user_id: exp.Expr) -> exp.Expr:
        """The anonymousId a profile's calls carry, from its id and its user_id."""


class UserElseAnonymous(ProfileResolver):
    """`none`: the row's user_id, else its anonymous_id. An anonymous profile's id is its anonymousId; an
    identified profile is its user_id, and its calls carry the userId only (which anonymous ids belong to a
    user is identity resolution's question: SPEC §6)."""

    def profile(self, row: str) -> exp.Expr:
        return exp.func("COALESCE", exp.column("user_id", row), exp.column("anonymous_id", row))

    def anonymous_id(self, profile: exp.Expr, user_id: exp.Expr) -> exp.Expr:
        return exp.case().when(user_id.is_(exp.null()), profile)


def resolver_for(config: IdentityConfig) -> ProfileResolver:
    if config.type == "none":
        return UserElseAnonymous()
    raise AssertionError(f"unhandled identity type {config.type}")
