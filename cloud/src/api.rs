//! One call to a cloud API: sent through the one HTTP client, retried by its one policy.
//!
//! No answer, a dropped connection, 408, 429 and 5xx are tried again after a growing wait (the
//! clouds ask for exactly this: EBS's `ThrottlingException`, GCS's 429/5xx, Azure's 503
//! `ServerBusy`); any other answer, success or not, goes back to the caller, which reads the
//! cloud's own error from the body.

use std::time::Duration;

use berth_http::{Attempt, Call, Client, Failed, Reply, Retry};

use crate::{Error, Progress};

/// The policy of `berth upload`: 8 attempts, 1 s before the first retry, doubling to at most 30 s
/// (about two minutes in all before a call is given up).
pub const RETRY: Retry = Retry::new().attempts(8).backoff(Duration::from_secs(1)).max_backoff(Duration::from_secs(30));

/// How long one call may take, body included (a 4 MiB page on a slow link included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one call carrying `len` body bytes may take: [`CALL_TIMEOUT`] plus a second per
/// 64 KiB (so a 300 MB file has over an hour on a link as slow as 64 KiB/s), as GCS's chunks have.
pub fn timeout_for(len: u64) -> Duration {
    CALL_TIMEOUT + Duration::from_secs(len / (64 << 10))
}

/// The client `berth upload` uses: `berth/VERSION`, [`RETRY`], the environment's proxy.
pub fn client() -> Client {
    Client::builder(concat!("berth/", env!("CARGO_PKG_VERSION"))).retry(RETRY).build()
}

/// Sends the request `make` builds (anew for each attempt, so that a signature and its date are
/// fresh) by `client`'s retry policy. Returns the first answer that is not worth retrying, success
/// or not; [`Error::GaveUp`] when every attempt failed, [`Error::Request`] when the request
/// cannot be made. Each retry is told to `progress`. Each attempt may take [`CALL_TIMEOUT`].
pub fn send<'c>(
    client: &'c Client,
    call: &str,
    url: &str,
    progress: &dyn Progress,
    make: impl Fn() -> Call<'c>,
) -> Result<Reply, Error> {
    send_timed(client, call, url, progress, CALL_TIMEOUT, make)
}

/// [`send`], each attempt given `timeout` (a large body's: [`timeout_for`]).
pub fn send_timed<'c>(
    client: &'c Client,
    call: &str,
    url: &str,
    progress: &dyn Progress,
    timeout: Duration,
    make: impl Fn() -> Call<'c>,
) -> Result<Reply, Error> {
    let retry = client.retry();
    // What the cloud said with its last retryable status, for the error when all attempts fail.
    let mut said = String::new();
    let outcome = retry.run(
        |_| match make().timeout(timeout).send() {
            Ok(reply) if retryable_status(reply.status) => {
                said = one_line(&reply.text(), 200);
                Attempt::Retry(berth_http::Error::Status(reply.status))
            }
            Ok(reply) => Attempt::Done(reply),
            Err(e) => Attempt::from_error(e, |e| e),
        },
        |why, wait| progress.note(&format!("{call}: {why}; trying again in {} s", wait.as_secs_f32())),
    );
    match outcome {
        Ok(reply) => Ok(reply),
        Err(Failed::Final(source)) => Err(Error::Request { call: call.to_string(), url: url.to_string(), source }),
        Err(Failed::GaveUp { last, attempts, .. }) => {
            let last = match (&last, said.is_empty()) {
                (berth_http::Error::Status(_), false) => format!("{last}: {said}"),
                _ => last.to_string(),
            };
            Err(Error::GaveUp { call: call.to_string(), url: url.to_string(), attempts, last })
        }
    }
}

/// Whether an answer with `status` is worth asking again.
pub fn retryable_status(status: u16) -> bool {
    berth_http::Error::Status(status).is_retryable()
}

/// An [`Error::Api`] for an answer the caller did not expect, with the start of its body (the
/// cloud's code and message) on one line.
pub fn api_error(call: &str, url: &str, reply: &Reply, message: Option<String>) -> Error {
    let message = message.unwrap_or_else(|| one_line(&reply.text(), 300));
    Error::Api { call: call.to_string(), url: url.to_string(), status: reply.status, message }
}

/// `text` on one line, at most `max` characters.
pub fn one_line(text: &str, max: usize) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_body_gets_time_for_its_size() {
        assert_eq!(timeout_for(0), CALL_TIMEOUT);
        assert_eq!(timeout_for(64 << 10), CALL_TIMEOUT + Duration::from_secs(1));
        // 300 MB: over an hour and a quarter besides the 120 s.
        assert_eq!(timeout_for(300_000_000), CALL_TIMEOUT + Duration::from_secs(4577));
    }

    /// The timeout given is each attempt's: an answer slower than it is no answer, a longer one
    /// waits for it.
    #[test]
    fn each_attempt_has_the_timeout_given() {
        use berth_testkit::{Reply as Answer, Server};
        let server = Server::start(|_| {
            Answer::stream(|s| {
                std::thread::sleep(Duration::from_millis(1500));
                let _ = std::io::Write::write_all(
                    s,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            })
        })
        .unwrap();
        let client = Client::builder("t").retry(Retry::new().attempts(1)).build();
        let url = server.url();
        let short =
            send_timed(&client, "c", &url, &crate::Silent, Duration::from_millis(300), || client.call("GET", &url));
        assert!(short.is_err(), "{short:?}");
        let long = send_timed(&client, "c", &url, &crate::Silent, Duration::from_secs(10), || client.call("GET", &url));
        assert_eq!(long.unwrap().body, b"ok");
    }
}
