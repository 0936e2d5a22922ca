//! `enable`, `disable`, `is-enabled`: the links of units' `[Install]` sections, planned and
//! applied with [`berth_units::install`] (the engine the image builder and provisioning use),
//! then a reload of PID 1.

use std::path::Path;

use berth_units::install::{self, Change};
use berth_units::{HostInfo, Loader};

use super::args::Verb;
use super::{ask, jobs};
use crate::control::Request;

fn loader(root: &Path) -> Loader {
    Loader::new(root, HostInfo::detect(root))
}

/// enable/disable: the links first (on the filesystem, as systemctl), then `Reload`, then with
/// `--now` start/stop.
pub(super) fn install(enable: bool, units: &[String], now: bool, root: Option<&Path>) -> i32 {
    let verb = if enable { "enable" } else { "disable" };
    let dir = root.unwrap_or(Path::new("/"));
    let mut code = 0;
    let mut changed = false;
    for unit in units {
        // A fresh loader for each unit: the links of the one before are part of what it reads.
        let loader = loader(dir);
        let plan = if enable { install::plan_enable(&loader, unit) } else { install::plan_disable(&loader, unit) };
        match plan.and_then(|changes| install::apply(dir, &changes).map(|()| changes)) {
            Ok(changes) => {
                for change in changes {
                    changed |= !matches!(change, Change::Static { .. });
                    crate::sys::log::out(&format!("{change}\n"));
                }
            }
            Err(e) => {
                crate::sys::log::err(&format!("berthctl: {verb}: {e}\n"));
                code = 1;
            }
        }
    }
    if root.is_some() {
        return code;
    }
    if changed && let Err(e) = ask(&Request::Reload) {
        crate::sys::log::err(&format!("berthctl: {verb}: the links are changed, but berth-init did not reload: {e}\n"));
        code = 1;
    }
    if now && code == 0 {
        code = jobs(if enable { Verb::Start } else { Verb::Stop }, units);
    }
    code
}

/// `is-enabled`: one state per unit; exit 0 only when every unit is enabled, static or an
/// alias (as systemctl), 1 otherwise or when a unit does not exist.
pub(super) fn is_enabled(units: &[String], root: Option<&Path>) -> i32 {
    let loader = loader(root.unwrap_or(Path::new("/")));
    let mut code = 0;
    for unit in units {
        match install::enablement_of(&loader, unit) {
            Some(state) => {
                crate::sys::log::out(&format!("{state}\n"));
                if matches!(state, install::Enablement::Disabled | install::Enablement::Masked) {
                    code = 1;
                }
            }
            None => {
                crate::sys::log::err(&format!("berthctl: is-enabled: {unit}: no such unit\n"));
                code = 1;
            }
        }
    }
    code
}
