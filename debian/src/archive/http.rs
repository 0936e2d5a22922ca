//! The HTTP side: one blocking client with timeouts, and retries with backoff for the failures
//! that are worth retrying (connection errors, timeouts, 5xx). 4xx answers are final.

use std::io::Read;
use std::time::Duration;

use super::error::{ArchiveError, one_line};

/// How many times a request is tried before giving up.
const ATTEMPTS: u32 = 3;
/// First backoff; doubled after each failed attempt.
const BACKOFF: Duration = Duration::from_millis(300);

pub(crate) struct Http {
    agent: ureq::Agent,
}

/// One failed attempt: worth retrying or final.
pub(crate) enum Failure {
    Retry(String),
    Final(ArchiveError),
}

impl Http {
    pub fn new() -> Http {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A stalled transfer fails after a minute without data, however large the file.
            .timeout_per_read(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build();
        Http { agent: config.into() }
    }

    /// One attempt at `url`: the body reader and the announced length, or whether to retry.
    pub fn open_once(&self, url: &str) -> Result<(ureq::BodyReader<'static>, Option<u64>), Failure> {
        let response = self.agent.get(url).call().map_err(|e| match e {
            ureq::Error::BadUri(_) | ureq::Error::InvalidProxyUrl | ureq::Error::RedirectFailed => {
                Failure::Final(ArchiveError::Unreachable { url: url.to_string(), msg: one_line(e) })
            }
            other => Failure::Retry(one_line(other)),
        })?;
        let status = response.status().as_u16();
        if status >= 500 {
            return Err(Failure::Retry(format!("HTTP {status}")));
        }
        if status != 200 {
            return Err(Failure::Final(ArchiveError::HttpStatus { url: url.to_string(), status }));
        }
        let len = response.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse().ok());
        Ok((response.into_body().into_reader(), len))
    }

    /// Reads all of `url`, refusing more than `limit` bytes (an index or InRelease whose
    /// size is known from the signed Release, or a sane cap for InRelease itself).
    pub fn get(&self, url: &str, limit: u64) -> Result<Vec<u8>, ArchiveError> {
        self.with_retries(url, |_| {
            let (reader, _) = self.open_once(url)?;
            let mut body = Vec::new();
            reader.take(limit + 1).read_to_end(&mut body).map_err(|e| Failure::Retry(one_line(e)))?;
            if body.len() as u64 > limit {
                return Err(Failure::Final(ArchiveError::Index {
                    url: url.to_string(),
                    msg: format!("larger than the {limit} bytes expected"),
                }));
            }
            Ok(body)
        })
    }

    /// Runs `attempt` up to [`ATTEMPTS`] times with doubling backoff while it asks for a retry;
    /// the last retryable failure becomes an [`ArchiveError::Unreachable`] naming `url`.
    pub fn with_retries<T>(
        &self,
        url: &str,
        mut attempt: impl FnMut(u32) -> Result<T, Failure>,
    ) -> Result<T, ArchiveError> {
        let mut delay = BACKOFF;
        let mut last = String::new();
        for n in 1..=ATTEMPTS {
            match attempt(n) {
                Ok(v) => return Ok(v),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Retry(msg)) => last = msg,
            }
            if n < ATTEMPTS {
                std::thread::sleep(delay);
                delay *= 2;
            }
        }
        Err(ArchiveError::Unreachable { url: url.to_string(), msg: format!("{last} (tried {ATTEMPTS} times)") })
    }
}
