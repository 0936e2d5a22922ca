//! What the builder does instead of maintainer scripts: one file per step.
//!
//! No maintainer script runs: they assume a running Debian system (a shell, dpkg, debconf,
//! root) and would make the build neither reproducible nor rootless. For a container host only a
//! few of their effects matter; the steps here perform those on the tree, after every package is
//! unpacked, deterministically (all times come from the caller's `mtime`, `SOURCE_DATE_EPOCH`).
//! The builder (`builder/src/system.rs`) calls, in this order: [`base_files()`], [`users()`],
//! [`ca_bundle`], [`openssh_server`], [`pam_auth_update`], [`alternatives()`] (with
//! [`parse_alternatives`] over each package's `postinst`), [`os_release()`], [`dpkg_status()`].
//!
//! What dpkg or a maintainer script would have done, and what Berth does instead:
//!
//! * base-passwd `preinst` copies `passwd.master` and `group.master` to `/etc/passwd` and
//!   `/etc/group`; passwd `postinst` (`shadowconfig on`) makes `/etc/shadow` and `/etc/gshadow`.
//!   [`users()`] writes the four files from the master files plus the image's users and groups;
//!   every password is locked (`*`).
//! * ca-certificates `postinst` writes `/etc/ca-certificates.conf` (all certificates, via debconf)
//!   and runs `update-ca-certificates`. [`ca_bundle`] writes `/etc/ssl/certs/ca-certificates.crt`
//!   from `/etc/ca-certificates.conf` if present, else from every `*.crt` under
//!   `/usr/share/ca-certificates` (sorted), then `/usr/local/share/ca-certificates`, and the
//!   `NAME.pem` links. **Skipped:** OpenSSL hash links (`openssl rehash`) and the
//!   `/etc/ca-certificates/update.d` hooks (Java keystore…).
//! * base-files `postinst`: `/etc/profile`, `/root/.profile`, `/root/.bashrc`, `/etc/motd` from
//!   `/usr/share/base-files`; `/var/run -> /run`, `/var/lock -> /run/lock`; `/mnt`, `/srv`, `/opt`,
//!   `/media`, `/etc/opt`, `/var/opt`, `/var/mail`, `/run/lock`, `/usr/local/*`;
//!   `/var/log/{wtmp,btmp,lastlog}`. [`base_files()`] does the same, for a first installation.
//! * openssh-server `postinst`: `/etc/ssh/sshd_config` from `/usr/share/openssh/sshd_config` (ucf)
//!   and host keys. [`openssh_server`] copies the config file; host keys are made on each
//!   machine's first boot, never shipped in the image.
//! * libpam-runtime `postinst`: `pam-auth-update --package`. [`pam_auth_update`] writes the same
//!   `/etc/pam.d/common-*` stacks from the templates and the `Default: yes` profiles.
//! * `update-alternatives --install` in `postinst`s (`awk`, `iptables`, `which`, `pager`…).
//!   [`parse_alternatives`] reads the literal `--install`/`--slave` commands; [`alternatives()`]
//!   makes the links of the highest priority choice (auto mode). Commands built from shell
//!   variables are reported, not guessed. No `/var/lib/dpkg/alternatives` database.
//! * base-files ships Debian's `/usr/lib/os-release`. [`os_release()`] writes Berth's and
//!   `/etc/os-release -> ../usr/lib/os-release`.
//! * dpkg keeps `/var/lib/dpkg/status`. [`dpkg_status()`] writes the control paragraphs with
//!   `Status: install ok installed`, so scanners and `dpkg -l` see what is installed (no
//!   `Conffiles` checksums, no `info/*.list`).
//!
//! Deliberately not done:
//!
//! * libc-bin's trigger (`ldconfig` writes `/etc/ld.so.cache`): glibc searches its built-in
//!   multiarch paths (`/usr/lib/x86_64-linux-gnu`…) without a cache; only libraries in extra
//!   `ld.so.conf.d` directories are not found.
//! * linux-image `postinst` (`depmod`, initramfs, bootloader): the builder's kernel step owns
//!   `modules.dep` (the init needs it) and the initramfs; the bootloader is Berth's.
//! * `setcap` / `dpkg-statoverride` in `postinst`s (e.g. iputils-ping `cap_net_raw`): file
//!   capabilities that a package ships in its tar headers are kept; ping works through
//!   `net.ipv4.ping_group_range` (the init's sysctl).
//! * `adduser` / `systemd-sysusers` in `postinst`s (`_apt`, `messagebus`…): the image lists the
//!   users it needs ([`Accounts`]).
//! * tzdata `postinst` (`/etc/localtime`, `/etc/timezone` from debconf): without `/etc/localtime`
//!   glibc uses UTC.
//! * `/etc/machine-id`, `/etc/hostname`, `/etc/hosts`, `/etc/fstab` (installer, systemd): left
//!   absent; the init owns machine identity, hostname and mounts at boot.
//! * debconf questions, man-db, mime, fontconfig… triggers: not needed on a container host.

mod alternatives;
mod base_files;
mod ca;
mod dpkg_status;
mod openssh;
mod os_release;
mod pam;
mod users;

