//! Fetching from the release repository: small files (the index and its signatures) read
//! whole, and artifacts streamed through their [`ArtifactCheck`], resumed with `Range` after a
//! dropped connection. Connection errors, timeouts and 5xx answers are retried with a doubling
//! backoff, a bounded number of times; other answers are final. Never more bytes than announced
//! are taken.
//!
//! A server cannot hold a transfer open for ever (TUF's "slow retrieval"): each file has a
//! deadline from its size ([`Pace`]: 10 minutes plus the size at 100 KiB/s, retries included),
//! and a connection that averages less than 1 KiB/s over a minute is dropped and retried.
//!
//! The client, its settings and the retry policy are Berth's one ([`berth_http`]); this module
//! sets the agent's attempts and backoff and adds the deadlines and the resumption. With
//! `tls-ca` in update.toml ([`tls`]) the client trusts that CA instead of the public roots, for
//! every request the agent makes (the fleet server's too: crate::fleet_report uses this client).

use std::io::Read;
use std::time::{Duration, Instant};

use berth_http::{Attempt, BodyReader, Client, Failed, Retry, Tls};
use berth_release::config::UpdateConfig;
use berth_release::{ArtifactCheck, ArtifactError};

/// Attempts per request (the first and the retries).
pub const ATTEMPTS: u32 = 6;
/// Wait before the first retry; doubled after each.
const BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How fast a transfer must go: its whole-file deadline and its minimum average rate.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Every file gets this much, whatever its size.
    pub base: Duration,
    /// Plus its size at this rate (bytes per second).
    pub deadline_rate: u64,
    /// A connection must average at least this (bytes per second) ...
    pub min_rate: u64,
    /// ... over each window of this length.
    pub window: Duration,
}

impl Pace {
    /// Berth's: 10 min + size at 100 KiB/s; at least 1 KiB/s over every minute.
    pub const DEFAULT: Pace = Pace {
        base: Duration::from_secs(600),
        deadline_rate: 100 << 10,
        min_rate: 1 << 10,
        window: Duration::from_secs(60),
    };

    /// How long a file of `size` bytes may take, all attempts together.
    pub fn deadline(&self, size: u64) -> Duration {
        self.base + Duration::from_secs(size / self.deadline_rate.max(1))
    }
}

/// Counts one connection's bytes against [`Pace::min_rate`], one window at a time.
struct RateWindow {
    pace: Pace,
    start: Instant,
    bytes: u64,
}

impl RateWindow {
    fn new(pace: Pace) -> RateWindow {
        RateWindow { pace, start: Instant::now(), bytes: 0 }
    }

    /// Counts `n` more bytes; an error when a window closed below the minimum rate.
    fn count(&mut self, n: usize) -> Result<(), berth_http::Error> {
        self.bytes += n as u64;
        let elapsed = self.start.elapsed();
        if elapsed < self.pace.window {
            return Ok(());
        }
        let need = self.pace.min_rate.saturating_mul(elapsed.as_secs().max(1));
        if self.bytes < need {
            return Err(berth_http::Error::TooSlow {
                bytes: self.bytes,
                secs: elapsed.as_secs(),
                min_rate: self.pace.min_rate,
            });
        }
        (self.start, self.bytes) = (Instant::now(), 0);
        Ok(())
    }
}

/// One blocking client.
pub struct Http {
    client: Client,
    pace: Pace,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Retried and still failing.
    #[error("GET {url}: {last} (gave up after {attempts} attempts over {secs} s)")]
    GaveUp {
        /// The URL.
        url: String,
        /// The last failure.
        last: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        secs: u64,
    },
    /// An answer that retrying will not change.
    #[error("GET {url}: {why}")]
    Final {
        /// The URL.
        url: String,
        /// The answer.
        why: String,
    },
    /// The bytes are not the ones announced.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The file's deadline passed (retries included).
    #[error(
        "GET {url}: not done within {secs} s (the deadline for {size} bytes: {base} s plus the size at {rate} bytes/s; \
         {received} bytes received)"
    )]
    Deadline {
        /// The URL.
        url: String,
        /// The deadline, seconds.
        secs: u64,
        /// The file's size (or the most it may have).
        size: u64,
        /// The deadline's fixed part, seconds.
        base: u64,
        /// The deadline's rate, bytes per second.
        rate: u64,
        /// Bytes received by then.
        received: u64,
    },
}

