"""Settings come from HOOKGATE_* variables, typed; the documentation is generated from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import settings_from_env, settings_reference


def test_environment_values_are_typed() -> None:
    settings = settings_from_env(
        {"HOOKGATE_MAX_BODY_BYTES": "2048", "HOOKGATE_ALLOW_PRIVATE_ENDPOINTS": "true", "OTHER": "x", "HOOKGATE_UNKNOWN": "1"}
    )
    assert settings.max_body_bytes == 2048 and settings.allow_private_endpoints is True


def test_a_bad_value_stops_with_its_name() -> None:
    with pytest.raises(SystemExit, match="max_body_bytes"):
        settings_from_env({"HOOKGATE_MAX_BODY_BYTES": "lots"})


def test_a_lease_shorter_than_an_attempt_is_refused() -> None:
    with pytest.raises(SystemExit, match="lease_seconds must exceed delivery_timeout"):
        settings_from_env({"HOOKGATE_LEASE_SECONDS": "10", "HOOKGATE_DELIVERY_TIMEOUT": "10"})
    assert settings_from_env({"HOOKGATE_LEASE_SECONDS": "11", "HOOKGATE_DELIVERY_TIMEOUT": "10"}).lease_seconds == 11


def test_docs_list_every_setting(repo_root: Path) -> None:
    assert settings_reference() in (repo_root / "docs" / "SETTINGS.md").read_text()
