//! Progress of long transfers, reported to whoever shows it (`berth upload` draws bars with
//! throughput; tests and benchmarks stay silent).

/// What an upload reports as it goes. Called from several threads at once.
pub trait Progress: Sync {
    /// A transfer of `total` bytes begins (`what`: "EBS snapshot blocks", "page blob").
    fn start(&self, what: &str, total: u64);
    /// `bytes` more of the current transfer are done (sent, or skipped as zeros).
    fn advance(&self, bytes: u64);
    /// The current transfer is over.
    fn finish(&self);
    /// A line worth telling the user (a retry, a step, an id), printed above any bar.
    fn note(&self, line: &str);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
    fn note(&self, _: &str) {}
}
