//! hyperhive's HTTP surfaces: the `/api/v1` JSON router ([`api::router`]), the admin-socket
//! server in front of it ([`admin_socket::serve`]), and the operator's web dashboard ([`web`]),
//! served over TCP with the same API behind its login.

pub mod admin_socket;
pub mod api;
pub mod error;
pub mod web;
