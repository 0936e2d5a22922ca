//! The update flow of docs/design.md §4: check the channel, pick a release, stage it into the
//! passive slot (kernel files fetched and checked first, the slot cleared, the image streamed in
//! while hashed, read back and verified, the kernel files written, then the attributes set),
//! mark a healthy boot good, notice a rollback. Every slot change goes through berth-slot's
//! transitions; the running slot is never written.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use berth_release::artifact::Sha256;
use berth_release::config::{Strategy, UpdateConfig};
use berth_release::index::{FrameList, Index, MAX_INDEX_BYTES, Release, compare_versions};
use berth_release::keyset;
use berth_release::repo::{artifact_url, signature_url, split_index_url};
use berth_release::signature::MAX_SIGNATURE_BYTES;
use berth_release::{ArtifactCheck, Floor, Rejected, Timestamp, TrustedKeys, accept, rollout};
use berth_slot::TransitionError;
use berth_slot::layout::ESP_PARTITION;

use crate::disk::{BootDisk, SlotStore, device_size};
use crate::esp::{self, KernelFiles};
use crate::fleetlock;
use crate::http::{FetchError, Http};
use crate::pipeline;
use crate::state::{FleetLockRefusal, Progress, RolledBack, Staged, Staging, State};
use crate::trust;

/// Image bytes per write.
const CHUNK: usize = 4 << 20;

/// One run of the agent: its configuration, disk, and the state it owns (loaded from and saved
/// to its state directory). Phases change only through the state's guarded transitions.
pub struct Agent {
    /// The configuration.
    pub config: UpdateConfig,
    /// The boot disk.
    pub disk: BootDisk,
    /// The running image's version.
    pub version: String,
    /// This host's machine-id (for its rollout position).
    pub machine_id: String,
    /// Where the state lives.
    pub state_dir: PathBuf,
    /// The remembered state, as loaded (and changed since).
    pub state: State,
    /// The slot attributes (the boot disk's GPT; in memory in unit tests).
    store: Box<dyn SlotStore>,
    /// What reboots the machine (`berthctl reboot`).
    reboot_command: Vec<String>,
    http: Http,
}

/// What a check found.
#[derive(Debug)]
pub enum Found {
    /// Nothing newer for this host.
    UpToDate,
    /// A release to install.
    Update(Box<Release>),
    /// A newer release whose rollout has not reached this host yet.
    Later {
        /// Its version.
        version: String,
        /// When this host may take it.
        from: Timestamp,
    },
}

impl Agent {
    /// Reads the configuration and finds the disk. For a command that makes requests
    /// (`network`), a bad `tls-ca` file is an error now, not at the first request; the others
    /// (mark-good, status, rollback) only warn: a CA file on /etc cannot be mended by a rollback,
    /// so it must not keep a good slot from being marked good. Their client trusts no server.
    pub fn open(network: bool) -> anyhow::Result<Agent> {
        let config = UpdateConfig::load(Path::new("/"))?;
        let tls = match crate::http::tls(&config) {
            Ok(tls) => tls,
            Err(e) if !network => {
                eprintln!("berth-update: warning: {e}");
                berth_http::Tls::trust_nothing()
            }
            Err(e) => return Err(anyhow!(e)),
        };
        let http = Http::new(tls);
        let disk = BootDisk::find()?;
        let version = match &config.version {
            Some(v) => v.clone(),
            None => os_release_version().context("the image's version (update.toml or os-release)")?,
        };
        let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default().trim().to_string();
        let state_dir = PathBuf::from(crate::state::STATE_DIR);
        Ok(Agent {
            config,
            store: Box::new(disk.clone()),
            disk,
            version,
            machine_id,
            state: State::load(&state_dir),
            state_dir,
            reboot_command: vec!["berthctl".into(), "reboot".into()],
            http,
        })
    }

    /// The agent's client (its TLS settings are the configuration's).
    pub fn http(&self) -> &Http {
        &self.http
    }

    /// Reads the state again, as the holder of the agent's lock: a phase left in progress is
    /// settled (see [`State::settle_stale`]).
    pub fn reload_locked(&mut self) {
        self.state = State::load(&self.state_dir);
        self.state.settle_stale();
    }

    /// Reads the state again (for what the lock's holder is doing: nothing is settled).
    pub fn reload(&mut self) {
        self.state = State::load(&self.state_dir);
    }

    /// The slot attributes.
    pub fn slots(&self) -> anyhow::Result<berth_slot::Slots> {
        self.store.slots()
    }

    /// Saves the state, reporting (not failing on) an error: the state is advisory for
    /// everything but the sequence, which is saved before it matters.
    pub fn save(&self) {
        save_state(&self.state_dir, &self.state);
    }

    /// Saves the state, failing when it is not durable: for records a later step must not
    /// outlive (a rollback's, before its slot is cleared or switched).
    pub fn save_durably(&self) -> anyhow::Result<()> {
        self.state
            .save(&self.state_dir)
            .with_context(|| format!("saving the agent's state in {}", self.state_dir.display()))
    }

