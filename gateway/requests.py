"""The request class of the app: Litestar's, with one gap in its JSON error handling closed."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import ClientException


class JsonRequest(Request[Any, Any, Any]):
    """JSON nested deeper than msgspec's limit raises ``RecursionError``, which Litestar does not
    turn into a 400 as it does any other malformed JSON: without this every JSON route answered 500."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise ClientException("JSON is malformed: nested too deeply") from None
