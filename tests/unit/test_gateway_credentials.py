"""Password hashing and bearer secrets of the gateway (pure)."""
from __future__ import annotations

import hashlib
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st
from labfleet.gateway.domain.credentials import (
    hash_password,
    new_bearer,
    parse_bearer,
    verify_password,
)


def test_password_hash_verifies_only_the_right_password() -> None:
    stored = hash_password("correct horse", n=2**10)
    assert stored.startswith("scrypt$1024$8$1$")
    assert "correct horse" not in stored
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsE", stored)
    assert not verify_password("", stored)
    # the same password hashes differently each time (salted)
    assert hash_password("correct horse", n=2**10) != stored


def test_malformed_stored_hashes_never_verify() -> None:
    for stored in ("", "plain", "bcrypt$x$y$z$a$b", "scrypt$notanumber$8$1$AA$AA"):
        assert not verify_password("x", stored)


def test_bearer_round_trip_and_only_the_hash_is_kept() -> None:
    bearer = new_bearer("tok")
    parsed = parse_bearer(bearer.text, "tok")
    assert parsed == bearer
    assert parsed.matches(hashlib.sha256(bearer.secret.encode()).hexdigest())
    assert bearer.secret not in bearer.secret_hash
    assert len(bearer.secret) >= 43  # 32 random bytes, base64url


def test_parse_refuses_other_kinds_and_malformed_text() -> None:
    token = new_bearer("tok").text
    assert parse_bearer(token, "ses") is None
    for text in ("", "lf_tok", "lf_tok_nothex_abc", f"lf_tok_{uuid.uuid4().hex}_",
                 "Bearer " + token, "xx_tok_" + uuid.uuid4().hex + "_abc"):
        assert parse_bearer(text, "tok") is None


@settings(max_examples=200)
@given(st.text(max_size=120))
def test_parse_never_raises(text: str) -> None:
    result = parse_bearer(text, "tok")
    assert result is None or result.text.startswith("lf_tok_")


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
               min_size=1, max_size=60))
def test_a_different_secret_never_matches(other: str) -> None:
    bearer = new_bearer("tok")
    forged = parse_bearer(f"lf_tok_{bearer.row_id.hex}_{other}", "tok")
    assert forged is not None
    assert forged.matches(bearer.secret_hash) == (other == bearer.secret)
