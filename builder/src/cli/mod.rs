//! Command-line interface of `berth`.

mod build;
mod export;
mod fleet;
mod fs;
mod keys;
mod publish;
mod run;
mod upload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build, inspect, boot and publish Berth disk images.
///
/// Berth is a minimal, immutable container-host OS with A/B updates. This tool turns image
/// definitions into bootable disks without root and without host filesystem tools, and
/// publishes them as signed releases that hosts update to.
#[derive(Debug, Parser)]
#[command(name = "berth", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a bootable disk image from an image definition.
    ///
    /// Resolves the definition's Debian packages from the host's apt sources (signatures
    /// checked), unpacks them into a root filesystem without root or host tools, selects kernel
    /// modules, builds the initramfs, and writes OUT/<name>.img (GPT: ESP with bootmgr and
    /// slot A's kernel, ROOT-A, empty ROOT-B, STATE) and OUT/<name>.manifest.json. Packages are
    /// cached by hash, so a second build downloads nothing. SOURCE_DATE_EPOCH fixes every
    /// timestamp; the same inputs give the same bytes.
    ///
    /// With --platform, the disk is also exported for each platform listed (as berth export does);
    /// OUT/<name>.img, the metal artifact, is always written: berth publish reads it.
    ///
    /// Example: berth build images/container-host.toml --out out --platform metal,qemu
    #[command(after_help = export::platforms_help())]
    Build(build::BuildArgs),
    /// Export a built disk for other platforms: qcow2, OVA, Vagrant boxes.
    ///
    /// Copies DISK once per platform (sparse: holes stay holes), writes the platform's name to
    /// berth/platform on the copy's ESP (and a provisioning document to berth/provision.toml, for
    /// Vagrant boxes or with --provision), and wraps it in the platform's container. Nothing else
    /// changes: every artifact carries DISK's root. DISK is checked first (a GPT with Berth's ESP,
    /// ROOT-A and STATE); artifacts are written beside their final names and renamed at the end,
    /// so a failure leaves none. SOURCE_DATE_EPOCH (else the build's time, read from the ESP)
    /// stamps every timestamp: the same disk gives the same bytes. Prints each artifact and its
    /// size.
    ///
    /// Example: berth export out/container-host.img --platform qemu,vagrant-libvirt --out out
    #[command(after_help = export::platforms_help())]
    Export(export::ExportArgs),
    /// Write filesystems directly, without mkfs, mount or root.
    #[command(subcommand)]
    Fs(fs::FsCommand),
    /// Show a disk's partitions and the A/B boot state in its GPT attributes.
    ///
    /// Prints each partition with its label, kind, place, GUID and, for ROOT-A and ROOT-B, the
    /// slot's priority, tries left and whether it was marked successful, then which slot the
    /// boot manager would start next.
    Inspect {
        /// Disk image (raw) to read.
        disk: std::path::PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Boot a disk image in QEMU, with its console on this terminal (or --headless).
    ///
    /// The UEFI firmware (OVMF) is found where distributions install it. Unless --persist, the
    /// guest writes to a temporary copy-on-write overlay (in TMPDIR, removed when QEMU exits, or
    /// in --state-dir), so DISK stays unchanged. The guest gets QEMU's user-mode network: it
    /// reaches out through the host unless --restrict, from the host only the ports forwarded
    /// with -p are reachable, on 127.0.0.1, and --guestfwd gives it servers on the host's
    /// loopback. Emulation (TCG) is the default: it works everywhere but is slow; --kvm uses
    /// hardware virtualization. On this terminal, Ctrl-A X quits QEMU and Ctrl-A C toggles the
    /// QEMU monitor; --headless puts the console in a file or on a socket, --monitor the monitor
    /// on a socket. berth exits with QEMU's exit status.
    #[command(after_help = run::EXAMPLES)]
    Run(run::RunArgs),
    /// What QEMU runs for each connection of `berth run --guestfwd`: stdin and stdout joined to
    /// 127.0.0.1:PORT.
    #[command(name = run::RELAY_COMMAND, hide = true)]
    GuestfwdRelay { port: u16 },
    /// Make an ed25519 key pair to sign releases or key sets with.
    ///
    /// Writes BASE.key, the secret (64 hex digits, mode 0600, written beside and renamed, never
    /// over an existing key unless --force), and BASE.pub, the public key, which is also
    /// printed. A root key (--root) is what images list in their definition's [update] keys;
    /// it signs key sets (berth keys sign), which name the signing keys berth publish signs
    /// channels with.
    #[command(after_help = publish::KEYGEN_EXAMPLES)]
    Keygen(publish::KeygenArgs),
    /// Publish a built disk as a signed release on a channel of a release repository.
    ///
    /// The repository is a directory of static files (docs/design.md §4): channels/NAME.json, the
    /// index of the channel's releases, with channels/NAME.json.sig, ed25519 signatures over its
    /// exact bytes; and releases/VERSION/ with root.img.zst (ROOT-A of the disk, zstd), vmlinuz
    /// and initrd.img (slot A's from the ESP). The version comes from the build's manifest, the
    /// kernel command line from the ESP. Each publish raises the index's sequence (hosts refuse
    /// a lower one: no replay), sets its expiry, and signs it with every --key. Publishing a
    /// version again with other bytes is refused; with the same bytes it only re-signs. Files
    /// are written beside their final names and renamed, so readers never see a partial
    /// repository, and a failure leaves it as it was.
    #[command(after_help = publish::PUBLISH_EXAMPLES)]
    Publish(publish::PublishArgs),
    /// Manage the key sets of a release repository: which keys sign channels, signed by the root keys.
    ///
    /// Images trust root keys ([update] keys); the root keys sign only key sets (keys/N.json),
    /// which name the signing keys that sign channel indexes, how many must sign, and an expiry.
    /// Root keys can stay offline: they are needed to add, replace or revoke a signing key, to
    /// rotate the root keys, and to renew before the key set expires. Hosts follow each key
    /// set the root keys they trust signed and refuse indexes signed by a key it left out.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Upload a built image to a cloud and register it there: an AMI, a GCE image, an Azure image.
    ///
    /// Each cloud's own API, from this host: no cloud CLI needed. The artifact is the one
    /// `berth build --platform aws|gce|azure` (or `berth export`) wrote; only its data is sent
    /// (holes and zero blocks are skipped), many requests in flight, each retried on throttling,
    /// server errors and dropped connections. Run again after an interruption, an upload finishes
    /// what it started and finds the image it registered: never two. Prints the resulting ids
    /// (--json for a document).
    #[command(subcommand)]
    Upload(upload::UploadCommand),
    /// Run and inspect a fleet: the FleetLock server (reboot slots kept in etcd), the fleet view.
    ///
    /// berth fleet serve answers hosts that update with strategy = "fleetlock" (and any other
    /// FleetLock client, such as Fedora CoreOS's Zincati) before they reboot, keeping each group's
    /// reboot slots in etcd so several replicas serve one fleet, and takes the reports Berth hosts
    /// send. status shows the fleet (versions, states, slot holders, rollbacks, silent hosts);
    /// unlock frees a slot a host never gave back; slots sets a group's slots; forget drops a
    /// decommissioned host's reports.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
}

