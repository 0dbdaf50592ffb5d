"""Secrets stay secret: after an end-to-end run of real processes no API key, signing secret,
Stripe API key or encryption key appears in plaintext in a ``pg_dump`` of the database, in any
log line or in any exported span; API keys are stored only as SHA-256 digests; and every
comparison of a secret is constant-time (an AST check over the code, so an ``==`` added later fails).
"""

from __future__ import annotations

import ast
import asyncio
import re
import secrets as secrets_module
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from gateway.database import create_engine
from gateway.idempotency.middleware import IdempotencyMiddleware
from gateway.ingest import providers
from tenants import auth, crypto
from tenants.models import ApiKey
from tests.conftest import OPERATOR_KEY, SECRET_KEY
from tests.support.processes import HOOKGATE, Process, serve
from tests.support.receiver import Script, Server, wait_until
from tests.support.services import pg_bindir
from tests.support.stripe_events import signed_stripe, stripe_event

ROOT = Path(__file__).resolve().parents[1]


def _pg_dump(database_url: str) -> str:
    bindir = pg_bindir()
    assert bindir is not None and (bindir / "pg_dump").is_file(), "pg_dump is part of the postgresql package"
    url = urlsplit(database_url)
    argv = [str(bindir / "pg_dump"), "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres"]
    return subprocess.run([*argv, url.path.lstrip("/")], capture_output=True, text=True, check=True, timeout=60).stdout


def _forms(secret: str) -> set[str]:
    """The ways a secret could leak: as text, its key material alone, and hex (how a dump shows bytea)."""
    forms = {secret, secret.encode().hex()}
    if secret.startswith("whsec_"):
        forms.add(secret.removeprefix("whsec_"))
    return forms


@pytest.mark.slow
async def test_no_secret_in_plaintext_in_the_dump_the_logs_or_the_spans(production_env: dict[str, str], tmp_path: Path) -> None:
    env = {**production_env, "HOOKGATE_OTEL_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100", "HOOKGATE_LOG_LEVEL": "DEBUG"}
    base, secrets = env["HOOKGATE_PUBLIC_URL"], {"operator key": OPERATOR_KEY, "encryption key": SECRET_KEY}
    async with Server(Script()) as receiver:
        with serve(env, tmp_path) as gateway, Process([*HOOKGATE, "worker"], tmp_path / "worker.log", env) as worker:
            await asyncio.to_thread(gateway.wait_http, f"{base}/healthz")
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                secrets |= await _exercise(http, receiver.url)
            ingest_token = secrets.pop("ingest token")
            endpoint_secrets = [secrets["endpoint secret"], secrets["rotated endpoint secret"]]
            await wait_until(lambda: len(receiver.requests) >= 3, timeout=30, what="the deliveries")
            for request in receiver.requests:  # signed with the secrets the dump must not show
                assert any(_verifies(secret, request.body, request.headers) for secret in endpoint_secrets)
            await asyncio.sleep(0.5)  # let the span batches go out
        outputs = {"gateway": gateway.output(), "worker": worker.output()}
    assert '"name": "ingest"' in outputs["gateway"] and '"name": "deliver' in outputs["worker"], "spans were exported"
    assert '"message": "ingest"' in outputs["gateway"] or '"message":"ingest"' in outputs["gateway"], "logs were written"

    places = {"pg_dump": _pg_dump(env["HOOKGATE_DATABASE_URL"]), **outputs}
    leaks = [f"{what} in {place}" for what, secret in secrets.items() for form in _forms(secret) for place, text in places.items() if form in text]
    # The ingest token is looked up by value, so the database holds it; logs and spans must not.
    leaks += [f"ingest token in {place}" for place, text in outputs.items() if ingest_token in text]
    assert not leaks, leaks

    engine = create_engine(env["HOOKGATE_DATABASE_URL"], pool_size=1)
    try:
        async with engine.connect() as connection:
            stored = list(await connection.execute(select(ApiKey.key_hash, ApiKey.prefix)))
    finally:
        await engine.dispose()
    assert [key_hash for key_hash, _ in stored] == [crypto.sha256_hex(secrets["API key"])]


