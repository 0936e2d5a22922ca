//! `berth-update status`: the slots (live from the GPT) with their versions, and the agent's
//! remembered state, for people and (`--json`) for programs.

use berth_slot::Slot;
use serde_json::{Value, json};

use crate::agent::Agent;
use crate::state::{Phase, State};

fn slot_json(agent: &Agent, st: &State, slots: Option<berth_slot::Slots>, slot: Slot) -> Value {
    let version =
        if slot == agent.disk.booted { Some(agent.version.clone()) } else { st.slots.get(slot.name()).cloned() };
    let a = slots.map(|s| s.get(slot));
    json!({
        "slot": slot.name(),
        "label": slot.label(),
        "device": agent.disk.slot_node(slot).display().to_string(),
        "version": version,
        "priority": a.map(|a| a.priority),
        "tries": a.map(|a| a.tries),
        "successful": a.map(|a| a.successful),
    })
}

/// The state as the disk confirms it: between mark-good's GPT write and its state save, the
/// state can still name the booted (now good) slot as staged; the version that was available
/// before the reboot is the running one now.
fn settled(agent: &Agent, st: &State, slots: Option<berth_slot::Slots>) -> State {
    let booted = agent.disk.booted;
    let mut st = st.clone();
    st.drop_stale_available(&agent.version);
    if st.staged.as_ref().is_some_and(|s| s.slot == booted.name()) && slots.is_some_and(|s| s.get(booted).successful) {
        st.staged = None;
        if matches!(st.state, Phase::Staged | Phase::Rebooting) {
            st.rest();
        }
    }
    st
}

/// Everything `status` shows, as one JSON object; `busy` says what the lock's holder does.
pub fn to_json(agent: &Agent, st: &State, busy: Option<&str>) -> Value {
    let slots = agent.disk.slots();
    let gpt_error = slots.as_ref().err().map(|e| format!("{e:#}"));
    let slots = slots.ok();
    let st = &settled(agent, st, slots);
    json!({
        "state": st.state,
        "running": slot_json(agent, st, slots, agent.disk.booted),
        "other": slot_json(agent, st, slots, agent.disk.passive()),
        "channel": agent.config.channel,
        "strategy": agent.config.strategy.name(),
        "last_check": st.last_check,
        "last_error": st.last_error,
        "available": st.available,
        "staged": st.staged,
        "rolled_back": st.rolled_back,
        "busy": busy,
        "sequence": st.last_sequence,
        "download": st.download,
        "paused": st.paused,
        "last_staging": st.last_staging,
        "gpt_error": gpt_error,
    })
}

/// Prints the status.
pub fn print(agent: &Agent, st: &State, busy: Option<&str>, as_json: bool) -> anyhow::Result<()> {
    let v = to_json(agent, st, busy);
    let st = &settled(agent, st, agent.disk.slots().ok());
    if as_json {
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("State:     {}", s(&v["state"]));
    if let Some(b) = busy {
        println!("Busy:      {b}");
    }
    for (what, key) in [("Running:", "running"), ("Other:", "other")] {
        let x = &v[key];
        println!(
            "{what:<10} {} {} ({}), version {}: priority {}, tries {}, successful {}",
            s(&x["label"]),
            s(&x["device"]),
            s(&x["slot"]),
            s(&x["version"]),
            s(&x["priority"]),
            s(&x["tries"]),
            s(&x["successful"]),
        );
    }
    println!("Channel:   {} (strategy {})", s(&v["channel"]), s(&v["strategy"]));
    println!("Checked:   {} (index sequence {})", s(&v["last_check"]), s(&v["sequence"]));
    if !v["available"].is_null() {
        println!("Available: {}", s(&v["available"]));
    }
    if let Some(st) = &st.staged {
        println!("Staged:    {} in slot {} at {}", st.version, st.slot, st.at);
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
                r.version, r.slot, r.at
            );
        } else {
            println!(
                "Rolled back: {} (slot {}, {}); not retried until a newer version appears or apply --force",
                r.version, r.slot, r.at
            );
        }
    }
    if let Some(e) = &st.last_error {
        println!("Last error: {e}");
    }
    if let Some(e) = v["gpt_error"].as_str() {
        println!("GPT:       {e}");
    }
    Ok(())
}
