//! PID 1's log store: the output of every service (a pipe per started process, read from the
//! main loop) and the manager's own lines about units, kept per unit in a bounded in-memory
//! ring, optionally appended to `DIR/<unit>.log` (rotated), streamed to `berthctl logs -f`
//! followers, and echoed to the console during early boot.
//!
//! Everything here runs inside PID 1's single poll loop: no threads, no blocking reads or
//! writes on pipes and sockets (the files under `/var/log` are ordinary local writes), and
//! no panics; a failing file write is reported once and the journal goes on in memory.

// The service manager (init/src/service/) is the journal's user; until it is merged only the
// tests call it.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{MsgFlags, recv, send};
use nix::time::{ClockId, clock_gettime};

use crate::control::LogLine;

/// Longest line kept: a longer one (or output without a newline) is cut into pieces this long.
pub const MAX_LINE: usize = 4096;
/// Default size at which `<unit>.log` is rotated.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 20;
/// Rotated files kept (`<unit>.log.1`, `<unit>.log.2`).
const ROTATED_FILES: usize = 2;
/// A follower with more unsent output than this is dropped.
const FOLLOWER_BACKLOG: usize = 64 * 1024;
/// Bytes read from one pipe per `on_readable`, so a chatty service cannot hold the loop.
const READ_BUDGET: usize = 64 * 1024;

pub struct Journal {
    ring_bytes: usize,
    rings: BTreeMap<String, Ring>,
    pipes: Vec<Pipe>,
    followers: Vec<Follower>,
    store: Option<Store>,
    max_file_bytes: u64,
    console_echo: bool,
}

/// The read end of a child's stdout+stderr.
struct Pipe {
    unit: String,
    pid: Option<i32>,
    fd: OwnedFd,
    /// The start of a line whose newline has not arrived yet (at most [`MAX_LINE`] bytes).
    partial: Vec<u8>,
}

/// A `berthctl logs -f` connection.
struct Follower {
    unit: String,
    stream: UnixStream,
    /// JSON lines not yet taken by the socket.
    pending: Vec<u8>,
}

impl Journal {
    /// A journal whose in-memory ring holds at most `ring_bytes` per unit (e.g. 64 KiB).
    pub fn new(ring_bytes: usize) -> Journal {
        Journal {
            ring_bytes,
            rings: BTreeMap::new(),
            pipes: Vec::new(),
            followers: Vec::new(),
            store: None,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            console_echo: false,
        }
    }

    /// The size at which `<unit>.log` is rotated (default [`DEFAULT_MAX_FILE_BYTES`]).
    #[cfg(test)]
    pub fn set_max_file_bytes(&mut self, bytes: u64) {
        self.max_file_bytes = bytes.max(1);
    }

    /// From now on lines are also appended to `dir/<unit>.log` (`dir` is created); what the
    /// rings hold so far is written first, so call this once. Rotation: a file that would pass
    /// the size bound first becomes `<unit>.log.1` (the old `.1` becomes `.2`). An error here
    /// (no directory, a failed write) is returned and not reported again; later write errors
    /// are logged once. Either way the journal goes on, in memory if need be.
    pub fn persist_to(&mut self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut store = Store { dir: dir.to_path_buf(), files: BTreeMap::new(), reported: false };
        let mut first_error = None;
        for (unit, ring) in &self.rings {
            for (time_us, pid, text) in ring.entries(0) {
                if let Err(e) = store.append(unit, time_us, pid, &text, self.max_file_bytes) {
                    first_error.get_or_insert(e);
                }
            }
        }
        store.reported = first_error.is_some();
        self.store = Some(store);
        first_error.map_or(Ok(()), Err)
    }

    /// Closes the log files (shutdown: `/var` must be able to go read-only); lines go on into
    /// the rings.
    pub fn stop_persisting(&mut self) {
        self.store = None;
    }

