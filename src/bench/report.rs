//! The rows of the benchmark table, printed as markdown or as JSON.

use serde::Serialize;

/// Whether a row meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Met,
    Missed,
    /// A physical limit or an informational figure: no target.
    Info,
    /// Could not be measured in this run (the reason is in the figure).
    Skipped,
}

impl Verdict {
    pub fn of(met: bool) -> Self {
        if met { Self::Met } else { Self::Missed }
    }

    fn mark(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Missed => "MISSED",
            Self::Info => "",
            Self::Skipped => "skipped",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Short stable id, e.g. `2` or `4-normal-64`.
    pub id: String,
    pub name: String,
    pub figure: String,
    pub target: String,
    pub limit: String,
    pub baseline: String,
    pub verdict: Verdict,
    /// The raw numbers behind `figure` (µs, per second, bytes …), for machines.
    pub values: serde_json::Value,
}

impl Row {
    pub fn new(id: impl Into<String>, name: impl Into<String>, figure: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            figure: figure.into(),
            target: "—".into(),
            limit: "—".into(),
            baseline: "—".into(),
            verdict: Verdict::Info,
            values: serde_json::Value::Null,
        }
    }

    pub fn target(mut self, target: impl Into<String>, met: bool) -> Self {
        self.target = target.into();
        self.verdict = Verdict::of(met);
        self
    }

    pub fn limit(mut self, limit: impl Into<String>) -> Self {
        self.limit = limit.into();
        self
    }

    pub fn values(mut self, values: serde_json::Value) -> Self {
        self.values = values;
        self
    }

    pub fn skipped(mut self) -> Self {
        self.verdict = Verdict::Skipped;
        self
    }
}

/// Where and how the run happened.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    /// /proc/loadavg's 1-minute figure when the run started: other work on the machine skews
    /// every row (fsync latency most of all).
    pub load_1min: f64,
    pub date_utc: String,
    pub mode: &'static str,
    pub build: &'static str,
}

impl Machine {
    pub fn detect(quick: bool) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_owned())
            .unwrap_or_else(|_| "unknown kernel".into());
        let load_1min = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(f64::NAN);
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel,
            load_1min,
            date_utc: jiff::Timestamp::now()
                .strftime("%Y-%m-%d %H:%M UTC")
                .to_string(),
            mode: if quick { "quick" } else { "full" },
            build: if cfg!(debug_assertions) {
                "debug (figures are not meaningful: use --release)"
            } else {
                "release"
            },
        }
    }

    pub fn line(&self) -> String {
        format!(
            "machine: {} cores ({}), {}, Linux {}, load {:.2} at start; {} run, {} build, {}",
            self.nproc,
            std::env::consts::ARCH,
            self.cpu,
            self.kernel,
            self.load_1min,
            self.mode,
            self.build,
            self.date_utc
        )
    }
}

/// The table as markdown (readable in a terminal, pasteable into docs/benchmarks.md).
pub fn markdown(rows: &[Row]) -> String {
    let header = ["row", "path", "figure", "target", "limit", "baseline", ""];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.name.clone(),
                r.figure.clone(),
                r.target.clone(),
                r.limit.clone(),
                r.baseline.clone(),
                r.verdict.mark().to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let mut s = String::from("|");
        for (c, w) in cols.iter().zip(widths) {
            s.push(' ');
            s.push_str(c);
            s.push_str(&" ".repeat(w - c.chars().count()));
            s.push_str(" |");
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(String::from));
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}
