//! The agent's durable notes (`<state>/notes.md`, DESIGN §11): when a notes checkpoint is due
//! (the context nearly full) and the reading and in-place replacement of an overgrown file. It
//! owns only the file and the limits; the turn loop asks the model and reports the events.

use std::io::{Read, Write};
use std::path::Path;

use crate::claude::ContextFill;

/// The most of an overgrown notes file handed to the rewrite (the rest is cut, and said so).
const MAX_REWRITE_INPUT: u64 = 256 * 1024;

/// When the harness looks after the notes.
#[derive(Debug, Clone, Copy)]
pub struct NotesLimits {
    /// A checkpoint turn, then a compaction, once the context is this full (percent; 0 never).
    pub checkpoint_percent: u64,
    /// `notes.md` past this many bytes is rewritten in a separate session.
    pub max_bytes: u64,
}

impl NotesLimits {
    pub fn checkpoint_due(&self, fill: ContextFill) -> bool {
        self.checkpoint_percent > 0 && fill.percent() >= self.checkpoint_percent
    }
}

/// The notes when they are a plain file grown past `max_bytes`: their size and text (at most
/// [`MAX_REWRITE_INPUT`] of it, lossy UTF-8). A symlink or anything else is left alone.
pub fn overgrown(path: &Path, max_bytes: u64) -> Option<(u64, String)> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_file() || meta.len() <= max_bytes {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_REWRITE_INPUT)
        .read_to_end(&mut bytes)
        .ok()?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if meta.len() > MAX_REWRITE_INPUT {
        text.push_str("\n\n(… the rest of the file was cut: it was too long to read whole.)\n");
    }
    Some((meta.len(), text))
}

/// The notes as they are (empty when there are none), at most [`MAX_REWRITE_INPUT`] of them; a
/// symlink is not followed.
pub fn read(path: &Path) -> std::io::Result<String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
        Ok(m) if !m.file_type().is_file() => {
            return Err(std::io::Error::other("notes.md is not a plain file"));
        }
        Ok(_) => {}
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_REWRITE_INPUT)
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Replaces the notes with `text` through a temporary file in the same directory (never half a
/// file; a symlink at the path is replaced, not followed).
pub fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("md.rewrite");
    let _ = std::fs::remove_file(&tmp);
    let mut body = text.trim().to_owned();
    body.push('\n');
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    file.write_all(body.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_notes_file_is_neither_read_nor_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside.md");
        std::fs::write(&outside, "x".repeat(5000)).unwrap();
        let notes = dir.path().join("notes.md");
        std::os::unix::fs::symlink(&outside, &notes).unwrap();
        assert_eq!(overgrown(&notes, 1024), None);
        replace(&notes, "short").unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "x".repeat(5000));
        assert!(std::fs::symlink_metadata(&notes).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(&notes).unwrap(), "short\n");
    }

    #[test]
    fn only_notes_past_the_bound_are_read_and_a_huge_file_only_in_part() {
        let dir = tempfile::tempdir().unwrap();
        let notes = dir.path().join("notes.md");
        assert_eq!(overgrown(&notes, 1024), None);
        std::fs::write(&notes, "y".repeat(1024)).unwrap();
        assert_eq!(overgrown(&notes, 1024), None);
        std::fs::write(&notes, "z".repeat(MAX_REWRITE_INPUT as usize * 2)).unwrap();
        let (size, text) = overgrown(&notes, 1024).unwrap();
        assert_eq!(size, MAX_REWRITE_INPUT * 2);
        assert!(text.len() < MAX_REWRITE_INPUT as usize + 200);
        assert!(text.ends_with("too long to read whole.)\n"));
    }

    #[test]
    fn a_checkpoint_is_due_at_the_percent_and_never_at_zero() {
        let fill = |used| ContextFill {
            used,
            window: 200_000,
        };
        let limits = |checkpoint_percent| NotesLimits {
            checkpoint_percent,
            max_bytes: 16 * 1024,
        };
        assert!(!limits(75).checkpoint_due(fill(149_999)));
        assert!(limits(75).checkpoint_due(fill(150_000)));
        assert!(!limits(0).checkpoint_due(fill(200_000)));
    }
}
