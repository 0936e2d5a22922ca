//! The files every Berth Vagrant box carries (`builder/src/export/vagrant/`), judged without a VM:
//! the box's Vagrantfile by Ruby itself (`ruby -c`) and its guest plugin's key capabilities run by
//! `sh` against a scratch home, the provisioning document by a TOML parser, and the key it
//! authorises against Vagrant's insecure public key. `qemu-tests/tests/vagrant.rs` (slow suite)
//! runs the box under real Vagrant.

use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/export/vagrant")
}

fn read(name: &str) -> String {
    let p = dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn ruby() -> Command {
    let probe = Command::new("ruby").arg("--version").output();
    assert!(probe.is_ok_and(|o| o.status.success()), "ruby is missing: install Debian's `ruby` (scripts/setup-host)");
    Command::new("ruby")
}

#[test]
fn vagrantfile_is_valid_ruby() {
    let out = ruby().arg("-c").arg(dir().join("Vagrantfile")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("Syntax OK"),
        "ruby -c: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn vagrantfile_sets_what_a_berth_guest_needs() {
    let text = read("Vagrantfile");
    for needle in [
        "config.vm.guest = :berth",
        "config.ssh.username = \"core\"",
        "config.ssh.shell = \"sh\"",
        "config.vm.synced_folder \".\", \"/vagrant\", disabled: true",
        "config.vm.allow_fstab_modification = false",
        "libvirt.machine_type = \"q35\"",
        "libvirt.disk_bus = \"virtio\"",
        "vb.check_guest_additions = false",
        "vb.functional_vboxsf = false",
        "guest(:berth)",
    ] {
        assert!(text.contains(needle), "the box Vagrantfile lacks `{needle}`");
    }
    // Vagrant's default key handling stays: the insecure key is replaced on the first `up`.
    assert!(!text.contains("insert_key = false"));
    // The guest has no parent: Linux's fstab and network-script capabilities must not apply.
    assert!(!text.contains("guest(:berth, :linux)"));
}

#[test]
fn provisioning_document_authorises_the_insecure_key_for_core() {
    let key = read("vagrant.pub");
    let key = key.trim_end();
    let mut fields = key.split(' ');
    assert_eq!(fields.next(), Some("ssh-rsa"), "Vagrant 2.3 offers only its RSA insecure key");
    assert!(fields.next().is_some_and(|b| b.starts_with("AAAAB3NzaC1yc2E")));
    assert_eq!(fields.collect::<Vec<_>>().join(" "), "vagrant insecure public key");

    let doc: toml::Table = toml::from_str(&read("provision.toml")).expect("provision.toml is TOML");
    let users = doc["users"].as_array().unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["name"].as_str(), Some("core"));
    let keys: Vec<&str> =
        users[0]["ssh_authorized_keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(keys, [key]);
    let files = doc["files"].as_array().unwrap();
    let sudoers = files.iter().find(|f| f["path"].as_str() == Some("/etc/sudoers.d/vagrant")).expect("a sudoers file");
    assert_eq!(sudoers["mode"].as_str(), Some("0440"), "sudo ignores a sudoers file others can write");
    assert!(sudoers["content"].as_str().unwrap().lines().any(|l| l == "core ALL=(ALL:ALL) NOPASSWD: ALL"));
    // Only keys docs/provisioning.md documents.
    for k in doc.keys() {
        assert!(["hostname", "users", "files", "units", "update"].contains(&k.as_str()), "unknown key {k}");
    }
}

/// Loads the Vagrantfile under a stand-in for Vagrant's plugin API and calls a capability of the
/// `berth` guest; its shell commands run under `sh` with `home` as HOME (as the SSH user's).
fn run_capability(home: &Path, cap: &str, arg: &str) {
    let harness = r#"
        module Vagrant
          module Errors
            class VagrantError < StandardError; end
            class SSHDisconnected < VagrantError; end
          end
          class PluginBase
            def self.name(*) = nil
            def self.description(*) = nil
            def self.guest(name, parent = nil, &b) = (($guests ||= {})[name] = [b.call, parent])
            def self.guest_capability(g, c, &b) = (($caps ||= {})[[g, c]] = b.call)
          end
          def self.plugin(_v, kind = nil) = kind == :guest ? Object : PluginBase
          def self.configure(_v)
            cfg = Struct.new(:vm, :ssh).new(Class.new { def method_missing(*) = self }.new,
                                            Class.new { def method_missing(*) = self }.new)
            yield cfg
          end
        end
        class Comm
          def execute(script, opts = {})
            ok = system("sh", "-c", script)
            raise "sh failed: #{script}" unless ok || opts[:error_check] == false
          end
        end
        Machine = Struct.new(:communicate)
        load ARGV[0]
        raise "guest :berth has a parent" unless $guests[:berth][1].nil?
        cap = $caps[[:berth, ARGV[1].to_sym]] or raise "no capability #{ARGV[1]}"
        cap.public_send(ARGV[1], Machine.new(Comm.new), ARGV[2])
    "#;
    let out = ruby()
        .arg("-e")
        .arg(harness)
        .arg(dir().join("Vagrantfile"))
        .arg(cap)
        .arg(arg)
        .env("HOME", home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cap}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn key_capabilities_replace_the_insecure_key() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let insecure = read("vagrant.pub");
    let own = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC0wn+own vagrant";
    let keys = home.path().join(".ssh/authorized_keys");
    std::fs::create_dir(home.path().join(".ssh")).unwrap();
    std::fs::write(&keys, format!("ssh-ed25519 AAAAC3Nz other@laptop\n{insecure}")).unwrap();

    // Vagrant: insert its own key, then remove the insecure one (communicator.rb, insert_key).
    run_capability(home.path(), "insert_public_key", &format!("{own}\n"));
    run_capability(home.path(), "insert_public_key", own); // twice: no duplicate line
    run_capability(home.path(), "remove_public_key", &insecure);
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), format!("ssh-ed25519 AAAAC3Nz other@laptop\n{own}\n"));
    assert_eq!(std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(home.path().join(".ssh")).unwrap().permissions().mode() & 0o777, 0o700);

    // Removing the last key leaves an empty file, not an error.
    run_capability(home.path(), "remove_public_key", "ssh-ed25519 AAAAC3Nz other@laptop");
    run_capability(home.path(), "remove_public_key", own);
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), "");
    // A key with a quote in its comment is data, not shell.
    run_capability(home.path(), "insert_public_key", "ssh-ed25519 AAAAC3Nz it's; touch pwned");
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), "ssh-ed25519 AAAAC3Nz it's; touch pwned\n");
    assert!(!home.path().join("pwned").exists());
}
