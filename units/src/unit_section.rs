//! The `[Unit]` and `[Install]` sections (systemd.unit(5)): description, dependencies,
//! conditions, start rate limit; and the enable-time `WantedBy=`/`RequiredBy=`/`Alias=`.

use std::path::PathBuf;

use super::condition::{Condition, ConditionKind};
use super::name::UnitName;
use super::syntax::{Split, parse_bool, split_words};
use super::time::parse_timespan;
use super::{Install, Unit};

/// What applying one line did.
pub(crate) enum Outcome {
    Done,
    /// Applied, with a caveat worth reporting.
    Note(String),
    /// Not a setting berth-init implements.
    Unknown,
}

type Expand<'a> = &'a dyn Fn(&str) -> Result<String, String>;

/// Unit names in a dependency list: specifiers resolved, each a valid, non-template name.
fn unit_names(value: &str, expand: Expand<'_>) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for word in split_words(value, Split::UNIT)? {
        let name = expand(&word)?;
        let parsed = UnitName::parse(&name).map_err(|e| format!("`{name}`: {e}"))?;
        if parsed.is_template() {
            return Err(format!("`{name}` is a template; name an instance"));
        }
        names.push(name);
    }
    Ok(names)
}

/// Applies one `[Unit]` line (also used for the `StartLimit*` keys of `[Service]`).
pub(crate) fn apply_unit(
    unit: &mut Unit,
    key: &str,
    value: &str,
    line: usize,
    expand: Expand<'_>,
) -> Result<Outcome, String> {
    let deps = &mut unit.deps;
    match key {
        "Description" => unit.description = expand(value)?,
        "Documentation" if value.is_empty() => unit.documentation.clear(),
        "Documentation" => unit.documentation.extend(split_words(value, Split::UNIT)?),
        // Empty dependency assignments change nothing (systemd cannot drop dependencies either).
        "Wants" => deps.wants.extend(unit_names(value, expand)?),
        "Requires" => deps.requires.extend(unit_names(value, expand)?),
        "Conflicts" => deps.conflicts.extend(unit_names(value, expand)?),
        "After" => deps.after.extend(unit_names(value, expand)?),
        "Before" => deps.before.extend(unit_names(value, expand)?),
        "BindsTo" => {
            let names = unit_names(value, expand)?;
            let text = format!(
                "[Unit] BindsTo= is handled as Requires= by berth-init: {} will not be stopped when {} stops",
                unit.name,
                names.join(", ")
            );
            deps.requires.extend(names);
            return Ok(Outcome::Note(text));
        }
        "DefaultDependencies" => unit.default_dependencies = parse_bool(value)?,
        "StartLimitIntervalSec" | "StartLimitInterval" => unit.start_limit_interval = parse_timespan(value)?,
        "StartLimitBurst" => {
            unit.start_limit_burst = value.parse().map_err(|_| format!("`{value}` is not a number"))?;
        }
        "AllowIsolate" => unit.allow_isolate = parse_bool(value)?,
        "RefuseManualStart" => unit.refuse_manual_start = parse_bool(value)?,
        "RefuseManualStop" => unit.refuse_manual_stop = parse_bool(value)?,
        // berth-init mounts every file system before it starts units: recorded, and met.
        "RequiresMountsFor" if value.is_empty() => unit.requires_mounts_for.clear(),
        "RequiresMountsFor" => {
            for word in split_words(value, Split::UNIT)? {
                let path = expand(&word)?;
                if !path.starts_with('/') {
                    return Err(format!("`{path}` is not an absolute path"));
                }
                unit.requires_mounts_for.push(PathBuf::from(path));
            }
        }
        k => {
            let (assert, suffix) = match (k.strip_prefix("Condition"), k.strip_prefix("Assert")) {
                (Some(s), _) => (false, s),
                (_, Some(s)) => (true, s),
                _ => return Ok(Outcome::Unknown),
            };
            let Some(kind) = ConditionKind::from_suffix(suffix) else {
                return Ok(Outcome::Unknown);
            };
            let list = if assert { &mut unit.asserts } else { &mut unit.conditions };
            if value.is_empty() {
                // An empty Condition…= resets every condition (Assert…=: every assertion).
                list.clear();
            } else {
                list.push(Condition::parse(kind, assert, value, line, expand)?);
            }
        }
    }
    Ok(Outcome::Done)
}

/// Applies one `[Install]` line. These only matter when a unit is enabled.
pub(crate) fn apply_install(
    install: &mut Install,
    unit: &UnitName,
    key: &str,
    value: &str,
    expand: Expand<'_>,
) -> Result<Outcome, String> {
    let names = |value: &str| -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for word in split_words(value, Split::UNIT)? {
            let name = expand(&word)?;
            UnitName::parse(&name).map_err(|e| format!("`{name}`: {e}"))?;
            out.push(name);
        }
        Ok(out)
    };
    match key {
        "WantedBy" if value.is_empty() => install.wanted_by.clear(),
        "WantedBy" => install.wanted_by.extend(names(value)?),
        "RequiredBy" if value.is_empty() => install.required_by.clear(),
        "RequiredBy" => install.required_by.extend(names(value)?),
        "Also" if value.is_empty() => install.also.clear(),
        "Also" => install.also.extend(names(value)?),
        "Alias" if value.is_empty() => install.alias.clear(),
        "Alias" => {
            for alias in names(value)? {
                let parsed = UnitName::parse(&alias).map_err(|e| format!("`{alias}`: {e}"))?;
                if parsed.kind != unit.kind || parsed.is_template() != unit.is_template() {
                    return Err(format!(
                        "alias `{alias}` must be of the same type (and template-ness) as {}",
                        unit.full
                    ));
                }
                install.alias.push(alias);
            }
        }
        "DefaultInstance" if value.is_empty() => install.default_instance = None,
        "DefaultInstance" => {
            // Read for the template and for each instance (from the template's file).
            if unit.instance.is_none() {
                return Err(format!("{} is not a template", unit.full));
            }
            let instance = expand(value)?;
            let template = unit.template().and_then(|t| UnitName::parse(&t).ok()).ok_or("not a template")?;
            template.instantiate(&instance).map_err(|e| format!("`{instance}`: {e}"))?;
            install.default_instance = Some(instance);
        }
        _ => return Ok(Outcome::Unknown),
    }
    Ok(Outcome::Done)
}
