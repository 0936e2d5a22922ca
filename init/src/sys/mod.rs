//! The plumbing both stages use: the console and kernel log, child processes, the kernel
//! command line, mounts, randomness, the panic hook, and fd-relative file work.

pub(crate) mod child;
pub(crate) mod cmdline;
// Writing where users can write too (homes, service directories): by fd, never following links.
pub(crate) mod fsat;
pub(crate) mod log;
pub(crate) mod mounts;
// The panic hook and the rate limit of panic reboots.
pub(crate) mod panics;
pub(crate) mod random;
