//! How a command fails: the exit code (docs/REFERENCE.md §1), the kind and
//! the one-line message printed after `error: ` (or as one JSON object on
//! stderr under `--json`).

use raftkv_client::Error;

#[derive(Debug)]
pub enum Failure {
    /// Exit 1: the key does not exist (get).
    NotFound,
    /// Exit 1: the lease does not exist (expired, revoked or never granted).
    LeaseNotFound(i64),
    /// Exit 1: a conditional write's condition did not hold (nothing was
    /// written).
    ConditionFailed(String),
    /// Exit 2: bad flags or arguments.
    Usage(String),
    /// Exit 3: the client library's error, with its kind.
    Client(Error),
    /// Exit 3: anything else (a local file, a failed check).
    Other(String),
    /// Whoever read standard output stopped reading (`raftkv scan "" | head`):
    /// stop quietly, like standard tools, with exit 0.
    StdoutClosed,
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::NotFound | Failure::LeaseNotFound(_) | Failure::ConditionFailed(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Client(_) | Failure::Other(_) => 3,
            Failure::StdoutClosed => 0,
        }
    }

    /// A short machine-readable name of what went wrong.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::NotFound => "key_not_found",
            Failure::LeaseNotFound(_) => "lease_not_found",
            Failure::ConditionFailed(_) => "condition_failed",
            Failure::Usage(_) => "usage",
            Failure::Client(e) => e.kind(),
            Failure::Other(_) => "failed",
            Failure::StdoutClosed => "stdout_closed",
        }
    }

    /// Prints the failure to stderr: `error: MESSAGE`, or with `json` one
    /// object `{"kind", "message", "exit_code"}`. Nothing for a closed stdout.
    pub fn report(&self, json: bool) {
        use std::io::Write as _;
        if matches!(self, Failure::StdoutClosed) {
            return;
        }
        let mut stderr = std::io::stderr().lock();
        let _ = if json {
            let object = serde_json::json!({
                "kind": self.kind(),
                "message": self.to_string(),
                "exit_code": self.exit_code(),
            });
            writeln!(stderr, "{object}")
        } else {
            writeln!(stderr, "error: {self}")
        };
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotFound => f.write_str("key not found"),
            Failure::LeaseNotFound(id) => {
                write!(
                    f,
                    "lease {id:x} not found (expired, revoked or never granted)"
                )
            }
            Failure::Usage(m) | Failure::Other(m) | Failure::ConditionFailed(m) => f.write_str(m),
            Failure::Client(e) => write!(f, "{e}"),
            Failure::StdoutClosed => f.write_str("standard output closed"),
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        match error {
            Error::KeyNotFound => Failure::NotFound,
            other => Failure::Client(other),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::Other(error.to_string())
    }
}
