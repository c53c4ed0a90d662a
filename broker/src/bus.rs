//! The bus: an in-memory broadcast of what happens in the hive, for SSE streams and `--follow`
//! (DESIGN §13). It is a view, never a source of truth: a subscriber that lags is told so and
//! re-reads the store. Events are published only after the change they describe has committed.

use tokio::sync::broadcast;

/// The event type is the wire's: what the SSE streams send is what the CLI reads.
pub use proto::event::Event;

/// How many events a slow subscriber may fall behind before it is told it lagged.
const CAPACITY: usize = 4096;

#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Event>,
}

impl Default for Bus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Bus {
    pub fn publish(&self, event: Event) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
