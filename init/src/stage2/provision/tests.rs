use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                      core:x:1000:1000::/home/core:/bin/bash\n";
const GROUP: &str = "root:x:0:\nsudo:x:27:core\nshadow:x:42:\nnogroup:x:65534:\ncore:x:1000:\n";
const SHADOW: &str = "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\ncore:*:19000:0:99999:7:::\n";
const GSHADOW: &str = "root:*::\nsudo:*::core\nshadow:*::\nnogroup:*::\ncore:*::\n";
const SSH_SERVICE: &str = "[Unit]\nDescription=OpenBSD Secure Shell server\n[Service]\nExecStart=/usr/sbin/sshd -D\n\
                           [Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n";

const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAlice alice@laptop";
const KEY_C: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICore core@ci";

/// A root as an image has it: accounts from base-passwd and the definition, `/home` linked to
/// `var/home`, an image unit.
fn image() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for d in ["etc/skel", "var", "usr/lib/systemd/system", "usr/lib/berth"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::write(r.join("etc/passwd"), PASSWD).unwrap();
    fs::write(r.join("etc/group"), GROUP).unwrap();
    for (f, text) in [("etc/shadow", SHADOW), ("etc/gshadow", GSHADOW)] {
        fs::write(r.join(f), text).unwrap();
        std::os::unix::fs::chown(r.join(f), Some(0), Some(42)).unwrap();
        fs::set_permissions(r.join(f), fs::Permissions::from_mode(0o640)).unwrap();
    }
    fs::write(r.join("etc/skel/.profile"), "# profile\n").unwrap();
    std::os::unix::fs::symlink("var/home", r.join("home")).unwrap();
    fs::write(r.join("usr/lib/systemd/system/ssh.service"), SSH_SERVICE).unwrap();
    fs::write(r.join("usr/lib/berth/update.toml"), "version = \"0.1.0\"\n").unwrap();
    dir
}

const DOC: &str = r#"
hostname = "node-1"

[[users]]
name = "alice"
groups = ["sudo"]
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAlice alice@laptop"]

[[users]]
name = "core"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICore core@ci"]

[[files]]
path = "/etc/app/secret.conf"
content = "token = 42\n"
mode = "0600"
owner = "alice"
group = "alice"

[[files]]
path = "/var/lib/app/blob"
content_base64 = "aGVsbG8K"

[[units]]
name = "hello.service"
content = """
[Service]
ExecStart=/bin/true
[Install]
WantedBy=multi-user.target
"""
enable = true

[[units]]
name = "ssh.service"
enable = true

[update]
channel = "https://updates.example/channels/stable.json"
strategy = "off"
"#;

