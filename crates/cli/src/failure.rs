//! How a command fails: the exit code of CONTRACT §1 and the one-line
//! message printed after `error: `.

use raftkv_client::Error;

#[derive(Debug)]
pub enum Failure {
    /// Exit 1: the key does not exist (get).
    NotFound,
    /// Exit 2: bad flags or arguments.
    Usage(String),
    /// Exit 3: anything else; the message names the kind.
    Other(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::NotFound => 1,
            Failure::Usage(_) => 2,
            Failure::Other(_) => 3,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotFound => f.write_str("key not found"),
            Failure::Usage(m) | Failure::Other(m) => f.write_str(m),
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        match error {
            Error::KeyNotFound => Failure::NotFound,
            other => Failure::Other(other.to_string()),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::Other(error.to_string())
    }
}
