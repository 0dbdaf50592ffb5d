"""``hookgate dev`` as a real process: what a newcomer does first, over real HTTP."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import stat
import subprocess
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.support.processes import HOOKGATE, Process
from tests.support.receiver import Script, Server, wait_until
from tests.support.services import free_port
from tests.support.stripe_events import signed_stripe, stripe_event

pytestmark = pytest.mark.slow


def _printed(output: str, label: str) -> str:
    match = re.search(rf"{re.escape(label)}\s+(\S+)", output)
    assert match, f"{label!r} not printed:\n{output}"
    return match.group(1)


def test_dev_mode_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"HOOKGATE_OPERATOR_KEY": "", "HOOKGATE_PUBLIC_URL": ""}
    argv = [*HOOKGATE, "dev", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    with Process(argv, tmp_path / "dev.log", env={k: v for k, v in env.items() if v}) as dev:
        dev.wait_http(f"{base}/healthz")
        out = dev.output()
        operator, demo_key = _printed(out, "operator key:"), _printed(out, "tenant key:")
        demo_url, demo_secret = _printed(out, "ingest URL:"), _printed(out, "Stripe secret (whsec_):")
        assert demo_url.startswith(f"{base}/ingest/") and demo_secret.startswith("whsec_")
        # the README's "users create" beside dev works with what dev prints: the tenant and the database
        tenant_id, database = _printed(out, "(tenant").rstrip(")"), _printed(out, "(other hookgate commands:").rstrip(")")
        created = subprocess.run(
            [*HOOKGATE, "users", "create", "--tenant", tenant_id, "--email", "ana@example.com"],
            env={**os.environ, database.split("=", 1)[0]: database.split("=", 1)[1], "HOOKGATE_USER_PASSWORD": "a long enough password"},
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert created.returncode == 0, created.stderr

        with httpx.Client(base_url=base, timeout=10) as http:
            # the printed demo source accepts a Stripe-signed charge.succeeded
            event = stripe_event("charge_succeeded")
            body, headers = signed_stripe(event, demo_secret)
            accepted = http.post(demo_url, content=body, headers=headers)
            assert accepted.status_code == 200 and accepted.json()["duplicate"] is False
            listed = http.get("/api/v1/events", headers={"authorization": f"Bearer {demo_key}"}).json()["data"]
            assert [e["external_id"] for e in listed] == [event["id"]]

            # a new tenant and source, created over HTTP with the printed operator key
            tenant = http.post("/api/v1/tenants", json={"name": "Newco"}, headers={"authorization": f"Bearer {operator}"})
            assert tenant.status_code == 201
            auth = {"authorization": f"Bearer {tenant.json()['api_key']}"}
            source = http.post("/api/v1/sources", json={"name": "Stripe", "provider": "stripe"}, headers=auth).json()
            sent = [stripe_event(name) for name in ("charge_succeeded", "invoice_paid", "customer_updated")]
            for item in sent:
                body, headers = signed_stripe(item, source["secret"])
                assert http.post(source["ingest_url"], content=body, headers=headers).status_code == 200
            body, headers = signed_stripe(sent[0], source["secret"])
            assert http.post(source["ingest_url"], content=body, headers=headers).json()["duplicate"] is True
            events = http.get("/api/v1/events", headers=auth).json()["data"]
            assert sorted(e["external_id"] for e in events) == sorted(e["id"] for e in sent)
            detail = http.get(f"/api/v1/events/{events[0]['id']}", headers=auth).json()
            assert detail["payload"] == next(e for e in sent if e["id"] == detail["external_id"])

    # what it keeps is readable by its owner only: keys, and the database with every payload
    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    kept = sorted(path.name for path in data.iterdir())
    assert {"hookgate.db", "secret.key", "operator.key"} <= set(kept)
    assert {name: stat.S_IMODE((data / name).stat().st_mode) for name in kept} == {name: 0o600 for name in kept}
    with closing(sqlite3.connect(data / "hookgate.db")) as database:  # the start gathered the planner's statistics
        assert database.execute("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone() == (1,)

    # a second start keeps the same demo tenant, keys and database
    with Process(argv, tmp_path / "dev2.log") as again:
        again.wait_http(f"{base}/healthz")
        assert _printed(again.output(), "tenant key:") == demo_key
        listed = httpx.get(f"{base}/api/v1/events", headers={"authorization": f"Bearer {demo_key}"}).json()["data"]
        assert len(listed) == 1


async def test_dev_mode_delivers_a_signed_event_to_a_local_endpoint(tmp_path: Path) -> None:
    """The newcomer's path: register a local endpoint, post a Stripe event, receive it signed."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [*HOOKGATE, "dev", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    async with Server(Script()) as receiver:
        with Process(argv, tmp_path / "dev.log") as dev:
            await asyncio.to_thread(dev.wait_http, f"{base}/healthz")
            out = dev.output()
            auth = {"authorization": f"Bearer {_printed(out, 'tenant key:')}"}
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                created = await http.post("/api/v1/endpoints", json={"url": f"{receiver.url}/hook"}, headers=auth)
                assert created.status_code == 201, created.text
                event = stripe_event("charge_succeeded")
                body, headers = signed_stripe(event, _printed(out, "Stripe secret (whsec_):"))
                assert (await http.post(_printed(out, "ingest URL:"), content=body, headers=headers)).status_code == 200
                await wait_until(lambda: receiver.requests, timeout=5, what="the delivery")
                request = receiver.requests[0]
                assert request.target == "/hook" and request.body == body
                assert Webhook(created.json()["secret"]).verify(request.body, request.headers)["id"] == event["id"]
