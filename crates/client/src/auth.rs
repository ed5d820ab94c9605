//! Logging in: a client given a user name and password asks the cluster for
//! a token (etcd's `Authenticate`, which any member answers) before its
//! first call, sends it with every request (the `token` header etcd clients
//! use), and logs in again once if the cluster says the token is no longer
//! good (it expired, or the cluster's auth was reset).

use std::sync::{Arc, RwLock};

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

/// The token a client's requests carry (none until it logs in); clones
/// share it.
#[derive(Clone, Default)]
pub struct Token(Arc<RwLock<Option<AsciiMetadataValue>>>);

impl Token {
    pub(crate) fn set(&self, token: Option<&str>) {
        let value = token.and_then(|t| t.parse().ok());
        *self.0.write().expect("token lock") = value;
    }

    pub(crate) fn is_set(&self) -> bool {
        self.0.read().expect("token lock").is_some()
    }
}

impl Interceptor for Token {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = self.0.read().expect("token lock").clone() {
            request.metadata_mut().insert("token", token);
        }
        Ok(request)
    }
}

/// A connection to one endpoint whose requests carry the client's token.
pub type Channel = InterceptedService<tonic::transport::Channel, Token>;
