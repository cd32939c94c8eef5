"""The admin HTTP listener: /metrics, /healthz (with the store's state) and the
admin API (``/api/v1``).

Bounded on every side: a request's head must arrive within HTTP_IDLE_SECONDS
of connecting (or of the previous answer), else the connection is closed, so a
client that sends half a request and stops holds nothing for long; handlers
get HTTP_HANDLER_SECONDS (then 504); bodies, lines and headers are capped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from engine.core import Engine
from engine.shell.storelink import StoreLink

__all__ = ["HTTP_MAX_BODY", "AdminHttp"]

HTTP_IDLE_SECONDS = 5.0
HTTP_HANDLER_SECONDS = 30.0
HTTP_MAX_BODY = 64 * 1024  # an API write is one resource as JSON: far less
HTTP_MAX_LINE = 8190
HTTP_MAX_HEADERS = 64


class AdminHttp:
    """One aiohttp runner on ``host:port``; ``mount`` adds the admin API's routes."""

    def __init__(self, engine: Engine, link: StoreLink) -> None:
        self.engine = engine
        self.link = link  # /healthz says whether the store is reachable
        self.runner: web.AppRunner | None = None

    async def start(self, host: str, port: int,
                    mount: Callable[[web.Application], None]) -> None:
        app = web.Application(client_max_size=HTTP_MAX_BODY, middlewares=[_handler_deadline])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        mount(app)
        self.runner = web.AppRunner(app, access_log=None, keepalive_timeout=HTTP_IDLE_SECONDS,
                                    max_line_size=HTTP_MAX_LINE, max_field_size=HTTP_MAX_LINE,
                                    max_headers=HTTP_MAX_HEADERS, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        self.engine.expire(time.time())
        self.engine.metrics.asyncio_tasks.set(len(asyncio.all_tasks()))
        return web.Response(body=self.engine.metrics.render(),
                            content_type="text/plain", charset="utf-8")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "registrations": self.engine.registrar.count(),
                                  "transactions": len(self.engine.transactions),
                                  "store": "up" if self.link.up else "down",
                                  "store_queued": len(self.link.pending)})


@web.middleware
async def _handler_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every admin request is answered within HTTP_HANDLER_SECONDS (else 504)."""
    async with asyncio.timeout(HTTP_HANDLER_SECONDS):
        return await handler(request)
