#!/usr/bin/env python3
"""A tiny stdio MCP server for tests, standard library only.

Newline-delimited JSON-RPC 2.0 on stdin/stdout. One tool, `echo` (input {"text": string}), answers
"echo: TEXT". Every tools/call is appended as a JSON line {"name": ..., "arguments": ...} to the
file named by the first argument (if given).
"""
import json
import sys

CALLS = sys.argv[1] if len(sys.argv) > 1 else None

TOOLS = [
    {
        "name": "echo",
        "description": "Echoes the given text back.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string", "description": "The text to echo"}},
            "required": ["text"],
        },
    }
]


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def answer(req):
    method = req.get("method")
    params = req.get("params") or {}
    if method == "initialize":
        return {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "probe", "version": "0.1.0"},
        }
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call":
        name = params.get("name")
        args = params.get("arguments") or {}
        if CALLS:
            with open(CALLS, "a", encoding="utf-8") as f:
                f.write(json.dumps({"name": name, "arguments": args}) + "\n")
        if name != "echo":
            return {"content": [{"type": "text", "text": "unknown tool %s" % name}], "isError": True}
        return {"content": [{"type": "text", "text": "echo: %s" % args.get("text", "")}]}
    raise KeyError(method)


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    try:
        req = json.loads(line)
    except ValueError:
        send({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}})
        continue
    if "id" not in req:  # a notification, e.g. notifications/initialized
        continue
    try:
        send({"jsonrpc": "2.0", "id": req["id"], "result": answer(req)})
    except KeyError:
        send({"jsonrpc": "2.0", "id": req["id"],
              "error": {"code": -32601, "message": "method not found: %s" % req.get("method")}})