fn read(root: &Path, p: &str) -> String {
    fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn meta(root: &Path, p: &str) -> (u32, u32, u32) {
    let m = root.join(p).symlink_metadata().unwrap_or_else(|e| panic!("{p}: {e}"));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn parses_a_whole_document() {
    let c = parse(DOC).unwrap();
    assert_eq!(c.hostname, Some(Hostname("node-1".into())));
    assert_eq!(c.users.len(), 2);
    assert_eq!(c.users[0].groups, [Name("sudo".into())]);
    assert_eq!(c.users[0].uid, None);
    assert_eq!(c.files[0].mode, Mode(0o600));
    assert_eq!(c.files[1].mode, Mode(0o644));
    assert_eq!(c.files[1].bytes(), b"hello\n");
    assert_eq!(c.files[0].path.0, Path::new("/etc/app/secret.conf"));
    assert!(c.units[0].enable && c.units[0].content.is_some() && c.units[1].content.is_none());
    assert_eq!(c.update.unwrap().0["strategy"].as_str(), Some("off"));
    assert_eq!(parse("").unwrap(), Config::default());
}

#[test]
fn errors_name_the_line_and_column() {
    let e = parse("# x\n\nhostname = 5\n").unwrap_err().to_string();
    assert!(e.starts_with("provisioning config opt/org.berth/config:3:12: invalid type: integer `5`, expected"), "{e}");
    let e = parse("[[users]]\nname = \"bob\"\nshel = \"/bin/sh\"\n").unwrap_err().to_string();
    assert!(e.starts_with("provisioning config opt/org.berth/config:3:1: unknown field `shel`"), "{e}");
    let e = parse("hostname = \"a\"\nhostnam = \"b\"\n").unwrap_err().to_string();
    assert!(e.contains(":2:1: unknown field `hostnam`"), "{e}");
    // Checks of single values point at the value.
    let e = parse("[[files]]\npath = \"/usr/bin/x\"\ncontent = \"\"\n").unwrap_err().to_string();
    assert!(e.contains("config:2:8: `/usr/bin/x` must be an absolute path of a file under /etc or /var"), "{e}");
    let e = parse("[[files]]\npath = \"/etc/x\"\ncontent = \"\"\nmode = \"0999\"\n").unwrap_err().to_string();
    assert!(e.contains("config:4:8: `0999` is not an octal file mode"), "{e}");
    let e = parse("hostname = \"bad_name\"").unwrap_err().to_string();
    assert!(e.contains("config:1:12: `bad_name` is not a valid hostname"), "{e}");
    let e = parse("[[units]]\nname = \"hello\"\n").unwrap_err().to_string();
    assert!(e.contains("config:2:8: `hello` is not a unit name"), "{e}");
    let e = parse("[[files]]\npath = \"/etc/x\"\ncontent_base64 = \"abc\"\n").unwrap_err().to_string();
    assert!(e.contains("config:3:18: base64"), "{e}");
    // The error keeps where it is and which key.
    let e = parse("[[files]]\npath = \"/etc/x\"\ncontent = \"\"\nmode = \"0999\"\n").unwrap_err();
    assert!(
        matches!(&e, ProvisionError::Syntax { line: 4, column: 8, key: Some(k), .. } if k == "files.mode"),
        "{e:?}"
    );
    let e = parse("# x\n\nhostname = 5\n").unwrap_err();
    assert!(matches!(&e, ProvisionError::Syntax { key: Some(k), .. } if k == "hostname"), "{e:?}");
    // A syntax error.
    let e = parse("[[users]\nname = \"x\"\n").unwrap_err().to_string();
    assert!(e.starts_with("provisioning config opt/org.berth/config:1:"), "{e}");
}

#[test]
fn rejects_what_cannot_be_applied() {
    for (doc, want) in [
        ("[[files]]\npath = \"/etc/x\"\n", "give one of `content` and `content_base64`"),
        ("[[files]]\npath = \"/etc/x\"\ncontent = \"a\"\ncontent_base64 = \"YQ==\"\n", "give one of"),
        ("[[files]]\npath = \"/etc/../usr/x\"\ncontent = \"\"\n", "under /etc or /var"),
        ("[[files]]\npath = \"/etc\"\ncontent = \"\"\n", "under /etc or /var"),
        ("[[users]]\nname = \"a\"\n[[users]]\nname = \"a\"\n", "user `a` is listed twice"),
        ("[[users]]\nname = \"a\"\nuid = 0\n", "uid 0"),
        ("[[users]]\nname = \"a\"\npassword_hash = \"x:y\"\n", "password_hash"),
        // Stricter than berth_accounts::valid_name, which lets these stand in a line.
        ("[[users]]\nname = \"host$\"\n", "`host$` is not a valid user or group name"),
        ("[[users]]\nname = \"..\"\n", "`..` is not a valid user or group name"),
        ("[[users]]\nname = \"1000\"\n", "`1000` is not a valid user or group name"),
        ("[[users]]\nname = \"a\"\nshell = \"/bin/a:b\"\n", "not an absolute path without `:`"),
        ("[[users]]\nname = \"a\"\nssh_authorized_keys = [\"k\\nk\"]\n", "one non-empty line"),
        ("[update]\nversion = \"9.9.9\"\n", "update.version is the image's own"),
        ("[update]\nstrategy = \"sometimes\"\n", "update.strategy must be one of"),
        ("[update]\nchannel = \"ftp://x\"\n", "update.channel must be an http(s) URL"),
        ("[update]\nkeys = [\"ab\"]\n", "update.keys must be ed25519"),
        (&format!("[update]\nkeys = [\"{}\"]\nthreshold = 2\n", "a".repeat(64)), "threshold 2 is more than the 1 keys"),
        ("[[units]]\nname = \"x.service\"\ncontent = \"[Install]\\nWantedBy=%\\n\"\n", "units[0]: x.service:"),
    ] {
        let e = parse(doc).unwrap_err().to_string();
        assert!(e.contains(want), "{doc:?}: {e}");
    }
}

#[test]
fn applies_users_files_units_and_update_settings() {
    let dir = image();
    let r = dir.path();
    let report = apply(&parse(DOC).unwrap(), r).unwrap();
    eprintln!("{report:#?}");

    assert_eq!(read(r, "etc/hostname"), "node-1\n");
    // alice: the first free id from 1000 (core has 1000), a personal group, a locked password.
    assert!(read(r, "etc/passwd").ends_with(&format!("{PASSWD}alice:x:1001:1001::/home/alice:/bin/sh\n")));
    let group = read(r, "etc/group");
    assert!(group.contains("sudo:x:27:core,alice\n") && group.ends_with("core:x:1000:\nalice:x:1001:\n"), "{group}");
    let gshadow = read(r, "etc/gshadow");
    assert!(gshadow.contains("sudo:*::core,alice\n") && gshadow.ends_with("alice:*::\n"), "{gshadow}");
    let shadow = read(r, "etc/shadow");
    let alice = shadow.lines().find(|l| l.starts_with("alice:")).unwrap();
    let f: Vec<&str> = alice.split(':').collect();
    assert_eq!((f[1], f.len()), ("*", 9), "{alice}");
    assert!(f[2].parse::<u64>().unwrap() > 19000, "{alice}");
    // The account files keep their modes and owners.
    assert_eq!(meta(r, "etc/shadow"), (0o640, 0, 42));
    assert_eq!(meta(r, "etc/passwd").0, 0o644);
    // Home on /var through the /home link, with the skeleton and the key.
    assert_eq!(meta(r, "var/home/alice"), (0o700, 1001, 1001));
    assert_eq!(meta(r, "var/home/alice/.profile"), (0o644, 1001, 1001));
    assert_eq!(meta(r, "var/home/alice/.ssh"), (0o700, 1001, 1001));
    assert_eq!(meta(r, "var/home/alice/.ssh/authorized_keys"), (0o600, 1001, 1001));
    assert_eq!(read(r, "home/alice/.ssh/authorized_keys"), format!("{KEY_A}\n"));
    assert_eq!(meta(r, "var/home"), (0o755, 0, 0));
    // core existed: only its key is new; its home is made (the image has none on STATE).
    assert!(read(r, "etc/passwd").contains("core:x:1000:1000::/home/core:/bin/bash\n"));
    assert_eq!(read(r, "var/home/core/.ssh/authorized_keys"), format!("{KEY_C}\n"));
    assert_eq!(meta(r, "var/home/core/.ssh/authorized_keys"), (0o600, 1000, 1000));

    // Files, owned by a user the same document made.
    assert_eq!(read(r, "etc/app/secret.conf"), "token = 42\n");
    assert_eq!(meta(r, "etc/app/secret.conf"), (0o600, 1001, 1001));
    assert_eq!(meta(r, "etc/app"), (0o755, 0, 0));
    assert_eq!(read(r, "var/lib/app/blob"), "hello\n");
    assert_eq!(meta(r, "var/lib/app/blob"), (0o644, 0, 0));

    // Units: written, and enabled as their [Install] sections say (Alias= too).
    assert!(read(r, "etc/systemd/system/hello.service").contains("ExecStart=/bin/true"));
    let wants = r.join("etc/systemd/system/multi-user.target.wants");
    assert_eq!(fs::read_link(wants.join("hello.service")).unwrap(), Path::new("/etc/systemd/system/hello.service"));
    assert_eq!(fs::read_link(wants.join("ssh.service")).unwrap(), Path::new("/usr/lib/systemd/system/ssh.service"));
    assert_eq!(
        fs::read_link(r.join("etc/systemd/system/sshd.service")).unwrap(),
        Path::new("/usr/lib/systemd/system/ssh.service")
    );
    // The unit loader now sees the enablement.
    let loader = Loader::new(r, berth_units::HostInfo::default());
    let target = loader.load("multi-user.target");
    assert!(target.deps.wants.iter().any(|w| w == "hello.service"), "{:?}", target.deps.wants);

    // Update settings over the image's.
    let update: toml::Table = toml::from_str(&read(r, "etc/berth/update.toml")).unwrap();
    assert_eq!(update["channel"].as_str(), Some("https://updates.example/channels/stable.json"));
    assert_eq!(update["strategy"].as_str(), Some("off"));

    let actions = report.actions.join("\n");
    for want in [
        "hostname node-1",
        "user alice: created with uid 1001, gid 1001, home /home/alice, shell /bin/sh; added to sudo; 1 SSH key(s) added",
        "user core: 1 SSH key(s) added to /home/core/.ssh/authorized_keys",
        "wrote /etc/app/secret.conf (0600, 1001:1001, 11 bytes)",
        "hello.service: Created symlink /etc/systemd/system/multi-user.target.wants/hello.service → /etc/systemd/system/hello.service.",
        "wrote /etc/berth/update.toml",
    ] {
        assert!(actions.contains(want), "missing {want:?} in\n{actions}");
    }

    // Applying again changes nothing in the accounts and adds no key twice.
    let passwd = read(r, "etc/passwd");
    let again = apply(&parse(DOC).unwrap(), r).unwrap().actions.join("\n");
    assert_eq!(read(r, "etc/passwd"), passwd);
    assert_eq!(read(r, "etc/group"), group);
    assert_eq!(read(r, "home/core/.ssh/authorized_keys"), format!("{KEY_C}\n"));
    assert!(again.contains("user core: 0 SSH key(s) added"), "{again}");
    assert!(again.contains("unit hello.service was enabled already"), "{again}");
}

#[test]
fn explicit_ids_shell_and_password() {
    let dir = image();
    let r = dir.path();
    fs::write(r.join("etc/group"), format!("{GROUP}taken:x:2000:\n")).unwrap();
    let doc =
        "[[users]]\nname = \"svc\"\nuid = 2000\nshell = \"/usr/sbin/nologin\"\npassword_hash = \"$6$salt$hash\"\n";
    apply(&parse(doc).unwrap(), r).unwrap();
    // gid 2000 is taken by another group: the personal group gets the next free one.
    assert!(read(r, "etc/passwd").contains("svc:x:2000:1001::/home/svc:/usr/sbin/nologin\n"));
    assert!(read(r, "etc/group").ends_with("svc:x:1001:\n"));
    assert!(read(r, "etc/shadow").contains("svc:$6$salt$hash:"));
    // A taken uid is refused.
    let e = apply(&parse("[[users]]\nname = \"x\"\nuid = 1000\n").unwrap(), r).unwrap_err();
    assert!(e.reason.to_string().contains("uid 1000 belongs to `core`") && !e.partly_applied, "{e:?}");
    assert!(matches!(&e.reason, ProvisionError::User { user, .. } if user == "x"), "{e:?}");
}

#[test]
fn shadow_is_created_when_the_image_has_none() {
    let dir = image();
    let r = dir.path();
    fs::remove_file(r.join("etc/shadow")).unwrap();
    fs::remove_file(r.join("etc/gshadow")).unwrap();
    apply(&parse("[[users]]\nname = \"bob\"\n").unwrap(), r).unwrap();
    assert_eq!(meta(r, "etc/shadow"), (0o640, 0, 42));
    assert!(read(r, "etc/shadow").starts_with("bob:*:"));
    assert!(!r.join("etc/gshadow").exists());
    // Without a shadow group: root only.
    let dir = image();
    let r = dir.path();
    fs::remove_file(r.join("etc/shadow")).unwrap();
    fs::write(r.join("etc/group"), GROUP.replace("shadow:x:42:\n", "")).unwrap();
    apply(&parse("[[users]]\nname = \"bob\"\n").unwrap(), r).unwrap();
    assert_eq!(meta(r, "etc/shadow"), (0o600, 0, 0));
}

/// Every check against the machine happens before the first write.
#[test]
fn nothing_is_written_when_the_machine_refuses_the_document() {
    for (doc, want) in [
        ("hostname = \"h\"\n[[users]]\nname = \"bob\"\ngroups = [\"docker\"]\n", "user bob: no group `docker`"),
        ("hostname = \"h\"\n[[files]]\npath = \"/etc/f\"\ncontent = \"\"\nowner = \"ghost\"\n", "no user `ghost`"),
        ("hostname = \"h\"\n[[units]]\nname = \"nope.service\"\nenable = true\n", "unit nope.service: no unit file"),
    ] {
        let dir = image();
        let r = dir.path();
        let e = apply(&parse(doc).unwrap(), r).unwrap_err();
        assert!(e.reason.to_string().contains(want) && !e.partly_applied, "{e:?}");
        assert!(!r.join("etc/hostname").exists());
        assert_eq!(read(r, "etc/passwd"), PASSWD);
        assert_eq!(read(r, "etc/group"), GROUP);
        assert!(!r.join("var/home").exists());
    }
}

/// The image's account files are read whole as berth_accounts entries: a line that is not one
/// refuses the document before anything is written, naming the file and line. The old reader
/// checked only the field count and the first id, so it let the first two of these through.
#[test]
fn an_account_line_that_is_not_an_entry_refuses_the_document() {
    let odd = "odd:x:1500:staff::/home/odd:/bin/sh";
    for (file, text, want) in [
        (
            "etc/passwd",
            format!("{PASSWD}{odd}\n"),
            format!("/etc/passwd line 4: `{odd}` is not a passwd entry: its gid `staff` is not a number"),
        ),
        (
            "etc/shadow",
            format!("{SHADOW}odd:*:soon:0:99999:7:::\n"),
            "/etc/shadow line 4: `odd:*:soon:0:99999:7:::` is not a shadow entry: its last change day `soon`".into(),
        ),
        (
            "etc/group",
            GROUP.replace("sudo:x:27:core", "sudo:x:27"),
            "/etc/group line 2: `sudo:x:27` is not a group entry: 3 fields, not 4".into(),
        ),
    ] {
        let dir = image();
        let r = dir.path();
        fs::write(r.join(file), &text).unwrap();
        let e = apply(&parse(&alice_doc(KEY_A)).unwrap(), r).unwrap_err();
        assert!(matches!(e.reason, ProvisionError::Accounts(_)) && !e.partly_applied, "{e:?}");
        assert!(e.reason.to_string().starts_with(&want), "{}", e.reason);
        assert_eq!(read(r, file), text);
        assert!(!r.join("var/home").exists());
    }
}

#[test]
fn enabling_needs_an_install_section() {
    let dir = image();
    let r = dir.path();
    let doc = "[[units]]\nname = \"bare.service\"\ncontent = \"[Service]\\nExecStart=/bin/true\\n\"\nenable = true\n";
    let e = apply(&parse(doc).unwrap(), r).unwrap_err();
    assert!(
        e.reason.to_string().contains("enabling bare.service: bare.service is static: it has no [Install] section"),
        "{e:?}"
    );
    // Found before anything was written.
    assert!(!e.partly_applied && !r.join("etc/systemd/system/bare.service").exists());
}

#[test]
fn runs_once_and_marks_it() {
    let dir = image();
    let r = dir.path();
    let lines = run_in(r, fw_cfg(b"hostname = \"first\"\n".to_vec()));
    assert_eq!(lines[0], "provisioning: hostname first");
    let digest: String = Sha256::digest(b"hostname = \"first\"\n").iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(read(r, MARKER), format!("{digest}\nfw_cfg opt/org.berth/config\n"));
    assert!(lines.last().unwrap().contains(&digest), "{lines:?}");
    // The next boot: nothing happens, even with another document.
    let lines = run_in(r, fw_cfg(b"hostname = \"second\"\n".to_vec()));
    assert_eq!(lines, ["provisioning: already applied on first boot"]);
    assert_eq!(read(r, "etc/hostname"), "first\n");
}

#[test]
fn a_malformed_or_missing_document_changes_nothing() {
    let dir = image();
    let r = dir.path();
    let lines = run_in(r, fw_cfg(b"hostname = \"x\"\n[[users]]\nname = 7\n".to_vec()));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("provisioning: provisioning config opt/org.berth/config:3:8: invalid type"),
        "{lines:?}"
    );
    assert!(lines[0].ends_with("nothing applied, booting with the image's defaults"), "{lines:?}");
    assert!(lines[1].starts_with("provisioning: recorded as failed in /var/lib/berth/provision-failed"), "{lines:?}");
    assert!(!r.join(MARKER).exists() && !r.join("etc/hostname").exists());
    assert_eq!(
        run_in(r, Ok(None)),
        ["provisioning: no config in fw_cfg (opt/org.berth/config) or on the ESP (berth/provision.toml)"]
    );
    assert!(run_in(r, fw_cfg(vec![0xff, 0xfe]))[0].contains("not UTF-8"));
    assert!(!r.join(MARKER).exists());
}

#[test]
fn reads_fw_cfg_items() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(read_fw_cfg(&dir.path().join("raw")), Ok(None)));
    fs::write(dir.path().join("raw"), "hostname = \"a\"\n").unwrap();
    assert_eq!(read_fw_cfg(&dir.path().join("raw")).unwrap(), Some(b"hostname = \"a\"\n".to_vec()));
    fs::write(dir.path().join("raw"), vec![b' '; MAX_DOCUMENT as usize + 1]).unwrap();
    let e = read_fw_cfg(&dir.path().join("raw")).unwrap_err();
    assert!(matches!(e, ProvisionError::TooLarge(Source::FwCfg)), "{e}");
    assert_eq!(e.to_string(), "opt/org.berth/config is larger than 1024 KiB");
}

