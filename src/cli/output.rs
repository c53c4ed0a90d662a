//! How the CLI prints: aligned columns for people, `--json` for programs. Every line goes through
//! [`emit`], which makes what agents wrote harmless on a terminal (no control character reaches
//! it raw, so a message cannot move the cursor, erase a line or pose as the operator) and ends
//! the process quietly when the reader went away (`hive status | head -1`). Never print with
//! `outln!` in the CLI: use `outln!` / `out!`.

use std::borrow::Cow;
use std::io::Write;

use proto::{Deploy, Message};
use serde_json::Value;

/// `outln!` for the CLI: through [`emit`].
macro_rules! outln {
    () => { $crate::cli::output::emit("\n") };
    ($($arg:tt)*) => { $crate::cli::output::emit(&format!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for the CLI: through [`emit`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::output::emit(&format!($($arg)*)) };
}

/// Characters a terminal acts on instead of showing: C0 and C1 controls, DEL, and the Unicode
/// bidirectional overrides (which reorder what is shown).
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn escape_where(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(|c| is_unsafe(c) && !keep(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) && !keep(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Text for a block of lines: newlines and tabs stay, every other control character is shown
/// escaped (`\r`, `\u{1b}`).
pub fn screen_safe(text: &str) -> Cow<'_, str> {
    escape_where(text, |c| c == '\n' || c == '\t')
}

/// A field that must stay on its line (a table cell, a name, a note): every control character,
/// newlines too, is shown escaped.
pub fn one_line(text: &str) -> Cow<'_, str> {
    escape_where(text, |_| false)
}

/// A text block shown indented under a header: each of its lines starts with `indent`, so no
/// line of it can pass for a header line.
pub fn indented(text: &str, indent: &str) -> String {
    let text = escape_where(text, |c| c == '\n');
    format!("{indent}{}", text.replace('\n', &format!("\n{indent}")))
}

/// Prints a deploy's id and status, and the message of a failed one (nix's), indented.
pub fn deploy(deploy: &Deploy) {
    outln!("deploy {}: {}", deploy.id, deploy.status);
    if let Some(message) = &deploy.message {
        outln!("{}", indented(message, "  "));
    }
}

/// Writes `text` to standard output, screen-safe. A closed pipe ends the process with 0: the
/// reader took what it wanted. Any other write error ends it with 1.
pub fn emit(text: &str) {
    write_or_exit(&mut std::io::stdout().lock(), &screen_safe(text));
}

/// Writes `text` like [`emit`], in red when standard output is a terminal (a warning the operator
/// must not miss); plain into pipes and files.
pub fn emit_red(text: &str) {
    use std::io::IsTerminal as _;
    let safe = screen_safe(text);
    if std::io::stdout().is_terminal() {
        let body = safe.strip_suffix('\n').unwrap_or(&safe);
        let end = if safe.ends_with('\n') { "\n" } else { "" };
        write_or_exit(
            &mut std::io::stdout().lock(),
            &format!("\x1b[1;31m{body}\x1b[0m{end}"),
        );
    } else {
        write_or_exit(&mut std::io::stdout().lock(), &safe);
    }
}

/// Writes an error line to standard error, screen-safe (errors quote what was sent).
pub fn emit_err(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}", screen_safe(text));
}

fn write_or_exit(out: &mut impl Write, text: &str) {
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        emit_err(&format!("hive: cannot write to standard output: {e}"));
        std::process::exit(1);
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC (`-` when out of range).
pub fn time_ms(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => ts.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => "-".into(),
    }
}

/// Prints rows as left-aligned columns under a header; the last column is not padded. Cells are
/// made one-line first, so a cell cannot add a row.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    table_marked(header, rows, &[]);
}

/// [`table`], with the rows whose `marked` entry is true in red on a terminal ([`emit_red`]).
pub fn table_marked(header: &[&str], rows: &[Vec<String>], marked: &[bool]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| one_line(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>, red: bool| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 < widths.len() {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                out.push_str(cell);
            }
        }
        if red {
            emit_red(&format!("{}\n", out.trim_end()));
        } else {
            outln!("{}", out.trim_end());
        }
    };
    line(&mut header.iter().copied(), false);
    for (i, row) in rows.iter().enumerate() {
        line(
            &mut row.iter().map(String::as_str),
            marked.get(i).copied().unwrap_or(false),
        );
    }
}

/// One line for a message: `#id  time  from → to  body` (the body on one line, newlines as ⏎).
pub fn message_line(m: &Message) -> String {
    let body = m.body.replace('\n', "⏎");
    let mut flags = String::new();
    if let Some(r) = m.in_reply_to {
        flags.push_str(&format!(" (re #{r})"));
    }
    if m.redelivered {
        flags.push_str(" (redelivered)");
    }
    format!(
        "#{:<6} {} [{}]  {} → {}{}  {}",
        m.id,
        time_ms(m.sent_at),
        receipt(m),
        one_line(&m.from),
        one_line(&m.to),
        flags,
        one_line(&body)
    )
}

/// Where a message got to, each step timed from its sending: `queued`, `leased +0.2s (turn 5)`,
/// `leased +0.2s (turn 5), delivered +3.1s`, or `delivered +12ms` (taken by a `recv`).
pub fn receipt(m: &Message) -> String {
    let leased = match (m.leased_at, m.turn) {
        (Some(at), Some(turn)) => Some(format!("leased {} (turn {turn})", after(at - m.sent_at))),
        _ => None,
    };
    let delivered = m
        .delivered_at
        .filter(|_| m.state == proto::MessageState::Delivered)
        .map(|at| format!("delivered {}", after(at - m.sent_at)));
    match (leased, delivered) {
        (Some(l), Some(d)) => format!("{l}, {d}"),
        (Some(l), None) => l,
        (None, Some(d)) => d,
        (None, None) => m.state.to_string(),
    }
}

/// A delay after sending: `+12ms`, `+3.1s`, `+4m05s`.
pub fn after(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("+{ms}ms")
    } else if ms < 60_000 {
        format!("+{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("+{}m{:02}s", ms / 60_000, ms % 60_000 / 1000)
    }
}

/// JSON for programs, pretty. serde_json escapes C0 controls in strings; C1 controls and bidi
/// overrides are escaped here as `\uXXXX`, which stays valid JSON.
pub fn json(value: &Value) {
    emit_json(serde_json::to_string_pretty(value).unwrap_or_default());
}

/// JSON on one line (`--follow --json`: one object per line).
pub fn json_line(value: &Value) {
    emit_json(value.to_string());
}

fn emit_json(mut text: String) {
    if text.chars().any(is_unsafe) {
        text = text
            .chars()
            .map(|c| {
                if is_unsafe(c) && c != '\n' {
                    format!("\\u{:04x}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect();
    }
    text.push('\n');
    write_or_exit(&mut std::io::stdout().lock(), &text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(one_line("a\r\x1b[2Kb\nc"), "a\\r\\u{1b}[2Kb\\nc");
        assert_eq!(screen_safe("a\nb\t\r\u{9b}"), "a\nb\t\\r\\u{9b}");
        assert_eq!(one_line("\u{202e}x"), "\\u{202e}x");
        assert_eq!(indented("a\nb\r", "    "), "    a\n    b\\r");
        assert!(matches!(one_line("plain ✓"), Cow::Borrowed(_)));
    }
}
