"""Reading a JSON request body in the aiohttp services (alert API, console): one object or a 400 that says why."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pipeline import serde


async def json_object(req: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object (``{}`` without a body), or the 400 to answer: not JSON, or not an object."""
    try:
        body = serde.loads(await req.read()) if req.can_read_body else {}
    except serde.JSONDecodeError:
        return web.json_response({"error": "body is not JSON"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": "body must be a JSON object"}, status=400)
    return body