    /// A pipe for a child's stdout and stderr: returns the write end (the child's fd 1 and 2;
    /// it is close-on-exec in PID 1, dup2 clears that in the child). The journal keeps the
    /// non-blocking read end and files what arrives under `unit`, with the pid given to
    /// [`Journal::set_pid`].
    pub fn pipe(&mut self, unit: &str) -> Result<OwnedFd, String> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe for {unit}: {e}"))?;
        fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(|e| format!("pipe for {unit}: O_NONBLOCK: {e}"))?;
        self.pipes.push(Pipe { unit: unit.to_string(), pid: None, fd: read, partial: Vec::new() });
        Ok(write)
    }

    /// Attributes the lines of the pipe most recently made for `unit` to `pid`: call it right
    /// after the child was started on that pipe (and again if the unit's main pid changes).
    pub fn set_pid(&mut self, unit: &str, pid: i32) {
        if let Some(p) = self.pipes.iter_mut().rev().find(|p| p.unit == unit) {
            p.pid = Some(pid);
        }
    }

    /// The fds to poll for `POLLIN` (the pipes and the followers' sockets); when any is
    /// ready, call [`Journal::on_readable`].
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let pipes = self.pipes.iter().map(|p| p.fd.as_fd());
        pipes.chain(self.followers.iter().map(|f| f.stream.as_fd())).collect()
    }

    /// Reads what is there from every pipe and files its lines; a pipe at end of file (every
    /// process holding the write end is gone) is closed, its unfinished line filed. Drops
    /// followers that hung up, and sends what followers still have pending.
    pub fn on_readable(&mut self) {
        let mut pipes = std::mem::take(&mut self.pipes);
        pipes.retain_mut(|pipe| self.drain(pipe));
        // Pipes made while draining (none today) come after the old ones.
        pipes.append(&mut self.pipes);
        self.pipes = pipes;
        self.followers.retain_mut(|f| f.alive() && f.flush());
    }

    /// Reads `pipe` until it would block (or the budget is spent); false at end of file.
    fn drain(&mut self, pipe: &mut Pipe) -> bool {
        let mut buf = [0u8; 8192];
        let mut budget = READ_BUDGET;
        while budget > 0 {
            match nix::unistd::read(&pipe.fd, &mut buf) {
                Ok(0) => {
                    if !pipe.partial.is_empty() {
                        let line = std::mem::take(&mut pipe.partial);
                        self.add(&pipe.unit, pipe.pid, &line);
                    }
                    return false;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.feed(pipe, &buf[..n]);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return true,
                Err(e) => {
                    self.add(&pipe.unit, None, format!("(berth-init: reading the output pipe: {e})").as_bytes());
                    return false;
                }
            }
        }
        true
    }

    /// Splits `chunk` into lines, continuing the pipe's unfinished line; a line that reaches
    /// [`MAX_LINE`] without a newline is cut there.
    fn feed(&mut self, pipe: &mut Pipe, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let room = MAX_LINE - pipe.partial.len();
            // A newline right after a full line ends that line (no empty line after the cut).
            let window = &chunk[..chunk.len().min(room + 1)];
            let (piece, rest) = match window.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..]),
                None if chunk.len() >= room => (&chunk[..room], &chunk[room..]),
                None => {
                    pipe.partial.extend_from_slice(chunk);
                    return;
                }
            };
            if pipe.partial.is_empty() {
                self.add(&pipe.unit, pipe.pid, piece);
            } else {
                pipe.partial.extend_from_slice(piece);
                let line = std::mem::take(&mut pipe.partial);
                self.add(&pipe.unit, pipe.pid, &line);
                // Keep the buffer for the next unfinished line.
                pipe.partial = line;
                pipe.partial.clear();
            }
            chunk = rest;
        }
    }

    /// A line from the manager itself about `unit` ("Started", "Main process exited,
    /// status=1"); several lines if `text` has newlines.
    pub fn record(&mut self, unit: &str, pid: Option<i32>, text: &str) {
        let text = text.strip_suffix('\n').unwrap_or(text);
        for line in text.split('\n') {
            for piece in line.as_bytes().chunks(MAX_LINE).take(16) {
                self.add(unit, pid, piece);
            }
        }
    }

    /// The last `n` lines of `unit`, oldest first.
    pub fn tail(&self, unit: &str, n: usize) -> Vec<LogLine> {
        let Some(ring) = self.rings.get(unit) else { return Vec::new() };
        ring.entries(ring.lines.saturating_sub(n))
            .map(|(time_us, pid, text)| LogLine {
                unit: unit.to_string(),
                time_us,
                pid,
                text: String::from_utf8_lossy(&text).into_owned(),
            })
            .collect()
    }

    /// Streams every new line of `unit` to `stream`, one JSON [`LogLine`] per line (the caller
    /// has sent the reply with the tail already). Writes never block: a follower that is gone
    /// or more than 64 KiB behind is dropped (its connection closed).
    pub fn follow(&mut self, unit: &str, stream: UnixStream) {
        let _ = stream.set_nonblocking(true);
        self.followers.push(Follower { unit: unit.to_string(), stream, pending: Vec::new() });
    }

    /// How many `berthctl logs -f` are connected.
    #[cfg(test)]
    pub fn followers(&self) -> usize {
        self.followers.len()
    }

    /// While on (early boot), every line is also written to the console as
    /// `[sec.usec] unit[pid]: text`, like berth-init's own lines.
    pub fn set_console_echo(&mut self, on: bool) {
        self.console_echo = on;
    }

    /// Files one line (no newline in it) everywhere it goes.
    fn add(&mut self, unit: &str, pid: Option<i32>, text: &[u8]) {
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let text = &text[..text.len().min(MAX_LINE)];
        let time_us = now_us();
        match self.rings.get_mut(unit) {
            Some(ring) => ring.push(self.ring_bytes, time_us, pid, text),
            None => {
                let mut ring = Ring::default();
                ring.push(self.ring_bytes, time_us, pid, text);
                self.rings.insert(unit.to_string(), ring);
            }
        }
        if self.console_echo {
            echo(unit, pid, text);
        }
        if let Some(store) = &mut self.store
            && let Err(e) = store.append(unit, time_us, pid, text, self.max_file_bytes)
            && !store.reported
        {
            store.reported = true;
            crate::sys::log::line(&format!("journal: {e}; further write errors are not reported"));
        }
        if self.followers.iter().any(|f| f.unit == unit) {
            let line =
                LogLine { unit: unit.to_string(), time_us, pid, text: String::from_utf8_lossy(text).into_owned() };
            let Ok(mut json) = serde_json::to_vec(&line) else { return };
            json.push(b'\n');
            self.followers.retain_mut(|f| {
                if f.unit != unit {
                    return true;
                }
                f.pending.extend_from_slice(&json);
                f.flush()
            });
        }
    }
}

