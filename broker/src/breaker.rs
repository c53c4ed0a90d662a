//! The circuit breaker of one model upstream (DESIGN §16): after `failures` answers in a row that
//! say the upstream is down (no connection, a timeout, a 5xx), it opens and the gateway answers
//! at once instead of making agents wait on a dead provider; after `cooldown` one call goes
//! through (half-open): its success closes the breaker, its failure opens it again.
//!
//! It owns only the state machine; the gateway reports the transitions (log, audit, helper event).

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe call is under way.
    HalfOpen,
}

/// Whether a call may go to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Go,
    /// Open: try again in this long.
    Refuse(Duration),
}

/// A change worth telling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Closed → open, after this many failures in a row.
    Opened(u32),
    /// Half-open → closed: the upstream answers again.
    Closed,
}

pub struct Breaker {
    failures: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    /// Opens after `failures` (at least 1) in a row; stays open `cooldown`.
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Self {
            failures: failures.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    pub fn admit(&self) -> Admit {
        let mut state = self.state.lock().expect("breaker");
        match *state {
            State::Closed { .. } => Admit::Go,
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = State::HalfOpen;
                    Admit::Go
                } else {
                    Admit::Refuse(until - now)
                }
            }
            State::HalfOpen => Admit::Refuse(self.cooldown),
        }
    }

    /// The upstream answered (any answer but a 5xx).
    pub fn succeeded(&self) -> Option<Transition> {
        let mut state = self.state.lock().expect("breaker");
        let was = *state;
        *state = State::Closed { failures: 0 };
        matches!(was, State::HalfOpen | State::Open { .. }).then_some(Transition::Closed)
    }

    /// The upstream could not be reached, or answered 5xx.
    pub fn failed(&self) -> Option<Transition> {
        let mut state = self.state.lock().expect("breaker");
        let until = Instant::now() + self.cooldown;
        match *state {
            State::Closed { failures } if failures + 1 >= self.failures => {
                *state = State::Open { until };
                Some(Transition::Opened(failures + 1))
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                None
            }
            // The probe failed (or a call admitted before the opening ended badly): open again,
            // already told.
            State::HalfOpen | State::Open { .. } => {
                *state = State::Open { until };
                None
            }
        }
    }

    /// Whether it is open (or probing) now.
    pub fn is_open(&self) -> bool {
        !matches!(*self.state.lock().expect("breaker"), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_probes_after_the_cooldown_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_millis(30));
        assert_eq!(b.failed(), None);
        assert_eq!(b.succeeded(), None, "a success resets the count");
        assert_eq!(b.failed(), None);
        assert_eq!(b.failed(), None);
        assert_eq!(b.failed(), Some(Transition::Opened(3)));
        assert!(matches!(b.admit(), Admit::Refuse(_)));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Admit::Go, "the probe");
        assert!(matches!(b.admit(), Admit::Refuse(_)), "one probe at a time");
        assert_eq!(b.failed(), None, "a failed probe opens it again, untold");
        assert!(matches!(b.admit(), Admit::Refuse(_)));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Admit::Go);
        assert_eq!(b.succeeded(), Some(Transition::Closed));
        assert_eq!(b.admit(), Admit::Go);
        assert!(!b.is_open());
    }
}
