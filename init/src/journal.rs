//! TEMPORARY stub (replaced by the journal branch): same API, console only.
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::control::LogLine;

pub struct Journal {
    echo: bool,
}

impl Journal {
    pub fn new(_ring_bytes: usize) -> Journal {
        Journal { echo: true }
    }
    pub fn persist_to(&mut self, _dir: &Path) -> Result<(), String> {
        Ok(())
    }
    pub fn pipe(&mut self, _unit: &str) -> Result<OwnedFd, String> {
        let f = std::fs::OpenOptions::new().write(true).open("/dev/console").map_err(|e| e.to_string())?;
        Ok(f.into())
    }
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        Vec::new()
    }
    pub fn on_readable(&mut self) {}
    pub fn record(&mut self, _unit: &str, _pid: Option<i32>, _text: &str) {}
    pub fn tail(&self, _unit: &str, _n: usize) -> Vec<LogLine> {
        Vec::new()
    }
    pub fn follow(&mut self, _unit: &str, _stream: UnixStream) {}
    pub fn set_console_echo(&mut self, on: bool) {
        self.echo = on;
    }
}
