//! Auth tokens any member can check: `raftkv1.<payload>.<mac>`, where the
//! payload (base64url) names the user and when the token expires, and the
//! MAC (HMAC-SHA256, base64url) is made with the cluster's token secret,
//! which is replicated auth state (`raftkv_kv::auth`). So a token issued by
//! one member is good on every member, and a request a follower forwards to
//! the leader carries it unchanged — never a token only one node knows.
//!
//! A token says who the caller is, nothing more: what the user may do is
//! read from the auth state when each request is served (and again when a
//! write is applied), so revoking a role takes effect on the next request.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "raftkv1.";

// etcd's texts (api/v3rpc/rpctypes).
pub const INVALID_TOKEN: &str = "etcdserver: invalid auth token";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], payload: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(payload.as_bytes());
    mac
}

/// A token for `user` (as of its `since`, see `raftkv_kv::auth::User`)
/// that expires at `expires_ms` (milliseconds since the Unix epoch).
pub fn issue(secret: &[u8], user: &str, since: u64, expires_ms: u64) -> String {
    let payload = URL_SAFE_NO_PAD.encode(format!("{expires_ms}\n{since}\n{user}"));
    let tag = URL_SAFE_NO_PAD.encode(mac(secret, &payload).finalize().into_bytes());
    format!("{PREFIX}{payload}.{tag}")
}

/// The user a token names and its `since`, if it was made with `secret` and
/// has not expired at `now_ms`.
pub fn verify(secret: &[u8], token: &str, now_ms: u64) -> Result<(String, u64), &'static str> {
    if secret.is_empty() {
        return Err(INVALID_TOKEN);
    }
    let rest = token.strip_prefix(PREFIX).ok_or(INVALID_TOKEN)?;
    let (payload, tag) = rest.split_once('.').ok_or(INVALID_TOKEN)?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| INVALID_TOKEN)?;
    mac(secret, payload)
        .verify_slice(&tag)
        .map_err(|_| INVALID_TOKEN)?;
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| INVALID_TOKEN)?;
    let payload = String::from_utf8(payload).map_err(|_| INVALID_TOKEN)?;
    let (expires, rest) = payload.split_once('\n').ok_or(INVALID_TOKEN)?;
    let (since, user) = rest.split_once('\n').ok_or(INVALID_TOKEN)?;
    let expires: u64 = expires.parse().map_err(|_| INVALID_TOKEN)?;
    let since: u64 = since.parse().map_err(|_| INVALID_TOKEN)?;
    if now_ms >= expires {
        return Err(INVALID_TOKEN);
    }
    Ok((user.to_string(), since))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_user_until_it_expires() {
        let token = issue(b"secret", "alice", 7, 1_000);
        assert_eq!(verify(b"secret", &token, 999), Ok(("alice".to_string(), 7)));
        assert_eq!(verify(b"secret", &token, 1_000), Err(INVALID_TOKEN));
    }

    #[test]
    fn a_token_from_another_secret_or_altered_is_refused() {
        let token = issue(b"secret", "alice", 7, 1_000);
        assert_eq!(verify(b"other", &token, 0), Err(INVALID_TOKEN));
        assert_eq!(verify(b"", &token, 0), Err(INVALID_TOKEN));
        // Claiming to be root with alice's MAC.
        let (_, tag) = token.rsplit_once('.').unwrap();
        let forged = format!("{PREFIX}{}.{tag}", URL_SAFE_NO_PAD.encode("1000\n7\nroot"));
        assert_eq!(verify(b"secret", &forged, 0), Err(INVALID_TOKEN));
        for garbage in [
            "",
            "raftkv1.",
            "raftkv1.x.y",
            "simple-token.3",
            &token[..token.len() - 2],
        ] {
            assert_eq!(
                verify(b"secret", garbage, 0),
                Err(INVALID_TOKEN),
                "{garbage:?}"
            );
        }
    }
}
