//! The hyperhive broker: everything the `hive serve` daemon does, as a library. Data flows one way:
//! the API and MCP layers call [`hive::Hive`], which calls the services (mailbox, registry), which
//! call the [`store`]. HTTP is the `dashboard` crate's, except [`gateway`], the agents' model route.

pub mod api_key;
pub mod approvals;
pub mod audit;
pub mod breaker;
pub mod build;
pub mod bus;
pub mod components;
pub mod config;
pub mod config_repo;
pub mod confinement;
pub mod containers;
pub mod dead_letters;
pub mod due;
pub mod egress;
pub mod error;
pub mod gateway;
pub mod hive;
pub mod lifecycle;
pub mod liveness;
pub mod lock;
pub mod mailbox;
pub mod mcp;
pub mod model_calls;
pub mod names;
pub mod notify;
pub mod paths;
pub mod pause;
mod proposed_repo;
pub mod questions;
pub mod redact;
pub mod registry;
pub mod reminders;
pub mod review;
pub mod runtime;
pub mod stats;
pub mod status;
pub mod store;
pub mod tombstones;
pub mod watcher;

pub use error::{Error, Result};
pub use hive::Hive;
