//! The hive's long-running parts as components (DESIGN §2): the due jobs, the upkeep, the MCP
//! listeners, the admin API — and the runtime, the watcher, the gateway and the dashboard as they
//! arrive. Each is started with its own [`Scope`] (a stop token and a tracker of every task it
//! spawns) and they are stopped in the reverse order of their start, each one's tasks awaited
//! before the next is stopped: stop accepting → drain MCP → stop containers → (the caller) close
//! the store.
//!
//! This module owns no work of its own and never lets a component's task outlive its stop.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a component is given: the token that says "stop", and the tracker its tasks run on, so
/// stopping it can wait for them.
#[derive(Clone, Default)]
pub struct Scope {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Scope {
    /// A scope of its own, for tests and tools that run one part without the daemon.
    pub fn new(stop: CancellationToken) -> Self {
        Self {
            stop,
            tasks: TaskTracker::new(),
        }
    }

    /// Cancelled when the component is asked to stop.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stop
    }

    /// Runs `task` as part of this component: stopping the component waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Asks every task to stop and waits up to `grace` for them; false if some did not end.
    pub async fn stop(&self, grace: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }
}

/// The started components, in order.
#[derive(Default)]
pub struct Components {
    started: Vec<(&'static str, Scope)>,
}

impl Components {
    /// Starts the component `name`: `start` gets its scope and spawns its tasks there.
    pub fn start<T, E>(
        &mut self,
        name: &'static str,
        start: impl FnOnce(&Scope) -> Result<T, E>,
    ) -> Result<T, E> {
        let scope = Scope::default();
        let started = start(&scope);
        // Even a failed start may have spawned something: track it so stop ends it.
        self.started.push((name, scope));
        started
    }

    /// The names of the started components, in start order.
    pub fn names(&self) -> Vec<&'static str> {
        self.started.iter().map(|(name, _)| *name).collect()
    }

    /// Stops every component in the reverse order of start, each within `grace`. Returns the
    /// names of those whose tasks did not end in time (they are left to the runtime's shutdown).
    pub async fn stop(mut self, grace: Duration) -> Vec<&'static str> {
        let mut late = Vec::new();
        while let Some((name, scope)) = self.started.pop() {
            tracing::debug!(component = name, "stopping");
            if !scope.stop(grace).await {
                tracing::warn!(
                    component = name,
                    tasks = scope.running(),
                    "did not stop in time"
                );
                late.push(name);
            }
        }
        late
    }
}

impl Drop for Components {
    /// Components dropped without `stop` (a test's early return, a panic) still get the word.
    fn drop(&mut self) {
        for (_, scope) in &self.started {
            scope.stop.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A task that records its name when it sees its stop.
    fn recorder(scope: &Scope, name: &'static str, log: &Arc<Mutex<Vec<&'static str>>>) {
        let (stop, log) = (scope.stopping().clone(), log.clone());
        scope.spawn(async move {
            stop.cancelled().await;
            // Yield so that a wrong order (stopping all at once) would interleave the names.
            tokio::task::yield_now().await;
            log.lock().unwrap().push(name);
        });
    }

    #[tokio::test]
    async fn components_stop_in_reverse_order_each_awaited() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut parts = Components::default();
        for name in ["due", "mcp", "admin"] {
            parts
                .start(name, |s| {
                    recorder(s, name, &log);
                    recorder(s, name, &log);
                    Ok::<_, ()>(())
                })
                .unwrap();
        }
        assert_eq!(parts.names(), ["due", "mcp", "admin"]);
        let late = parts.stop(Duration::from_secs(5)).await;
        assert!(late.is_empty());
        assert_eq!(
            *log.lock().unwrap(),
            ["admin", "admin", "mcp", "mcp", "due", "due"]
        );
    }

    #[tokio::test]
    async fn a_task_that_ignores_its_stop_is_named_and_does_not_hold_the_rest() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut parts = Components::default();
        parts
            .start("first", |s| {
                recorder(s, "first", &log);
                Ok::<_, ()>(())
            })
            .unwrap();
        parts
            .start("stubborn", |s| {
                s.spawn(std::future::pending());
                Ok::<_, ()>(())
            })
            .unwrap();
        let late = parts.stop(Duration::from_millis(50)).await;
        assert_eq!(late, ["stubborn"]);
        assert_eq!(*log.lock().unwrap(), ["first"]);
    }

    #[tokio::test]
    async fn dropping_without_stop_still_cancels() {
        let mut parts = Components::default();
        let token = parts
            .start("x", |s| Ok::<_, ()>(s.stopping().clone()))
            .unwrap();
        drop(parts);
        assert!(token.is_cancelled());
    }
}
