//! What `hive status` shows: the daemon, its message counts, delivery latency and the agents it
//! keeps stopped.

use serde::{Deserialize, Serialize};

use crate::message::DeliveryLatency;

/// What `hive status` shows (`/api/v1/status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub state_dir: String,
    pub synchronous: String,
    pub agents: usize,
    pub messages: MessageCounts,
    /// Sent → picked up / delivered over the last hour.
    pub delivery_latency: DeliveryLatency,
    /// Agents kept stopped, and why; empty when all is well.
    pub faulted: Vec<Fault>,
    /// How agents run: `nspawn`, `process`, or `none`.
    pub runtime: String,
    /// The claude driver's CLI, or why agents cannot start it; absent when no agents run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// An agent kept stopped because the hive found it inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub agent: String,
    pub reason: String,
}

/// Stored messages by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCounts {
    pub queued: u64,
    pub leased: u64,
    pub delivered: u64,
}
