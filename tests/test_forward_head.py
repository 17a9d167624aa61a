"""Header names: lower-casing by a table of common spellings, and the upstream head's header
policy table: every `-`/`_` spelling of a special header name is special, and nothing else is
(the rule it replaced: look the name up again with `_` read as `-`), except that a `_` spelling
of the headers a trusted proxy may pass on (X-Forwarded-For, -Proto, -Host, -Client-Cert) is
always dropped (only the `-` one may come from a trusted proxy)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.http import scan, wire
from gateway.upstream_headers import (
    ACTIONS,
    APPEND_XFF,
    CLIENT_CERT,
    DROP,
    KEEP_IF_TRUSTED,
    SPECIAL,
)


def _old_rule(name: bytes) -> int | None:
    action = ACTIONS.get(name)
    if action is None and b"_" in name:
        action = ACTIONS.get(name.replace(b"_", b"-"))
        if action in (APPEND_XFF, KEEP_IF_TRUSTED, CLIENT_CERT):
            action = DROP
    return action


@st.composite
def respelled(draw: st.DrawFn) -> bytes:
    """A special name with some of its `-` written `_`."""
    name = draw(st.sampled_from(sorted(ACTIONS)))
    return b"".join(b"_" if c == ord("-") and draw(st.booleans()) else bytes([c]) for c in name)


@given(
    st.one_of(
        respelled(), st.binary(max_size=24), st.from_regex(rb"[a-z_\-]{1,20}", fullmatch=True)
    )
)
def test_special_table_agrees_with_the_underscore_rule(name):
    assert SPECIAL.get(name) == _old_rule(name)


def test_every_spelling_of_an_identity_header_is_special():
    assert SPECIAL[b"x_auth_client_id"] == SPECIAL[b"x-auth-client-id"]
    assert SPECIAL[b"x-auth_client-id"] == SPECIAL[b"x-auth-client-id"]
    assert b"x--auth-subject" not in SPECIAL and b"xauth-subject" not in SPECIAL


def test_only_the_dash_spelling_of_xfcc_may_be_kept():
    assert SPECIAL[b"x-forwarded-client-cert"] == CLIENT_CERT
    assert SPECIAL[b"x_forwarded_client_cert"] == DROP
    assert SPECIAL[b"x-forwarded-client_cert"] == DROP


@given(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(scan._COMMON_NAMES),
        st.sampled_from(scan._COMMON_NAMES).map(bytes.upper),
        st.sampled_from(scan._COMMON_NAMES).map(bytes.swapcase),
    )
)
def test_lower_name_is_bytes_lower(name):
    """The table of common spellings only saves work: the answer is always name.lower()."""
    assert wire.lower_name(name) == name.lower()
