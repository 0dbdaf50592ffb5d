"""Settings come from HOOKGATE_* variables, typed; the documentation is generated from them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.settings import settings_from_env, settings_reference
from gateway.worker import arq_redis


def test_environment_values_are_typed() -> None:
    settings = settings_from_env(
        {"HOOKGATE_MAX_BODY_BYTES": "2048", "HOOKGATE_ALLOW_PRIVATE_ENDPOINTS": "true", "OTHER": "x", "HOOKGATE_UNKNOWN": "1"}
    )
    assert settings.max_body_bytes == 2048 and settings.allow_private_endpoints is True


def test_a_misspelt_variable_is_warned_about_with_the_likely_name(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hookgate.settings")
    kubernetes = {"HOOKGATE_SERVICE_HOST": "10.0.0.1", "HOOKGATE_PORT": "tcp://10.0.0.1:8000", "HOOKGATE_PORT_8000_TCP_ADDR": "10.0.0.1",
                  "HOOKGATE_WORKER_METRICS_SERVICE_PORT_METRICS": "9101"}  # service links of a Service named hookgate…
    settings = settings_from_env({"HOOKGATE_DELIVERY_TIMEOUTS": "99", "HOOKGATE_USER_PASSWORD": "x", "HOOKGATE_LOG_LEVEL": "info", **kubernetes})
    assert settings.delivery_timeout != 99  # ignored, as before, but no longer silently:
    assert [record.getMessage() for record in caplog.records] == [
        "HOOKGATE_DELIVERY_TIMEOUTS is not a Hookgate setting (did you mean HOOKGATE_DELIVERY_TIMEOUT?): it is ignored"
    ]


def test_a_bad_value_stops_with_its_name() -> None:
    with pytest.raises(SystemExit, match="max_body_bytes"):
        settings_from_env({"HOOKGATE_MAX_BODY_BYTES": "lots"})


def test_a_lease_shorter_than_an_attempt_is_refused() -> None:
    with pytest.raises(SystemExit, match="lease_seconds must exceed delivery_timeout"):
        settings_from_env({"HOOKGATE_LEASE_SECONDS": "10", "HOOKGATE_DELIVERY_TIMEOUT": "10"})
    assert settings_from_env({"HOOKGATE_LEASE_SECONDS": "11", "HOOKGATE_DELIVERY_TIMEOUT": "10"}).lease_seconds == 11


def test_docs_list_every_setting(repo_root: Path) -> None:
    assert settings_reference() in (repo_root / "docs" / "SETTINGS.md").read_text()


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("HOOKGATE_RETRY_SCHEDULE", "0,5,soon", "retry_schedule must be comma-separated delays"),  # was only found at a failure
        ("HOOKGATE_RETRY_SCHEDULE", "0,-5", "retry_schedule must be comma-separated delays"),
        ("HOOKGATE_DELIVERY_CONCURRENCY", "0", "delivery_concurrency"),  # a worker that never delivered, and said nothing
        ("HOOKGATE_DB_POOL_SIZE", "0", "db_pool_size"),
        ("HOOKGATE_LOG_LEVEL", "verbose", "log_level must be DEBUG, INFO"),
    ],
)
def test_a_setting_that_would_fail_later_is_refused_at_start(variable: str, value: str, said: str) -> None:
    with pytest.raises(SystemExit, match=said):
        settings_from_env({variable: value})
    assert settings_from_env({"HOOKGATE_LOG_LEVEL": "debug"}).log_level == "debug"  # names in any case, as logging takes them


def test_the_arq_side_gets_the_tls_options_of_the_redis_url() -> None:
    """arq reads only the address, password, database and scheme of a URL: a managed Redis's CA
    bundle, which Hookgate's own client takes from the query, must reach it too."""
    arq = arq_redis("rediss://:pw@cache.example:6380/2?ssl_ca_certs=/etc/hookgate/ca/ca.crt&ssl_check_hostname=true")
    assert (arq.host, arq.port, arq.database, arq.password, arq.ssl) == ("cache.example", 6380, 2, "pw", True)
    assert (arq.ssl_ca_certs, arq.ssl_check_hostname) == ("/etc/hookgate/ca/ca.crt", True)
    plain = arq_redis("redis://127.0.0.1:6379/0")
    assert (plain.ssl, plain.ssl_ca_certs) == (False, None)
