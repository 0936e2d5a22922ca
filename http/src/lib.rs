//! Berth's one HTTP client: the client settings every Berth program uses ([`Client`]: timeouts,
//! user agent, statuses as values), one retry/backoff policy ([`Retry`], each caller setting its
//! attempts and backoff, as afterburn's `retry::Retry` does), why an attempt failed as a typed
//! [`Error`] that says whether retrying can help, and a test-only base URL
//! ([`ClientBuilder::test_base_url`], feature `test-base-url`) so tests point a client whose
//! URLs are fixed at 127.0.0.1.
//!
//! A client uses the proxy the environment names (`ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY`,
//! their lower-case forms, and `NO_PROXY`) unless built with [`ClientBuilder::no_proxy`], as
//! every request to a link-local metadata service must be.
//!
//! What a caller does with a response (the update agent's deadlines and `Range` resumption,
//! the archive client's size and hash checks) stays with the caller; this crate answers "what is
//! one attempt, is it worth another, and how long to wait".

use std::io::Read;
use std::time::{Duration, Instant};

/// A response body as a reader.
pub use ureq::BodyReader;

mod tls;
pub use tls::{Tls, TlsError};

/// Connecting may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The response's head must arrive within this.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// A stalled transfer fails after this without data, however large the file.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer: refused, reset, a timeout, DNS, TLS. Worth retrying.
    #[error("connection failed: {0}")]
    Connection(#[source] ureq::Error),
    /// The request cannot be made (a bad URL, a broken redirect): final.
    #[error("{0}")]
    Request(#[source] ureq::Error),
    /// An answer other than the one asked for: worth retrying when it is a 5xx.
    #[error("the server answered {0}")]
    Status(u16),
    /// The connection broke while the body was read. Worth retrying.
    #[error("connection dropped: {0}")]
    Read(#[source] std::io::Error),
    /// The body is longer than the caller allows: final.
    #[error("more than the {0} bytes allowed")]
    TooLarge(u64),
    /// The transfer went slower than the caller's minimum. Worth retrying.
    #[error("too slow: {bytes} bytes in {secs} s, below the minimum of {min_rate} bytes/s")]
    TooSlow {
        /// Bytes received in the window.
        bytes: u64,
        /// The window, seconds.
        secs: u64,
        /// The minimum, bytes per second.
        min_rate: u64,
    },
}

impl Error {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connection(_) | Error::Read(_) | Error::TooSlow { .. } => true,
            // 408 and 429 say "later", as a 5xx does.
            Error::Status(s) => *s >= 500 || *s == 408 || *s == 429,
            Error::Request(_) | Error::TooLarge(_) => false,
        }
    }
}

/// The outcome of one attempt: done, worth another (why not yet), or final (the caller's error).
#[derive(Debug)]
pub enum Attempt<T, E> {
    Done(T),
    Retry(Error),
    Final(E),
}

impl<T, E> Attempt<T, E> {
    /// `Retry` for a retryable error, else `Final` with the error `final_error` makes of it.
    pub fn from_error(e: Error, final_error: impl FnOnce(Error) -> E) -> Attempt<T, E> {
        if e.is_retryable() { Attempt::Retry(e) } else { Attempt::Final(final_error(e)) }
    }
}

/// Why a retried operation failed.
#[derive(Debug)]
pub enum Failed<E> {
    /// An attempt failed in a way another attempt will not change.
    Final(E),
    /// Every attempt failed; the last one for this reason.
    GaveUp { last: Error, attempts: u32, elapsed: Duration },
}

/// How often an operation is tried and how long to wait between tries: `backoff` before the
/// first retry, doubled after each, at most `max_backoff`. Built by its caller:
/// `Retry::new().attempts(6).backoff(Duration::from_secs(1))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry::new()
    }
}

impl Retry {
    /// 3 attempts, 1 s before the first retry, at most 30 s between two.
    pub const fn new() -> Retry {
        Retry { attempts: 3, backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(30) }
    }

    /// Attempts in all, the first included (at least 1).
    #[must_use]
    pub const fn attempts(mut self, attempts: u32) -> Retry {
        self.attempts = if attempts == 0 { 1 } else { attempts };
        self
    }

