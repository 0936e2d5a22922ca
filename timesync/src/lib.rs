//! Berth's time synchronisation (docs/design.md §4's clock): an SNTP client (RFC 4330,
//! RFC 5905 client mode) run as `berth-timesync.service`, not in PID 1.
//!
//! - [`ntp`]: the packet, the reply checks (origin echo, kiss-o'-death, unsynchronised
//!   servers, root distance) and the offset and delay of an exchange;
//! - [`client`]: resolution, exchanges over UDP, several samples, the lowest delay chosen;
//! - [`config`]: `timesync.toml` (servers, interval, samples);
//! - [`status`]: the contract with the update agent: `/run/berth/timesync/synchronized` and
//!   the clock floor `/usr/lib/clock-epoch`; [`clock_synchronized`] is the agent's question;
//! - [`clock`]: stepping or slewing the clock, the only code that changes it.

#![warn(missing_docs)]

pub mod client;
pub mod clock;
pub mod config;
pub mod ntp;
pub mod status;

pub use status::{ClockError, Synchronized, clock_synchronized};
