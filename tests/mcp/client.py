"""An MCP client for the end-to-end tests, from the official Python SDK.

    client.py TRANSPORT URL STEPS

STEPS is a JSON list of steps: ["list"], or ["call", TOOL, ARGUMENTS]. Each step's
outcome is printed as one JSON line: {"tools": [names]} for a listing; for a call
{"text": ...} (the result's text), {"is_error": ...} (a tool error), or
{"error": {"code": ..., "message": ...}} (a JSON-RPC error). The session stays open
across the steps: a refused call must not end it.
"""
import asyncio
import json
import sys
from contextlib import AsyncExitStack

from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


async def main(transport, url, steps):
    async with AsyncExitStack() as stack:
        if transport == "sse":
            read, write = await stack.enter_async_context(sse_client(url))
        else:
            streams = await stack.enter_async_context(streamable_http_client(url))
            read, write = streams[0], streams[1]
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        for step in steps:
            try:
                if step[0] == "list":
                    listed = await session.list_tools()
                    out = {"tools": sorted(t.name for t in listed.tools)}
                    out["descriptions"] = {t.name: t.description for t in listed.tools}
                else:
                    result = await session.call_tool(step[1], step[2])
                    text = " ".join(c.text for c in result.content if getattr(c, "text", None))
                    out = {"is_error": text} if result.is_error else {"text": text}
                    if result.structured_content is not None:
                        out["structured"] = result.structured_content
            except MCPError as error:
                out = {"error": {"code": error.error.code, "message": error.error.message}}
            print(json.dumps(out), flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
