"""The framework's floor: a Litestar app whose one handler reads the body and answers 200."""

from __future__ import annotations

from litestar import Litestar, Request, post


@post("/ingest/{token:str}", status_code=200)
async def _empty(request: Request, token: str) -> dict[str, bool]:  # type: ignore[type-arg]
    await request.body()
    return {"ok": True}


app = Litestar([_empty], openapi_config=None)