    /// The wait before the first retry.
    #[must_use]
    pub const fn backoff(mut self, backoff: Duration) -> Retry {
        self.backoff = backoff;
        self
    }

    /// The longest wait between two attempts.
    #[must_use]
    pub const fn max_backoff(mut self, max_backoff: Duration) -> Retry {
        self.max_backoff = max_backoff;
        self
    }

    /// Attempts in all.
    pub fn max_attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait after the `failures`-th failed attempt (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.backoff.saturating_mul(1 << doublings).min(self.max_backoff)
    }

    /// Runs `attempt` (given its number, from 1) until it is done or final, or the attempts are
    /// spent; `before_retry` hears each retryable failure and the wait that follows it.
    pub fn run<T, E>(
        &self,
        mut attempt: impl FnMut(u32) -> Attempt<T, E>,
        mut before_retry: impl FnMut(&Error, Duration),
    ) -> Result<T, Failed<E>> {
        let start = Instant::now();
        let mut n = 0;
        loop {
            n += 1;
            match attempt(n) {
                Attempt::Done(v) => return Ok(v),
                Attempt::Final(e) => return Err(Failed::Final(e)),
                Attempt::Retry(last) if n >= self.attempts => {
                    return Err(Failed::GaveUp { last, attempts: n, elapsed: start.elapsed() });
                }
                Attempt::Retry(why) => {
                    let wait = self.delay(n);
                    before_retry(&why, wait);
                    std::thread::sleep(wait);
                }
            }
        }
    }
}

/// A response whose status the request asked for (200, or 206 to a `Range` request).
#[derive(Debug)]
pub struct Response {
    inner: ureq::http::Response<ureq::Body>,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.inner.status().as_u16()
    }

    /// The first header called `name`, when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner.headers().get(name)?.to_str().ok()
    }

    /// `Content-Length`.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.trim().parse().ok()
    }

    /// The total size a `206`'s `Content-Range: bytes A-B/TOTAL` announces.
    pub fn range_total(&self) -> Option<u64> {
        self.header("content-range")?.rsplit_once('/')?.1.trim().parse().ok()
    }

    /// The body.
    pub fn into_reader(self) -> BodyReader<'static> {
        self.inner.into_body().into_reader()
    }

    /// The whole body, refusing more than `limit` bytes.
    pub fn read_to_vec(self, limit: u64) -> Result<Vec<u8>, Error> {
        let mut body = Vec::new();
        self.into_reader().take(limit + 1).read_to_end(&mut body).map_err(Error::Read)?;
        if body.len() as u64 > limit {
            return Err(Error::TooLarge(limit));
        }
        Ok(body)
    }
}

/// A `GET` being built: see [`Client::get`].
pub struct Get<'a> {
    client: &'a Client,
    url: String,
    headers: Vec<(String, String)>,
    from: u64,
    timeout: Option<Duration>,
}

impl Get<'_> {
    /// Sends the header `name: value` too (a metadata service's `Metadata-Flavor`, a token).
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Asks for the bytes from `from` on (`Range: bytes=from-`); a 206 is then accepted too.
    #[must_use]
    pub fn range_from(mut self, from: u64) -> Self {
        self.from = from;
        self
    }

    /// The whole request, body included, must be done within `timeout`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// One attempt: the response when its status is the one asked for (200, or 206 for a range).
    pub fn send(self) -> Result<Response, Error> {
        let mut req = self.client.agent.get(&self.url);
        if let Some(t) = self.timeout {
            req = req.config().timeout_global(Some(t)).build();
        }
        if self.from > 0 {
            req = req.header("Range", format!("bytes={}-", self.from));
        }
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        let inner = req.call().map_err(classify)?;
        match inner.status().as_u16() {
            200 => Ok(Response { inner }),
            206 if self.from > 0 => Ok(Response { inner }),
            other => Err(Error::Status(other)),
        }
    }
}

