//! Log lines on stderr: under berth-init the unit's output goes to its journal (which adds the
//! time and `berth-netd[pid]:`) and to the console until boot-complete. Write errors are ignored:
//! a closed stderr must not stop DHCP.

use std::io::Write;

/// One line on stderr.
pub fn line(message: &str) {
    err(&format!("{message}\n"));
}

pub fn err(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

pub fn out(text: &str) {
    let _ = std::io::stdout().write_all(text.as_bytes());
}