impl Follower {
    /// Whether the client is still connected (reads and discards anything it sent).
    fn alive(&mut self) -> bool {
        let mut buf = [0u8; 512];
        loop {
            match recv(self.stream.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return false,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Sends what is pending without blocking; false when the follower must go (gone, or too
    /// far behind).
    fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            match send(self.stream.as_raw_fd(), &self.pending, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(_) => return false,
            }
        }
        if self.pending.is_empty() {
            // Do not keep a big buffer around after a burst.
            self.pending = Vec::new();
        }
        self.pending.len() <= FOLLOWER_BACKLOG
    }
}

/// A unit's recent lines, oldest first, packed into one byte ring: per line a header
/// (time in µs: u64, pid: i32 with 0 for none, text length: u16; little-endian) and the text.
#[derive(Default)]
struct Ring {
    bytes: VecDeque<u8>,
    lines: usize,
}

const HEADER: usize = 8 + 4 + 2;

impl Ring {
    /// Appends a line, dropping the oldest ones until it fits in `bound` bytes.
    fn push(&mut self, bound: usize, time_us: u64, pid: Option<i32>, text: &[u8]) {
        let text = &text[..text.len().min(MAX_LINE).min(bound.saturating_sub(HEADER))];
        let need = HEADER + text.len();
        while self.lines > 0 && self.bytes.len() + need > bound {
            self.pop();
        }
        // Grow by doubling, but never past the bound (VecDeque's own growth could double it).
        let len = self.bytes.len();
        if self.bytes.capacity() - len < need {
            let want = (self.bytes.capacity() * 2).max(len + need).max(256).min(bound.max(len + need));
            self.bytes.reserve_exact(want - len);
        }
        self.bytes.extend(time_us.to_le_bytes());
        self.bytes.extend(pid.unwrap_or(0).to_le_bytes());
        self.bytes.extend((text.len() as u16).to_le_bytes());
        self.bytes.extend(text);
        self.lines += 1;
    }

    fn pop(&mut self) {
        let byte = |i: usize| self.bytes.get(i).copied().unwrap_or(0);
        let len = u16::from_le_bytes([byte(12), byte(13)]) as usize;
        self.bytes.drain(..(HEADER + len).min(self.bytes.len()));
        self.lines = self.lines.saturating_sub(1);
    }

    /// The lines from the `skip`th on: (time, pid, text).
    fn entries(&self, skip: usize) -> impl Iterator<Item = (u64, Option<i32>, Vec<u8>)> + '_ {
        let mut at = 0;
        let mut index = 0;
        std::iter::from_fn(move || {
            while index < self.lines && at + HEADER <= self.bytes.len() {
                let header: Vec<u8> = self.bytes.range(at..at + HEADER).copied().collect();
                let time_us = u64::from_le_bytes(header[..8].try_into().ok()?);
                let pid = i32::from_le_bytes(header[8..12].try_into().ok()?);
                let len = u16::from_le_bytes(header[12..14].try_into().ok()?) as usize;
                let start = at + HEADER;
                at = (start + len).min(self.bytes.len());
                index += 1;
                if index > skip {
                    let text = self.bytes.range(start..at).copied().collect();
                    return Some((time_us, (pid != 0).then_some(pid), text));
                }
            }
            None
        })
    }
}

/// The files under the persistent log directory.
struct Store {
    dir: PathBuf,
    /// Open `<unit>.log` files and their sizes.
    files: BTreeMap<String, (File, u64)>,
    /// A write error was reported (only the first one is).
    reported: bool,
}

impl Store {
    fn append(&mut self, unit: &str, time_us: u64, pid: Option<i32>, text: &[u8], max: u64) -> Result<(), String> {
        let mut line = format!("{} {}: ", rfc3339(time_us), prefix(unit, pid)).into_bytes();
        line.extend_from_slice(text);
        line.push(b'\n');
        let path = self.dir.join(format!("{}.log", file_stem(unit)));
        let entry = match self.files.remove(unit) {
            Some(entry) => entry,
            None => open_log(&path)?,
        };
        let (mut file, mut size) = entry;
        if size > 0 && size + line.len() as u64 > max {
            drop(file);
            rotate(&path)?;
            (file, size) = open_log(&path)?;
        }
        // On error the file is closed here and opened again next time.
        file.write_all(&line).map_err(|e| format!("writing {}: {e}", path.display()))?;
        size += line.len() as u64;
        self.files.insert(unit.to_string(), (file, size));
        Ok(())
    }
}

fn open_log(path: &Path) -> Result<(File, u64), String> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((file, size))
}