def _verifies(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    try:
        Webhook(secret).verify(body, headers)
    except Exception:  # noqa: BLE001 - the other secret of the rotation signed it
        return False
    return True


async def _exercise(http: httpx.AsyncClient, receiver_url: str) -> dict[str, str]:
    """Every way a secret enters the system, once: returns each secret by name."""
    operator = {"authorization": f"Bearer {OPERATOR_KEY}"}
    api_key = (await http.post("/api/v1/tenants", json={"name": "Secrets"}, headers=operator)).json()["api_key"]
    tenant = {"authorization": f"Bearer {api_key}"}
    # An Idempotency-Key stores the answer, which carries the source secret: it must be encrypted.
    created = await http.post("/api/v1/sources", json={"name": "s", "provider": "stripe"}, headers={**tenant, "idempotency-key": "k1"})
    source = created.json()
    rotated_source = "whsec_" + crypto.new_token(24)
    added = await http.post(f"/api/v1/sources/{source['id']}/secrets", json={"secret": rotated_source}, headers=tenant)
    stripe_key = "rk_test_" + secrets_module.token_hex(24)
    patched = await http.patch(f"/api/v1/sources/{source['id']}", json={"stripe_api_key": stripe_key}, headers=tenant)
    endpoint = (await http.post("/api/v1/endpoints", json={"url": receiver_url}, headers=tenant)).json()
    rotated = await http.post(f"/api/v1/endpoints/{endpoint['id']}/rotate-secret", json={}, headers=tenant)
    revealed = (await http.get(f"/api/v1/endpoints/{endpoint['id']}/secret", headers=tenant)).json()
    assert (created.status_code, added.status_code, patched.status_code, rotated.status_code) == (201, 201, 200, 201)
    for secret in (source["secret"], rotated_source, source["secret"]):
        body, headers = signed_stripe(stripe_event(), secret)
        assert (await http.post(source["ingest_url"], content=body, headers=headers)).status_code == 200
    wrong, headers = signed_stripe(stripe_event(), "whsec_not-the-secret")
    assert (await http.post(source["ingest_url"], content=wrong, headers=headers)).status_code == 400
    newest = next(s["secret"] for s in revealed if s["secret"] != endpoint["secret"])
    return {
        "ingest token": source["ingest_url"].rsplit("/", 1)[1],
        "API key": api_key,
        "source secret": source["secret"],
        "rotated source secret": rotated_source,
        "Stripe API key": stripe_key,
        "endpoint secret": endpoint["secret"],
        "rotated endpoint secret": newest,
    }


# --- constant-time comparisons -----------------------------------------------------------------

_SECRETISH = re.compile(r"secret|signature|digest|key_hash|api_key|operator_key|password|token|credential|hmac", re.I)
# Reviewed ``==`` / ``!=`` on secret-named values that are not an authentication check.
_REVIEWED = {
    ("gateway/ingest/service.py", "fresher.secrets == source.secrets"): "did a reload bring new secrets? server data only",
    ("gateway/ingest/providers.py", "secret != secret.strip()"): "input validation of a secret being registered",
    ("tenants/sources/directory.py", "Source.ingest_token == token"): "SQL lookup by the 256-bit ingest token (an index, "
    "not a byte compare in Python); unknown tokens take the same path",
    ("dashboard/accounts.py", "Invite.token_hash == sha256_hex(token)"): "SQL lookup of an invitation by the SHA-256 "
    "of its random token (an index, not a byte compare in Python)",
    ("dashboard/sessions.py", "LoginSession.token_hash == sha256_hex(token)"): "SQL lookup of a session by the SHA-256 "
    "of its random token; the cookie itself is HMAC-checked in constant time first",
    ("dashboard/login.py", "password != str(data.get('confirm', ''))"): "the two password fields of one form agree: "
    "both are the user's own input, nothing stored is compared",
}
_CODE = ("gateway", "tenants", "delivery", "ml", "dashboard")


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript | ast.Call):
        return _name(node.value if isinstance(node, ast.Subscript) else node.func)
    return ""


def _secret_equalities() -> set[tuple[str, str]]:
    """``a == b`` / ``a != b`` where a side is named like a secret and none is a literal or a length."""
    found = set()
    for path in (p for package in _CODE for p in (ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Compare) or not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                continue
            sides = [node.left, *node.comparators]
            if any(isinstance(side, ast.Constant) or _name(side) in ("len", "") or _name(side).isupper() for side in sides):
                continue
            if any(_SECRETISH.search(_name(side)) for side in sides):
                found.add((str(path.relative_to(ROOT)), ast.unparse(node)))
    return found


def test_secrets_are_never_compared_with_equality() -> None:
    unreviewed = _secret_equalities() - set(_REVIEWED)
    assert not unreviewed, f"compare secrets with tenants.crypto.same / hmac.compare_digest: {sorted(unreviewed)}"
    assert set(_REVIEWED) <= _secret_equalities(), "a reviewed exception no longer exists: drop it"


def _calls(function: Any) -> set[str]:
    """Names a function's code (and the code nested in it) refers to."""
    codes, names = [function.__code__], set()
    while codes:
        code = codes.pop()
        names |= set(code.co_names)
        codes += [c for c in code.co_consts if hasattr(c, "co_names")]
    return names


def test_the_checks_that_compare_secrets_are_constant_time() -> None:
    assert "compare_digest" in _calls(crypto.same)
    assert "same" in _calls(auth.active_key) and "same" in _calls(auth.require_operator)
    assert "active_key" in _calls(auth.authenticate_tenant) and "same" in _calls(IdempotencyMiddleware._principal)
    assert "compare_digest" in _calls(providers._verify_standard)
    assert "compare_digest" in _calls(providers._body_hmac)
    # Stripe's own library does the Stripe compare, with hmac.compare_digest.
    import stripe._webhook as stripe_webhook  # noqa: PLC0415 - only this check needs the private module

    assert "secure_compare" in _calls(stripe_webhook.WebhookSignature.verify_header)