/// A `PUT` or `POST` being built: see [`Client::put`] and [`Client::post`].
pub struct Upload<'a> {
    client: &'a Client,
    post: bool,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<(String, Vec<u8>)>,
    timeout: Option<Duration>,
}

impl Upload<'_> {
    /// Sends the header `name: value` too.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sends `body` as `content_type`; without it the request has an empty body.
    #[must_use]
    pub fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some((content_type.to_string(), body.into()));
        self
    }

    /// The whole request, body included, must be done within `timeout`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// One attempt: the response when its status is 200 (or 201), else [`Error::Status`].
    pub fn send(self) -> Result<Response, Error> {
        let agent = &self.client.agent;
        let mut req = if self.post { agent.post(&self.url) } else { agent.put(&self.url) };
        if let Some(t) = self.timeout {
            req = req.config().timeout_global(Some(t)).build();
        }
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        let sent = match self.body {
            Some((content_type, body)) => req.content_type(content_type).send(&body[..]),
            None => req.send_empty(),
        };
        let inner = sent.map_err(classify)?;
        match inner.status().as_u16() {
            200 | 201 => Ok(Response { inner }),
            other => Err(Error::Status(other)),
        }
    }
}

/// A request of any method whose answer is read whatever its status: for APIs that say why in
/// the body (a cloud's XML or JSON error), so that the caller can name the cause. See
/// [`Client::call`].
pub struct Call<'a> {
    client: &'a Client,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    /// A streamed body and its length (see [`Call::body_reader`]).
    reader: Option<(Box<dyn Read + Send + 'a>, u64)>,
    timeout: Option<Duration>,
    limit: u64,
}

impl<'a> Call<'a> {
    /// Sends the header `name: value` too.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sends `body` (its `Content-Length` is set; a `Content-Type` is a [`Call::header`]).
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Streams `len` bytes from `reader` as the body (a large file, never held in memory), sent
    /// with `Content-Length: len` (object stores refuse chunked uploads). Replaces [`Call::body`].
    #[must_use]
    pub fn body_reader(mut self, reader: impl Read + Send + 'a, len: u64) -> Self {
        self.reader = Some((Box::new(reader), len));
        self.body = None;
        self
    }

    /// The whole request, answer included, must be done within `timeout`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Reads at most `limit` bytes of the answer (16 MiB unless told).
    #[must_use]
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    /// One attempt: the answer, whatever its status. Only no answer at all (or one cut short,
    /// or too long) is an [`Error`].
    pub fn send(self) -> Result<Reply, Error> {
        let mut builder = ureq::http::Request::builder().method(self.method.as_str()).uri(self.url.as_str());
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let agent = &self.client.agent;
        let inner = match self.reader {
            Some((mut reader, len)) => {
                builder = builder.header("content-length", len.to_string());
                run(agent, builder, ureq::SendBody::from_reader(&mut *reader), self.timeout)?
            }
            None => run(agent, builder, self.body.unwrap_or_default(), self.timeout)?,
        };
        let status = inner.status().as_u16();
        let headers = inner
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = Response { inner }.read_to_vec(self.limit)?;
        Ok(Reply { status, headers, body })
    }
}

/// Sends one request of `builder` with `body` (a [`Call`]'s, in memory or streamed).
fn run(
    agent: &ureq::Agent,
    builder: ureq::http::request::Builder,
    body: impl ureq::AsSendBody,
    timeout: Option<Duration>,
) -> Result<ureq::http::Response<ureq::Body>, Error> {
    let req = builder.body(body).map_err(|e| Error::Request(ureq::Error::Http(e)))?;
    let req = match timeout {
        Some(t) => agent.configure_request(req).timeout_global(Some(t)).build(),
        None => req,
    };
    agent.run(req).map_err(classify)
}

/// A whole answer to a [`Call`].
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// Whether the status is a 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn classify(e: ureq::Error) -> Error {
    match e {
        ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::InvalidProxyUrl | ureq::Error::RedirectFailed => {
            Error::Request(e)
        }
        // A certificate this client does not trust (unknown issuer, wrong name, expired) will
        // not be trusted on the next attempt either.
        e if refused_certificate(&e) => Error::Request(e),
        e => Error::Connection(e),
    }
}