/// `x.log.1` → `x.log.2`, …, `x.log` → `x.log.1`.
fn rotate(path: &Path) -> Result<(), String> {
    let numbered = |n: usize| {
        let mut p = path.as_os_str().to_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    for n in (1..ROTATED_FILES).rev() {
        match std::fs::rename(numbered(n), numbered(n + 1)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("rotating {}: {e}", numbered(n).display())),
        }
    }
    std::fs::rename(path, numbered(1)).map_err(|e| format!("rotating {}: {e}", path.display()))
}

/// A unit name as a file name (unit names have no `/`; this makes sure).
fn file_stem(unit: &str) -> String {
    let stem: String = unit.chars().map(|c| if c == '/' || c == '\0' { '_' } else { c }).collect();
    if stem.is_empty() || stem.starts_with('.') { format!("_{stem}") } else { stem }
}

/// `unit[pid]`, or `unit` without a pid.
fn prefix(unit: &str, pid: Option<i32>) -> String {
    match pid {
        Some(pid) => format!("{unit}[{pid}]"),
        None => unit.to_string(),
    }
}

fn echo(unit: &str, pid: Option<i32>, text: &[u8]) {
    let (sec, nsec) = match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(t) => (t.tv_sec(), t.tv_nsec()),
        Err(_) => (0, 0),
    };
    let text = String::from_utf8_lossy(text);
    crate::sys::log::err(&format!("[{sec:5}.{:06}] {}: {text}\n", nsec / 1000, prefix(unit, pid)));
}

/// CLOCK_REALTIME in µs (0 if the clock is before 1970).
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// `2026-11-22T09:01:02.123456Z` for a CLOCK_REALTIME time in µs (Berth's one date module,
/// [`berth_release::time`]).
pub fn rfc3339(time_us: u64) -> String {
    berth_release::time::TimestampUs(time_us).to_string()
}

#[cfg(test)]
mod tests;
