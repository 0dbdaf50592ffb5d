"""The newcomer's path in a real browser (Playwright driving Debian's Chromium) against a real
``hookgate dev`` process and a real local receiver: log in with the printed demo user, add an
endpoint, post a Stripe-signed event, watch it delivered, replay it, let the receiver fail until
the delivery is dead, redrive it from the dead-letter page. Screenshots go to the test's temp dir."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Dialog, Page, async_playwright, expect
from standardwebhooks.webhooks import Webhook

from tests.support.processes import HOOKGATE, Process
from tests.support.receiver import Script, Server, wait_until
from tests.support.services import free_port
from tests.support.stripe_events import signed_stripe, stripe_event

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
# Deliveries die after three quick tries; the breaker stays out of the way of this short story.
FAST = {
    "HOOKGATE_RETRY_SCHEDULE": "0,0.3,0.3",
    "HOOKGATE_SWEEPER_INTERVAL_SECONDS": "0.2",
    "HOOKGATE_BREAKER_FAILURE_THRESHOLD": "100",
    "HOOKGATE_OPERATOR_KEY": "",
}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        await launched.close()


def _printed(output: str, pattern: str) -> re.Match[str]:
    match = re.search(pattern, output)
    assert match, f"{pattern!r} not printed:\n{output}"
    return match


async def _until(page: Page, check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    """Reload until ``check`` holds: what a person does while waiting for a delivery."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.3)
        await page.reload()


async def _shot(page: Page, folder: Path, name: str) -> None:
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