#[test]
fn base64() {
    assert_eq!(decode_base64("").unwrap(), b"");
    assert_eq!(decode_base64("YQ==").unwrap(), b"a");
    assert_eq!(decode_base64("YWI=").unwrap(), b"ab");
    assert_eq!(decode_base64("YWJj\nZA==").unwrap(), b"abcd");
    assert_eq!(decode_base64("/+8=").unwrap(), [0xff, 0xef]);
    assert!(decode_base64("YQ=").is_err() && decode_base64("Y===").is_err() && decode_base64("YQ==YQ==").is_err());
    let e = ValueError::Base64(decode_base64("YQ*=").unwrap_err());
    assert_eq!(e.to_string(), "base64: `*` is not a base64 character");
    assert!(ValueError::Base64(decode_base64("YQ=").unwrap_err()).to_string().contains("padded with `=`"));
}

/// A symlink (or hard link) made by `uid`, as a user would plant it.
fn plant(target: &Path, link: &Path, uid: u32) {
    std::os::unix::fs::symlink(target, link).unwrap();
    std::os::unix::fs::lchown(link, Some(uid), Some(uid)).unwrap();
}

/// Temporary files left in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.contains("berth-tmp")).collect()
}

fn alice_doc(key: &str) -> String {
    format!("[[users]]\nname = \"alice\"\nssh_authorized_keys = [\"{key}\"]\n")
}

