//! One fetch's bookkeeping, the same for every cloud: each request tried by the retry policy
//! within the overall deadline (no wait or attempt runs past it), what was missing, retried or
//! failed written down as notes and logged as it happens, and whether the service answered at
//! all (which tells [`Outcome::Unreachable`] from [`Outcome::Partial`]).

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use berth_http::Error;

use crate::record::{InstanceRecord, Outcome};

/// What one attempt came to.
pub(crate) enum Step<T> {
    /// The answer.
    Done(T),
    /// The service says the field does not exist (404): not an error.
    Missing,
    /// Worth another attempt, for this reason.
    Retry(String),
    /// Another attempt will not help, for this reason.
    Final(String),
}

/// A field asked for and not got (the note says why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failed;

pub(crate) struct Session<'a> {
    retry: berth_http::Retry,
    deadline: Instant,
    attempt_timeout: Duration,
    log: &'a dyn Fn(&str),
    notes: RefCell<Vec<String>>,
    answered: Cell<bool>,
    failed: Cell<bool>,
    /// Set when the answers show the service is not the one asked for: nothing more is asked.
    wrong_service: RefCell<Option<String>>,
}

impl<'a> Session<'a> {
    pub fn new(retry: berth_http::Retry, deadline: Instant, attempt_timeout: Duration, log: &'a dyn Fn(&str)) -> Self {
        Session {
            retry,
            deadline,
            attempt_timeout,
            log,
            notes: RefCell::new(Vec::new()),
            answered: Cell::new(false),
            failed: Cell::new(false),
            wrong_service: RefCell::new(None),
        }
    }

    /// Logs a step that is not worth a note.
    pub fn log(&self, line: &str) {
        (self.log)(line);
    }

    /// Writes down (and logs) something the record's reader should know.
    pub fn note(&self, line: String) {
        (self.log)(&line);
        self.notes.borrow_mut().push(line);
    }

    /// [`Session::note`], and the fetch is no longer complete.
    pub fn fail(&self, line: String) {
        self.failed.set(true);
        self.note(line);
    }

    /// The service answered (any HTTP status).
    pub fn heard(&self) {
        self.answered.set(true);
    }

    pub fn answered(&self) -> bool {
        self.answered.get()
    }

    /// Stops the fetch: the service answering is not the one asked for.
    pub fn wrong_service(&self, why: String) {
        self.wrong_service.borrow_mut().get_or_insert(why);
    }

    pub fn wrong_service_reason(&self) -> Option<String> {
        self.wrong_service.borrow().clone()
    }

    /// What an attempt that failed with `e` comes to: a 404 is a missing field; other statuses
    /// mean the service is there; 5xx, 429, 410 (Azure IMDS's "not ready yet, retry for up to
    /// 70 s" at boot) and connection failures are worth retrying.
    pub fn step_of<T>(&self, e: Error) -> Step<T> {
        if let Error::Status(status) = e {
            self.heard();
            return match status {
                404 => Step::Missing,
                410 | 429 | 500.. => Step::Retry(e.to_string()),
                _ => Step::Final(e.to_string()),
            };
        }
        if e.is_retryable() { Step::Retry(e.to_string()) } else { Step::Final(e.to_string()) }
    }

    /// Runs `attempt` (given how long it may take) until it is done, missing or final, the
    /// policy's attempts are spent or the deadline comes. `what` names the field in notes.
    pub fn run<T>(&self, what: &str, mut attempt: impl FnMut(Duration) -> Step<T>) -> Result<Option<T>, Failed> {
        if self.wrong_service.borrow().is_some() {
            return Err(Failed);
        }
        let mut n = 0;
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.fail(format!("{what}: not asked, the deadline had passed"));
                return Err(Failed);
            }
            n += 1;
            match attempt(left.min(self.attempt_timeout)) {
                Step::Done(v) => return Ok(Some(v)),
                Step::Missing => return Ok(None),
                Step::Final(why) => {
                    self.fail(format!("{what}: {why}"));
                    return Err(Failed);
                }
                Step::Retry(why) if n >= self.retry.max_attempts() => {
                    self.fail(format!("{what}: {why}; gave up after {n} attempts"));
                    return Err(Failed);
                }
                Step::Retry(why) => {
                    let wait = self.retry.delay(n);
                    if Instant::now() + wait >= self.deadline {
                        self.fail(format!("{what}: {why}; gave up after {n} attempts, at the deadline"));
                        return Err(Failed);
                    }
                    self.log(&format!("{what}: {why}; trying again in {} ms (attempt {})", wait.as_millis(), n + 1));
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// `record` with the outcome and the notes: unreachable when the service never answered and
    /// nothing was found elsewhere, partial when something failed, else complete.
    pub fn finish(self, mut record: InstanceRecord) -> InstanceRecord {
        let found = record.instance_id.is_some()
            || record.hostname.is_some()
            || record.user_data.is_some()
            || !record.ssh_keys.is_empty();
        record.outcome = if !self.answered.get() && !found {
            Outcome::Unreachable
        } else if self.failed.get() || !self.answered.get() {
            Outcome::Partial
        } else {
            Outcome::Complete
        };
        record.notes = self.notes.into_inner();
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_stop_at_the_policy_or_the_deadline() {
        let lines = RefCell::new(Vec::new());
        let log = |l: &str| lines.borrow_mut().push(l.to_string());
        let retry = berth_http::Retry::new().attempts(3).backoff(Duration::from_millis(1));
        let s = Session::new(retry, Instant::now() + Duration::from_secs(5), Duration::from_secs(1), &log);
        let mut tries = 0;
        assert_eq!(
            s.run("x", |_| {
                tries += 1;
                if tries < 3 { Step::Retry("the server answered 500".into()) } else { Step::Done(7) }
            }),
            Ok(Some(7))
        );
        assert_eq!(s.run("y", |_| Step::<()>::Retry("down".into())), Err(Failed));
        assert_eq!(s.run("z", |_| Step::<()>::Missing), Ok(None));
        s.heard();
        let r = s.finish(InstanceRecord::empty("aws", Outcome::Complete));
        assert_eq!(r.outcome, Outcome::Partial);
        assert_eq!(r.notes, ["y: down; gave up after 3 attempts"]);
        assert_eq!(lines.borrow()[0], "x: the server answered 500; trying again in 1 ms (attempt 2)");

        // A backoff that would end past the deadline is not waited for.
        let slow = berth_http::Retry::new().attempts(5).backoff(Duration::from_secs(10));
        let s = Session::new(slow, Instant::now() + Duration::from_millis(200), Duration::from_secs(1), &log);
        let start = Instant::now();
        assert_eq!(s.run("w", |t| Step::<()>::Retry(format!("{}", t.as_millis() <= 200))), Err(Failed));
        assert!(start.elapsed() < Duration::from_millis(150));
        assert_eq!(s.run("v", |_| Step::Done(1)), Ok(Some(1)), "the deadline has not passed yet");
        let r = s.finish(InstanceRecord::empty("gce", Outcome::Complete));
        assert_eq!(r.outcome, Outcome::Unreachable);
        assert_eq!(r.notes, ["w: true; gave up after 1 attempts, at the deadline"]);
    }
}