    /// Fetches and accepts the index; returns it and what it offers this host.
    pub fn check(&mut self, force: bool) -> anyhow::Result<(Index, Found)> {
        let url = self.config.channel.as_deref().context(
            "no update channel: neither /usr/lib/berth/update.toml nor /etc/berth/update.toml sets `channel`",
        )?;
        let (base, channel) = split_index_url(url).with_context(|| format!("channel {url:?}"))?;
        // Expiry, key sets and rollouts are judged by the clock: not before it is set (M5).
        crate::clock::clock_ready(Path::new("/"), std::time::SystemTime::now())?;
        let now = Timestamp::now();
        let trusted = self.trusted_index_keys(base, now)?;
        let index_bytes = self.http.get_small(url, MAX_INDEX_BYTES as u64)?;
        let sig_url = signature_url(url);
        let sig_bytes = self.http.get_small(&sig_url, MAX_SIGNATURE_BYTES as u64)?;
        let (index, floor, found) = self
            .judge(&index_bytes, &sig_bytes, &trusted, channel, now, force)
            .map_err(|e| anyhow!("{url}: refused: {e}"))?;
        // Kept before anything acts on the index.
        trust::save_floor(&self.state_dir, floor).context("keeping the replay floor")?;
        let st = &mut self.state;
        st.set_floor(floor);
        st.last_check = Some(now);
        st.last_error = None;
        st.available = match &found {
            Found::Update(r) => Some(r.version.clone()),
            Found::Later { version, .. } => Some(version.clone()),
            Found::UpToDate => None,
        };
        Ok((index, found))
    }

    /// Walks the repository's key sets from what this host trusts (berth_release::keyset),
    /// keeps the newest one accepted, and returns the keys an index must be signed by.
    fn trusted_index_keys(&self, base: &str, now: Timestamp) -> anyhow::Result<TrustedKeys> {
        let anchor = TrustedKeys::new(&self.config.keys, self.config.threshold)
            .context("the root keys of update.toml (keys, threshold)")?;
        let start = trust::load_trust(&self.state_dir, &anchor);
        let fetch = |version: u64| trust::fetch_keyset(&self.http, base, version);
        let followed = keyset::follow(start, fetch).map_err(|e| anyhow!("{base}/keys: refused: {e:#}"))?;
        for e in &followed.skipped {
            println!("{base}/keys: skipped: {e}");
        }
        if let Some((document, signatures)) = &followed.newest {
            trust::save_keyset(&self.state_dir, &anchor, document, signatures).context("keeping the key set")?;
            println!("{base}/keys: key set {} accepted", followed.trust.version());
        }
        followed.trust.index_keys(now).map_err(|e| anyhow!("{base}/keys: {e}"))
    }

    /// What a fetched index offers this host, at `now`: the index accepted (its signatures by
    /// `trusted`, its channel, its expiry, and its sequence against the replay floor, which is
    /// the higher of state.json's and floor.json's since either may be lost), the floor to keep,
    /// and the release chosen from it ([`Agent::choose`]). Nothing is saved.
    pub fn judge(
        &self,
        index: &[u8],
        signatures: &[u8],
        trusted: &TrustedKeys,
        channel: &str,
        now: Timestamp,
        force: bool,
    ) -> Result<(Index, Floor, Found), Rejected> {
        let floor = Floor::max(self.state.floor(), trust::load_floor(&self.state_dir));
        let (index, floor) = accept(index, signatures, trusted, channel, now, floor)?;
        let found = self.choose(&index, now, force);
        Ok((index, floor, found))
    }

    /// The newest release above the running version that is not pulled, did not roll back
    /// here before (unless `force`), and whose rollout has reached this host (unless `force`).
    pub fn choose(&self, index: &Index, now: Timestamp, force: bool) -> Found {
        let mut candidates: Vec<&Release> = index
            .releases
            .iter()
            .filter(|r| !r.pulled)
            .filter(|r| compare_versions(&r.version, &self.version).is_gt())
            .filter(|r| force || !self.state.rolled_back(&r.version))
            .collect();
        candidates.sort_by(|a, b| compare_versions(&b.version, &a.version));
        let mut later = None;
        for r in candidates {
            let pos = rollout::position(&self.machine_id, &r.version);
            if force || rollout::allowed(&r.rollout, pos, now) {
                return Found::Update(Box::new(r.clone()));
            }
            later.get_or_insert(Found::Later {
                version: r.version.clone(),
                from: rollout::allowed_from(&r.rollout, pos),
            });
        }
        later.unwrap_or(Found::UpToDate)
    }

    /// Whether `release` already waits in the passive slot.
    pub fn already_staged(&self, release: &Release) -> bool {
        let passive = self.disk.passive();
        let staged = self.state.staged.as_ref().is_some_and(|s| s.slot == passive && s.version == release.version);
        staged
            && self.store.slots().is_ok_and(|s| {
                let p = s.get(passive);
                p.priority > s.get(self.disk.booted).priority && p.tries > 0
            })
    }

