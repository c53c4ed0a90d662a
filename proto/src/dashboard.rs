//! The dashboard's login link, as the admin socket mints it for `hive dashboard`.

use serde::{Deserialize, Serialize};

/// The dashboard's address and a one-time login link (`POST /api/v1/dashboard/link`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardLink {
    pub url: String,
    pub login_link: String,
    /// The link works once, within this many seconds.
    pub expires_in_seconds: u64,
}
