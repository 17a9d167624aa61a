"""Continuing an exchange in a task: what must wait (a token lookup, a form body, a new
upstream connection, the session endpoint, a forward-auth decision) runs here, and its
failures become the exchange's answer."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

from gateway.errors import GatewayError, ValidatorUnavailableError
from gateway.http.exchange import Exchange

log = structlog.get_logger("gateway")


def spawn(ex: Exchange, work: Coroutine[Any, Any, None]) -> None:
    """Continue the exchange in a task; its failures become answers, a lost client cancels it."""

    async def guarded() -> None:
        try:
            await work
        except GatewayError as exc:
            ex.fail(exc)
        except asyncio.CancelledError:
            if not ex.ended:  # something awaited was cancelled, not this client's request
                ex.fail(ValidatorUnavailableError("interrupted"))
            # else the client left and the server ended the exchange
        except Exception:
            log.exception("request_failed", request_id=ex.head.request_id)
            ex.fail(GatewayError("internal_error"))

    task = asyncio.get_running_loop().create_task(guarded())
    ex.on_gone = task.cancel
