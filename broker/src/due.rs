//! Due jobs: reminders and question expiries. One task sleeps until the earliest due time in the
//! store (or until something new is scheduled), fires what is due in one transaction, and sleeps
//! again. It waits for a due time, never polls. (The other timer of the hive is the daily
//! retention vacuum in `Hive::spawn_upkeep`.)

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::components::Scope;
use crate::error::Result;
use crate::mailbox::{Mailbox, Message};
use crate::store::{Store, unix_millis};
use crate::{questions, reminders};

/// The due jobs as a service: fires what is due in the store and announces it through the
/// mailbox; its clones (held by the services that schedule) wake the due task when something was
/// scheduled, so it recomputes its next due time.
#[derive(Clone)]
pub struct DueJobs {
    store: Store,
    mailbox: Mailbox,
    rescheduled: Arc<Notify>,
}

impl DueJobs {
    pub(crate) fn new(store: Store, mailbox: Mailbox) -> Self {
        Self {
            store,
            mailbox,
            rescheduled: Arc::default(),
        }
    }

    pub fn reschedule(&self) {
        // A stored permit: a reschedule between the task's look and its sleep is not lost.
        self.rescheduled.notify_one();
    }

    /// Fires everything due now; returns when the next job is due.
    pub async fn fire(&self) -> Result<Option<i64>> {
        let (sent, next) = self
            .store
            .write(|c| {
                let now = unix_millis();
                let mut sent: Vec<Message> = reminders::fire_due(c, now)?;
                sent.extend(questions::expire_due(c, now)?);
                let next = [reminders::next_due(c)?, questions::next_expiry(c)?]
                    .into_iter()
                    .flatten()
                    .min();
                Ok((sent, next))
            })
            .await?;
        if !sent.is_empty() {
            tracing::debug!(count = sent.len(), "due jobs fired");
        }
        self.mailbox.announce(sent);
        Ok(next)
    }

    /// Runs the due task until `scope` stops: fires what is due, then sleeps until the next due
    /// time or a reschedule.
    pub fn run(&self, scope: &Scope) {
        let due = self.clone();
        let shutdown = scope.stopping().clone();
        scope.spawn(async move {
            loop {
                let next = match due.fire().await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::warn!(error = %e, "due jobs failed; retrying in a second");
                        Some(unix_millis() + 1000)
                    }
                };
                let sleep = match next {
                    Some(at) => Duration::from_millis((at - unix_millis()).max(0) as u64),
                    None => Duration::from_secs(24 * 60 * 60),
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = due.rescheduled.notified() => {}
                    _ = tokio::time::sleep(sleep) => {}
                }
            }
        });
    }
}
