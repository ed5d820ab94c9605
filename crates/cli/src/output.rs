//! Output helpers: raw bytes to stdout, and JSON encoding of keys and values
//! that may not be UTF-8 (base64 under a `_base64` field name).

use std::io::Write;

use bytes::Bytes;
use serde_json::{Map, Value};

use base64::Engine as _;

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
pub fn print_json(value: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Writes raw bytes to stdout.
pub fn write_stdout(parts: &[&[u8]]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for part in parts {
        out.write_all(part)?;
    }
    out.flush()
}

/// `{"key": ..., "value": ...}` for a pair.
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
}
