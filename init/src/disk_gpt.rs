//! A disk's GPT as berth-init reads it (stage 1 finding the root, stage 2 growing STATE): the
//! one reader berth-slot shares with the update agent.

pub use berth_slot::device::read;
