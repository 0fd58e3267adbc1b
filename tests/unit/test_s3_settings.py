"""Choosing the artifact store: the S3 settings, refused with the missing variable named;
the build's metadata as S3 user metadata; the checksum S3 keeps of a multipart object."""
from __future__ import annotations

import base64
import hashlib

import pytest
import typer
from labfleet.shared.events.build import ArtifactInfo
from labfleet.shared.s3 import METADATA_LIMIT, composite_sha256, object_metadata, read_metadata
from labfleet.shared.settings import Settings
from pydantic import ValidationError

S3 = {"s3_endpoint_url": "https://s3.example.org", "s3_bucket": "lab-artifacts",
      "s3_access_key_id": "AKIAEXAMPLE", "s3_secret_access_key": "very-secret-value"}


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type,call-arg]


def test_jetstream_is_the_default_and_needs_no_s3() -> None:
    assert settings().artifact_store == "jetstream"
    assert settings().s3_config() is None


def test_s3_fully_configured() -> None:
    config = settings(artifact_store="S3", **S3).s3_config()
    assert config is not None
    assert (config.endpoint_url, config.bucket, config.region, config.access_key_id) == (
        "https://s3.example.org", "lab-artifacts", "us-east-1", "AKIAEXAMPLE")
    assert config.secret_access_key.get_secret_value() == "very-secret-value"
    assert "very-secret-value" not in repr(config) and "very-secret-value" not in str(config)
    assert "very-secret-value" not in repr(settings(**S3))


