"""A real MCP client (the official Python SDK, `mcp` from PyPI) driving
`bgctl mcp` over stdio, for tests/tests/mcp.rs.

Usage: python3 mcp_client.py <path to bgctl>
The server gets BGCTL_ADDR and BGCTL_TOKEN from this process's environment.

It initializes, lists the tools, then calls get_deployment_status,
rollback, deploy_to_standby (with a progress callback), switch_traffic and
get_history, and prints what it saw as one JSON object on stdout, in the
protocol's own (camelCase) field names. The Rust test asserts on it; this
script only fails when the session itself fails.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def wire(model):
    """A pydantic model of the SDK as it goes on the wire (works with the
    snake_case attributes of SDK 2.x and the camelCase ones of 1.x)."""
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


def result(r):
    """A tool result: isError and its text contents."""
    w = wire(r)
    return {
        "isError": bool(w.get("isError", False)),
        "text": [c["text"] for c in w.get("content", []) if c.get("type") == "text"],
    }


async def main(bgctl):
    env = {k: os.environ[k] for k in ("BGCTL_ADDR", "BGCTL_TOKEN", "NO_COLOR") if k in os.environ}
    params = StdioServerParameters(command=bgctl, args=["mcp"], env=env)
    report = {}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = wire(await session.initialize())
            report["server"] = {
                "name": init.get("serverInfo", {}).get("name"),
                "instructions": init.get("instructions"),
            }
            tools = wire(await session.list_tools())
            report["tools"] = {
                t["name"]: {
                    "annotations": t.get("annotations", {}),
                    "description": t.get("description", ""),
                    "properties": sorted(t.get("inputSchema", {}).get("properties", {})),
                }
                for t in tools["tools"]
            }
            report["status"] = result(await session.call_tool("get_deployment_status", {}))
            # Never switched yet: nothing to roll back to.
            report["rollback"] = result(await session.call_tool("rollback", {}))

            progress = []

            async def on_progress(value, total, message):
                progress.append({"progress": value, "total": total, "message": message})

            deploy = await session.call_tool(
                "deploy_to_standby", {"runMigrations": False}, progress_callback=on_progress
            )
            report["deploy"] = result(deploy)
            report["deploy"]["progress"] = progress
            report["switch"] = result(
                await session.call_tool("switch_traffic", {"reason": "release 45 via MCP"})
            )
            report["history"] = result(await session.call_tool("get_history", {}))
            report["unknown_app"] = result(
                await session.call_tool("get_history", {"app": "no-such-app"})
            )
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