    /// Stages `release` into the passive slot (the agent is checking: the check found it). The
    /// state is saved as the steps go. Without `force`,
    /// a passive slot that booted to health with a newer version than the running one is not
    /// overwritten by anything but a version newer still (see [`Agent::may_overwrite`]).
    pub fn stage(&mut self, index_url: &str, release: &Release, force: bool) -> anyhow::Result<()> {
        let booted = self.disk.booted;
        let passive = self.disk.passive();
        let slots = self.store.slots()?;
        if !slots.get(booted).successful {
            bail!("the running slot {} is on trial (not yet marked good): updates wait until it is", booted.label());
        }
        if !force {
            self.may_overwrite(slots, &release.version)?;
        }
        let (base, _) = split_index_url(index_url).with_context(|| format!("channel {index_url:?}"))?;
        let version = &release.version;
        println!("staging {version} into {} ({})", passive.label(), self.disk.slot_node(passive).display());

        // The kernel files first: a bad one is refused before the disk is touched.
        let fetch = |a: &berth_release::Artifact| -> Result<Vec<u8>, FetchError> {
            self.http.artifact(&artifact_url(base, &a.path), ArtifactCheck::new(&a.path, a.size, a.sha256)).read_all()
        };
        let vmlinuz = fetch(&release.vmlinuz)?;
        let initrd = fetch(&release.initrd)?;
        // M8: the signed frame list, so that every frame is authenticated before it is decoded.
        let list = release.root.frames.as_ref().with_context(|| {
            format!(
                "{version}: the index names no frame list for the root image (root.frames): refused, its frames \
                 could not be authenticated before they are decoded"
            )
        })?;
        let frames = FrameList::parse(&fetch(list)?, release.root.file.size, release.root.image_size)
            .map_err(|e| anyhow!("{}: {e}", list.path))?;

        let node = self.disk.slot_node(passive);
        let dev = self.disk.open_for_writing(&node)?;
        let capacity = device_size(&dev, &node)?;
        if release.root.image_size > capacity {
            bail!(
                "{version}'s root image is {} bytes, more than {} ({} bytes) holds",
                release.root.image_size,
                passive.label(),
                capacity
            );
        }

        // Unbootable before the first byte lands.
        let cleared = slots.begin_write(passive)?;
        self.store.write_slots(cleared)?;
        self.state.slots.remove(passive.name());
        self.state.begin_download(Progress {
            version: version.clone(),
            received: 0,
            size: release.root.file.size,
            written: 0,
            image_size: release.root.image_size,
        })?;
        self.save();
        crate::fleet_report::send(self);

        let started = Instant::now();
        let figures = self.stream_root(&dev, &node, base, release, frames)?;
        let written = figures.written;
        let write_seconds = started.elapsed().as_secs_f64();
        let verify_started = Instant::now();
        verify_slot(&dev, &node, release)?;
        // M13: the slot must hold the version the index names, or the next check would offer
        // the same release again after the switch (an endless update loop).
        check_slot_version(&dev, &node, &release.version, release.root.image_size)?;
        let verify_seconds = verify_started.elapsed().as_secs_f64();
        let mib = written as f64 / f64::from(1 << 20);
        println!(
            "{}: {mib:.0} MiB written in {write_seconds:.1} s ({:.1} MiB/s), read back and verified in {verify_seconds:.1} s",
            passive.label(),
            mib / write_seconds.max(1e-9)
        );
        self.state.last_staging = Some(Staging {
            version: version.clone(),
            image_bytes: written,
            downloaded_bytes: release.root.file.size,
            write_seconds,
            write_mib_per_s: mib / write_seconds.max(1e-9),
            decoders: figures.decoders,
            receive_cpu_seconds: figures.network.as_secs_f64(),
            decompress_cpu_seconds: figures.decompress.as_secs_f64(),
            write_cpu_seconds: figures.disk.as_secs_f64(),
            verify_seconds,
        });

        let esp = self.disk.partition_node(ESP_PARTITION);
        esp::write_slot(&esp, passive, &KernelFiles { vmlinuz: &vmlinuz, initrd: &initrd, cmdline: &release.cmdline })?;
        println!("{}: {}/ written ({} + {} bytes)", esp.display(), passive.esp_dir(), vmlinuz.len(), initrd.len());

        // The power-cut test cuts here: the slot is written, its attributes not yet.
        #[cfg(feature = "failpoints")]
        self.fail_point("verified")?;

        let staged = self.store.slots()?.staged(passive, self.config.tries)?;
        self.state.finish_staging(Staged { slot: passive, version: version.clone(), at: Timestamp::now() })?;
        // Staged again (by `apply --force`): no longer held back; a failed trial records it anew.
        self.state.rolled_back.retain(|r| &r.version != version);
        self.store.write_slots(staged)?;
        self.save();
        println!("{version} staged in {}: {} trial boot(s)", passive.label(), self.config.tries);
        Ok(())
    }

    /// Refuses to clear a passive slot that is marked successful and holds a version newer than
    /// the running one (a manual rollback left it) for a release not newer than that version.
    pub fn may_overwrite(&self, slots: berth_slot::Slots, version: &str) -> anyhow::Result<()> {
        let passive = self.disk.passive();
        if !slots.get(passive).successful {
            return Ok(());
        }
        // A slot whose version the state does not know (a lost state.json) is not judged.
        let Some(held) = self.state.slots.get(passive.name()) else { return Ok(()) };
        if compare_versions(held, &self.version).is_gt() && !compare_versions(version, held).is_gt() {
            bail!(
                "{} holds {held}, which booted to health and is newer than the running {}: not overwritten \
                 with {version} (it was rolled back from by hand); `berth-update apply --force` overwrites it",
                passive.label(),
                self.version
            );
        }
        Ok(())
    }