/// H1: a user plants symlinks where the code of 81879cc wrote as root (`.NAME.berth-tmp`
/// beside each target: in the user's own `~/.ssh`, and in the world-writable `/var/tmp`, plus
/// a link as the target itself), then the document is provisioned again as
/// docs/provisioning.md says (the marker removed). Nothing is written through them: the
/// victim (`/etc/shadow`) keeps its bytes, owner and mode.
#[test]
fn h1_provisioning_never_writes_through_a_planted_symlink() {
    let dir = image();
    let r = dir.path();
    fs::create_dir_all(r.join("var/tmp")).unwrap();
    fs::set_permissions(r.join("var/tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    let doc = format!(
        "{}\n[[files]]\npath = \"/var/tmp/app.conf\"\ncontent = \"app\\n\"\n\n\
         [[files]]\npath = \"/var/tmp/linked.conf\"\ncontent = \"linked\\n\"\n",
        alice_doc(KEY_A)
    );
    let first = run_in(r, fw_cfg(doc.clone().into_bytes()));
    assert!(first.last().unwrap().contains("marked in /var/lib/berth/provisioned"), "{first:?}");
    let victim = r.join("etc/shadow");
    let before = (read(r, "etc/shadow"), meta(r, "etc/shadow"));

    // alice (uid 1001) plants her links.
    let ssh = r.join("var/home/alice/.ssh");
    fs::remove_file(ssh.join("authorized_keys")).unwrap();
    plant(&victim, &ssh.join(".authorized_keys.berth-tmp"), 1001);
    plant(&victim, &r.join("var/tmp/.app.conf.berth-tmp"), 1001);
    fs::remove_file(r.join("var/tmp/linked.conf")).unwrap();
    plant(&victim, &r.join("var/tmp/linked.conf"), 1001);

    // Provisioned again, as the docs say.
    fs::remove_file(r.join(MARKER)).unwrap();
    let again = run_in(r, fw_cfg(doc.into_bytes()));
    assert!(again.iter().any(|l| l.contains("user alice: 1 SSH key(s) added")), "{again:?}");
    assert!(again.last().unwrap().contains("marked in"), "{again:?}");

    assert_eq!((read(r, "etc/shadow"), meta(r, "etc/shadow")), before, "the victim changed");
    let keys = "var/home/alice/.ssh/authorized_keys";
    assert!(r.join(keys).symlink_metadata().unwrap().is_file());
    assert_eq!((read(r, keys), meta(r, keys)), (format!("{KEY_A}\n"), (0o600, 1001, 1001)));
    assert_eq!((read(r, "var/tmp/app.conf"), meta(r, "var/tmp/app.conf")), ("app\n".into(), (0o644, 0, 0)));
    // The link that was the target is replaced by the file, not written through.
    assert!(r.join("var/tmp/linked.conf").symlink_metadata().unwrap().is_file());
    assert_eq!(read(r, "var/tmp/linked.conf"), "linked\n");
    // The planted names are left as they were, and nothing else is left over.
    assert_eq!(fs::read_link(ssh.join(".authorized_keys.berth-tmp")).unwrap(), victim);
    assert_eq!(fs::read_link(r.join("var/tmp/.app.conf.berth-tmp")).unwrap(), victim);
    assert_eq!(leftovers(&ssh), [".authorized_keys.berth-tmp"]);
    assert_eq!(leftovers(&r.join("var/tmp")), [".app.conf.berth-tmp"]);
}

/// H1: a symlink on the way into a home (`~/.ssh` replaced by a link to /etc, a home that is a
/// link, a home inside a user's directory) is refused, and the document changes nothing.
#[test]
fn h1_a_symlinked_home_component_is_refused_and_nothing_is_written() {
    let dir = image();
    let r = dir.path();
    apply(&parse(&format!("hostname = \"node-1\"\n{}", alice_doc(KEY_A))).unwrap(), r).unwrap();
    let ssh = r.join("var/home/alice/.ssh");
    fs::remove_dir_all(&ssh).unwrap();
    plant(&r.join("etc"), &ssh, 1001);
    let passwd = read(r, "etc/passwd");
    let etc_before: Vec<_> = fs::read_dir(r.join("etc")).unwrap().map(|e| e.unwrap().file_name()).collect();

    let doc = format!("hostname = \"node-2\"\n{}", alice_doc(KEY_C));
    let e = apply(&parse(&doc).unwrap(), r).unwrap_err();
    assert!(
        e.reason.to_string().starts_with("user alice: ")
            && e.reason.to_string().ends_with("/.ssh is a symbolic link; not followed"),
        "{e:?}"
    );
    assert!(!e.partly_applied);
    assert!(!r.join("etc/authorized_keys").exists());
    assert_eq!(read(r, "etc/hostname"), "node-1\n");
    assert_eq!(read(r, "etc/passwd"), passwd);
    let etc_after: Vec<_> = fs::read_dir(r.join("etc")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(etc_after, etc_before);

    // A home that is a link; a home inside a directory a user owns.
    fs::write(
        r.join("etc/passwd"),
        format!("{passwd}bob:x:1002:1002::/home/bob:/bin/sh\ncarol:x:1003:1003::/var/home/alice/carol:/bin/sh\n"),
    )
    .unwrap();
    plant(&r.join("etc"), &r.join("var/home/bob"), 0);
    let e = apply(&parse(&format!("[[users]]\nname = \"bob\"\nssh_authorized_keys = [\"{KEY_C}\"]\n")).unwrap(), r)
        .unwrap_err();
    assert!(e.reason.to_string().ends_with("/var/home/bob is a symbolic link; not followed"), "{e:?}");
    assert!(!r.join("etc/.ssh").exists());
    let e = apply(&parse(&format!("[[users]]\nname = \"carol\"\nssh_authorized_keys = [\"{KEY_C}\"]\n")).unwrap(), r)
        .unwrap_err();
    assert!(e.reason.to_string().contains("/var/home/alice belongs to uid 1001, not to root; not used"), "{e:?}");
    assert!(!r.join("var/home/alice/carol").exists());
}

/// H1: an `authorized_keys` that is a symlink or a hard link to a root-only file is neither
/// read (the code of 81879cc read it as root and wrote it into the user's file) nor replaced.
#[test]
fn h1_an_authorized_keys_link_is_neither_read_nor_replaced() {
    let dir = image();
    let r = dir.path();
    apply(&parse(&alice_doc(KEY_A)).unwrap(), r).unwrap();
    let before = (read(r, "etc/shadow"), meta(r, "etc/shadow"));
    let keys = r.join("var/home/alice/.ssh/authorized_keys");
    let doc = parse(&alice_doc(KEY_C)).unwrap();

    fs::remove_file(&keys).unwrap();
    plant(&r.join("etc/shadow"), &keys, 1001);
    let e = apply(&doc, r).unwrap_err();
    assert!(e.reason.to_string().ends_with("/.ssh/authorized_keys is a symbolic link; not followed"), "{e:?}");
    assert!(keys.symlink_metadata().unwrap().file_type().is_symlink());

    // A hard link: to /etc/shadow, alice (whose fsuid PID 1 takes in her home) cannot even
    // open it; to a file she may read, it is not hers and has two links.
    fs::remove_file(&keys).unwrap();
    fs::hard_link(r.join("etc/shadow"), &keys).unwrap();
    let e = apply(&doc, r).unwrap_err();
    assert!(e.reason.to_string().ends_with("/.ssh/authorized_keys: Permission denied (os error 13)"), "{e:?}");
    fs::remove_file(&keys).unwrap();
    fs::hard_link(r.join("etc/passwd"), &keys).unwrap();
    let e = apply(&doc, r).unwrap_err();
    assert!(e.reason.to_string().contains("/.ssh/authorized_keys belongs to uid 0 and has 2 links"), "{e:?}");
    assert_eq!((read(r, "etc/shadow"), meta(r, "etc/shadow")), before);
    assert!(!read(r, "etc/passwd").contains("AAAAICore"));
}

/// H1 and L9: `root` is refused when the document is parsed; a user whose home is not on
/// STATE (under /home or /var, and /home leading into /var) when it is checked, before any
/// write.
#[test]
fn h1_root_and_homes_off_state_are_refused_before_anything_is_written() {
    let e =
        parse(&format!("[[users]]\nname = \"root\"\nssh_authorized_keys = [\"{KEY_A}\"]\n")).unwrap_err().to_string();
    assert!(e.contains("users[0]: `root` cannot be provisioned: its home /root is on the read-only root"), "{e}");
    assert!(parse("[[users]]\nname = \"..\"\n").unwrap_err().to_string().contains("not a valid user or group name"));

    let dir = image();
    let r = dir.path();
    let doc = format!("hostname = \"h\"\n[[users]]\nname = \"nobody\"\nssh_authorized_keys = [\"{KEY_A}\"]\n");
    let e = apply(&parse(&doc).unwrap(), r).unwrap_err();
    assert!(e.reason.to_string().contains("user nobody: its home /nonexistent is not under /home or /var"), "{e:?}");
    assert!(!r.join("etc/hostname").exists());

    // /home leading somewhere else than STATE.
    fs::remove_file(r.join("home")).unwrap();
    std::os::unix::fs::symlink("usr/home", r.join("home")).unwrap();
    let e = apply(&parse(&format!("hostname = \"h\"\n{}", alice_doc(KEY_A))).unwrap(), r).unwrap_err();
    assert!(e.reason.to_string().contains("its home /home/alice is /usr/home/alice, which is not on STATE"), "{e:?}");
    assert!(!r.join("etc/hostname").exists() && !r.join("usr/home").exists());
    assert_eq!(read(r, "etc/passwd"), PASSWD);
}

/// H1: a document that fails is recorded (hash and reason) and not tried again on the next
/// boot, even once the machine would take it; `berthctl provision-status` says why; removing
/// the record retries it, as docs/provisioning.md says.
#[test]
fn h1_a_failed_document_is_recorded_and_not_run_again() {
    let dir = image();
    let r = dir.path();
    assert_eq!(status(r).1, 0);
    assert!(status(r).0.starts_with("none applied"));
    let bad = b"hostname = \"h\"\n[[users]]\nname = \"b\"\ngroups = [\"docker\"]\n".to_vec();
    let digest: String = Sha256::digest(&bad).iter().map(|b| format!("{b:02x}")).collect();
    let lines = run_in(r, fw_cfg(bad.clone()));
    assert_eq!(lines[0], "provisioning: user b: no group `docker`; nothing applied, booting with the image's defaults");
    assert!(lines[1].contains(&format!("recorded as failed in /var/lib/berth/provision-failed (sha256 {digest})")));
    assert_eq!(read(r, FAILED), format!("{digest}\nuser b: no group `docker`\nfw_cfg opt/org.berth/config\n"));
    assert_eq!(meta(r, FAILED), (0o644, 0, 0));
    let (text, code) = status(r);
    assert_eq!(code, 1);
    assert!(text.starts_with(&format!(
        "failed: fw_cfg opt/org.berth/config with sha256 {digest}: user b: no group `docker`\n"
    )));
    assert!(text.contains("to retry it: rm /var/lib/berth/provision-failed, then reboot"), "{text}");

    // The next boot: not again, even though the machine now has the group.
    fs::write(r.join("etc/group"), format!("{GROUP}docker:x:999:\n")).unwrap();
    let lines = run_in(r, fw_cfg(bad.clone()));
    assert_eq!(
        lines,
        [format!(
            "provisioning: fw_cfg opt/org.berth/config (sha256 {digest}) failed on an earlier boot: user b: no group \
             `docker`; not tried again (to retry it: rm /var/lib/berth/provision-failed, then reboot)"
        )]
    );
    assert!(!r.join("etc/hostname").exists());

    // Retried as the docs say: applied, and the record is gone.
    fs::remove_file(r.join(FAILED)).unwrap();
    let lines = run_in(r, fw_cfg(bad));
    assert!(lines.last().unwrap().contains("marked in /var/lib/berth/provisioned"), "{lines:?}");
    assert_eq!(read(r, "etc/hostname"), "h\n");
    assert!(!r.join(FAILED).exists());
    assert_eq!(
        status(r),
        (
            format!(
                "applied: fw_cfg opt/org.berth/config with sha256 {digest} (/var/lib/berth/provisioned); later \
                 boots ignore fw_cfg and the ESP\n"
            ),
            0
        )
    );

    // Another document after a failed one is tried at once.
    let dir = image();
    let r = dir.path();
    run_in(r, fw_cfg(b"[[users]]\nname = \"b\"\ngroups = [\"docker\"]\n".to_vec()));
    let lines = run_in(r, fw_cfg(b"hostname = \"fixed\"\n".to_vec()));
    assert_eq!(lines[0], "provisioning: hostname fixed");
    assert!(!r.join(FAILED).exists());
}

/// H1: an error while the files are staged (here the last one's directory is a file) removes
/// what was staged and made: the hostname, accounts, home and other files stay as they were.
#[test]
fn h1_a_failure_while_staging_leaves_nothing_behind() {
    let dir = image();
    let r = dir.path();
    let doc = format!(
        "hostname = \"h\"\n{}\n[[files]]\npath = \"/etc/app/a.conf\"\ncontent = \"a\"\n\n\
         [[files]]\npath = \"/etc/passwd/x\"\ncontent = \"x\"\n",
        alice_doc(KEY_A)
    );
    let e = apply(&parse(&doc).unwrap(), r).unwrap_err();
    assert!(e.reason.to_string().ends_with("/etc/passwd is not a directory"), "{e:?}");
    assert!(!e.partly_applied);
    assert!(!r.join("etc/hostname").exists());
    assert_eq!((read(r, "etc/passwd"), read(r, "etc/shadow")), (PASSWD.to_string(), SHADOW.to_string()));
    assert!(!r.join("etc/app").exists() && !r.join("var/home").exists());
    assert_eq!(leftovers(&r.join("etc")), Vec::<String>::new());
}

fn fw_cfg(bytes: Vec<u8>) -> Result<Option<Document>, ProvisionError> {
    Ok(Some(Document { source: Source::FwCfg, bytes }))
}

use esp::fat_image;

#[test]
fn reads_the_document_from_the_esp_without_writing_it() {
    let doc = b"hostname = \"from-esp\"\n";
    let image = fat_image(&[("EFI/BOOT/x.txt", b"x"), ("berth/provision.toml", doc), ("berth/platform", b"metal\n")]);
    let before = fs::read(image.path()).unwrap();
    assert_eq!(esp::read(image.path()).unwrap(), Some(doc.to_vec()));
    assert!(fs::read(image.path()).unwrap() == before, "reading the ESP changed it");
    // No file, no directory: no document.
    assert_eq!(esp::read(fat_image(&[("berth/platform", b"metal\n")]).path()).unwrap(), None);
    assert_eq!(esp::read(fat_image(&[]).path()).unwrap(), None);
    // Not a FAT volume: an error naming the ESP.
    let junk = tempfile::NamedTempFile::new().unwrap();
    fs::write(junk.path(), vec![0u8; 1 << 20]).unwrap();
    let e = esp::read(junk.path()).unwrap_err().to_string();
    assert!(e.starts_with("ESP berth/provision.toml: ") && e.contains("not a FAT filesystem"), "{e}");
}

#[test]
fn the_esp_wrapper_refuses_every_write() {
    let mut ro = esp::ReadOnly(std::io::Cursor::new(vec![0u8; 16]));
    let e = std::io::Write::write(&mut ro, b"x").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
    assert_eq!(ro.0.get_ref(), &vec![0u8; 16]);
}

#[test]
fn fw_cfg_wins_over_the_esp_which_is_read_when_fw_cfg_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    let image = fat_image(&[("berth/provision.toml", b"hostname = \"esp\"\n")]);
    let esp_at = || Ok(image.path().to_path_buf());
    // No fw_cfg item: the ESP's.
    let d = read_document(&raw, esp_at).unwrap().unwrap();
    assert_eq!(d, Document { source: Source::Esp, bytes: b"hostname = \"esp\"\n".to_vec() });
    // Both: fw_cfg's, and the ESP is not even looked for.
    fs::write(&raw, "hostname = \"fw\"\n").unwrap();
    let never =
        || -> Result<PathBuf, ProvisionError> { panic!("the ESP was looked for although fw_cfg has a document") };
    let d = read_document(&raw, never).unwrap().unwrap();
    assert_eq!(d, Document { source: Source::FwCfg, bytes: b"hostname = \"fw\"\n".to_vec() });
    // Neither.
    let empty = fat_image(&[]);
    fs::remove_file(&raw).unwrap();
    assert_eq!(read_document(&raw, || Ok(empty.path().to_path_buf())).unwrap(), None);
    // No ESP to be found: the error says so (the boot goes on with the image's defaults).
    let e = read_document(&raw, || Err(ProvisionError::Esp { why: "no partition labelled EFI-SYSTEM".into() }))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "ESP berth/provision.toml: no partition labelled EFI-SYSTEM");
}

