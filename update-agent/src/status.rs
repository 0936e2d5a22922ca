//! `berth-update status`: the slots (live from the GPT) with their versions, and the agent's
//! remembered state, for people and (`--json`, a [`Status`]) for programs.

use berth_slot::Slot;
use berth_update::report::{SlotStatus, Status};

use crate::agent::Agent;
use crate::state::{Phase, State};

fn slot_status(agent: &Agent, st: &State, slots: Option<berth_slot::Slots>, slot: Slot) -> SlotStatus {
    let version =
        if slot == agent.disk.booted { Some(agent.version.clone()) } else { st.slots.get(slot.name()).cloned() };
    let a = slots.map(|s| s.get(slot));
    SlotStatus {
        slot,
        label: slot.label().to_string(),
        device: agent.disk.slot_node(slot).display().to_string(),
        version,
        priority: a.map(|a| a.priority),
        tries: a.map(|a| a.tries),
        successful: a.map(|a| a.successful),
    }
}

/// The state as the disk confirms it: between mark-good's GPT write and its state save, the
/// state can still name the booted (now good) slot as staged; the version that was available
/// before the reboot is the running one now.
fn settled(agent: &Agent, slots: Option<berth_slot::Slots>) -> State {
    let booted = agent.disk.booted;
    let mut st = agent.state.clone();
    st.drop_stale_available(&agent.version);
    if st.staged.as_ref().is_some_and(|s| s.slot == booted) && slots.is_some_and(|s| s.get(booted).successful) {
        st.staged = None;
        if matches!(st.phase(), Phase::Staged | Phase::Rebooting) {
            st.rest();
        }
    }
    st
}

/// Everything `status` shows; `busy` says what the lock's holder does.
pub fn status(agent: &Agent, busy: Option<&str>) -> Status {
    let slots = agent.slots();
    let gpt_error = slots.as_ref().err().map(|e| format!("{e:#}"));
    let slots = slots.ok();
    let st = settled(agent, slots);
    Status {
        state: st.phase(),
        running: slot_status(agent, &st, slots, agent.disk.booted),
        other: slot_status(agent, &st, slots, agent.disk.passive()),
        channel: agent.config.channel.clone(),
        strategy: agent.config.strategy.name().to_string(),
        last_check: st.last_check,
        last_error: st.last_error,
        available: st.available,
        staged: st.staged,
        rolled_back: st.rolled_back,
        busy: busy.map(String::from),
        sequence: st.last_sequence,
        download: st.download,
        paused: st.paused,
        last_staging: st.last_staging,
        gpt_error,
        fleetlock: st.fleetlock,
    }
}

/// [`status`] as a JSON value.
#[cfg(test)]
pub fn to_json(agent: &Agent, busy: Option<&str>) -> serde_json::Value {
    serde_json::to_value(status(agent, busy)).unwrap_or_default()
}

/// Prints the status.
pub fn print(agent: &Agent, busy: Option<&str>, as_json: bool) -> anyhow::Result<()> {
    let st = &status(agent, busy);
    if as_json {
        println!("{}", serde_json::to_string(st)?);
        return Ok(());
    }
    fn s<T: ToString>(v: Option<T>) -> String {
        v.map_or_else(|| "-".to_string(), |v| v.to_string())
    }
    println!("State:     {}", st.state);
    if let Some(b) = busy {
        println!("Busy:      {b}");
    }
    for (what, x) in [("Running:", &st.running), ("Other:", &st.other)] {
        println!(
            "{what:<10} {} {} ({}), version {}: priority {}, tries {}, successful {}",
            x.label,
            x.device,
            x.slot.name(),
            s(x.version.as_deref()),
            s(x.priority),
            s(x.tries),
            s(x.successful),
        );
    }
    println!("Channel:   {} (strategy {})", s(st.channel.as_deref()), st.strategy);
    println!("Checked:   {} (index sequence {})", s(st.last_check), s(st.sequence));
    if let Some(a) = &st.available {
        println!("Available: {a}");
    }
    if let Some(st) = &st.staged {
        println!("Staged:    {} in slot {} at {}", st.version, st.slot.name(), st.at);
    }
    if let Some(d) = &st.download {
        println!(
            "Download:  {}: {} of {} MiB received, {} of {} MiB written",
            d.version,
            d.received >> 20,
            d.size >> 20,
            d.written >> 20,
            d.image_size >> 20
        );
    }
    for r in &st.rolled_back {
        if r.manual {
            println!(
                "Held back: {} (left by berth-update rollback from slot {}, {}); not installed again until a \
                 newer version appears or apply --force",
                r.version,
                r.slot.name(),
                r.at
            );
        } else {
            println!(
                "Rolled back: {} (slot {}, {}); not retried until a newer version appears or apply --force",
                r.version,
                r.slot.name(),
                r.at
            );
        }
    }
    if let Some(e) = &st.last_error {
        println!("Last error: {e}");
    }
    if let Some(f) = &st.fleetlock {
        println!("FleetLock: {} ({})", f.kind, f.message);
    }
    if let Some(e) = &st.gpt_error {
        println!("GPT:       {e}");
    }
    Ok(())
}