/// Whether rustls refused the server's certificate (as itself, or inside an I/O error).
fn refused_certificate(e: &ureq::Error) -> bool {
    let tls = match e {
        ureq::Error::Rustls(t) => Some(t),
        ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    matches!(tls, Some(rustls::Error::InvalidCertificate(_)))
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    user_agent: String,
    retry: Retry,
    base: Option<String>,
    proxy_from_env: bool,
    follow_redirects: bool,
    tls: Tls,
}

impl ClientBuilder {
    /// Trusts and presents what `tls` says instead of the public roots alone (a private CA, a
    /// client certificate).
    #[must_use]
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    /// The policy [`Client::retry`] hands to the client's callers.
    #[must_use]
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Sends every request to `base` (e.g. `http://127.0.0.1:PORT`) instead of the scheme and
    /// host its URL names, keeping the path and query. For tests of clients whose URLs are
    /// fixed (a metadata service's address); never in a program.
    #[cfg(feature = "test-base-url")]
    #[must_use]
    pub fn test_base_url(mut self, base: &str) -> Self {
        self.base = Some(base.trim_end_matches('/').to_string());
        self
    }

    /// Ignores any proxy the environment names: every request goes straight to its host. For a
    /// machine's own metadata services (AWS, GCE, Azure IMDS, Azure's WireServer), which answer
    /// only the instance itself (Azure documents that IMDS must bypass proxies), and whose
    /// tokens and user data no proxy may see.
    #[must_use]
    pub fn no_proxy(mut self) -> Self {
        self.proxy_from_env = false;
        self
    }

    /// Hands every 3xx answer to the caller instead of following it: for APIs whose 3xx is no
    /// redirect (GCS's resumable upload answers `308 Resume Incomplete` without a `Location`,
    /// which a redirect-following client turns into an error).
    #[must_use]
    pub fn no_redirects(mut self) -> Self {
        self.follow_redirects = false;
        self
    }

    pub fn build(self) -> Client {
        let mut config = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT))
            .http_status_as_error(false)
            .user_agent(self.user_agent.as_str());
        // ureq's default configuration has read the environment's proxy (`Proxy::try_from_env`).
        if !self.proxy_from_env {
            config = config.proxy(None);
        }
        if !self.follow_redirects {
            config = config.max_redirects(0);
        }
        if !self.tls.is_default() {
            config = config.tls_config(self.tls.config());
        }
        Client { agent: config.build().into(), retry: self.retry, base: self.base, proxy_from_env: self.proxy_from_env }
    }
}

/// One blocking HTTP client with Berth's settings.
pub struct Client {
    agent: ureq::Agent,
    retry: Retry,
    base: Option<String>,
    proxy_from_env: bool,
}

impl Client {
    /// A client that says `user_agent` (`berth-update/0.1.0`), with [`Retry::new`] until told
    /// otherwise.
    pub fn builder(user_agent: &str) -> ClientBuilder {
        ClientBuilder {
            user_agent: user_agent.to_string(),
            retry: Retry::new(),
            base: None,
            proxy_from_env: true,
            follow_redirects: true,
            tls: Tls::default(),
        }
    }

    /// The client's retry policy.
    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// Whether the client was built with [`ClientBuilder::no_proxy`].
    pub fn ignores_env_proxy(&self) -> bool {
        !self.proxy_from_env
    }

    /// `url` as the request goes out (see [`ClientBuilder::test_base_url`]).
    pub fn resolve(&self, url: &str) -> String {
        let Some(base) = &self.base else { return url.to_string() };
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        format!("{base}{path}")
    }