/// What the agent trusts over TLS: the CA file of `tls-ca` instead of the public roots, or the
/// public roots without it. A missing file or one without a certificate is an error naming the
/// key and the file: the agent must not fall back to the public roots when told otherwise.
pub fn tls(config: &UpdateConfig) -> Result<Tls, String> {
    match &config.tls_ca {
        None => Ok(Tls::default()),
        Some(ca) => Tls::default().with_ca_file(ca).map_err(|e| format!("update.toml tls-ca: {e}")),
    }
}

impl Http {
    /// A client with Berth's timeouts and the agent's retry policy, trusting what `tls` says.
    pub fn new(tls: Tls) -> Http {
        Http::with_retry(Retry::new().attempts(ATTEMPTS).backoff(BACKOFF).max_backoff(MAX_BACKOFF), tls)
    }

    fn with_retry(retry: Retry, tls: Tls) -> Http {
        let client = Client::builder(concat!("berth-update/", env!("CARGO_PKG_VERSION"))).retry(retry).tls(tls).build();
        Http { client, pace: Pace::DEFAULT }
    }

    /// The same client with another retry policy (tests).
    #[cfg(test)]
    pub fn with_retries(attempts: u32, backoff: Duration) -> Http {
        Http::with_retries_tls(attempts, backoff, Tls::default())
    }

    /// [`Http::with_retries`] trusting what `tls` says (tests).
    #[cfg(test)]
    pub fn with_retries_tls(attempts: u32, backoff: Duration, tls: Tls) -> Http {
        Http::with_retry(Retry::new().attempts(attempts).backoff(backoff).max_backoff(MAX_BACKOFF), tls)
    }

    /// The underlying client (one request of any method: the fleet server's reports).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The same client with another pace (tests).
    #[cfg(test)]
    pub fn with_pace(mut self, pace: Pace) -> Http {
        self.pace = pace;
        self
    }

    /// The deadline error for `url` of `size` bytes.
    fn deadline_error(&self, url: &str, size: u64, received: u64) -> FetchError {
        FetchError::Deadline {
            url: url.to_string(),
            secs: self.pace.deadline(size).as_secs(),
            size,
            base: self.pace.base.as_secs(),
            rate: self.pace.deadline_rate,
            received,
        }
    }

    /// Runs `attempt` (given the time left before `deadline`) until it is done or final,
    /// backing off between retries; `on_deadline` is the error once the deadline passed.
    fn retrying<T>(
        &self,
        url: &str,
        deadline: Instant,
        on_deadline: impl Fn() -> FetchError,
        mut attempt: impl FnMut(Duration) -> Attempt<T, FetchError>,
    ) -> Result<T, FetchError> {
        let outcome = self.client.retry().run(
            |_| {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() { Attempt::Final(on_deadline()) } else { attempt(left) }
            },
            |why, wait| println!("GET {url}: {why}; retrying in {} s", wait.as_secs()),
        );
        outcome.map_err(|f| match f {
            Failed::Final(e) => e,
            Failed::GaveUp { last, attempts, elapsed } => {
                FetchError::GaveUp { url: url.to_string(), last: last.to_string(), attempts, secs: elapsed.as_secs() }
            }
        })
    }

    /// One request that must be done (body read too) within `left`: the response, or whether
    /// to retry.
    fn open(&self, url: &str, from: u64, left: Duration) -> Attempt<berth_http::Response, FetchError> {
        match self.client.get(url).range_from(from).timeout(left).send() {
            Ok(r) => Attempt::Done(r),
            Err(e) => Attempt::from_error(e, |e| FetchError::Final { url: url.to_string(), why: e.to_string() }),
        }
    }

