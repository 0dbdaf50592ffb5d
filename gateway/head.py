"""``HEAD`` wherever ``GET`` works (RFC 9110 §9.3.2): Litestar routes only the methods a handler
declares, so a monitor's or a link checker's ``HEAD /healthz`` was a 405. The request is answered
as its ``GET`` would be (status and headers, ``Content-Length`` included) with the body left out.
"""

from __future__ import annotations

from litestar.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)
