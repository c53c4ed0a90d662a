//! Test support for hyperhive.
//!
//! - [`model_server`]: the scripted model provider (Anthropic Messages with SSE, a small OpenAI
//!   chat-completions subset), the only fake in the tests;
//! - [`tools`]: finding the real components (the pinned claude CLI, python3) and failing in CI
//!   when one is missing;
//! - [`probe_mcp`]: a tiny stdio MCP server that records its tool calls.

pub mod model_server;
pub mod probe_mcp;
pub mod tools;