    /// Streams the root image into the slot (see [`crate::pipeline`]).
    fn stream_root(
        &mut self,
        dev: &File,
        node: &Path,
        base: &str,
        release: &Release,
        frames: FrameList,
    ) -> anyhow::Result<pipeline::Figures> {
        let root = &release.root;
        let url = artifact_url(base, &root.file.path);
        let reader = self.http.artifact(&url, ArtifactCheck::new(&root.file.path, root.file.size, root.file.sha256));
        // The stream is hashed by its ArtifactCheck; the expanded image is hashed once, when
        // it is read back from the disk (verify_slot): hashing it here too would double the
        // cost of the slowest step for no more assurance.
        let mut last_save = Instant::now();
        let mut next_percent = 10;
        let mut progress = |received: u64, written: u64| {
            let percent = written * 100 / root.image_size.max(1);
            if percent >= next_percent {
                println!("{}: {percent}% ({} of {} MiB)", node.display(), written >> 20, root.image_size >> 20);
                next_percent = percent + 10;
            }
            if last_save.elapsed() > Duration::from_secs(2) {
                if let Some(p) = self.state.download.as_mut() {
                    p.written = written;
                    p.received = received;
                }
                save_state(&self.state_dir, &self.state);
                last_save = Instant::now();
            }
        };
        pipeline::stream_frames(reader, &root.file.path, root.image_size, frames, dev, node, &mut progress)
    }

    /// Marks the booted slot good (after boot-complete.target), then notices a rollback.
    pub fn mark_good(&mut self) -> anyhow::Result<String> {
        let booted = self.disk.booted;
        let slots = self.store.slots()?;
        let msg = match slots.mark_good(booted) {
            Ok(next) => {
                let wrote = self.store.write_slots(next)?;
                if wrote {
                    format!("marked {} ({}) good", booted.label(), self.version)
                } else {
                    format!("{} ({}) was already marked good", booted.label(), self.version)
                }
            }
            Err(TransitionError::UpdatePending { pending }) => {
                format!("{} ({}) is good; an update waits in {}", booted.label(), self.version, pending.label())
            }
            Err(e) => return Err(anyhow!("marking {} good: {e}", booted.label())),
        };
        let st = &mut self.state;
        st.slots.insert(booted.name().into(), self.version.clone());
        st.drop_stale_available(&self.version);
        if let Some(s) = st.staged.as_ref().filter(|s| s.slot == booted)
            && s.version != self.version
        {
            // M13: the staged slot booted but runs another version than the index named:
            // recorded like a rollback, so the release is not staged again every interval.
            let msg = format!(
                "{} was staged as {} but runs {}: the release's image is not the version its index names; {} is \
                 not installed again",
                booted.label(),
                s.version,
                self.version,
                s.version
            );
            println!("{msg}");
            if !st.rolled_back(&s.version) {
                let at = Timestamp::now();
                st.rolled_back.push(RolledBack { version: s.version.clone(), slot: s.slot, at, manual: false });
            }
            st.last_error = Some(msg);
        }
        if st.staged.as_ref().is_some_and(|s| s.slot == booted) {
            st.staged = None;
        }
        // The lock is held: nothing is in progress.
        st.rest();
        self.notice_rollback()?;
        Ok(msg)
    }

    /// If the other slot holds an update that ran out of tries, records the rollback and clears
    /// the slot. Only once the running slot is marked good (clearing needs a good slot left).
    /// The record is saved durably before the slot is cleared: if it cannot be (a full STATE),
    /// this fails and the slot stays as it is, so the failed version is not offered again.
    pub fn notice_rollback(&mut self) -> anyhow::Result<()> {
        let booted = self.disk.booted;
        let slots = self.store.slots()?;
        let st = &mut self.state;
        // A staged record whose slot the attributes do not back (a cut before they were
        // written) is forgotten.
        if let Some(s) = &st.staged
            && s.slot != booted
            && slots.get(s.slot).priority == 0
        {
            st.staged = None;
            st.rest();
        }
        if !slots.get(booted).successful {
            return Ok(());
        }
        let Some(failed) = slots.detect_failed_update(booted) else { return Ok(()) };
        let version = st
            .staged
            .as_ref()
            .filter(|s| s.slot == failed)
            .map(|s| s.version.clone())
            .or_else(|| st.slots.get(failed.name()).cloned())
            .unwrap_or_else(|| "an unknown version".into());
        let cleared = slots.clear(failed)?;
        let msg = format!(
            "rolled back: {version} in {} did not boot to health within its trial boots; {} ({}) runs again",
            failed.label(),
            booted.label(),
            self.version
        );
        st.record_rollback(RolledBack { version, slot: failed, at: Timestamp::now(), manual: false }, msg.clone())?;
        self.save_durably()
            .context("recording the rollback (the failed slot is left as it is until it is recorded)")?;
        self.store.write_slots(cleared)?;
        println!("{msg}");
        Ok(())
    }

