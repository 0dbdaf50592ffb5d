"""Rotating ``HOOKGATE_SECRET_KEY`` to the end: ``hookgate secrets reencrypt`` rewrites every secret at
rest under the new key, after which an app that knows only the new key reads them all."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import LargeBinary, select

from gateway.app import create_app
from gateway.cli import main as cli
from gateway.database import Base, utcnow
from gateway.settings import get_settings
from tenants.crypto import SecretBox
from tenants.reencrypt import ENCRYPTED
from tenants.sources.models import SourceSecret
from tests.conftest import SECRET_KEY, Stack, make_settings, new_source, new_tenant
from tests.support.client import AppClient
from tests.support.database import connect

NEW_KEY = "the-new-secret-key-after-rotation"
STRIPE_KEY = "rk_test_RotationRestrictedKey"
# Binary columns that are not secrets, reviewed: a new encrypted column must join ENCRYPTED instead.
NOT_SECRET = {"events.body": "the provider's event, delivered as sent", "anomaly_models.blob": "a tenant's fitted forest"}


def test_every_binary_column_is_encrypted_and_rotated_or_reviewed() -> None:
    rotated = {f"{column.class_.__tablename__}.{column.key}" for column in ENCRYPTED}
    binary = {f"{table.name}.{column.name}" for table in Base.metadata.sorted_tables for column in table.columns
              if isinstance(column.type, LargeBinary)}
    assert binary - set(NOT_SECRET) == rotated, "add the column to tenants.reencrypt.ENCRYPTED or, if it is no secret, to NOT_SECRET"


def test_the_encrypting_key_must_be_long_and_an_old_short_one_can_still_be_read() -> None:
    short = "hunter2-hunter2"
    for key in ("", " , ", short, f"{short},{NEW_KEY}"):
        with pytest.raises(ValueError, match="HOOKGATE_SECRET_KEY") as refused:
            SecretBox(key)
        assert short not in str(refused.value)  # the message never repeats a key
    # what a deployment from before the minimum length stored under its short key
    ciphertext = Fernet(SecretBox._derive(short)).encrypt(b"whsec_kept")
    assert SecretBox(f"{NEW_KEY},{short}").decrypt(ciphertext) == "whsec_kept"  # rotated away from, not locked out


async def _ciphertexts(database_url: str) -> dict[str, list[bytes]]:
    async with connect(database_url) as connection:
        return {
            f"{column.class_.__tablename__}.{column.key}": list(await connection.scalars(select(column).where(column.is_not(None))))
            for column in ENCRYPTED
        }


async def _unreadable_secret(database_url: str, source_id: str) -> None:
    async with connect(database_url, write=True) as connection:
        await connection.execute(
            SourceSecret.__table__.insert(),
            {"id": uuid.uuid4(), "source_id": uuid.UUID(source_id), "ciphertext": SecretBox("a-lost-key-that-was-long-enough-once").encrypt("whsec_x"),
             "created_at": utcnow(), "expires_at": None},
        )


async def _reencrypt(stack: Stack, monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", stack.settings.database_url)
    monkeypatch.setenv("HOOKGATE_SECRET_KEY", f"{NEW_KEY},{SECRET_KEY}")
    get_settings.cache_clear()
    try:
        await asyncio.to_thread(cli, ["secrets", "reencrypt", *args])
    finally:
        get_settings.cache_clear()


async def test_reencrypt_moves_every_secret_to_the_new_key(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = stack.client
    tenant = await new_tenant(client)
    source = await new_source(client, tenant)
    patched = await client.patch(f"/api/v1/sources/{source['id']}", json={"stripe_api_key": STRIPE_KEY}, headers=tenant.auth)
    assert patched.status_code == 200, patched.text
    endpoints: list[dict[str, Any]] = []
    for n in range(3):  # more rows than one batch below
        created = await client.post(
            "/api/v1/endpoints", json={"url": f"http://127.0.0.1:9/{n}"}, headers={**tenant.auth, "idempotency-key": f"create-{n}"}
        )
        assert created.status_code == 201, created.text
        endpoints.append(created.json())
    before = await _ciphertexts(stack.settings.database_url)
    assert all(before.values()), before  # every kind of secret is there to be rotated

    await _reencrypt(stack, monkeypatch, "--batch", "2")
    output = capsys.readouterr().out
    assert "endpoint_secrets.ciphertext: 3 re-encrypted, 0 unreadable" in output and "can be removed" in output
    after = await _ciphertexts(stack.settings.database_url)
    new_only, old_only = SecretBox(NEW_KEY), SecretBox(SECRET_KEY)
    for column, values in after.items():
        assert len(values) == len(before[column]) and not set(values) & set(before[column]), column
        assert sorted(map(new_only.decrypt, values)) == sorted(map(old_only.decrypt, before[column])), column

    # An app that knows only the new key reads every secret and still answers idempotent retries.
    app = create_app(make_settings(stack.settings.database_url, stack.settings.redis_url, secret_key=NEW_KEY))
    async with AppClient(app) as fresh:
        for endpoint in endpoints:
            secret = await fresh.get(f"/api/v1/endpoints/{endpoint['id']}/secret", headers=tenant.auth)
            assert secret.status_code == 200 and [s["secret"] for s in secret.json()] == [endpoint["secret"]], secret.text
        source_secrets = await fresh.get(f"/api/v1/sources/{source['id']}/secrets", headers=tenant.auth)
        assert source_secrets.status_code == 200 and [s["secret"] for s in source_secrets.json()] == [source["secret"]]
        retried = await fresh.post("/api/v1/endpoints", json={"url": "http://127.0.0.1:9/0"}, headers={**tenant.auth, "idempotency-key": "create-0"})
        assert retried.status_code == 201 and retried.json()["id"] == endpoints[0]["id"]

    # A row no key can read is reported, left alone, and fails the command; the rest still rotate.
    await _unreadable_secret(stack.settings.database_url, source["id"])
    with pytest.raises(SystemExit, match="could not be decrypted"):
        await _reencrypt(stack, monkeypatch)
    assert "source_secrets.ciphertext: 1 re-encrypted, 1 unreadable" in capsys.readouterr().out
