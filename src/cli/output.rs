//! How the CLI prints: aligned columns for people, `--json` for programs.

use serde_json::Value;

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn time(ms: &Value) -> String {
    match ms
        .as_i64()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
    {
        Some(ts) => ts.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        None => "-".into(),
    }
}

/// Prints rows as left-aligned columns under a header; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 < widths.len() {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                out.push_str(cell);
            }
        }
        println!("{}", out.trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// One line for a message: `#id  time  from → to  body` (the body on one line).
pub fn message_line(m: &Value) -> String {
    let body = m["body"].as_str().unwrap_or_default().replace('\n', "⏎");
    let mut flags = String::new();
    if let Some(r) = m["in_reply_to"].as_i64() {
        flags.push_str(&format!(" (re #{r})"));
    }
    if m["redelivered"].as_bool() == Some(true) {
        flags.push_str(" (redelivered)");
    }
    format!(
        "#{:<6} {}  {} → {}{}  {}",
        m["id"],
        time(&m["sent_at"]),
        m["from"].as_str().unwrap_or("?"),
        m["to"].as_str().unwrap_or("?"),
        flags,
        body
    )
}

pub fn json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
