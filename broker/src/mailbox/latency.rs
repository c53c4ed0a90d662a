//! Delivery latency of the last hour: sent → picked up (leased to a turn, or delivered to a
//! `recv`) and sent → delivered, as p50/p99.
//!
//! Kept in memory, never read from the history: a ring of 60 per-minute histograms, fed with the
//! timestamps a take has already written to its rows (no statement is added to a send or a take),
//! after its commit. Each histogram has log-spaced buckets 5 % apart (a percentile is off by at
//! most that), plus the exact min and max of its minute, so a reported percentile is clamped to a
//! value actually measured in the window. Memory is bounded (≤ 60 × 2 × [`BUCKETS`] counters) and
//! a read merges at most 60 minutes. The figures start empty at each daemon start. A dead
//! letter's redirect or drop is the operator's decision, not a delivery, and is not counted.
//!
//! It owns the window; it never touches the store.

use std::sync::Mutex;

use proto::message::{DeliveryLatency, LatencySummary};

use super::Message;

/// The minutes the window keeps.
const MINUTES: usize = 60;
/// Buckets per histogram: 1.05^420 ms is beyond a year.
const BUCKETS: usize = 420;
/// The growth from one bucket's bound to the next.
const GROWTH: f64 = 1.05;

/// The bucket of a latency of `ms` milliseconds: bucket `i` holds up to `GROWTH^i - 1` ms.
fn bucket_of(ms: i64) -> usize {
    let ms = ms.max(0) as f64;
    (((ms + 1.0).ln() / GROWTH.ln()).ceil() as usize).min(BUCKETS - 1)
}

/// The largest latency bucket `i` holds.
fn upper_bound(i: usize) -> i64 {
    (GROWTH.powi(i as i32) - 1.0).floor() as i64
}

/// One minute's histogram of one latency.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u32>,
    n: u64,
    min: i64,
    max: i64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: Vec::new(),
            n: 0,
            min: i64::MAX,
            max: i64::MIN,
        }
    }
}

impl Histogram {
    fn add(&mut self, ms: i64) {
        let ms = ms.max(0);
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        let b = &mut self.counts[bucket_of(ms)];
        *b = b.saturating_add(1);
        self.n += 1;
        self.min = self.min.min(ms);
        self.max = self.max.max(ms);
    }

    fn merge(&mut self, other: &Histogram) {
        if other.n == 0 {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.n += other.n;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The `q` quantile (0 < q ≤ 1), clamped to what was measured.
    fn quantile(&self, q: f64) -> Option<i64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            seen += u64::from(*count);
            if seen >= rank {
                return Some(upper_bound(i).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.n,
            p50_ms: self.quantile(0.50),
            p99_ms: self.quantile(0.99),
        }
    }
}

/// One minute of the ring: which minute (Unix minutes) it holds, and its two histograms.
#[derive(Clone, Default)]
struct Minute {
    minute: i64,
    picked_up: Histogram,
    delivered: Histogram,
}

/// The window; a cheap lock taken once per take, after its commit.
#[derive(Default)]
pub(super) struct LatencyWindow {
    ring: Mutex<Vec<Minute>>,
}

impl LatencyWindow {
    /// Records what a take at `now` (Unix milliseconds) did to `messages`: each one's pick-up
    /// (`leased_at`, or `delivered_at` for a `recv`) and delivery, as far as they happened.
    pub fn record_taken(&self, now: i64, messages: &[Message]) {
        self.record(
            now,
            messages.iter().filter_map(|m| {
                let picked = m.leased_at.or(m.delivered_at)?;
                Some((
                    Some(picked - m.sent_at),
                    m.delivered_at.map(|d| d - m.sent_at),
                ))
            }),
        );
    }

    /// Records deliveries at `now` of messages sent at `sent_at` that were picked up before (a
    /// finished turn's).
    pub fn record_delivered(&self, now: i64, sent_at: &[i64]) {
        self.record(now, sent_at.iter().map(|s| (None, Some(now - s))));
    }

    fn record(&self, now: i64, samples: impl Iterator<Item = (Option<i64>, Option<i64>)>) {
        let minute = now.div_euclid(60_000);
        let mut ring = self.ring.lock().expect("latency window");
        if ring.is_empty() {
            ring.resize(MINUTES, Minute::default());
        }
        let slot = &mut ring[minute.rem_euclid(MINUTES as i64) as usize];
        if slot.minute != minute {
            *slot = Minute {
                minute,
                ..Minute::default()
            };
        }
        for (picked_up, delivered) in samples {
            if let Some(ms) = picked_up {
                slot.picked_up.add(ms);
            }
            if let Some(ms) = delivered {
                slot.delivered.add(ms);
            }
        }
    }

    /// The percentiles of the last hour as of `now` (Unix milliseconds).
    pub fn summary(&self, now: i64) -> DeliveryLatency {
        let newest = now.div_euclid(60_000);
        let (mut picked_up, mut delivered) = (Histogram::default(), Histogram::default());
        let ring = self.ring.lock().expect("latency window");
        for m in ring
            .iter()
            .filter(|m| m.minute > newest - MINUTES as i64 && m.minute <= newest)
        {
            picked_up.merge(&m.picked_up);
            delivered.merge(&m.delivered);
        }
        DeliveryLatency {
            window_seconds: (MINUTES * 60) as u64,
            picked_up: picked_up.summary(),
            delivered: delivered.summary(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_stay_within_what_was_measured_and_old_minutes_fall_out() {
        let w = LatencyWindow::default();
        let now = 10 * 3_600_000;
        assert_eq!(w.summary(now).delivered.p50_ms, None);
        w.record_delivered(now, &(1..=100).map(|i| now - i * 10).collect::<Vec<_>>());
        let s = w.summary(now).delivered;
        assert_eq!(s.count, 100);
        let (p50, p99) = (s.p50_ms.unwrap(), s.p99_ms.unwrap());
        assert!((475..=525).contains(&p50), "p50 {p50}");
        assert!((940..=1000).contains(&p99), "p99 {p99}");
        assert_eq!(w.summary(now).picked_up.count, 0);
        // An hour later the minute has left the window.
        assert_eq!(w.summary(now + 3_600_000).delivered.count, 0);
        assert_eq!(w.summary(now + 3_540_000).delivered.count, 100);
    }

    #[test]
    fn bucket_bounds_hold_their_values() {
        for ms in [0, 1, 2, 10, 999, 1000, 60_000, 3_600_000] {
            let b = bucket_of(ms);
            assert!(upper_bound(b) >= ms, "{ms}");
            assert!(upper_bound(b) as f64 <= ms as f64 * GROWTH + 1.0, "{ms}");
        }
    }
}