    /// Reads all of `url`, refusing more than `limit` bytes, within the deadline of `limit`
    /// bytes.
    pub fn get_small(&self, url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
        let deadline = Instant::now() + self.pace.deadline(limit);
        let received = std::cell::Cell::new(0u64);
        self.retrying(
            url,
            deadline,
            || self.deadline_error(url, limit, received.get()),
            |left| {
                let r = match self.open(url, 0, left) {
                    Attempt::Done(r) => r,
                    Attempt::Retry(w) => return Attempt::Retry(w),
                    Attempt::Final(e) => return Attempt::Final(e),
                };
                let mut body = Vec::new();
                let mut reader = r.into_reader().take(limit + 1);
                let mut window = RateWindow::new(self.pace);
                let mut buf = [0u8; 8192];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            body.extend_from_slice(&buf[..n]);
                            received.set(body.len() as u64);
                            if let Err(why) = window.count(n) {
                                return Attempt::Retry(why);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Attempt::Retry(berth_http::Error::Read(e)),
                    }
                }
                if body.len() as u64 > limit {
                    let why = berth_http::Error::TooLarge(limit).to_string();
                    return Attempt::Final(FetchError::Final { url: url.to_string(), why });
                }
                Attempt::Done(body)
            },
        )
    }

    /// One `POST` of a JSON `body` with `headers`, not retried (the caller asks again at its next
    /// turn): the status and at most 64 KiB of the answer, or why there is none.
    pub fn post_json(&self, url: &str, headers: &[(&str, &str)], body: &str) -> Result<(u16, String), String> {
        self.client.post_json(url, headers, body).map_err(|e| format!("POST {url}: {e}"))
    }

    /// A reader of the artifact at `url` whose every byte passes through `check`; the caller
    /// calls [`ArtifactReader::finish`] at the end.
    pub fn artifact(&self, url: &str, check: ArtifactCheck) -> ArtifactReader<'_> {
        let started = Instant::now();
        let deadline = started + self.pace.deadline(check.size());
        ArtifactReader {
            http: self,
            url: url.to_string(),
            check,
            body: None,
            failures: 0,
            started,
            deadline,
            window: RateWindow::new(self.pace),
        }
    }
}

/// An artifact's bytes, resumed across connections; see [`Http::artifact`].
pub struct ArtifactReader<'a> {
    http: &'a Http,
    url: String,
    check: ArtifactCheck,
    body: Option<BodyReader<'static>>,
    failures: u32,
    started: Instant,
    /// When the whole file must be in, retries included.
    deadline: Instant,
    /// The current connection's rate.
    window: RateWindow,
}

