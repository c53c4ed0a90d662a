//! hyperhive's HTTP surfaces: the `/api/v1` JSON router ([`api::router`]) and the admin-socket
//! server in front of it ([`admin_socket::serve`]). The HTML dashboard joins them here.

pub mod admin_socket;
pub mod api;
pub mod error;
