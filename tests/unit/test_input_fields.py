"""The shared input field types and the repository URL rule: what each accepts, its
canonical form, and the message a refusal gives."""
from __future__ import annotations

import pytest
from labfleet.scheduler.domain.repo_urls import allowed_schemes, scheme_of, url_refusal
from labfleet.shared.events.fields import (
    canonical_address,
    canonical_fingerprint,
    canonical_hostname,
    plain_string,
    text,
)


@pytest.mark.parametrize(("given", "canonical"), [
    ("10.231.11", "10.231.0.11"), ("10.231.0.11", "10.231.0.11"), ("127.1", "127.0.0.1"),
    ("10.65535", "10.0.255.255"), (" 192.0.2.7 ", "192.0.2.7"),
    ("2001:DB8:0:0::1", "2001:db8::1"), ("[::0001]", "::1"),
    ("Build-01.Lab.Example.", "build-01.lab.example"),
])
def test_addresses_take_one_canonical_form(given: str, canonical: str) -> None:
    assert canonical_address(given) == canonical


@pytest.mark.parametrize(("given", "said"), [
    ("10.0.0.1\n", r"U\+000A"), ("a b", "white space"), ("1.2.3.4.5", "more than four parts"),
    ("010.0.0.1", "leading zero"), ("256.0.0.1", "out of range"), ("10.1.65536", "range"),
    ("bücher.example", "ASCII"), ("a..b", "not a valid host name"), ("1:2:3", "IPv6"),
    ("host.123", "neither an IPv4 address nor a host name"), ("", "empty"),
])
def test_bad_addresses_are_refused_with_what_is_wrong(given: str, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        canonical_address(given)


def test_host_names_are_lower_cased_and_refuse_white_space() -> None:
    assert canonical_hostname("GW-Builder_1") == "gw-builder_1"
    with pytest.raises(ValueError, match="hostname must not contain white space"):
        canonical_hostname("a b")


def test_plain_strings_refuse_nul_and_control_characters() -> None:
    assert plain_string("  name ") == "name"
    with pytest.raises(ValueError, match="NUL character"):
        plain_string("a\x00b")
    with pytest.raises(ValueError, match="control characters"):
        plain_string("a\x1bb")
    assert text("line one\nline two\t") == "line one\nline two\t"
    with pytest.raises(ValueError, match="NUL"):
        text("a\x00")


def test_fingerprints_are_sha256_base64() -> None:
    digest = "nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8"
    assert canonical_fingerprint(f"SHA256:{digest}") == f"SHA256:{digest}"
    assert canonical_fingerprint(f"sha256:{digest}=") == f"SHA256:{digest}"
    assert canonical_fingerprint(digest) == f"SHA256:{digest}"
    for bad in ("SHA256:short", "SHA256:" + "!" * 43, "MD5:aa:bb"):
        with pytest.raises(ValueError, match="fingerprint"):
            canonical_fingerprint(bad)


@pytest.mark.parametrize(("url", "scheme"), [
    ("https://git.kernel.org/linux.git", "https"), ("git://host/x", "git"),
    ("ssh://git@host/x.git", "ssh"), ("git@github.com:team/linux.git", "ssh"),
    ("host:path/x.git", "ssh"), ("file:///srv/x", "file"), ("/srv/x", "file"),
    ("./x", "file"), ("ext::sh -c id", "ext"), ("FILE:///x", "file"),
    ("fd::17", "fd"),
])
def test_the_scheme_git_would_use(url: str, scheme: str) -> None:
    assert scheme_of(url) == scheme


def test_only_allowed_schemes_pass() -> None:
    default = allowed_schemes(None)
    assert default == {"https", "http", "git", "ssh"}
    assert url_refusal("git@host:x.git", default) is None
    refused = url_refusal("file:///srv/mirrors/a.git", default)
    assert refused is not None and refused.field == "repo_url"
    assert "other builds' mirrors" in refused.message
    assert url_refusal("file:///srv/a.git", allowed_schemes("https, FILE")) is None
