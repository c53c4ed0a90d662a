//! Secrets out of everything the broker writes (DESIGN §16): `mask` replaces, in a text about to
//! be logged, stored or answered, every API key the broker has read (the hive's key files, the
//! agents' stored keys: `remember`ed when read) and whatever looks like a credential (the value
//! after `x-api-key`, `authorization`, `Bearer`, and `sk-…` keys) with `[redacted]`.
//!
//! It owns only the set of known secrets (process-wide, because the log writer is) and the
//! masking; it never logs, stores or returns a secret itself.

use std::borrow::Cow;
use std::sync::RwLock;

/// What a secret is replaced with.
pub const MASK: &str = "[redacted]";
/// Shorter strings are never remembered (they would mask ordinary words).
const MIN_SECRET_LEN: usize = 8;
/// `sk-…` tokens at least this long are taken for keys.
const MIN_KEY_LIKE_LEN: usize = 20;

static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remembers `secret` so that every later `mask` hides it.
pub fn remember(secret: &str) {
    let secret = secret.trim();
    if secret.len() < MIN_SECRET_LEN {
        return;
    }
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    if !known.iter().any(|k| k == secret) {
        known.push(secret.to_owned());
        // Longest first, so that a key containing another is masked whole.
        known.sort_by_key(|k| std::cmp::Reverse(k.len()));
    }
}

/// `text` with every known secret and every credential-looking value replaced by [`MASK`];
/// borrowed when there was nothing to hide.
pub fn mask(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    {
        let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
        for secret in known.iter() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
    }
    match mask_patterns(&out) {
        Some(masked) => Cow::Owned(masked),
        None => out,
    }
}

/// Whether `bytes` hold a secret the broker has read (patterns are not looked for: a search of
/// files and environments for the keys themselves).
pub fn holds_a_known_secret(bytes: &[u8]) -> bool {
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    known
        .iter()
        .any(|secret| memchr::memmem::find(bytes, secret.as_bytes()).is_some())
}

/// Bytes a token (a key, a bearer token) is made of.
fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=')
}

/// `end` moved back over the dots ending a sentence.
fn trim_end_dots(bytes: &[u8], start: usize, mut end: usize) -> usize {
    while end > start && bytes[end - 1] == b'.' {
        end -= 1;
    }
    end
}

/// Masks the value after each credential header name or `Bearer`, and `sk-…` keys; `None`
/// when there is none.
fn mask_patterns(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    // Ranges (start, end) of token bytes to mask.
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let token_at = |mut i: usize| {
        let start = i;
        while i < bytes.len() && token_byte(bytes[i]) {
            i += 1;
        }
        let i = trim_end_dots(bytes, start, i);
        (i - start >= MIN_SECRET_LEN).then_some((start, i))
    };
    // `name: value`, `name=value`, `"name":"value"` (also `name: Bearer value`).
    for name in ["x-api-key", "authorization", "api_key", "api-key", "apikey"] {
        let mut from = 0;
        while let Some(at) = lower[from..].find(name) {
            let mut i = from + at + name.len();
            from = i;
            let mut assigned = false;
            while i < bytes.len() && matches!(bytes[i], b'"' | b'\'' | b':' | b'=' | b' ' | b'\t') {
                assigned |= matches!(bytes[i], b':' | b'=');
                i += 1;
            }
            if !assigned {
                continue;
            }
            for scheme in ["bearer ", "basic "] {
                if lower[i..].starts_with(scheme) {
                    i += scheme.len();
                }
            }
            spans.extend(token_at(i));
        }
    }
    // `Bearer value` anywhere.
    let mut from = 0;
    while let Some(at) = lower[from..].find("bearer ") {
        let i = from + at + "bearer ".len();
        from = i;
        spans.extend(token_at(i));
    }
    let mut from = 0;
    while let Some(at) = text[from..].find("sk-") {
        let start = from + at;
        let mut i = start;
        while i < bytes.len() && token_byte(bytes[i]) {
            i += 1;
        }
        let i = trim_end_dots(bytes, start, i);
        let word_start = start == 0 || !token_byte(bytes[start - 1]);
        if word_start && i - start >= MIN_KEY_LIKE_LEN {
            spans.push((start, i));
        }
        from = i.max(start + 3);
    }
    if spans.is_empty() {
        return None;
    }
    spans.sort();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in spans {
        if end <= at {
            continue;
        }
        let start = start.max(at);
        out.push_str(&text[at..start]);
        out.push_str(MASK);
        at = end;
    }
    out.push_str(&text[at..]);
    Some(out)
}

/// A `MakeWriter` for the daemon's log: each formatted line masked before it reaches `inner`.
pub struct MaskingWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for MaskingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // tracing-subscriber hands over one whole formatted event per write.
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(mask(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secrets_and_credential_looking_values_are_masked() {
        remember("opaque-secret-0123");
        assert_eq!(mask("got opaque-secret-0123!"), "got [redacted]!");
        assert_eq!(
            mask("invalid x-api-key: sk-ant-api03-abcdefghijklmnop"),
            "invalid x-api-key: [redacted]"
        );
        assert_eq!(
            mask(r#"{"authorization":"Bearer tok_0123456789abcdef"}"#),
            r#"{"authorization":"Bearer [redacted]"}"#
        );
        assert_eq!(
            mask("Incorrect API key provided: sk-proj-0123456789abcdefghij."),
            "Incorrect API key provided: [redacted]."
        );
        // Ordinary words are left alone.
        for plain in [
            "model request status=200",
            "set [model] api_key_file in hive.toml",
            "invalid x-api-key",
            "the sk-short key",
        ] {
            assert!(matches!(mask(plain), Cow::Borrowed(_)), "{plain}");
        }
    }
}
