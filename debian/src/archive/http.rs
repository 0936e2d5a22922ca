//! The HTTP side: Berth's one client ([`berth_http`]) with the archive's retry policy, 3
//! attempts 300 ms apart and doubling, for the failures worth retrying (connection errors,
//! timeouts, 5xx); other answers are final.

use std::time::Duration;

use berth_error_line::one_line;
use berth_http::{Attempt, BodyReader, Client, Failed, Retry};

use super::error::ArchiveError;

/// How many times a request is tried before giving up.
const ATTEMPTS: u32 = 3;
/// First backoff; doubled after each failed attempt.
const BACKOFF: Duration = Duration::from_millis(300);

pub(crate) struct Http {
    client: Client,
}

/// One failed attempt: worth retrying or final.
pub(crate) enum Failure {
    Retry(berth_http::Error),
    Final(ArchiveError),
}

impl Http {
    pub fn new() -> Http {
        let retry = Retry::new().attempts(ATTEMPTS).backoff(BACKOFF);
        Http { client: Client::builder(concat!("berth/", env!("CARGO_PKG_VERSION"))).retry(retry).build() }
    }

    /// One attempt at `url`: the response, or whether to retry.
    fn send(&self, url: &str) -> Result<berth_http::Response, Failure> {
        self.client.get(url).send().map_err(|e| match e {
            e if e.is_retryable() => Failure::Retry(e),
            berth_http::Error::Status(status) => {
                Failure::Final(ArchiveError::HttpStatus { url: url.to_string(), status })
            }
            e => Failure::Final(ArchiveError::Unreachable { url: url.to_string(), msg: one_line(&e) }),
        })
    }

    /// One attempt at `url`: the body reader and the announced length, or whether to retry.
    pub fn open_once(&self, url: &str) -> Result<(BodyReader<'static>, Option<u64>), Failure> {
        let response = self.send(url)?;
        let len = response.content_length();
        Ok((response.into_reader(), len))
    }

    /// Reads all of `url`, refusing more than `limit` bytes (an index or InRelease whose
    /// size is known from the signed Release, or a sane cap for InRelease itself).
    pub fn get(&self, url: &str, limit: u64) -> Result<Vec<u8>, ArchiveError> {
        self.with_retries(url, |_| {
            let response = self.send(url)?;
            response.read_to_vec(limit).map_err(|e| match e {
                berth_http::Error::TooLarge(_) => Failure::Final(ArchiveError::Index {
                    url: url.to_string(),
                    msg: format!("larger than the {limit} bytes expected"),
                }),
                e => Failure::Retry(e),
            })
        })
    }

    /// Runs `attempt` by the client's policy while it asks for a retry; the last retryable
    /// failure becomes an [`ArchiveError::Unreachable`] naming `url`.
    pub fn with_retries<T>(
        &self,
        url: &str,
        mut attempt: impl FnMut(u32) -> Result<T, Failure>,
    ) -> Result<T, ArchiveError> {
        let outcome = self.client.retry().run(
            |n| match attempt(n) {
                Ok(v) => Attempt::Done(v),
                Err(Failure::Retry(e)) => Attempt::Retry(e),
                Err(Failure::Final(e)) => Attempt::Final(e),
            },
            |_, _| {},
        );
        outcome.map_err(|f| match f {
            Failed::Final(e) => e,
            Failed::GaveUp { last, attempts, .. } => ArchiveError::Unreachable {
                url: url.to_string(),
                msg: format!("{} (tried {attempts} times)", one_line(&last)),
            },
        })
    }
}