#[test]
fn esp_errors_name_the_esp_file() {
    let big = vec![b'#'; MAX_DOCUMENT as usize + 1];
    let fat = fat_image(&[("berth/provision.toml", &big)]);
    let e = esp::read(fat.path()).unwrap_err();
    assert!(matches!(e, ProvisionError::TooLarge(Source::Esp)), "{e}");
    assert_eq!(e.to_string(), "ESP berth/provision.toml is larger than 1024 KiB");

    let dir = image();
    let r = dir.path();
    let esp_doc = |bytes: &[u8]| Ok(Some(Document { source: Source::Esp, bytes: bytes.to_vec() }));
    let lines = run_in(r, esp_doc(&[b'h', 0xff, 0xfe]));
    assert!(lines[0].starts_with("provisioning: config ESP berth/provision.toml is not UTF-8 ("), "{lines:?}");
    let lines = run_in(r, esp_doc(b"hostname = \"x\"\n[[users]]\nname = 7\n"));
    assert!(
        lines[0].starts_with("provisioning: provisioning config ESP berth/provision.toml:3:8: invalid type"),
        "{lines:?}"
    );
    let lines = run_in(r, esp_doc(b"[[users]]\nname = \"a\"\n[[users]]\nname = \"a\"\n"));
    assert!(
        lines[0].starts_with(
            "provisioning: provisioning config ESP berth/provision.toml: users[1]: user `a` is listed twice"
        ),
        "{lines:?}"
    );
    // A failed ESP document is recorded with its source, and not tried again.
    let (text, code) = status(r);
    assert_eq!(code, 1);
    assert!(text.starts_with("failed: ESP berth/provision.toml with sha256 "), "{text}");
    let again = run_in(r, esp_doc(b"[[users]]\nname = \"a\"\n[[users]]\nname = \"a\"\n"));
    assert!(again[0].starts_with("provisioning: ESP berth/provision.toml (sha256 "), "{again:?}");
}

