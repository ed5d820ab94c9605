//! Output helpers: raw bytes to stdout, JSON encoding of keys and values
//! that may not be UTF-8 (base64 under a `_base64` field name), and the
//! escaped form of `scan --escape`. A closed standard output (`| head`) is
//! a quiet stop ([`Failure::StdoutClosed`]), never a panic.

use std::io::Write;

use bytes::Bytes;
use serde_json::{Map, Value};

use base64::Engine as _;

use crate::failure::Failure;

/// What a failed write to standard output means: a reader that went away
/// (`raftkv scan "" | head -1`) is a quiet stop, anything else an error.
pub fn stdout_failed(error: std::io::Error) -> Failure {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        Failure::StdoutClosed
    } else {
        Failure::Other(format!("cannot write to standard output: {error}"))
    }
}

/// Adds `name` (UTF-8 text) or `name_base64` (anything else) to `object`.
pub fn put_bytes(object: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            object.insert(name.to_string(), Value::String(text.to_string()));
        }
        Err(_) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
            object.insert(format!("{name}_base64"), Value::String(encoded));
        }
    }
}

/// Prints one compact JSON object on its own line.
pub fn print_json(value: &Value) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(stdout_failed)
}

/// Writes raw bytes to stdout.
pub fn write_stdout(parts: &[&[u8]]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    parts
        .iter()
        .try_for_each(|part| out.write_all(part))
        .and_then(|()| out.flush())
        .map_err(stdout_failed)
}

/// `bytes` on one line without ambiguity: backslash, tab, newline and
/// carriage return as `\\`, `\t`, `\n`, `\r`; other ASCII control bytes and
/// bytes that are not UTF-8 as `\xNN`; other control characters as `\u{NNNN}`;
/// other text as it is.
pub fn escaped(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                // C1 controls: valid UTF-8, but not to be sent to a terminal raw.
                c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `{"key": ..., "value": ...}` for a pair.
/// Adds a key's revisions to its JSON object (etcd's field names).
pub fn with_revisions(mut pair: Value, revisions: &raftkv_client::KeyRevisions) -> Value {
    if let Value::Object(object) = &mut pair {
        object.insert("create_revision".into(), revisions.create_revision.into());
        object.insert("mod_revision".into(), revisions.mod_revision.into());
        object.insert("version".into(), revisions.version.into());
        if revisions.lease != 0 {
            // Hex, as `lease grant` prints it and `--lease` takes it.
            object.insert("lease".into(), format!("{:x}", revisions.lease).into());
        }
    }
    pair
}

pub fn pair_json(key: &Bytes, value: Option<&Bytes>) -> Value {
    let mut object = Map::new();
    put_bytes(&mut object, "key", key);
    if let Some(value) = value {
        put_bytes(&mut object, "value", value);
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_text_and_other_bytes_are_marked_base64() {
        let v = pair_json(
            &Bytes::from_static("键".as_bytes()),
            Some(&Bytes::from_static(b"\xff\x00")),
        );
        assert_eq!(v["key"], "键");
        assert_eq!(v["value_base64"], "/wA=");
        assert!(v.get("value").is_none());
    }

    #[test]
    fn escaped_pairs_are_one_line_and_reversible_by_eye() {
        assert_eq!(escaped(b"plain text"), "plain text");
        assert_eq!(escaped(b"a\tb\nc\rd\\e"), "a\\tb\\nc\\rd\\\\e");
        assert_eq!(escaped(b"\x00\x1b\xff"), "\\x00\\x1b\\xff");
        assert_eq!(escaped("键".as_bytes()), "键");
        assert_eq!(escaped("\u{85}".as_bytes()), "\\u{0085}");
    }
}