    /// A `GET` of `url`, sent by [`Get::send`].
    pub fn get(&self, url: &str) -> Get<'_> {
        Get { client: self, url: self.resolve(url), headers: Vec::new(), from: 0, timeout: None }
    }

    /// A `PUT` of `url` (a token request), sent by [`Upload::send`].
    pub fn put(&self, url: &str) -> Upload<'_> {
        Upload { client: self, post: false, url: self.resolve(url), headers: Vec::new(), body: None, timeout: None }
    }

    /// A `POST` of `url` (a health report), sent by [`Upload::send`].
    pub fn post(&self, url: &str) -> Upload<'_> {
        Upload { client: self, post: true, url: self.resolve(url), headers: Vec::new(), body: None, timeout: None }
    }

    /// A `method` request of `url`, sent by [`Call::send`], its answer read whatever the status.
    pub fn call(&self, method: &str, url: &str) -> Call<'_> {
        Call {
            client: self,
            method: method.to_string(),
            url: self.resolve(url),
            headers: Vec::new(),
            body: None,
            reader: None,
            timeout: None,
            limit: 16 << 20,
        }
    }

    /// All of `url` (at most `limit` bytes), retried by the client's policy.
    pub fn get_bytes(&self, url: &str, limit: u64) -> Result<Vec<u8>, Failed<Error>> {
        self.retry.run(
            |_| match self.get(url).send().and_then(|r| r.read_to_vec(limit)) {
                Ok(body) => Attempt::Done(body),
                Err(e) => Attempt::from_error(e, |e| e),
            },
            |_, _| {},
        )
    }

    /// One `POST` of a JSON `body` with `headers`, not retried: the status, whatever it is, and
    /// at most 64 KiB of the answer.
    pub fn post_json(&self, url: &str, headers: &[(&str, &str)], body: &str) -> Result<(u16, String), Error> {
        let mut req = self.agent.post(&self.resolve(url)).content_type("application/json");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let r = req.send(body).map_err(classify)?;
        let status = r.status().as_u16();
        let mut answer = String::new();
        let _ = r.into_body().into_reader().take(64 << 10).read_to_string(&mut answer);
        Ok((status, answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_testkit::{Response as Answer, Server};

    fn client(attempts: u32) -> Client {
        Client::builder("berth-test/1").retry(Retry::new().attempts(attempts).backoff(Duration::from_millis(5))).build()
    }

    #[test]
    fn the_backoff_doubles_up_to_its_maximum() {
        let r = Retry::new().attempts(6).backoff(Duration::from_secs(1)).max_backoff(Duration::from_secs(5));
        let waits: Vec<u64> = (1..=5).map(|n| r.delay(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        assert_eq!(Retry::new().attempts(0).max_attempts(), 1);
        assert_eq!(r.delay(1000), Duration::from_secs(5));
    }

    #[test]
    fn server_errors_are_retried_client_errors_are_final() {
        let server = Server::start(|r| match r.path() {
            "/flaky" if r.index < 2 => Answer::status(503).into(),
            "/flaky" => Answer::ok("fine").into(),
            _ => Answer::status(404).into(),
        })
        .unwrap();
        let http = client(3);
        assert_eq!(http.get_bytes(&format!("{}/flaky", server.url()), 100).unwrap(), b"fine");
        assert_eq!(server.take_requests().len(), 3);
        let e = http.get_bytes(&format!("{}/missing", server.url()), 100).unwrap_err();
        assert!(matches!(e, Failed::Final(Error::Status(404))), "{e:?}");
        assert_eq!(server.take_requests().len(), 1, "a 404 is final");
    }

    #[test]
    fn the_attempts_are_bounded_and_the_last_reason_is_kept() {
        let server = Server::start(|_| Answer::status(500).into()).unwrap();
        let mut heard = Vec::new();
        let http = client(4);
        let e = http
            .retry()
            .run(
                |_| match http.get(&format!("{}/x", server.url())).send() {
                    Ok(_) => Attempt::Done(()),
                    Err(e) => Attempt::<(), Error>::from_error(e, |e| e),
                },
                |why, wait| heard.push((why.to_string(), wait)),
            )
            .unwrap_err();
        let Failed::GaveUp { last, attempts, .. } = e else { panic!("{e:?}") };
        assert_eq!((last.to_string().as_str(), attempts), ("the server answered 500", 4));
        let waits: Vec<u128> = heard.iter().map(|(_, w)| w.as_millis()).collect();
        assert_eq!(waits, [5, 10, 20]);
        assert_eq!(server.requests().len(), 4);
    }

    #[test]
    fn a_connection_refused_is_retryable_and_a_bad_url_is_not() {
        let e = client(1).get(&format!("http://127.0.0.1:{}/x", berth_testkit::dead_port())).send().unwrap_err();
        assert!(matches!(e, Error::Connection(_)) && e.is_retryable(), "{e:?}");
        let e = client(1).get("ftp://127.0.0.1/x").send().unwrap_err();
        assert!(matches!(e, Error::Request(_)) && !e.is_retryable(), "{e:?}");
    }

    #[test]
    fn bodies_over_the_limit_are_refused_and_ranges_asked_for() {
        let server = Server::start(|r| {
            let from = r.range_start() as usize;
            let data = b"0123456789";
            if from > 0 {
                Answer::status(206).header("Content-Range", format!("bytes {from}-9/10")).body(&data[from..]).into()
            } else {
                Answer::ok(&data[..]).into()
            }
        })
        .unwrap();
        let http = client(1);
        let e = http.get_bytes(&format!("{}/f", server.url()), 5).unwrap_err();
        assert!(matches!(e, Failed::Final(Error::TooLarge(5))), "{e:?}");
        let r = http.get(&format!("{}/f", server.url())).range_from(4).send().unwrap();
        assert_eq!((r.status(), r.range_total(), r.content_length()), (206, Some(10), Some(6)));
        assert_eq!(r.read_to_vec(100).unwrap(), b"456789");
        assert_eq!(server.requests()[1].header("range"), Some("bytes=4-"));
        assert_eq!(server.requests()[1].header("user-agent"), Some("berth-test/1"));
    }

    #[test]
    fn post_json_returns_any_status_with_its_answer() {
        let server = Server::start(|r| Answer::json(409, format!("{{\"got\":{}}}", r.body.len())).into()).unwrap();
        let (status, answer) = client(1).post_json(&format!("{}/v1/x", server.url()), &[("a", "b")], "{}").unwrap();
        assert_eq!((status, answer.as_str()), (409, "{\"got\":2}"));
        let seen = server.requests();
        assert_eq!((seen[0].method.as_str(), seen[0].header("a")), ("POST", Some("b")));
    }

    #[test]
    fn headers_bodies_and_methods_go_out_as_asked() {
        let server = Server::start(|r| match (r.method.as_str(), r.path()) {
            ("PUT", "/token") => Answer::ok("t0k").header("X-Seen", r.header("x-ttl").unwrap_or("none")).into(),
            ("POST", "/report") => Answer::ok(r.body.clone()).into(),
            ("GET", "/flavored") if r.header("flavor") == Some("yes") => Answer::ok("ok").into(),
            _ => Answer::status(403).into(),
        })
        .unwrap();
        let http = client(1);
        let r = http.put(&format!("{}/token", server.url())).header("x-ttl", "60").send().unwrap();
        assert_eq!(r.header("x-seen"), Some("60"));
        assert_eq!(r.read_to_vec(10).unwrap(), b"t0k");
        let r = http.post(&format!("{}/report", server.url())).body("text/xml; charset=utf-8", "<a/>").send().unwrap();
        assert_eq!(r.read_to_vec(10).unwrap(), b"<a/>");
        let e = http.get(&format!("{}/flavored", server.url())).send().unwrap_err();
        assert!(matches!(e, Error::Status(403)), "{e:?}");
        let r = http.get(&format!("{}/flavored", server.url())).header("flavor", "yes").send().unwrap();
        assert_eq!(r.read_to_vec(10).unwrap(), b"ok");
        let seen = server.requests();
        assert_eq!((seen[0].method.as_str(), seen[0].body.len()), ("PUT", 0));
        assert_eq!(seen[1].header("content-type"), Some("text/xml; charset=utf-8"));
    }

    #[test]
    fn a_streamed_body_goes_out_with_its_length_not_chunked() {
        let server = Server::start(|r| Answer::ok(r.body.clone()).into()).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let r = client(1)
            .call("PUT", &format!("{}/object", server.url()))
            .body_reader(std::io::Cursor::new(data.clone()), data.len() as u64)
            .send()
            .unwrap();
        assert_eq!((r.status, r.body == data), (200, true));
        let seen = server.requests();
        assert_eq!(seen[0].header("content-length"), Some("300000"));
        assert_eq!(seen[0].header("transfer-encoding"), None);
    }

    /// Set in the child process [`no_proxy_ignores_the_environment_s_proxy`] starts.
    const PROXY_CHILD: &str = "BERTH_HTTP_TEST_PROXY_CHILD";

    /// Every variable ureq reads a proxy from.
    const PROXY_VARS: [&str; 8] =
        ["ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"];

    #[test]
    fn no_proxy_ignores_the_environment_s_proxy() {
        // The environment is the process's: setting it here would race the other tests (and is
        // unsafe in edition 2024), so the checks run in a child process of this test binary
        // whose environment names a proxy: a fake on 127.0.0.1, like the target.
        if std::env::var_os(PROXY_CHILD).is_some() {
            return proxy_child();
        }
        let proxy = Server::start(|_| Answer::status(502).into()).unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut child = std::process::Command::new(exe);
        child.args(["--exact", "tests::no_proxy_ignores_the_environment_s_proxy", "--nocapture", "--test-threads=1"]);
        for var in PROXY_VARS {
            child.env_remove(var);
        }
        let out =
            child.env("HTTP_PROXY", proxy.url()).env("http_proxy", proxy.url()).env(PROXY_CHILD, "1").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("1 passed"), "the child ran the test: {stdout}");
        assert!(stdout.contains("child: the proxy was used by default and not with no_proxy"), "{stdout}");
        // The default client's request went to the proxy, the no_proxy client's did not.
        assert_eq!(proxy.requests().len(), 1, "{:?}", proxy.requests());
    }

    /// In the child: the environment names a proxy on 127.0.0.1 (answering 502).
    fn proxy_child() {
        let target = Server::start(|_| Answer::ok("direct").into()).unwrap();
        let url = format!("{}/latest/meta-data", target.url());

        let default = client(1);
        let from_env = default.agent.config().proxy().expect("ureq reads the environment's proxy");
        assert!(from_env.is_from_env());
        let e = default.get(&url).send().unwrap_err();
        assert!(target.requests().is_empty(), "the default client went through the proxy: {e}");

        assert!(!default.ignores_env_proxy());
        let direct = Client::builder("berth-test/1").no_proxy().build();
        assert!(direct.agent.config().proxy().is_none() && direct.ignores_env_proxy());
        assert_eq!(direct.get(&url).send().unwrap().read_to_vec(100).unwrap(), b"direct");
        let seen = target.requests();
        assert_eq!((seen.len(), seen[0].target.as_str()), (1, "/latest/meta-data"));
        // Per-request settings (the timeout) keep the agent's: still no proxy.
        let r = direct.put(&url).timeout(Duration::from_secs(5)).send().unwrap();
        assert_eq!(r.read_to_vec(100).unwrap(), b"direct");
        assert_eq!(target.requests().len(), 2);
        println!("child: the proxy was used by default and not with no_proxy");
    }

    #[test]
    fn no_proxy_keeps_the_other_settings() {
        let c = Client::builder("t").no_proxy().build();
        assert!(c.agent.config().proxy().is_none() && c.ignores_env_proxy());
        assert_eq!(c.agent.config().timeouts().connect, Some(CONNECT_TIMEOUT), "the other settings stay");
    }

    #[cfg(feature = "test-base-url")]
    #[test]
    fn a_test_base_url_sends_fixed_urls_to_the_loopback_server() {
        let server = Server::start(|r| Answer::ok(r.target.clone()).into()).unwrap();
        let http = Client::builder("t").test_base_url(&format!("{}/", server.url())).build();
        let body = http.get_bytes("http://169.254.169.254/latest/meta-data?x=1", 100).unwrap();
        assert_eq!(body, b"/latest/meta-data?x=1");
        assert_eq!(http.resolve("https://example.invalid"), server.url());
    }
}