def test_empty_s3_settings_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-compose passes every LABFLEET_S3_* through, as "" when .env has none."""
    for name in ("ENDPOINT_URL", "BUCKET", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY"):
        monkeypatch.setenv(f"LABFLEET_S3_{name}", "")
    assert settings().s3_config() is None
    monkeypatch.setenv("LABFLEET_S3_BUCKET", "lab-artifacts")
    with pytest.raises(RuntimeError, match="LABFLEET_S3_ENDPOINT_URL, "):
        settings().s3_config()


@pytest.mark.parametrize("missing", ["s3_endpoint_url", "s3_bucket", "s3_access_key_id",
                                     "s3_secret_access_key"])
def test_each_missing_s3_setting_is_named(missing: str) -> None:
    given = {k: v for k, v in S3.items() if k != missing}
    with pytest.raises(RuntimeError) as caught:
        settings(artifact_store="s3", **given).s3_config()
    message = str(caught.value)
    assert f"LABFLEET_{missing.upper()} is not set" in message
    assert "LABFLEET_ARTIFACT_STORE is s3" in message
    assert "very-secret-value" not in message


def test_s3_chosen_with_nothing_configured_names_every_variable() -> None:
    with pytest.raises(RuntimeError) as caught:
        settings(artifact_store="s3").s3_config()
    for name in ("ENDPOINT_URL", "BUCKET", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY"):
        assert f"LABFLEET_S3_{name}" in str(caught.value)


def test_half_an_s3_configuration_is_refused_even_for_jetstream() -> None:
    """An endpoint without credentials is a mistake, not a wish for the default."""
    with pytest.raises(RuntimeError, match="some LABFLEET_S3_\\* settings are given, but "
                                           "LABFLEET_S3_BUCKET"):
        settings(s3_endpoint_url="http://127.0.0.1:9000", s3_access_key_id="k",
                 s3_secret_access_key="s").s3_config()
    # all of it, with jetstream for new artifacts: S3 still read (artifacts stored earlier)
    assert settings(**S3).s3_config() is not None


@pytest.mark.parametrize("url", ["s3.example.org", "ftp://s3.example.org", "https://"])
def test_an_endpoint_that_is_no_http_url(url: str) -> None:
    with pytest.raises(RuntimeError, match="LABFLEET_S3_ENDPOINT_URL is .*http:// or https://"):
        settings(artifact_store="s3", **{**S3, "s3_endpoint_url": url}).s3_config()


@pytest.mark.parametrize("bucket", ["ab", "Lab_Artifacts", "x" * 64])
def test_a_bucket_name_s3_would_refuse(bucket: str) -> None:
    with pytest.raises(RuntimeError, match="LABFLEET_S3_BUCKET is .*3-63 lower-case"):
        settings(artifact_store="s3", **{**S3, "s3_bucket": bucket}).s3_config()


def test_an_unknown_artifact_store() -> None:
    with pytest.raises(ValidationError, match="LABFLEET_ARTIFACT_STORE is 'minio': use "
                                              "jetstream .* or s3"):
        settings(artifact_store="minio")


def test_labfleet_run_refuses_to_start_with_the_variable_named(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from labfleet.cli.run import run

    monkeypatch.setenv("LABFLEET_NATS_URL", "nats://127.0.0.1:1")
    monkeypatch.setenv("LABFLEET_DATABASE_URL", "postgresql://x@127.0.0.1:1/x")
    monkeypatch.setenv("LABFLEET_ARTIFACT_STORE", "s3")
    monkeypatch.setenv("LABFLEET_S3_BUCKET", "lab-artifacts")
    monkeypatch.setenv("LABFLEET_S3_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("LABFLEET_S3_SECRET_ACCESS_KEY", "very-secret-value")
    with pytest.raises(typer.Exit) as stopped:
        run("builder")
    assert stopped.value.exit_code == 2
    err = capsys.readouterr().err
    assert "LABFLEET_S3_ENDPOINT_URL is not set" in err and "very-secret-value" not in err


def test_metadata_as_s3_user_metadata_round_trips() -> None:
    meta = {"build_id": "7f0c", "repository": "https://git.example.org/linux.git",
            "toolchain": "gcc (Débian 14.2.0-19) 14.2.0", "config": "100% tiny"}
    out = object_metadata(meta, "ab" * 32)
    assert out["build-id"] == "7f0c" and out["sha256"] == "ab" * 32
    assert all(0x20 <= ord(c) < 0x7f for v in out.values() for c in v)  # HTTP-safe
    assert read_metadata(out) == meta


def test_long_metadata_is_shortened_to_s3s_limit_keeping_the_checksum() -> None:
    options = " ".join(f"CONFIG_OPTION_{i}=y" for i in range(300))
    out = object_metadata({"build_id": "7f0c", "config_options": options,
                           "toolchain": "gcc é" * 10}, "cd" * 32)
    assert sum(len(k) + len(v) for k, v in out.items()) <= METADATA_LIMIT
    assert out["sha256"] == "cd" * 32 and out["build-id"] == "7f0c"
    assert out["config-options"].endswith("...")
    assert read_metadata(out)["config_options"].startswith("CONFIG_OPTION_0=y CONFIG_OPTION_1")


def test_composite_checksum_is_sha256_of_the_part_digests() -> None:
    parts = [b"a" * 10, b"b" * 3]
    expected = hashlib.sha256(hashlib.sha256(parts[0]).digest()
                              + hashlib.sha256(parts[1]).digest()).digest()
    assert composite_sha256([hashlib.sha256(p).digest() for p in parts]) == \
        base64.b64encode(expected).decode()


def test_artifact_events_from_before_s3_say_jetstream() -> None:
    old = ArtifactInfo.model_validate({"name": "Image", "size": 1, "sha256": "00",
                                       "object_name": "b/Image", "bucket": "artifacts"})
    assert old.backend == "jetstream"



def test_parts_grow_so_that_ten_thousand_hold_hundreds_of_gigabytes() -> None:
    from labfleet.builder.adapters.s3_store import PART_SIZE, _part_size

    assert [_part_size(PART_SIZE, n) for n in (1, 1000, 1001, 2000, 2001, 10_000)] == [
        PART_SIZE, PART_SIZE, 2 * PART_SIZE, 2 * PART_SIZE, 3 * PART_SIZE, 10 * PART_SIZE]
    assert sum(_part_size(PART_SIZE, n) for n in range(1, 10_001)) > 400 * 10**9
