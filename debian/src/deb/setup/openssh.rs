//! openssh-server's `postinst configure` for a first installation.

use berth_fstree::Tree;

use super::{SetupError, copy_default, is_dir};

/// openssh-server's `postinst configure` for a first installation (bookworm's): `/etc/ssh/sshd_config`
/// from `/usr/share/openssh/sshd_config` (which Debian installs through ucf). Host keys are not
/// made here: an image must not ship one machine's keys to every machine (Berth images generate
/// them on first boot). Returns the actions taken (none without openssh-server).
pub fn openssh_server(tree: &mut Tree, mtime: i64) -> Result<Vec<String>, SetupError> {
    let mut actions = Vec::new();
    if is_dir(tree, "/etc/ssh") {
        copy_default(tree, "/usr/share/openssh/sshd_config", "/etc/ssh/sshd_config", mtime, &mut |a| actions.push(a))?;
    }
    Ok(actions)
}