/// The same document through the ESP applies as through fw_cfg, once; the marker and the log
/// name the source.
#[test]
fn an_esp_document_is_applied_once_and_named() {
    let dir = image();
    let r = dir.path();
    let doc = alice_doc(KEY_A);
    let lines = run_in(r, Ok(Some(Document { source: Source::Esp, bytes: doc.clone().into_bytes() })));
    let digest = sha256_hex(doc.as_bytes());
    assert_eq!(
        lines.last().unwrap(),
        &format!(
            "provisioning: applied ESP berth/provision.toml (sha256 {digest}); marked in /var/lib/berth/provisioned"
        )
    );
    assert_eq!(read(r, MARKER), format!("{digest}\nESP berth/provision.toml\n"));
    assert!(read(r, "home/alice/.ssh/authorized_keys").contains(KEY_A));
    assert!(status(r).0.starts_with(&format!("applied: ESP berth/provision.toml with sha256 {digest} ")));
    // Once: a later boot (fw_cfg's or the ESP's document) changes nothing.
    assert_eq!(run_in(r, fw_cfg(b"hostname = \"other\"\n".to_vec())), ["provisioning: already applied on first boot"]);
    // A marker from before the ESP source (the digest alone) still reads as fw_cfg's.
    fs::write(r.join(MARKER), format!("{digest}\n")).unwrap();
    assert!(status(r).0.starts_with(&format!("applied: fw_cfg opt/org.berth/config with sha256 {digest} ")));
}

/// The Vagrant boxes' own document (builder/src/export/vagrant/provision.toml, put on their
/// ESP): `core` gets Vagrant's insecure key and a sudoers file, 0440, root's.
#[test]
fn the_vagrant_box_document_applies_from_the_esp() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../builder/src/export/vagrant/provision.toml");
    let doc = fs::read(&path).unwrap();
    let dir = image();
    let r = dir.path();
    let lines = run_in(r, Ok(Some(Document { source: Source::Esp, bytes: doc })));
    assert!(lines.last().unwrap().starts_with("provisioning: applied ESP berth/provision.toml"), "{lines:?}");
    assert!(read(r, "home/core/.ssh/authorized_keys").contains("vagrant insecure public key"));
    assert!(read(r, "etc/sudoers.d/vagrant").contains("core ALL=(ALL:ALL) NOPASSWD: ALL\n"));
    assert_eq!(meta(r, "etc/sudoers.d/vagrant"), (0o440, 0, 0));
}

/// On a real block device (a loop device over a GPT image, as root): the ESP is found on the
/// disk of the root partition by type and label, and the document read from it; the partition
/// is byte for byte what it was.
#[test]
#[ignore = "needs root: loop devices"]
fn the_esp_is_found_beside_the_root_partition_and_read() {
    use std::process::Command;
    let run = |cmd: &str, args: &[&str]| -> String {
        let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("running {cmd}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd} {args:?} failed:\n{text}");
        text
    };
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    fs::File::create(&img).unwrap().set_len(200 << 20).unwrap();
    let (esp_type, root_type) = (berth_slot::layout::ESP_TYPE_GUID, berth_slot::layout::ROOT_TYPE_GUID);
    let t1 = format!("1:{esp_type}");
    let t2 = format!("2:{root_type}");
    let t3 = format!("3:{esp_type}");
    #[rustfmt::skip]
    run("sgdisk", &[
        "-o",
        "-n", "1:2048:+64M", "-t", &t1, "-c", "1:EFI-SYSTEM",
        "-n", "2:0:+64M", "-t", &t2, "-c", "2:ROOT-A",
        // Another partition of the ESP type but not the label: not Berth's ESP.
        "-n", "3:0:+32M", "-t", &t3, "-c", "3:OTHER",
        &img.to_string_lossy(),
    ]);
    let dev = run("losetup", &["-fP", "--show", &img.to_string_lossy()]).trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup").args(["-d", &self.0]).output();
        }
    }
    let _detach = Detach(dev.clone());
    let part = |n: u32| format!("{dev}p{n}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while !Path::new(&part(3)).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if !Path::new(&part(3)).exists() {
        run("partx", &["-a", &dev]);
    }
    let doc = b"hostname = \"from-a-real-esp\"\n";
    {
        let mut esp = fs::OpenOptions::new().read(true).write(true).open(part(1)).unwrap();
        fatfs::format_volume(&mut esp, fatfs::FormatVolumeOptions::new()).unwrap();
        let fs = fatfs::FileSystem::new(&mut esp, fatfs::FsOptions::new()).unwrap();
        fs.root_dir().create_dir("berth").unwrap();
        let mut f = fs.root_dir().create_file(esp::ESP_PATH).unwrap();
        std::io::Write::write_all(&mut f, doc).unwrap();
        drop(f);
        fs.unmount().unwrap();
        esp.sync_all().unwrap();
    }
    let found = crate::stage2::storage::partition::esp(Path::new(&part(2))).unwrap();
    assert_eq!(found, PathBuf::from(part(1)));
    let before = fs::read(part(1)).unwrap();
    assert_eq!(esp::read(&found).unwrap(), Some(doc.to_vec()));
    assert!(fs::read(part(1)).unwrap() == before, "reading changed the ESP");
}

