//! What the metadata tests share: a client whose fixed URLs go to a loopback fake, a fast retry
//! policy, a server that accepts and never answers, and a log the test can read.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_http::{Client, Retry};

/// A client sending every request to `base` (a fake on 127.0.0.1), never through a proxy the
/// environment names (as [`berth_metadata::provider::client`]).
pub fn client(base: &str) -> Client {
    Client::builder("berth-metadata-test").test_base_url(base).no_proxy().build()
}

/// Afterburn's policy shape (doubling, capped) with short waits: 4 attempts, 10, 20, 40 ms.
pub fn fast_retry() -> Retry {
    Retry::new().attempts(4).backoff(Duration::from_millis(10)).max_backoff(Duration::from_millis(40))
}

pub fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// The lines a provider logged.
#[derive(Clone, Default)]
pub struct Lines(pub Arc<Mutex<Vec<String>>>);

impl Lines {
    pub fn sink(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let lines = self.0.clone();
        move |l: &str| lines.lock().unwrap().push(l.to_string())
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A server on 127.0.0.1 that accepts every connection and never answers (nor closes), as a
/// metadata service that hangs; it lives as long as the test process.
pub fn silent_server() -> String {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    url
}

/// A query parameter of a request target.
pub fn query<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    target.split_once('?')?.1.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// Answers `status` for the first `times` requests to a path, then the real answer.
#[derive(Default)]
pub struct Faults(Mutex<Vec<(String, u16, usize)>>);

impl Faults {
    pub fn set(&self, path: &str, status: u16, times: usize) {
        self.0.lock().unwrap().push((path.to_string(), status, times));
    }

    /// The status to answer instead, counting one use.
    pub fn take(&self, path: &str) -> Option<u16> {
        let mut faults = self.0.lock().unwrap();
        let f = faults.iter_mut().find(|(p, _, n)| p == path && *n > 0)?;
        f.2 -= 1;
        Some(f.1)
    }
}