    /// Reboots into the staged slot as the strategy allows at `now`; returns what happened.
    pub fn maybe_reboot(&mut self, now: Timestamp) -> anyhow::Result<String> {
        let Some(staged) = self.state.staged.clone() else { return Ok("nothing staged".into()) };
        let go = match &self.config.strategy {
            Strategy::Immediate => true,
            Strategy::Window(w) => w.contains(now),
            Strategy::FleetLock(f) => match fleetlock::Client::new(&self.http, f, &self.machine_id).pre_reboot() {
                Ok(()) => {
                    println!("fleetlock {}: this host holds a reboot lock of group {}", f.url, f.group);
                    self.state.fleetlock = None;
                    true
                }
                Err(why) => {
                    self.state.fleetlock = Some(FleetLockRefusal {
                        kind: why.error_kind(),
                        status: why.status_code(),
                        message: why.to_string(),
                    });
                    bail!(
                        "{} staged; the fleet's reboot lock was not given ({why}); asking again at the next check",
                        staged.version
                    )
                }
            },
            Strategy::Off => false,
        };
        if !go {
            return Ok(match &self.config.strategy {
                Strategy::Window(w) => {
                    format!(
                        "{} staged; rebooting in the next window ({}) at {}",
                        staged.version,
                        w.describe(),
                        w.next_open(now)
                    )
                }
                _ => format!("{} staged; strategy off: reboot to switch (berthctl reboot)", staged.version),
            });
        }
        self.state.begin_reboot()?;
        self.save();
        // The fleet hears of it before the host goes quiet (best effort: never stops the reboot).
        crate::fleet_report::send(self);
        println!("rebooting into {} ({})", staged.version, staged.slot.name());
        let command = self.reboot_command.join(" ");
        let status = std::process::Command::new(&self.reboot_command[0])
            .args(&self.reboot_command[1..])
            .status()
            .with_context(|| format!("running {command}"));
        if !status.as_ref().is_ok_and(|s| s.success()) {
            // Not rebooting after all: staged, as before.
            self.state.rest();
            self.save();
            bail!("{command}: {}", status.map_or_else(|e| format!("{e:#}"), |s| s.to_string()));
        }
        Ok(format!("rebooting into {}", staged.version))
    }

    /// With strategy fleetlock, gives back any reboot lock this host holds (once the running
    /// slot is good: after an update, or after a rollback); `None` with another strategy.
    pub fn fleet_steady_state(&self) -> Option<Result<(), fleetlock::FleetLockError>> {
        let Strategy::FleetLock(f) = &self.config.strategy else { return None };
        let r = fleetlock::Client::new(&self.http, f, &self.machine_id).steady_state();
        if r.is_ok() {
            println!("fleetlock {}: steady state reported; any reboot lock of this host is given back", f.url);
        }
        Some(r)
    }

    /// Manual rollback: the other slot (which must have booted to health) boots next, and the
    /// running version is held back: recorded as rolled back (durably, before the switch), so no
    /// check offers it again until a newer version appears or `apply --force`.
    pub fn rollback(&mut self) -> anyhow::Result<String> {
        let booted = self.disk.booted;
        let other = self.disk.passive();
        let next = self.store.slots()?.rollback(other)?;
        let st = &mut self.state;
        st.rolled_back.retain(|r| r.version != self.version);
        // Rolling back to a version held back by an earlier rollback takes it back.
        let to = st.slots.get(other.name()).cloned();
        st.rolled_back.retain(|r| !(r.manual && Some(&r.version) == to.as_ref()));
        st.rolled_back.push(RolledBack {
            version: self.version.clone(),
            slot: booted,
            at: Timestamp::now(),
            manual: true,
        });
        st.slots.insert(booted.name().into(), self.version.clone());
        st.staged = None;
        st.available = None;
        st.rest();
        self.save_durably().context("recording the rollback (nothing was switched)")?;
        self.store.write_slots(next)?;
        Ok(format!(
            "{} ({}) boots next; reboot to switch. {} is held back: not installed again until a newer version \
             appears or `berth-update apply --force`",
            other.label(),
            self.state.slots.get(other.name()).map_or("version unknown", String::as_str),
            self.version
        ))
    }
}