impl ArtifactReader<'_> {
    /// Connects (again) from the first byte not yet received.
    fn connect(&mut self) -> Result<(), FetchError> {
        let from = self.check.received();
        let size = self.check.size();
        let url = self.url.clone();
        let http = self.http;
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(http.deadline_error(&url, size, from));
            }
            let why = match http.open(&url, from, left) {
                Attempt::Done(r) => {
                    let partial = r.status() == 206;
                    let total = if partial { r.range_total() } else { r.content_length() };
                    if total.is_some_and(|t| t > size) {
                        return Err(self.check.too_long().into());
                    }
                    let mut body = r.into_reader();
                    if from > 0 && !partial {
                        // The server ignored Range: skip what was received before.
                        let skipped = std::io::copy(&mut (&mut body).take(from), &mut std::io::sink());
                        if !matches!(skipped, Ok(n) if n == from) {
                            self.failed(format!("connection dropped while skipping to byte {from}"))?;
                            continue;
                        }
                    }
                    self.body = Some(body);
                    self.window = RateWindow::new(http.pace);
                    return Ok(());
                }
                Attempt::Retry(why) => why.to_string(),
                Attempt::Final(e) => return Err(e),
            };
            self.failed(why)?;
        }
    }

    /// Counts a failed attempt; sleeps before the next, or gives up.
    fn failed(&mut self, why: String) -> Result<(), FetchError> {
        self.failures += 1;
        self.body = None;
        if Instant::now() >= self.deadline {
            return Err(self.http.deadline_error(&self.url, self.check.size(), self.check.received()));
        }
        let retry = self.http.client.retry();
        if self.failures >= retry.max_attempts() {
            return Err(FetchError::GaveUp {
                url: self.url.clone(),
                last: why,
                attempts: self.failures,
                secs: self.started.elapsed().as_secs(),
            });
        }
        let wait = retry.delay(self.failures);
        println!("GET {}: {why}; resuming from byte {} in {} s", self.url, self.check.received(), wait.as_secs());
        std::thread::sleep(wait);
        Ok(())
    }

    /// Reads the next bytes, at most the announced remainder.
    pub fn next(&mut self, buf: &mut [u8]) -> Result<usize, FetchError> {
        loop {
            let remaining = self.check.remaining();
            if self.body.is_none() {
                if remaining == 0 {
                    return Ok(0);
                }
                self.connect()?;
            }
            let Some(body) = self.body.as_mut() else { continue };
            if remaining == 0 {
                // At the announced end: the server must have nothing more.
                let mut one = [0u8; 1];
                return match body.read(&mut one) {
                    Ok(0) => {
                        self.body = None;
                        Ok(0)
                    }
                    Ok(_) => Err(self.check.too_long().into()),
                    // A connection dropped right at the end has told us nothing more.
                    Err(_) => {
                        self.body = None;
                        Ok(0)
                    }
                };
            }
            let want = buf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
            match body.read(&mut buf[..want]) {
                Ok(0) => {
                    let why =
                        format!("connection closed after {} of {} bytes", self.check.received(), self.check.size());
                    self.failed(why)?;
                }
                Ok(n) => {
                    self.check.feed(&buf[..n])?;
                    if let Err(why) = self.window.count(n) {
                        // These bytes are good; the next read reconnects from after them.
                        self.failed(format!("{why} after {} of {} bytes", self.check.received(), self.check.size()))?;
                    }
                    return Ok(n);
                }
                Err(e) => {
                    let why = format!(
                        "connection dropped after {} of {} bytes: {e}",
                        self.check.received(),
                        self.check.size()
                    );
                    self.failed(why)?;
                }
            }
        }
    }

    /// Reads to the announced end (draining what a failed consumer left) and checks size and
    /// hash.
    pub fn finish(mut self) -> Result<(), FetchError> {
        let mut buf = vec![0u8; 1 << 16];
        while self.next(&mut buf)? > 0 {}
        self.check.finish().map_err(FetchError::from)
    }

    /// Everything of the artifact, checked (for the kernel files).
    pub fn read_all(mut self) -> Result<Vec<u8>, FetchError> {
        let mut out = Vec::with_capacity(usize::try_from(self.check.size()).unwrap_or(0).min(256 << 20));
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.next(&mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        self.check.finish()?;
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use berth_testkit::{Reply, Response, Server};
    use std::io::Write;

    /// A loopback server that answers each connection with `answer(connection number,
    /// range start)` and closes.
    fn serve(answer: impl Fn(usize, u64) -> Vec<u8> + Send + Sync + 'static) -> Server {
        Server::start(move |r| Reply::Raw(answer(r.index, r.range_start()))).unwrap()
    }

    fn response(status: u16, body: &[u8], range: Option<(u64, u64)>, announce: Option<u64>) -> Vec<u8> {
        let mut r = Response::status(status).body(body);
        if let Some(length) = announce {
            r = r.announce(length);
        }
        if let Some((from, total)) = range {
            r = r.header("Content-Range", format!("bytes {from}-{}/{total}", total - 1));
        }
        r.to_bytes()
    }

    fn data() -> Vec<u8> {
        (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn dropped_connections_are_resumed_with_range() {
        let d = data();
        let body = d.clone();
        // Every answer stops after 100 000 bytes while announcing the rest.
        let server = serve(move |_, from| {
            let rest = &body[from as usize..];
            let cut = rest.len().min(100_000);
            let status = if from > 0 { 206 } else { 200 };
            let range = (from > 0).then_some((from, body.len() as u64));
            response(status, &rest[..cut], range, Some(rest.len() as u64))
        });
        let url = server.url();
        let http = Http::with_retries(5, Duration::from_millis(10));
        let check = ArtifactCheck::new("x", d.len() as u64, berth_release::artifact::sha256(&d));
        let got = http.artifact(&format!("{url}/x"), check).read_all().unwrap();
        assert_eq!(got, d);
        let seen = server.requests();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!((seen[1].range_start(), seen[2].range_start()), (100_000, 200_000), "{seen:?}");
    }

    #[test]
    fn more_bytes_than_announced_are_refused() {
        let d = data();
        let body = d.clone();
        let server = serve(move |_, _| {
            let mut longer = body.clone();
            longer.extend_from_slice(&[0; 10]);
            response(200, &longer, None, None)
        });
        let url = server.url();
        let http = Http::with_retries(2, Duration::from_millis(10));
        let check = ArtifactCheck::new("x", d.len() as u64, berth_release::artifact::sha256(&d));
        let e = http.artifact(&format!("{url}/x"), check).read_all().unwrap_err();
        assert!(e.to_string().contains("more than the 300000 bytes"), "{e}");
        // Without a Content-Length the extra byte is noticed at the end.
        let body = d.clone();
        let server = serve(move |_, _| {
            let mut v = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
            v.extend_from_slice(&body);
            v.push(1);
            v
        });
        let url = server.url();
        let check = ArtifactCheck::new("x", d.len() as u64, berth_release::artifact::sha256(&d));
        let e = http.artifact(&format!("{url}/x"), check).read_all().unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
    }

    #[test]
    fn server_errors_are_retried_then_reported() {
        let server = serve(|_, _| response(500, b"no", None, None));
        let http = Http::with_retries(3, Duration::from_millis(10));
        let e = http.get_small(&format!("{}/channels/s.json", server.url()), 1000).unwrap_err().to_string();
        assert!(e.contains("500") && e.contains("3 attempts"), "{e}");
        assert_eq!(server.requests().len(), 3);
        let server = serve(|_, _| response(404, b"no", None, None));
        let e = http.get_small(&format!("{}/x", server.url()), 1000).unwrap_err().to_string();
        assert!(e.contains("404"), "{e}");
        assert_eq!(server.requests().len(), 1, "a 404 is final");
    }

    /// A loopback server that announces `size` bytes and then sends `chunk` bytes every
    /// `every`, until the client goes away.
    fn trickle(size: usize, chunk: usize, every: Duration) -> Server {
        Server::start(move |_| {
            Reply::stream(move |c| {
                let head = Response::status(200).announce(size as u64).head();
                if c.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let mut sent = 0;
                while sent < size && c.write_all(&vec![7u8; chunk.min(size - sent)]).is_ok() {
                    sent += chunk;
                    std::thread::sleep(every);
                }
            })
        })
        .unwrap()
    }

    /// Runs `f` on a thread; fails the test if it takes longer than `limit`.
    fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit).unwrap_or_else(|_| panic!("still fetching after {limit:?}: no deadline"))
    }

    /// A server that keeps sending, but too slowly to finish, is given up on at the file's
    /// deadline: the artifact and the index alike.
    #[test]
    fn m3_a_trickling_server_is_given_up_on_at_the_files_deadline() {
        // 20 bytes every 50 ms (400 B/s) is above the minimum rate, so only the deadline ends it.
        let server = trickle(300_000, 20, Duration::from_millis(50));
        let url = server.url();
        let pace = Pace {
            base: Duration::from_secs(1),
            deadline_rate: 1 << 30,
            min_rate: 10,
            window: Duration::from_secs(60),
        };
        let started = Instant::now();
        let u = url.clone();
        let e = within(Duration::from_secs(20), move || {
            let http = Http::with_retries(6, Duration::from_millis(10)).with_pace(pace);
            let check = ArtifactCheck::new("x", 300_000, berth_release::artifact::sha256(&[7u8; 300_000]));
            http.artifact(&format!("{u}/x"), check).read_all().unwrap_err()
        });
        assert!(matches!(e, FetchError::Deadline { .. }), "{e}");
        assert!(e.to_string().contains("not done within 1 s"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        let e = within(Duration::from_secs(20), move || {
            let http = Http::with_retries(6, Duration::from_millis(10)).with_pace(pace);
            http.get_small(&format!("{url}/channels/stable.json"), 1 << 20).unwrap_err()
        });
        assert!(matches!(e, FetchError::Deadline { .. }), "{e}");
    }

    /// A connection below the minimum average rate over a window is dropped and retried (and
    /// the retries are bounded), rather than kept for as long as each read returns something.
    #[test]
    fn m3_a_connection_below_the_minimum_rate_is_dropped_and_retried() {
        // 1 byte every 20 ms: 50 B/s, below the 1000 B/s asked for over 300 ms windows.
        let server = trickle(300_000, 1, Duration::from_millis(20));
        let url = server.url();
        let pace = Pace {
            base: Duration::from_secs(60),
            deadline_rate: 1 << 30,
            min_rate: 1000,
            window: Duration::from_millis(300),
        };
        let u = url.clone();
        let e = within(Duration::from_secs(20), move || {
            let http = Http::with_retries(3, Duration::from_millis(10)).with_pace(pace);
            let check = ArtifactCheck::new("x", 300_000, berth_release::artifact::sha256(&[7u8; 300_000]));
            http.artifact(&format!("{u}/x"), check).read_all().unwrap_err()
        });
        let text = e.to_string();
        assert!(matches!(e, FetchError::GaveUp { attempts: 3, .. }) && text.contains("too slow"), "{text}");
        let e = within(Duration::from_secs(20), move || {
            let http = Http::with_retries(2, Duration::from_millis(10)).with_pace(pace);
            http.get_small(&format!("{url}/channels/stable.json"), 1 << 20).unwrap_err()
        });
        assert!(e.to_string().contains("too slow"), "{e}");
    }

    /// The staging pipeline end to end: zstd over HTTP into a file; a flipped byte in the
    /// compressed stream is reported as the SHA-256 mismatch it is.
    #[test]
    fn the_pipeline_writes_the_image_and_reports_a_flipped_byte_as_a_hash_mismatch() {
        let image: Vec<u8> =
            (0..6_000_000u32).map(|i| if i % 3_000_000 < 1_000_000 { 0 } else { (i % 251) as u8 }).collect();
        let packed = crate::pipeline::frames(&image, 3);
        for flip in [false, true] {
            let mut body = packed.clone();
            if flip {
                let mid = body.len() / 2;
                body[mid] ^= 1;
            }
            let served = body.clone();
            let server = serve(move |_, _| response(200, &served, None, None));
            let url = server.url();
            let http = Http::with_retries(2, Duration::from_millis(10));
            let check =
                ArtifactCheck::new("root.img.zst", packed.len() as u64, berth_release::artifact::sha256(&packed));
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("slot");
            let dev = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
            let mut calls = 0;
            let r = crate::pipeline::stream(
                http.artifact(&format!("{url}/root.img.zst"), check),
                "root.img.zst",
                image.len() as u64,
                &dev,
                &path,
                &mut |_, _| calls += 1,
            );
            if flip {
                let e = r.err().map(|e| format!("{e:#}")).unwrap_or_default();
                assert!(e.contains("SHA-256"), "{e}");
            } else {
                let f = r.unwrap();
                assert_eq!(f.written, image.len() as u64);
                assert_eq!(std::fs::read(&path).unwrap(), image);
                assert!(calls >= 2);
            }
        }
    }

    /// A real TLS server (`openssl s_server`) on a free loopback port, with a certificate for
    /// 127.0.0.1; stopped (killed) when dropped. What it prints (a client's request, in the
    /// plain mode) is kept.
    pub(crate) struct TlsServer {
        child: std::process::Child,
        pub(crate) port: u16,
        out: std::sync::Arc<std::sync::Mutex<String>>,
        /// Held open: at its end s_server would close the connection, perhaps before it
        /// printed the request.
        _stdin: Option<std::process::ChildStdin>,
    }

    impl TlsServer {
        /// Whether s_server prints `needle` within 10 s (it prints a request as it reads it,
        /// perhaps after the client had its answer).
        pub(crate) fn printed(&self, needle: &str) -> bool {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if self.out.lock().unwrap().contains(needle) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        }

        /// What s_server printed so far.
        pub(crate) fn output(&self) -> String {
            self.out.lock().unwrap().clone()
        }
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub(crate) fn openssl(dir: &std::path::Path, args: &[&str]) {
        let out = std::process::Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A private CA (ca.pem) and a server certificate it signed for IP 127.0.0.1 (server.pem,
    /// server.key), made by openssl in `dir`.
    pub(crate) fn private_ca(dir: &std::path::Path) {
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(["-subj", "/CN=Berth test CA", "-days", "1", "-keyout", "ca.key", "-out", "ca.pem"]);
        openssl(dir, &ca);
        let mut csr = vec!["req", "-new"];
        csr.extend(ec);
        csr.extend(["-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr"]);
        openssl(dir, &csr);
        std::fs::write(dir.join("san.ext"), "subjectAltName = IP:127.0.0.1\n").unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "san.ext",
                "-out",
                "server.pem",
            ],
        );
    }

    /// Starts s_server in `root` with `certs`' server certificate: with `answer` None in `-WWW`
    /// mode (files of `root` for `GET`s), else sending `answer` (a whole HTTP response) to its
    /// first client and printing what the client sent. Ready once it says `ACCEPT`.
    pub(crate) fn s_server(root: &std::path::Path, certs: &std::path::Path, answer: Option<&[u8]>) -> TlsServer {
        use std::io::BufRead;
        let (cert, key) = (certs.join("server.pem"), certs.join("server.key"));
        for _ in 0..5 {
            let port = berth_testkit::dead_port();
            let mut cmd = std::process::Command::new("openssl");
            cmd.current_dir(root)
                .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
                .args(["-cert".as_ref(), cert.as_os_str(), "-key".as_ref(), key.as_os_str()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null());
            match answer {
                None => cmd.arg("-WWW").stdin(std::process::Stdio::null()),
                Some(_) => cmd.stdin(std::process::Stdio::piped()),
            };
            let mut child = cmd.spawn().expect("openssl s_server starts");
            let mut stdin = child.stdin.take();
            if let (Some(pipe), Some(a)) = (stdin.as_mut(), answer) {
                pipe.write_all(a).unwrap();
            }
            let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
            let (ready_tx, ready) = std::sync::mpsc::channel();
            let (stdout, sink) = (child.stdout.take().unwrap(), out.clone());
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line == "ACCEPT" {
                        let _ = ready_tx.send(());
                    }
                    let mut o = sink.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
            // No ACCEPT: the port was taken meanwhile (s_server exits); another one.
            if ready.recv_timeout(Duration::from_secs(20)).is_ok() {
                return TlsServer { child, port, out, _stdin: stdin };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("openssl s_server did not start");
    }

    fn config(text: &str) -> UpdateConfig {
        UpdateConfig::from_texts(&[("/etc/berth/update.toml".into(), text.to_string())]).unwrap()
    }

    /// With `tls-ca` the agent reads from a server of a private CA; without it the same request
    /// fails on the certificate (the public roots do not know the CA), and an artifact is
    /// streamed and checked through the same client.
    #[test]
    fn tls_ca_is_trusted_instead_of_the_public_roots() {
        let certs = tempfile::tempdir().unwrap();
        private_ca(certs.path());
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("channels")).unwrap();
        let index = b"{\"the\": \"index\"}\n".repeat(100);
        std::fs::write(root.path().join("channels/stable.json"), &index).unwrap();
        let server = s_server(root.path(), certs.path(), None);
        let url = format!("https://127.0.0.1:{}/channels/stable.json", server.port);

        let ca = certs.path().join("ca.pem");
        let with = config(&format!("tls-ca = {:?}\n", ca.to_str().unwrap()));
        let http = Http::with_retries_tls(2, Duration::from_millis(10), tls(&with).unwrap());
        assert_eq!(http.get_small(&url, 1 << 20).unwrap(), index);
        let check = ArtifactCheck::new("stable.json", index.len() as u64, berth_release::artifact::sha256(&index));
        assert_eq!(http.artifact(&url, check).read_all().unwrap(), index);

        // The fleet server's FleetLock request goes through the same client.
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
        let fleet_server = s_server(root.path(), certs.path(), Some(answer));
        let fleet = berth_release::config::FleetLock {
            url: format!("https://127.0.0.1:{}", fleet_server.port),
            group: "workers".into(),
            token_file: None,
            report: true,
        };
        crate::fleetlock::Client::new(&http, &fleet, "m").pre_reboot().unwrap();
        assert!(fleet_server.printed("POST /v1/pre-reboot HTTP/1.1"), "{}", fleet_server.output());

        // The default: public roots only. A refused certificate is final: not asked again.
        let without = config("");
        let http = Http::with_retries_tls(2, Duration::from_millis(10), tls(&without).unwrap());
        let e = http.get_small(&url, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("invalid peer certificate: UnknownIssuer") && !e.contains("gave up after"), "{e}");
        assert!(e.starts_with(&format!("GET {url}: ")), "{e}");

        // Another CA's certificate in tls-ca: refused too (not the public roots' fallback).
        let other = tempfile::tempdir().unwrap();
        private_ca(other.path());
        let http = Http::with_retries_tls(
            1,
            Duration::from_millis(10),
            Tls::default().with_ca_file(&other.path().join("ca.pem")).unwrap(),
        );
        let e = http.get_small(&url, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("UnknownIssuer") || e.contains("BadSignature"), "{e}");
    }

    /// A `tls-ca` file that is missing or holds no certificate stops the agent with an error
    /// naming the key and the file.
    #[test]
    fn a_missing_or_empty_tls_ca_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("ca.pem");
        let e = tls(&config(&format!("tls-ca = {:?}", absent.to_str().unwrap()))).unwrap_err();
        assert!(
            e.starts_with(&format!("update.toml tls-ca: {}: ", absent.display())) && e.contains("No such file"),
            "{e}"
        );
        std::fs::write(&absent, "").unwrap();
        let e = tls(&config(&format!("tls-ca = {:?}", absent.to_str().unwrap()))).unwrap_err();
        assert!(
            e.starts_with(&format!("update.toml tls-ca: {}: ", absent.display())) && e.contains("no PEM block"),
            "{e}"
        );
        openssl(dir.path(), &["genpkey", "-algorithm", "ed25519", "-out", "ca.pem"]);
        let e = tls(&config(&format!("tls-ca = {:?}", absent.to_str().unwrap()))).unwrap_err();
        assert!(e.contains("no CERTIFICATE block"), "{e}");
        assert!(tls(&config("")).unwrap().is_default());
    }
}
