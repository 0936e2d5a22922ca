//! Setting the clock: the only code that changes it (tests measure, never set). A large
//! offset steps the clock (`clock_settime`), a small one is slewed (`adjtime`: the kernel
//! runs the clock up to 0.5 ms/s faster or slower until the offset is gone, so time never
//! jumps back under running programs).

use std::time::{Duration, SystemTime};

use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_settime};

/// Offsets above this are stepped, smaller ones slewed.
pub const STEP_THRESHOLD: Duration = Duration::from_secs(1);

/// What was done to the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjustment {
    /// Set at once.
    Step,
    /// Slewed.
    Slew,
}

impl Adjustment {
    /// How the status file names it.
    pub fn name(self) -> &'static str {
        match self {
            Adjustment::Step => "step",
            Adjustment::Slew => "slew",
        }
    }
}

/// Moves the clock by `offset_ns` nanoseconds.
pub fn adjust(offset_ns: i64) -> std::io::Result<Adjustment> {
    if offset_ns.unsigned_abs() > STEP_THRESHOLD.as_nanos() as u64 {
        let now = SystemTime::now();
        let target = if offset_ns >= 0 {
            now + Duration::from_nanos(offset_ns as u64)
        } else {
            now - Duration::from_nanos(offset_ns.unsigned_abs())
        };
        set(target)?;
        Ok(Adjustment::Step)
    } else {
        let tv = nix::libc::timeval {
            tv_sec: offset_ns.div_euclid(1_000_000_000) as _,
            tv_usec: (offset_ns.rem_euclid(1_000_000_000) / 1000) as _,
        };
        // SAFETY: `tv` is a valid timeval for the call; the old delta is not asked for.
        if unsafe { nix::libc::adjtime(&tv, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Adjustment::Slew)
    }
}

/// Sets the clock to `t`.
pub fn set(t: SystemTime) -> std::io::Result<()> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).map_err(std::io::Error::other)?;
    let ts = TimeSpec::new(d.as_secs() as _, d.subsec_nanos() as _);
    clock_settime(ClockId::CLOCK_REALTIME, ts).map_err(std::io::Error::from)
}
