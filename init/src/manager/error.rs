//! Why the manager refused a job (`berthctl start/stop/restart/reload/status`). The control
//! server sends the message as it is; `berthctl` prints it after `berthctl VERB UNIT: `, so the
//! messages do not repeat the unit's name.

/// A job the manager would not queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("unit not found (searched {searched})")]
    NotFound { unit: String, searched: String },
    #[error("unit is masked")]
    Masked { unit: String },
    #[error("unit has errors (see berthctl verify)")]
    LoadError { unit: String },
    #[error("unit type not supported by berth-init")]
    Unsupported { unit: String },
    /// The unit loaded, but its transaction cannot start it (a conflict, a missing requirement).
    #[error("cannot start: {why}")]
    Unstartable { unit: String, why: String },
    #[error("RefuseManualStart=yes")]
    RefusedManualStart { unit: String },
    #[error("RefuseManualStop=yes")]
    RefusedManualStop { unit: String },
    #[error("the system is shutting down")]
    ShuttingDown,
    #[error("not a service")]
    NotAService { unit: String },
    #[error("no ExecReload= (reload is not supported by this unit)")]
    NoReload { unit: String },
    #[error("not active ({state}), nothing to reload")]
    NotActive { unit: String, state: &'static str },
}

impl JobError {
    /// `unit` is nowhere in the unit directories.
    pub fn not_found(unit: &str) -> JobError {
        JobError::NotFound { unit: unit.to_string(), searched: berth_units::load::SYSTEM_UNIT_DIRS.join(", ") }
    }
}