use berth_fstree::{Metadata, Node, NodeKind, Tree, TreeError};

pub use alternatives::{Alternative, AlternativesReport, SlaveLink, alternatives, parse_alternatives};
pub use base_files::{BaseFilesReport, base_files};
pub use ca::{CaReport, CaSource, ca_bundle};
pub use dpkg_status::dpkg_status;
pub use openssh::openssh_server;
pub use os_release::{OsRelease, os_release};
pub use pam::pam_auth_update;
pub use users::{Accounts, Group, User, UsersReport, users};

use super::path::{self, as_path, join, resolve_parent};

/// Why a step could not be done.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{path}: {source}")]
    Tree {
        path: String,
        #[source]
        source: TreeError,
    },
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
    /// A line of an account file (base-passwd's master files) is not an entry.
    #[error(transparent)]
    Accounts(#[from] berth_accounts::Error),
}

fn invalid(what: impl Into<String>, why: impl Into<String>) -> SetupError {
    SetupError::Invalid { what: what.into(), why: why.into() }
}

// ---------------------------------------------------------------------------------------------
// Tree helpers: paths here are absolute strings; directories are looked up through symlinks.

/// The content of the regular file at `path` (symlinks followed), if there is one.
fn read_file(tree: &mut Tree, path: &str) -> Option<Vec<u8>> {
    let (id, _) = path::follow(tree, path.trim_start_matches('/').as_bytes())?;
    match &tree.node(id).kind {
        NodeKind::File(d) => d.read_all().ok(),
        _ => None,
    }
}

/// Whether `path` leads to something (symlinks followed).
fn exists(tree: &mut Tree, path: &str) -> bool {
    path::follow(tree, path.trim_start_matches('/').as_bytes()).is_some()
}

/// Whether `path` leads to a directory (symlinks followed).
fn is_dir(tree: &mut Tree, path: &str) -> bool {
    path::follow(tree, path.trim_start_matches('/').as_bytes()).is_some_and(|(id, _)| tree.node(id).kind.is_dir())
}

/// The entry at `path` itself (a final symlink not followed): its canonical path and id, the id
/// `None` if nothing is there. `None` altogether if a directory on the way does not exist.
fn entry(tree: &mut Tree, path: &str) -> Option<(Vec<u8>, Option<berth_fstree::NodeId>)> {
    let (parent, name) = resolve_parent(tree, path.trim_start_matches('/').as_bytes(), None, &mut Vec::new()).ok()?;
    let name = name?;
    Some((join(&parent.path, name), tree.child(parent.dir, name)))
}

/// Whether there is an entry at `path` (a final symlink not followed).
fn present(tree: &mut Tree, path: &str) -> bool {
    entry(tree, path).is_some_and(|(_, id)| id.is_some())
}

/// Puts `node` at `path`, replacing a non-directory there; missing parents are created 0755.
fn put(tree: &mut Tree, path: &str, node: Node, mtime: i64) -> Result<(), SetupError> {
    let tree_err = |source| SetupError::Tree { path: path.to_owned(), source };
    let dirs = Metadata::root(0o755, mtime);
    let (parent, name) = resolve_parent(tree, path.trim_start_matches('/').as_bytes(), Some(&dirs), &mut Vec::new())
        .map_err(|why| invalid(path, why))?;
    let name = name.ok_or_else(|| invalid(path, "is the root"))?;
    let at = join(&parent.path, name);
    if let Some(old) = tree.child(parent.dir, name) {
        if tree.node(old).kind.is_dir() {
            return Err(invalid(path, "is a directory"));
        }
        tree.unlink(as_path(&at)).map_err(tree_err)?;
    }
    tree.insert(as_path(&at), node).map_err(tree_err)?;
    Ok(())
}

fn put_file(tree: &mut Tree, path: &str, data: Vec<u8>, meta: Metadata) -> Result<(), SetupError> {
    let mtime = meta.mtime;
    put(tree, path, Node::new(NodeKind::File(data.into()), meta), mtime)
}

fn put_symlink(tree: &mut Tree, path: &str, target: &str, mtime: i64) -> Result<(), SetupError> {
    let node = Node::new(NodeKind::Symlink(target.as_bytes().to_vec()), Metadata::root(0o777, mtime));
    put(tree, path, node, mtime)
}

/// `cp -p` of a default file if the destination does not exist.
fn copy_default(
    tree: &mut Tree,
    from: &str,
    to: &str,
    mtime: i64,
    act: &mut impl FnMut(String),
) -> Result<(), SetupError> {
    // `cp` into a missing directory fails; base-files ships every directory it copies into.
    match entry(tree, to) {
        Some((_, None)) => {}
        _ => return Ok(()),
    }
    let Some((id, _)) = path::follow(tree, from.trim_start_matches('/').as_bytes()) else { return Ok(()) };
    let node = tree.node(id).clone();
    if !matches!(node.kind, NodeKind::File(_)) {
        return Ok(());
    }
    put(tree, to, node, mtime)?;
    act(format!("{to} from {from}"));
    Ok(())
}
