//! Latency samples and the few statistics the table shows.

use std::time::Duration;

/// A set of measured durations.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    sorted: Vec<Duration>,
}

impl Samples {
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self { sorted: samples }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// The nearest-rank percentile `p` (0–100).
    pub fn percentile(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    pub fn p50(&self) -> Duration {
        self.percentile(50.0)
    }

    pub fn p99(&self) -> Duration {
        self.percentile(99.0)
    }

    pub fn mean(&self) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        self.sorted.iter().sum::<Duration>() / self.sorted.len() as u32
    }
}

/// Microseconds as a float, for JSON and comparisons.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A duration the way the table shows it: µs below 10 ms, ms below 10 s, else s.
pub fn fmt_dur(d: Duration) -> String {
    let us = us(d);
    if us < 10_000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// A rate the way the table shows it: 12 345/s.
pub fn fmt_rate(per_second: f64) -> String {
    let n = per_second.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    format!("{out}/s")
}

/// Lets `tasks` run for `warmup`, counts what they add to `count` over the next `window`, then
/// raises `stop` and waits for them. Returns (the count in the window, its length in seconds).
pub async fn count_over_window(
    count: &std::sync::atomic::AtomicU64,
    stop: &std::sync::atomic::AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<(u64, f64)> {
    use std::sync::atomic::Ordering;
    tokio::time::sleep(warmup).await;
    let (c0, t0) = (count.load(Ordering::Relaxed), std::time::Instant::now());
    tokio::time::sleep(window).await;
    let (c1, t1) = (count.load(Ordering::Relaxed), std::time::Instant::now());
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        anyhow::Context::context(task.await, "a load task panicked")??;
    }
    Ok((c1 - c0, (t1 - t0).as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = Samples::new((1..=100).map(Duration::from_micros).collect());
        assert_eq!(s.p50(), Duration::from_micros(50));
        assert_eq!(s.p99(), Duration::from_micros(99));
        assert_eq!(s.percentile(100.0), Duration::from_micros(100));
        assert_eq!(s.percentile(0.0), Duration::from_micros(1));
    }

    #[test]
    fn rates_group_thousands() {
        assert_eq!(fmt_rate(1234567.4), "1 234 567/s");
        assert_eq!(fmt_rate(999.0), "999/s");
    }
}