async def test_newcomer_goes_from_nothing_to_a_delivered_replayed_and_redriven_event(
    tmp_path: Path, browser: Browser
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    port = free_port()
    argv = [*HOOKGATE, "dev", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    script = Script()
    async with Server(script) as receiver:
        with Process(argv, tmp_path / "dev.log", env=FAST) as dev:
            await asyncio.to_thread(dev.wait_http, f"http://127.0.0.1:{port}/healthz")
            out = dev.output()
            login = _printed(out, r"dashboard:\s+(\S+)\s+\(user (\S+), password (\S+)\)")
            login_url, email, password = login.groups()
            ingest_url = _printed(out, r"ingest URL:\s+(\S+)").group(1)
            stripe_secret = _printed(out, r"Stripe secret \(whsec_\):\s+(\S+)").group(1)

            page = await browser.new_page(viewport=LAPTOP)
            # any dashboard page sends a stranger to the login page, and back after logging in
            await page.goto(login_url.replace("/login", "/events"))
            await expect(page).to_have_url(re.compile(r"/dashboard/login\?next=/dashboard/events$"))
            await _shot(page, shots, "login")
            await page.get_by_label("Email").fill(email)
            await page.get_by_label("Password").fill("not the password")
            await page.get_by_role("button", name="Log in").click()
            await expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
            await page.get_by_label("Password").fill(password)
            await page.get_by_role("button", name="Log in").click()
            await expect(page).to_have_url(re.compile(r"/dashboard/events$"))
            await expect(page.get_by_text("No event yet")).to_be_visible()

            # the overview says what to do first; the source page shows the URL the event goes to
            await page.get_by_role("link", name="Overview").click()
            await expect(page.get_by_text("Get started in three steps")).to_be_visible()
            await page.get_by_role("link", name="Sources", exact=True).first.click()
            await page.get_by_role("link", name="Stripe (demo)").click()
            await expect(page.locator("#ingest-url")).to_have_text(ingest_url)
            await expect(page.get_by_role("button", name="Copy")).to_be_visible()  # JS enhancement present
            await page.get_by_role("button", name="Reveal secret").click()
            await expect(page.get_by_text(stripe_secret)).to_be_visible()
            await _shot(page, shots, "source")

            # register the receiver as an endpoint; its signing secret is shown
            await page.get_by_role("link", name="Endpoints").click()
            await page.get_by_role("link", name="Add endpoint").first.click()
            await page.get_by_label("URL").fill(f"{receiver.url}/hook")
            await page.get_by_role("button", name="Create endpoint").click()
            await expect(page.get_by_text("Endpoint created.")).to_be_visible()
            endpoint_secret = (await page.locator(".secrets code").first.inner_text()).strip()
            assert endpoint_secret.startswith("whsec_")
            await _shot(page, shots, "endpoint")

            # stopping the previous secrets at once asks first: declined, nothing is rotated
            asked: list[str] = []

            async def decline(dialog: Dialog) -> None:
                asked.append(dialog.message)
                await dialog.dismiss()

            page.on("dialog", decline)
            await page.get_by_label("Stop signing with the previous secrets now").check()
            await page.get_by_role("button", name="Rotate secret").click()
            await wait_until(lambda: len(asked) == 1, what="the confirmation")
            assert asked[0].startswith("Stop signing with the previous secrets now?")
            page.remove_listener("dialog", decline)
            await page.reload()
            await page.get_by_role("button", name="Reveal secret").click()
            await expect(page.locator(".secrets code")).to_have_text([endpoint_secret])

            # Stripe posts a signed event to the ingest URL
            event = stripe_event("charge_succeeded")
            body, headers = signed_stripe(event, stripe_secret)
            async with httpx.AsyncClient(timeout=10) as http:
                assert (await http.post(ingest_url, content=body, headers=headers)).status_code == 200

            await page.get_by_role("link", name="Events").click()
            row = page.get_by_role("row").filter(has_text=event["id"])
            await _until(page, lambda: row.filter(has_text="1 succeeded").is_visible(), "the event listed as delivered")
            await _shot(page, shots, "events")
            await row.get_by_role("link", name="charge.succeeded").click()
            deliveries = page.locator("article.delivery")
            await expect(deliveries).to_have_count(1)
            await expect(deliveries.first.locator(".badge").first).to_have_text("succeeded")
            await expect(deliveries.first.locator(".timeline")).to_contain_text("200")
            await expect(page.locator("pre.payload")).to_contain_text(event["id"])
            assert Webhook(endpoint_secret).verify(receiver.requests[0].body, receiver.requests[0].headers)["id"] == event["id"]

            # replay it: a second delivery, signed afresh, with the original bytes
            await page.get_by_role("button", name="Replay").click()
            await expect(page.get_by_text("Replay queued")).to_be_visible()
            await _until(page, lambda: _count_is(page.locator("article.delivery .badge", has_text="succeeded"), 2),
                         "the replay delivered")
            await expect(page.locator("article.delivery .badge", has_text="replay")).to_have_count(1)
            await _shot(page, shots, "event")
            await wait_until(lambda: len(receiver.requests) == 2, what="the replayed request")
            assert receiver.requests[1].body == body
            assert receiver.requests[1].headers["webhook-id"] != receiver.requests[0].headers["webhook-id"]

            # the receiver breaks: the next event dies after its retries and shows on the dead-letter page
            script.answers = [(500, {}, 0.0)]
            failing = stripe_event("invoice_paid")
            body, headers = signed_stripe(failing, stripe_secret)
            async with httpx.AsyncClient(timeout=10) as http:
                assert (await http.post(ingest_url, content=body, headers=headers)).status_code == 200
            await page.get_by_role("link", name="Dead letters").click()
            dead_row = page.get_by_role("row").filter(has_text="invoice.paid")
            await _until(page, dead_row.is_visible, "the dead letter")
            await expect(dead_row).to_contain_text("500")
            await _shot(page, shots, "dead-letters")

            # fixed: redrive the chosen dead letter
            script.answers = [(200, {}, 0.0)]
            tried = len(receiver.requests)
            await page.get_by_label("Select every dead letter on this page").check()
            await expect(dead_row.get_by_role("checkbox")).to_be_checked()
            await page.get_by_role("button", name="Redrive selected").click()
            await expect(page).to_have_url(re.compile(r"/dashboard/replays"))
            await expect(page.get_by_text("Redrive started")).to_be_visible()
            await _until(page, lambda: page.get_by_role("row").filter(has_text="redrive").filter(has_text="completed").is_visible(),
                         "the redrive job finished")
            await _shot(page, shots, "replays")
            await wait_until(lambda: len(receiver.requests) > tried and receiver.requests[-1].body == body, what="the redriven delivery")
            await page.get_by_role("link", name="Dead letters").click()
            await _until(page, page.get_by_text("No dead letters").is_visible, "an empty dead-letter queue")

            await page.get_by_role("link", name="Overview").click()
            await expect(page.locator("svg.chart")).to_have_count(2)
            await expect(page.locator(".tile", has_text="events in 24 h").locator(".num")).to_have_text("2")
            await _shot(page, shots, "overview")
            await page.get_by_role("link", name="API keys").click()
            await _shot(page, shots, "api-keys")

            # times in the browser's own time zone
            elsewhere = await browser.new_context(timezone_id="America/Los_Angeles", viewport=LAPTOP)
            await elsewhere.add_cookies(await page.context.cookies())
            there = await elsewhere.new_page()
            await there.goto(f"http://127.0.0.1:{port}/dashboard/events")
            await expect(there.locator("td time").first).to_have_text(re.compile(r"(PST|PDT|GMT-[78])$"))
            await elsewhere.close()

            # the same pages on a phone
            phone = await browser.new_page(viewport=PHONE)
            await phone.context.add_cookies(await page.context.cookies())
            for name, path in (("overview", "/dashboard/"), ("events", "/dashboard/events"), ("dead-letters", "/dashboard/dead-letters")):
                await phone.goto(f"http://127.0.0.1:{port}{path}")
                await expect(phone.get_by_role("heading", level=1)).to_be_visible()
                width = await phone.evaluate("document.documentElement.scrollWidth")
                assert width <= PHONE["width"], f"{path} scrolls sideways on a phone ({width}px)"
                await _shot(phone, shots, f"phone-{name}")

            # logging out ends the session
            await page.get_by_role("button", name="Log out").click()
            await expect(page.get_by_text("You are logged out.")).to_be_visible()
            await page.goto(f"http://127.0.0.1:{port}/dashboard/events")
            await expect(page).to_have_url(re.compile(r"/dashboard/login"))
    assert {path.name for path in shots.iterdir()} >= {"overview.png", "events.png", "event.png", "dead-letters.png"}


async def _count_is(locator: object, count: int) -> bool:
    return await locator.count() == count  # type: ignore[attr-defined]