// The cloud metadata source (metadata.rs): the record berth-metadata fetch writes, merged into
// the one document and applied once per instance.

use berth_metadata::record::{InstanceRecord, Outcome as Fetched, SshKey};
use metadata::{Decision, decide, merge, provision};

const KEY_B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBob bob@gce";
const KEY_M: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMeta ops@cloud";

/// A record as an AWS instance's: its id, hostname, one key for no user and `user_data`.
fn record(instance: &str, user_data: Option<&str>) -> InstanceRecord {
    InstanceRecord {
        platform: "aws".into(),
        outcome: Fetched::Complete,
        instance_id: Some(instance.into()),
        hostname: Some("ip-10-0-0-7.ec2.internal".into()),
        user_data: user_data.map(|t| t.as_bytes().to_vec()),
        ssh_keys: vec![SshKey { user: None, key: format!("{KEY_M}\n") }],
        notes: Vec::new(),
    }
}

fn key(user: Option<&str>, key: &str) -> SshKey {
    SshKey { user: user.map(String::from), key: key.into() }
}

fn keys_of(config: &Config, user: &str) -> Vec<String> {
    let u = config.users.iter().find(|u| u.name.0 == user).unwrap_or_else(|| panic!("no user {user}"));
    u.ssh_authorized_keys.iter().map(|k| k.0.clone()).collect()
}

#[test]
fn metadata_keys_go_to_core_unless_they_name_a_user_of_the_document() {
    let mut r = record("i-1", Some(&alice_doc(KEY_A)));
    r.ssh_keys = vec![
        key(Some("alice"), KEY_B),
        key(None, KEY_M),
        // GCE `bob:key`, Azure's admin user: not users of the document, so core's.
        key(Some("bob"), KEY_C),
        key(Some("azureuser"), KEY_C),
        // Already the document's key for alice: not twice.
        key(Some("alice"), KEY_A),
        key(Some("core"), "two\nlines"),
    ];
    let (config, notes) = merge(&r).unwrap();
    assert_eq!(keys_of(&config, "alice"), [KEY_A, KEY_B]);
    assert_eq!(keys_of(&config, "core"), [KEY_M, KEY_C]);
    assert_eq!(config.users.len(), 2, "core added once, bob and azureuser not created");
    assert!(notes.contains(&"SSH keys of azureuser, bob go to core (the user data lists no such user)".to_string()));
    assert!(notes.contains(&"SSH key 5 of the metadata is not one non-empty line; not used".to_string()));
    // The document's own core entry takes the metadata's keys after its own.
    let doc = format!("[[users]]\nname = \"core\"\ngroups = [\"sudo\"]\nssh_authorized_keys = [\"{KEY_C}\"]\n");
    let (config, _) = merge(&record("i-1", Some(&doc))).unwrap();
    assert_eq!(keys_of(&config, "core"), [KEY_C, KEY_M]);
    assert_eq!(config.users[0].groups, [Name("sudo".into())]);
    // No user data: the keys and the hostname alone make the document.
    let (config, _) = merge(&record("i-1", None)).unwrap();
    assert_eq!(keys_of(&config, "core"), [KEY_M]);
    assert!(config.files.is_empty() && config.units.is_empty());

    // Applied: each key in its user's authorized_keys.
    let dir = image();
    let root = dir.path();
    let mut r = record("i-1", Some(&alice_doc(KEY_A)));
    r.ssh_keys.push(key(Some("alice"), KEY_B));
    let done = provision(root, &r);
    assert!(done.ok && done.changed, "{done:?}");
    assert_eq!(read(root, "home/core/.ssh/authorized_keys"), format!("{KEY_M}\n"));
    assert_eq!(read(root, "home/alice/.ssh/authorized_keys"), format!("{KEY_A}\n{KEY_B}\n"));
    assert_eq!(meta(root, "home/core/.ssh/authorized_keys"), (0o600, 1000, 1000));
}

#[test]
fn the_metadata_hostname_applies_unless_the_document_sets_one() {
    let (config, notes) = merge(&record("i-1", None)).unwrap();
    assert_eq!(config.hostname, Some(Hostname("ip-10-0-0-7.ec2.internal".into())));
    assert!(notes.contains(&"hostname ip-10-0-0-7.ec2.internal from the metadata".to_string()), "{notes:?}");
    let (config, notes) = merge(&record("i-1", Some("hostname = \"web-1\"\n"))).unwrap();
    assert_eq!(config.hostname, Some(Hostname("web-1".into())));
    assert!(
        notes.contains(
            &"hostname web-1 from the user data (the metadata's ip-10-0-0-7.ec2.internal is not used)".into()
        )
    );
    // A GCE FQDN longer than a hostname may be: its first label.
    let mut r = record("i-1", None);
    r.hostname = Some(format!("node-1.{}.c.project.internal", "z".repeat(60)));
    assert_eq!(merge(&r).unwrap().0.hostname, Some(Hostname("node-1".into())));
    // Not a hostname at all: not used, said, and the rest still applies.
    r.hostname = Some("bad_name".into());
    let (config, notes) = merge(&r).unwrap();
    assert_eq!(config.hostname, None);
    assert!(notes.contains(&"the metadata's hostname `bad_name` is not a valid hostname; not used".into()));

    let dir = image();
    let root = dir.path();
    assert!(provision(root, &record("i-1", None)).ok);
    assert_eq!(read(root, "etc/hostname"), "ip-10-0-0-7.ec2.internal\n");
}

