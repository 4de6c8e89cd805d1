"""se.auth.gridmap: FQAN patterns and DN rules of [[auth.x509]] turned into a grant."""

from __future__ import annotations

import pytest

from se.auth.gridmap import FqanPattern, GridMap, parse_fqan
from se.auth.policy import Op
from se.config import X509Rule
from se.storage.paths import DavPath

ALICE = "/DC=org/DC=se-test/CN=Alice Tester"


@pytest.mark.parametrize(
    ("text", "group", "role"),
    [
        ("/atlas", "/atlas", ""),
        ("/atlas/Role=NULL/Capability=NULL", "/atlas", ""),
        ("/atlas/de/Role=production/Capability=NULL", "/atlas/de", "production"),
        ("/atlas/Role=production", "/atlas", "production"),
    ],
)
def test_fqans_are_a_group_and_a_role(text: str, group: str, role: str) -> None:
    fqan = parse_fqan(text)
    assert (fqan.group, fqan.role) == (group, role)


@pytest.mark.parametrize("text", ["", "atlas", "/", "//atlas", "/atlas/Role=x/sub", "/Role=x"])
def test_malformed_fqans_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_fqan(text)


@pytest.mark.parametrize(
    ("pattern", "fqan", "matches"),
    [
        ("/atlas", "/atlas/Role=NULL/Capability=NULL", True),
        ("/atlas", "/atlas", True),
        ("/atlas", "/atlas/Role=production", False),  # a role must be asked for by name
        ("/atlas", "/atlas/de", False),
        ("/atlas", "/atlasx", False),
        ("/atlas/Role=production", "/atlas/Role=production/Capability=NULL", True),
        ("/atlas/Role=production", "/atlas", False),
        ("/atlas/Role=production", "/atlas/de/Role=production", False),
        ("/atlas/Role=*", "/atlas/Role=pilot", True),
        ("/atlas/Role=*", "/atlas", True),
        ("/atlas/*", "/atlas/de", True),
        ("/atlas/*", "/atlas/de/muon", True),
        ("/atlas/*", "/atlas", False),
        ("/atlas/*", "/atlas/de/Role=production", False),
        ("/atlas*", "/atlas", True),
        ("/atlas*", "/atlas/de", True),
        ("/atlas.*", "/atlasX", False),  # only "*" is special
    ],
)
def test_fqan_patterns(pattern: str, fqan: str, matches: bool) -> None:
    assert FqanPattern.parse(pattern).matches(parse_fqan(fqan)) is matches


RULES = GridMap(
    [
        X509Rule(fqan="/dteam", path="/dteam", allow=("read",)),
        X509Rule(fqan="/dteam/Role=production", path="/dteam", allow=("modify",)),
        X509Rule(fqan="/dteam/Role=production", path="/dteam/protected", deny=("modify",)),
        X509Rule(dn="CN=Alice Tester,DC=se-test,DC=org", path="/home/alice", allow=("modify",)),
        X509Rule(dn=ALICE, fqan="/atlas", path="/both", allow=("read",)),
    ]
)


def test_every_fqan_counts_not_only_the_first() -> None:
    grant = RULES.grant(ALICE, ["/dteam/Role=NULL", "/dteam/Role=production"], 0.0)
    assert grant.allows(Op.CREATE, DavPath(("dteam", "f")))
    assert not grant.allows(Op.CREATE, DavPath(("dteam", "protected", "f")))
    assert grant.allows(Op.READ, DavPath(("dteam", "protected", "f")))
    assert grant.kind == "certificate"
    assert grant.subject == ALICE
    assert grant.attributes == ("/dteam/Role=NULL", "/dteam/Role=production")


def test_a_dn_rule_given_in_rfc4514_form_matches_the_slash_form() -> None:
    grant = RULES.grant(ALICE, [], 0.0)
    assert grant.allows(Op.CREATE, DavPath(("home", "alice", "f")))
    assert not grant.allows(Op.READ, DavPath(("dteam", "f")))
    other = RULES.grant("/DC=org/DC=se-test/CN=Bob", ["/dteam"], 0.0)
    assert not other.allows(Op.READ, DavPath(("home", "alice", "f")))
    assert other.allows(Op.READ, DavPath(("dteam", "f")))


def test_a_rule_naming_dn_and_fqan_needs_both() -> None:
    assert not RULES.grant(ALICE, ["/dteam"], 0.0).allows(Op.READ, DavPath(("both",)))
    assert RULES.grant(ALICE, ["/atlas"], 0.0).allows(Op.READ, DavPath(("both",)))
    bob = RULES.grant("/DC=org/CN=Bob", ["/atlas"], 0.0)
    assert not bob.allows(Op.READ, DavPath(("both",)))


def test_malformed_fqans_of_an_identity_match_nothing() -> None:
    grant = RULES.grant("/CN=x", ["dteam", "/dteam//x"], 0.0)
    assert grant.rules == ()


def test_a_rule_that_cannot_be_used_is_named() -> None:
    with pytest.raises(ValueError, match=r"auth.x509\[1\]"):
        GridMap([X509Rule(fqan="/a"), X509Rule(fqan="/a/Role=x/y")])
