//! Test support for hyperhive.
//!
//! - [`model_server`]: the scripted model provider (Anthropic Messages with SSE, a small OpenAI
//!   chat-completions subset), the only fake in the tests;
//! - [`claude`]: the real claude CLI run headless against it, and its `stream-json` events;
//! - [`tools`]: finding the real components (the pinned claude CLI, python3) and failing in CI
//!   when one is missing;
//! - [`process`]: running a real program to its end under a deadline;
//! - [`probe_mcp`]: a tiny stdio MCP server that records its tool calls;
//! - [`webdriver`]: chromedriver and a small WebDriver client, for the dashboard's browser tests.

pub mod claude;
pub mod model_server;
pub mod probe_mcp;
pub mod process;
pub mod tools;
pub mod webdriver;
