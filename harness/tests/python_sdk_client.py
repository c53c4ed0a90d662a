"""An MCP client on the Python `mcp` SDK, for harness/tests/python_sdk.rs.

Usage: python python_sdk_client.py HIVE_AGENT SOCKET TOOL ARGUMENTS_JSON

Starts `HIVE_AGENT mcp --socket SOCKET` as a stdio MCP server, initializes, lists the tools, calls
TOOL with the arguments, and prints one JSON object per line:
  {"server": {"name": ..., "version": ...}}
  {"tools": [names, sorted]}
  {"call": {"tool": ..., "is_error": ..., "text": ...}}
"""

import json
import sys

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def emit(obj):
    print(json.dumps(obj), flush=True)


async def main(hive_agent, socket, tool, arguments):
    params = StdioServerParameters(command=hive_agent, args=["mcp", "--socket", socket])
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await within(session.initialize())
            emit({"server": {"name": init.server_info.name, "version": init.server_info.version}})
            listed = await within(session.list_tools())
            emit({"tools": sorted(t.name for t in listed.tools)})
            result = await within(session.call_tool(tool, arguments))
            text = "".join(c.text for c in result.content if getattr(c, "type", None) == "text")
            emit({"call": {"tool": tool, "is_error": bool(result.is_error), "text": text}})


async def within(awaitable, seconds=30):
    with anyio.fail_after(seconds):
        return await awaitable


if __name__ == "__main__":
    hive_agent, socket, tool, arguments = sys.argv[1:5]
    anyio.run(main, hive_agent, socket, tool, json.loads(arguments))
