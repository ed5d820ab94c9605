//! Logging in: a client given a user name and password asks the cluster for
//! a token (etcd's `Authenticate`, which any member answers) before its
//! first call, sends it with every request (the `token` header etcd clients
//! use), logs in again shortly before the token expires, and once more if
//! the cluster says the token is no longer good (its password changed, or
//! the cluster's auth was reset).

use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A user name and its password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    /// Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A token is renewed this long before it expires (or a quarter of its
/// life, if shorter), so a call made just before does not carry one that
/// expires on the way.
const RENEW_BEFORE: std::time::Duration = std::time::Duration::from_secs(5);

/// The token a client's requests carry (none until it logs in); clones
/// share it. A client without credentials has no slot at all, so its
/// requests pay nothing for it.
#[derive(Clone, Default)]
pub struct Token(Option<Arc<RwLock<Option<Held>>>>);

/// A token, and when to renew it (`None`: not a RaftKV token; never).
type Held = (AsciiMetadataValue, Option<SystemTime>);

impl Token {
    /// A slot for a client that logs in (`with_credentials`), or none.
    pub(crate) fn new(with_credentials: bool) -> Token {
        Token(with_credentials.then(Default::default))
    }

    pub(crate) fn set(&self, token: Option<&str>) {
        let Some(slot) = &self.0 else {
            return;
        };
        let value = token.and_then(|t| {
            let renew_at = expiry_of(t).map(|expires| {
                let life = expires
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                expires - RENEW_BEFORE.min(life / 4)
            });
            Some((t.parse().ok()?, renew_at))
        });
        *slot.write().expect("token lock") = value;
    }

    /// Whether the client holds a token that is not about to expire.
    pub(crate) fn is_fresh(&self) -> bool {
        let Some(slot) = &self.0 else {
            return false;
        };
        match &*slot.read().expect("token lock") {
            None => false,
            Some((_, None)) => true,
            Some((_, Some(renew_at))) => SystemTime::now() < *renew_at,
        }
    }
}

/// When a RaftKV token expires (its payload says; `None`: another kind).
fn expiry_of(token: &str) -> Option<SystemTime> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let (payload, _) = token.strip_prefix("raftkv1.")?.split_once('.')?;
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let expires_ms: u64 = payload.split('\n').next()?.parse().ok()?;
    Some(UNIX_EPOCH + std::time::Duration::from_millis(expires_ms))
}

impl Interceptor for Token {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(slot) = &self.0 else {
            return Ok(request);
        };
        if let Some((token, _)) = slot.read().expect("token lock").clone() {
            request.metadata_mut().insert("token", token);
        }
        Ok(request)
    }
}

/// A connection to one endpoint whose requests carry the client's token.
pub type Channel = InterceptedService<tonic::transport::Channel, Token>;
