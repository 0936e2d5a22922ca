//! The contract of `berth-update status --json` (docs/design.md §4): the records the agent keeps
//! in its state file and shows in its status, and the [`Status`] document itself. It is a
//! library so that programs that read the status (the QEMU update tests, a fleet dashboard)
//! deserialize the agent's own types instead of guessing at JSON keys. The agent itself is the
//! `berth-update` binary of this package.

pub mod report;