/// Reads the slot back from the disk (not the page cache) and compares its hash.
fn verify_slot(dev: &File, node: &Path, release: &Release) -> anyhow::Result<()> {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    let size = release.root.image_size;
    // O_DIRECT reads come from the device; a tail read through the page cache too, once the
    // cached pages are dropped.
    let _ = posix_fadvise(dev, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    let mut direct = pipeline::open_direct(node, false);
    let mut hasher = Sha256::new();
    let mut buf = pipeline::Aligned::new(CHUNK);
    let mut at = 0u64;
    while at < size {
        let n = usize::try_from((size - at).min(CHUNK as u64)).unwrap_or(CHUNK);
        let bytes = &mut buf.all()[..n];
        pipeline::read_exact_at(dev, &mut direct, bytes, at)
            .with_context(|| format!("reading {} back at byte {at}", node.display()))?;
        hasher.update(bytes);
        at += n as u64;
    }
    let got = hasher.finish();
    if got != release.root.image_sha256 {
        bail!(
            "{} read back: SHA-256 {got} does not match {} in the signed index (the disk did not keep what was written)",
            node.display(),
            release.root.image_sha256
        );
    }
    Ok(())
}

/// The `version` of `/usr/lib/berth/update.toml` in the ext4 filesystem on `dev`: the version
/// the agent will read when it runs from that root.
pub fn slot_version(dev: &File, size: u64) -> anyhow::Result<Option<String>> {
    struct Reader {
        file: File,
        size: u64,
    }
    impl ext4_view::Ext4Read for Reader {
        fn read(&mut self, start: u64, dst: &mut [u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            use std::os::unix::fs::FileExt;
            if start.checked_add(dst.len() as u64).is_none_or(|end| end > self.size) {
                return Err("a read past the end of the image".into());
            }
            Ok(self.file.read_exact_at(dst, start)?)
        }
    }
    let fs = ext4_view::Ext4::load(Box::new(Reader { file: dev.try_clone()?, size }))
        .map_err(|e| anyhow!("not an ext4 filesystem: {e}"))?;
    let path = berth_release::config::IMAGE_CONFIG;
    let text = match fs.read_to_string(path) {
        Ok(t) => t,
        Err(ext4_view::Ext4Error::NotFound) => return Ok(None),
        Err(e) => bail!("reading {path}: {e}"),
    };
    let c = UpdateConfig::from_texts(&[(PathBuf::from(path), text)]).map_err(|e| anyhow!("{e}"))?;
    Ok(c.version)
}

/// Refuses a written slot whose own version is not the release's.
fn check_slot_version(dev: &File, node: &Path, version: &str, image_size: u64) -> anyhow::Result<()> {
    let own = slot_version(dev, image_size).with_context(|| format!("{}", node.display()))?;
    match own {
        Some(v) if v == version => Ok(()),
        Some(v) => bail!(
            "{}: the image says version {v}, the signed index {}: refused before the switch (the release is \
             mislabelled)",
            node.display(),
            version
        ),
        None => bail!(
            "{}: the image names no version in {}: refused before the switch (the signed index says {})",
            node.display(),
            berth_release::config::IMAGE_CONFIG,
            version
        ),
    }
}

#[cfg(test)]
mod m13_tests {
    use super::*;
    use berth_slot::Slot;

    /// After the reboot into the staged slot, the running image says another version than the
    /// one staged (a mislabelled release): recorded like a rollback, not offered again.
    #[test]
    fn m13_a_staged_slot_that_runs_another_version_is_not_staged_again() {
        use berth_slot::{SlotAttrs, Slots};
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let on_trial = SlotAttrs { priority: 2, tries: 2, successful: false };
        let fallback = SlotAttrs { priority: 1, tries: 0, successful: true };
        let img = super::tests::disk_image(dir.path(), Slots::new(fallback, on_trial));
        let mut on_b = Agent::for_test(BootDisk::image(img, Slot::B), "1.9.9", &state);
        on_b.state.staged = Some(Staged { slot: Slot::B, version: "2.0.0".into(), at: Timestamp(0) });
        on_b.mark_good().unwrap();
        let st = &on_b.state;
        assert!(st.rolled_back("2.0.0"), "{st:?}");
        let e = st.last_error.clone().unwrap_or_default();
        assert!(e.contains("staged as 2.0.0 but runs 1.9.9"), "{e}");
        let index = Index {
            schema: berth_release::index::SCHEMA,
            channel: "stable".into(),
            sequence: 1,
            issued: Timestamp(0),
            expires: Timestamp(i64::from(u32::MAX)),
            releases: vec![super::tests::release("2.0.0")],
        };
        assert!(matches!(on_b.choose(&index, Timestamp::now(), false), Found::UpToDate));
    }

    /// An ext4 image made by mke2fs (e2fsprogs, an independent writer) holding `toml` as the
    /// image's update.toml.
    fn image(dir: &Path, toml: Option<&str>) -> (File, u64) {
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("usr/lib/berth")).unwrap();
        if let Some(t) = toml {
            std::fs::write(tree.join("usr/lib/berth/update.toml"), t).unwrap();
        }
        let img = dir.join("root.img");
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&tree)
            .arg(&img)
            .arg("4M")
            .output()
            .expect("mkfs.ext4 (e2fsprogs)");
        assert!(out.status.success(), "{out:?}");
        (File::open(&img).unwrap(), 4 << 20)
    }

    #[test]
    fn m13_a_slot_whose_own_version_differs_from_the_index_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (f, size) = image(d.path(), Some("version = \"2.0.0\"\n"));
        check_slot_version(&f, Path::new("/dev/vda3"), "2.0.0", size).unwrap();
        let e = check_slot_version(&f, Path::new("/dev/vda3"), "3.0.0", size).unwrap_err().to_string();
        assert!(e.contains("says version 2.0.0") && e.contains("3.0.0"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let (f, size) = image(d.path(), None);
        let e = check_slot_version(&f, Path::new("/dev/vda3"), "2.0.0", size).unwrap_err().to_string();
        assert!(e.contains("names no version"), "{e}");
        let zero = File::open("/dev/zero").unwrap();
        let e = format!("{:#}", check_slot_version(&zero, Path::new("/dev/zero"), "2.0.0", size).unwrap_err());
        assert!(e.contains("not an ext4 filesystem"), "{e}");
    }
}

/// Saves `state` in `dir`, reporting (not failing on) an error.
fn save_state(dir: &Path, state: &State) {
    if let Err(e) = state.save(dir) {
        println!("warning: {e:#}");
    }
}

/// VERSION_ID from os-release.
fn os_release_version() -> anyhow::Result<String> {
    let text = std::fs::read_to_string("/usr/lib/os-release").context("reading /usr/lib/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_ID="))
        .map(|v| v.trim_matches('"').to_string())
        .context("/usr/lib/os-release has no VERSION_ID")
}