#[test]
fn the_instance_id_decides_first_boot() {
    let m = |source: Source, instance: Option<&str>, digest: &str| Marker {
        digest: digest.into(),
        source: Some(source),
        instance_id: instance.map(String::from),
        platform: Some("aws".into()),
    };
    let apply = |d: Decision| matches!(d, Decision::Apply(_));
    assert!(apply(decide(None, Some("i-1"), "d")));
    assert_eq!(
        decide(Some(&m(Source::Metadata, Some("i-1"), "d")), Some("i-1"), "e"),
        Decision::Done("already applied on instance i-1".into())
    );
    assert_eq!(
        decide(Some(&m(Source::Metadata, Some("i-1"), "d")), Some("i-2"), "d"),
        Decision::Apply("a new instance i-2 (applied before on instance i-1)".into())
    );
    // Another source's marker does not stand for the metadata.
    assert!(apply(decide(Some(&m(Source::Esp, None, "d")), Some("i-1"), "d")));
    assert!(apply(decide(Some(&m(Source::FwCfg, None, "d")), None, "d")));
    // No instance id to compare: the user data's digest decides.
    assert!(!apply(decide(Some(&m(Source::Metadata, None, "d")), None, "d")));
    assert!(!apply(decide(Some(&m(Source::Metadata, Some("i-1"), "d")), None, "d")));
    assert!(apply(decide(Some(&m(Source::Metadata, None, "d")), Some("i-1"), "e")));

    let dir = image();
    let root = dir.path();
    let doc = "[[files]]\npath = \"/etc/app.conf\"\ncontent = \"one\\n\"\n";
    let first = provision(root, &record("i-1", Some(doc)));
    assert!(first.ok && first.changed, "{first:?}");
    let digest = sha256_hex(doc.as_bytes());
    assert_eq!(read(root, MARKER), format!("{digest}\ncloud metadata user data\ni-1\naws\n"));
    assert!(
        first
            .summary
            .starts_with(&format!("applied the cloud metadata user data (aws, instance i-1) (sha256 {digest}): ")),
        "{}",
        first.summary
    );
    assert!(first.lines.contains(&"provisioning: aws metadata: first boot".to_string()), "{:?}", first.lines);
    // A reboot: the same instance applies nothing, even with the file changed by hand since.
    fs::write(root.join("etc/app.conf"), "edited\n").unwrap();
    let reboot = provision(root, &record("i-1", Some(doc)));
    assert!(reboot.ok && !reboot.changed, "{reboot:?}");
    assert_eq!(reboot.summary, "aws metadata: already applied on instance i-1");
    assert_eq!(read(root, "etc/app.conf"), "edited\n");
    // A new instance from the same image (or a snapshot of this one) provisions again.
    let mut again = record("i-2", Some(doc));
    again.hostname = Some("ip-10-0-0-8".into());
    let new = provision(root, &again);
    assert!(new.ok && new.changed, "{new:?}");
    assert!(
        new.lines.contains(&"provisioning: aws metadata: a new instance i-2 (applied before on instance i-1)".into())
    );
    assert_eq!(read(root, "etc/app.conf"), "one\n");
    assert_eq!(read(root, "etc/hostname"), "ip-10-0-0-8\n");
    assert_eq!(read(root, MARKER), format!("{digest}\ncloud metadata user data\ni-2\naws\n"));
    // provision-status names the source and the instance.
    let (text, code) = status(root);
    assert_eq!(code, 0);
    assert!(
        text.starts_with(&format!(
            "applied: cloud metadata user data (aws metadata service, instance i-2) with sha256 {digest} "
        )),
        "{text}"
    );
    // Stage 2, on the next boot, offered fw_cfg's document: the machine was provisioned.
    assert_eq!(run_in(root, fw_cfg(b"hostname = \"x\"\n".to_vec())), ["provisioning: already applied on first boot"]);
}

#[test]
fn malformed_user_data_applies_nothing_from_the_record() {
    let dir = image();
    let root = dir.path();
    // Valid keys and hostname in the metadata, a document that is not one.
    let bad = "[[files]]\npath = \"/etc/app.conf\"\ncontent = \"x\"\nhostname = 5\n";
    let done = provision(root, &record("i-1", Some(bad)));
    assert!(!done.ok && !done.changed, "{done:?}");
    assert!(
        done.summary.starts_with("provisioning config cloud metadata user data:4:1: unknown field `hostname`")
            && done.summary.ends_with("; nothing applied"),
        "{}",
        done.summary
    );
    assert!(
        done.lines.iter().any(|l| l.starts_with("provisioning: provisioning config cloud metadata user data:4:1: ")
            && l.ends_with("; nothing applied from the metadata, going on with the image's configuration")),
        "{:?}",
        done.lines
    );
    assert!(!root.join("etc/hostname").exists() && !root.join("etc/app.conf").exists());
    assert!(!root.join("var/home").exists(), "no key of the metadata went to core");
    assert!(!root.join(MARKER).exists());
    let digest = sha256_hex(bad.as_bytes());
    let f = failed(root).unwrap();
    assert_eq!(
        (f.digest.as_str(), f.source, f.instance_id.as_deref()),
        (digest.as_str(), Some(Source::Metadata), Some("i-1"))
    );
    let (text, code) = status(root);
    assert_eq!(code, 1);
    assert!(
        text.starts_with(&format!("failed: cloud metadata user data (instance i-1) with sha256 {digest}: ")),
        "{text}"
    );
    // Not UTF-8: the same, naming the source.
    let mut r = record("i-9", None);
    r.user_data = Some(vec![b'h', 0xff]);
    let done = provision(root, &r);
    assert!(!done.ok && done.summary.starts_with("config cloud metadata user data is not UTF-8"), "{}", done.summary);

    // The same instance on its next boot: not tried again, and the unit fails again.
    let dir = image();
    let root = dir.path();
    assert!(!provision(root, &record("i-1", Some(bad))).ok);
    let again = provision(root, &record("i-1", Some(bad)));
    assert!(!again.ok && !again.changed);
    assert!(
        again.summary.contains("failed on an earlier boot") && again.summary.contains("not tried again"),
        "{}",
        again.summary
    );
    // Fixed user data (AWS lets it change while the instance is stopped) is tried, and applies.
    let good = "hostname = \"fixed\"\n";
    let fixed = provision(root, &record("i-1", Some(good)));
    assert!(fixed.ok && fixed.changed, "{fixed:?}");
    assert_eq!(read(root, "etc/hostname"), "fixed\n");
    assert!(failed(root).is_none(), "a success forgets the failure");
}

#[test]
fn no_metadata_service_or_no_answer_changes_nothing() {
    let dir = image();
    let root = dir.path();
    let mut r = InstanceRecord::empty("qemu", Fetched::NotACloud);
    let done = provision(root, &r);
    assert!(done.ok && !done.changed);
    assert_eq!(done.summary, "platform qemu has no metadata service: nothing to provision");
    r = InstanceRecord::empty("gce", Fetched::Unreachable);
    r.notes.push("no answer within 60s".into());
    let done = provision(root, &r);
    assert!(done.ok && !done.changed);
    assert_eq!(done.summary, "gce metadata service did not answer; going on with the image's configuration");
    assert_eq!(
        done.lines,
        [
            "provisioning: gce metadata: no answer within 60s",
            "provisioning: gce metadata service did not answer; going on with the image's configuration"
        ]
    );
    // Answered, with nothing to give.
    let done = provision(root, &InstanceRecord::empty("azure", Fetched::Complete));
    assert!(done.ok && !done.changed && done.summary.contains("no user data, hostname or SSH key"), "{done:?}");
    assert!(!root.join(MARKER).exists() && !root.join(FAILED).exists());
    // Partial: what is there applies, the notes are logged.
    let mut partial = record("i-1", None);
    partial.outcome = Fetched::Partial;
    partial.notes.push("meta-data/public-keys: the server answered 500".into());
    let done = provision(root, &partial);
    assert!(done.ok && done.changed);
    assert_eq!(done.lines[0], "provisioning: aws metadata: meta-data/public-keys: the server answered 500");
}

#[test]
fn the_record_is_read_only_as_roots_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("instance.toml");
    record("i-1", Some("hostname = \"a\"\n")).write_atomic(&path).unwrap();
    assert_eq!(metadata::read_record(&path).unwrap(), record("i-1", Some("hostname = \"a\"\n")));
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let e = metadata::read_record(&link).unwrap_err();
    assert!(e.ends_with("link.toml is a symbolic link; not followed"), "{e}");
    // A FIFO would hang PID 1 on open: refused at once.
    let fifo = dir.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(metadata::read_record(&fifo).unwrap_err().contains("not a regular file of root's"));
    std::os::unix::fs::chown(&path, Some(1000), None).unwrap();
    assert!(metadata::read_record(&path).unwrap_err().contains("not a regular file of root's"));
    let e = metadata::read_record(&dir.path().join("absent.toml")).unwrap_err();
    assert!(e.contains("no record"), "{e}");
    fs::write(&path, "platform = \"aws\"\n").unwrap();
    std::os::unix::fs::chown(&path, Some(0), None).unwrap();
    assert!(metadata::read_record(&path).unwrap_err().contains("missing field `outcome`"));
}
