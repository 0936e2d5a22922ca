//! The one error type of the cloud clients: every variant names what was being done and where.

use std::path::PathBuf;

/// Why an upload or a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable credentials, or the cloud refused the ones found: names where they came from
    /// (`environment (AWS_ACCESS_KEY_ID)`, `/root/.aws/credentials [prod]`, `--sas`, the key file).
    #[error("credentials from {source_name}: {reason}")]
    Credentials {
        /// Where the credentials came from.
        source_name: String,
        /// What is wrong with them (missing, malformed, expired, refused: the cloud's own words).
        reason: String,
    },
    /// The cloud answered a call with an error.
    #[error("{call} ({url}): {status} {message}")]
    Api {
        /// The API call (`PutSnapshotBlock`, `images.insert`).
        call: String,
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The cloud's code and message.
        message: String,
    },
    /// Every attempt of a call failed in a way worth retrying (no answer, 429, 5xx).
    #[error("{call} ({url}): gave up after {attempts} attempts: {last}")]
    GaveUp {
        /// The API call.
        call: String,
        /// The URL asked.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Why the last one failed.
        last: String,
    },
    /// The request could not be made at all (a malformed URL or endpoint).
    #[error("{call} ({url}): {source}")]
    Request {
        /// The API call.
        call: String,
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: berth_http::Error,
    },
    /// The cloud answered something the API does not allow (no `Location`, bad JSON, a
    /// checksum that does not match what was sent).
    #[error("{call} ({url}): unexpected answer: {message}")]
    Protocol {
        /// The API call.
        call: String,
        /// The URL asked.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The input or the options are not usable (not a whole GiB, not a VHD, a bad name): says
    /// which and why, before anything is sent.
    #[error("{0}")]
    Invalid(String),
    /// A long-running operation on the cloud side ended in failure or did not end in time.
    #[error("{what}: {message}")]
    Operation {
        /// The operation (`snapshot snap-0123`, `images.insert operation-1`).
        what: String,
        /// How it ended.
        message: String,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}