#[cfg(test)]
impl Agent {
    /// An agent on a disk image (tests): booted `booted`, running `version`, state in
    /// `state_dir` (loaded from there).
    pub fn for_test(disk: BootDisk, version: &str, state_dir: &Path) -> Agent {
        Agent::for_test_with(Box::new(disk.clone()), disk, version, state_dir)
    }

    /// [`Agent::for_test`] with the slot attributes in `store`.
    pub fn for_test_with(store: Box<dyn SlotStore>, disk: BootDisk, version: &str, state_dir: &Path) -> Agent {
        Agent {
            config: UpdateConfig::default(),
            store,
            disk,
            version: version.into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            state: State::load(state_dir),
            state_dir: state_dir.to_path_buf(),
            reboot_command: vec!["false".into()],
            http: Http::with_retries(1, Duration::from_millis(1)),
        }
    }
}

#[cfg(test)]
mod policy_tests;

#[cfg(test)]
mod fleet_tests;

#[cfg(test)]
pub mod tests {
    use super::*;
    use berth_release::index::{Artifact, Compression, Digest, Rollout, RootArtifact};
    use berth_slot::Slot;
    use berth_slot::{SlotAttrs, Slots};

    /// A 16 MiB disk image with Berth's partitions, made by sgdisk (gdisk), slots as given.
    pub fn disk_image(dir: &Path, slots: Slots) -> PathBuf {
        let img = dir.join("disk.img");
        std::fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
        let root = berth_slot::layout::ROOT_TYPE_GUID;
        let out = std::process::Command::new("sgdisk")
            .args(["-n", "1:2048:+2M", "-t", "1:ef00", "-c", "1:EFI-SYSTEM"])
            .args(["-n", "2:0:+4M", "-t", &format!("2:{root}"), "-c", "2:ROOT-A"])
            .args(["-n", "3:0:+4M", "-t", &format!("3:{root}"), "-c", "3:ROOT-B"])
            .args(["-n", "4:0:0", "-c", "4:STATE"])
            .arg(&img)
            .output()
            .expect("sgdisk (gdisk)");
        assert!(out.status.success(), "sgdisk: {}", String::from_utf8_lossy(&out.stderr));
        BootDisk::image(img.clone(), Slot::A).write_slots(slots).unwrap();
        img
    }

    /// A release of `version` (its artifacts on an address nothing listens on).
    pub fn release(version: &str) -> Release {
        let a = |name: &str| Artifact { path: format!("releases/{version}/{name}"), size: 10, sha256: Digest([0; 32]) };
        Release {
            version: version.into(),
            cmdline: "console=ttyS0".into(),
            root: RootArtifact {
                file: a("root.img.zst"),
                compression: Compression::Zstd,
                image_size: 1 << 20,
                image_sha256: Digest([0; 32]),
                frames: Some(a("root.img.zst.frames")),
            },
            vmlinuz: a("vmlinuz"),
            initrd: a("initrd.img"),
            rollout: Rollout { start: Timestamp(0), duration_seconds: 0 },
            pulled: false,
        }
    }

    fn index(versions: &[&str]) -> Index {
        Index {
            schema: berth_release::index::SCHEMA,
            channel: "stable".into(),
            sequence: 1,
            issued: Timestamp(0),
            expires: Timestamp(i64::from(u32::MAX)),
            releases: versions.iter().map(|v| release(v)).collect(),
        }
    }

    const GOOD: SlotAttrs = SlotAttrs { priority: 2, tries: 0, successful: true };

    /// A to B (1.0.0 to 1.1.0), B marked good, then `berth-update rollback` on B and the reboot
    /// into A: the next check offers 1.1.0 no more, nothing writes over B, status says why; a
    /// newer 1.2.0 is taken, and `--force` takes 1.1.0 again.
    #[test]
    fn m1_a_manual_rollback_holds_the_version_it_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let fallback = SlotAttrs { priority: 1, ..GOOD };
        let img = disk_image(dir.path(), Slots::new(fallback, GOOD));
        let mut on_b = Agent::for_test(BootDisk::image(img.clone(), Slot::B), "1.1.0", &state);
        on_b.state.available = Some("1.1.0".into());
        on_b.state.slots.insert("a".into(), "1.0.0".into());
        on_b.state.slots.insert("b".into(), "1.1.0".into());
        let msg = on_b.rollback().unwrap();
        assert!(msg.contains("ROOT-A (1.0.0) boots next") && msg.contains("1.1.0 is held back"), "{msg}");
        let slots = on_b.slots().unwrap();
        assert!(slots.get(Slot::A).priority > slots.get(Slot::B).priority);

