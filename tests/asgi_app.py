"""A Starlette app instrumented with instrument_asgi: plain, mounted, streaming and failing routes,
the app's own logging, a lifespan; what the ASGI tests drive in-process and under real servers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, Router, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import softfactory_obs
from softfactory_obs.store.metrics import Counter

log = logging.getLogger("shop")
IMPORTS = Counter("app_imports_total", "Times this module was imported")
IMPORTS.inc()
LIFESPAN: list[str] = []


async def user(request: Request) -> Response:
    # ?block=S holds the event loop (as a sync call in an async view would): other workers take
    # the next connections, so a multi-worker test sees several workers serve.
    time.sleep(float(request.query_params.get("block", "0")))
    log.info("user looked up", extra={"user": request.path_params["user_id"]})
    return JSONResponse({"user": request.path_params["user_id"], "id": softfactory_obs.current_request_id()})


async def item(request: Request) -> Response:
    return PlainTextResponse(f"item {request.path_params['item_id']}")


async def stream(request: Request) -> Response:
    chunks = int(request.query_params.get("chunks", "3"))

    async def body() -> AsyncIterator[bytes]:
        for i in range(chunks):
            await asyncio.sleep(0.02)
            yield f"chunk {i}\n".encode()

    return StreamingResponse(body(), media_type="text/plain")


async def boom(request: Request) -> Response:
    raise ValueError("deliberate")


async def slow(request: Request) -> Response:
    # In flight without holding the loop; then says whether this worker was told to drain meanwhile
    # (what /ready answers with 503), which a test cannot ask /ready once the server stops listening.
    await asyncio.sleep(float(request.query_params.get("seconds", "1")))
    return JSONResponse({"draining": app.readiness.draining})


async def own_id(request: Request) -> Response:
    return PlainTextResponse("x", headers={"X-Request-Id": "the-app-s-own"})


async def chat(websocket: WebSocket) -> None:
    # ?deny=1 closes before accepting; ?fail=1 raises before deciding. Accepted: echoes each text
    # with the request id the app's context sees, until "bye" (we close) or the client leaves.
    query = websocket.query_params
    if query.get("deny"):
        await websocket.close(code=1008)
        return
    if query.get("fail"):
        raise RuntimeError("deliberate, before accepting")
    await websocket.accept()
    try:
        while (text := await websocket.receive_text()) != "bye":
            await websocket.send_text(f"{websocket.path_params['room']} {text} {softfactory_obs.current_request_id()}")
    except WebSocketDisconnect:
        return
    await websocket.close()


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    LIFESPAN.append("startup")
    yield
    LIFESPAN.append("shutdown")


starlette_app = Starlette(
    routes=[
        Route("/users/{user_id:int}", user),
        Route("/stream", stream),
        Route("/boom", boom),
        Route("/slow", slow),
        Route("/own-id", own_id),
        WebSocketRoute("/ws/{room}", chat),
        Mount("/api", app=Router([Route("/items/{item_id}", item, methods=["GET"])])),
    ],
    lifespan=lifespan,
)
app = softfactory_obs.instrument_asgi(starlette_app, service_name="asgi-shop")