/// Runs the command; its exit code is berth's (QEMU's for `berth run`).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build(a) => build::run(a).map(|()| ExitCode::SUCCESS),
        Command::Export(a) => export::run(a).map(|()| ExitCode::SUCCESS),
        Command::Fs(cmd) => fs::run(cmd).map(|()| ExitCode::SUCCESS),
        Command::Run(a) => run::run(a),
        Command::GuestfwdRelay { port } => Ok(run::guestfwd_relay(port)),
        Command::Keygen(a) => publish::keygen(a).map(|()| ExitCode::SUCCESS),
        Command::Publish(a) => publish::run(a).map(|()| ExitCode::SUCCESS),
        Command::Keys(c) => keys::run(c).map(|()| ExitCode::SUCCESS),
        Command::Upload(c) => upload::run(c).map(|()| ExitCode::SUCCESS),
        Command::Fleet(c) => fleet::run(c).map(|()| ExitCode::SUCCESS),
        Command::Inspect { disk, json } => {
            let info = berth_builder::inspect::inspect(&disk)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("{info}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `SOURCE_DATE_EPOCH` from the environment, if set (the reproducible-builds.org convention):
/// every timestamp of a build is this instant.
fn source_date_epoch() -> anyhow::Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH={v:?} is not a whole number of seconds")),
        Err(_) => Ok(None),
    }
}