        // The reboot into A; the state is what the rollback saved.
        let mut on_a = Agent::for_test(BootDisk::image(img.clone(), Slot::A), "1.0.0", &state);
        let st = &on_a.state;
        assert!(st.rolled_back.iter().any(|r| r.version == "1.1.0" && r.manual && r.slot == Slot::B), "{st:?}");
        let now = Timestamp::now();
        assert!(matches!(on_a.choose(&index(&["1.0.0", "1.1.0"]), now, false), Found::UpToDate));
        match on_a.choose(&index(&["1.0.0", "1.1.0", "1.2.0"]), now, false) {
            Found::Update(r) => assert_eq!(r.version, "1.2.0"),
            other => panic!("{other:?}"),
        }
        match on_a.choose(&index(&["1.0.0", "1.1.0"]), now, true) {
            Found::Update(r) => assert_eq!(r.version, "1.1.0"),
            other => panic!("{other:?}"),
        }
        // Staging over B, which booted to health with 1.1.0, is refused before anything is
        // fetched or written, unless forced or newer.
        let before = std::fs::read(&img).unwrap();
        let e = on_a.stage("http://127.0.0.1:9/channels/stable.json", &release("1.1.0"), false).unwrap_err();
        assert!(format!("{e:#}").contains("ROOT-B holds 1.1.0, which booted to health"), "{e:#}");
        assert_eq!(std::fs::read(&img).unwrap(), before, "the disk was written");
        assert!(on_a.may_overwrite(on_a.slots().unwrap(), "1.2.0").is_ok());
        let e = on_a.stage("http://127.0.0.1:9/channels/stable.json", &release("1.1.0"), true).unwrap_err();
        assert!(format!("{e:#}").contains("127.0.0.1:9"), "forced: it goes on to fetch: {e:#}");

        let v = crate::status::to_json(&on_a, None);
        assert_eq!(v["rolled_back"][0]["manual"], true, "{v}");

        // Rolling back again (to 1.1.0) takes the hold back and holds 1.0.0 instead.
        on_a.reload_locked();
        on_a.rollback().unwrap();
        let st = &on_a.state;
        let held: Vec<_> = st.rolled_back.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(held, ["1.0.0"], "{st:?}");
        assert_eq!(v["available"], serde_json::Value::Null, "{v}");
    }

    /// Mounts a tmpfs of 64 KiB at `dir` and fills it; returns the filler to delete. `None`
    /// when mounting is not allowed (not root).
    fn full_tmpfs(dir: &Path) -> Option<PathBuf> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let filler = dir.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![1u8; 4096];
        while std::io::Write::write_all(&mut f, &block).is_ok() {}
        let _ = f.sync_all();
        Some(filler)
    }

    /// STATE full when a failed update is noticed: the rollback record cannot be saved, so the
    /// failed slot is left as it is (not cleared, so nothing can be staged over it and the
    /// version is not lost from the record), no temporary file is left, and the cycle stops.
    /// Once there is room, the record is saved and then the slot cleared.
    #[test]
    fn m7_a_rollback_record_that_cannot_be_saved_leaves_the_failed_slot_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let failed = SlotAttrs { priority: 2, tries: 0, successful: false };
        let img = disk_image(dir.path(), Slots::new(SlotAttrs { priority: 1, ..GOOD }, failed));
        let Some(filler) = full_tmpfs(&state) else {
            panic!("mounting a tmpfs needs root (this test fills a filesystem)");
        };
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
            }
        }
        let _unmount = Unmount(state.clone());
        let mut agent = Agent::for_test(BootDisk::image(img.clone(), Slot::A), "1.0.0", &state);
        agent.state.staged = Some(Staged { slot: Slot::B, version: "1.1.0".into(), at: Timestamp(0) });
        agent.state.slots.insert("b".into(), "1.1.0".into());
        // What the cycle does first; the error ends the cycle (daemon.rs), and `apply` starts with it.
        let e = agent.notice_rollback().unwrap_err();
        assert!(format!("{e:#}").contains("recording the rollback"), "{e:#}");
        assert_eq!(agent.slots().unwrap().get(Slot::B), failed, "the failed slot was cleared unrecorded");
        let names: Vec<_> = std::fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["filler"], "left behind: {names:?}");

        std::fs::remove_file(&filler).unwrap();
        agent.reload_locked();
        agent.state.slots.insert("b".into(), "1.1.0".into());
        agent.notice_rollback().unwrap();
        assert_eq!(agent.slots().unwrap().get(Slot::B), SlotAttrs::EMPTY);
        agent.reload();
        assert!(agent.state.rolled_back("1.1.0"));
    }

    /// After the reboot into the update, `status` no longer offers the version that runs; the
    /// daemon's start and mark-good forget it too.
    #[test]
    fn p9_status_shows_no_stale_available_for_the_running_version() {
        let dir = tempfile::tempdir().unwrap();
        let img = disk_image(dir.path(), Slots::new(SlotAttrs { priority: 1, ..GOOD }, GOOD));
        let mut agent = Agent::for_test(BootDisk::image(img, Slot::B), "1.1.0", &dir.path().join("state"));
        agent.state.available = Some("1.1.0".into());
        assert_eq!(crate::status::status(&agent, None).available, None);
        agent.state.available = Some("1.2.0".into());
        assert_eq!(crate::status::status(&agent, None).available.as_deref(), Some("1.2.0"));
        agent.state.available = Some("1.1.0".into());
        agent.mark_good().unwrap();
        assert_eq!(agent.state.available, None);
    }
}
