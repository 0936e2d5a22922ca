//! Real Vagrant (slow suite, `BERTH_TEST_SLOW=1`; prerequisites: `scripts/setup-vagrant`, root):
//! Debian's `vagrant` and `vagrant-libvirt` run a Berth box under a libvirtd this test starts.
//!
//! libvirt's management network is a private range (192.168.121.0/24), so everything runs inside
//! a network and mount namespace the test creates: only `lo` in it, a tmpfs on `/run` (libvirt's
//! sockets and pid files) and the test's own directories over `/etc/libvirt`, `/var/lib/libvirt`,
//! `/var/log/libvirt` and `/var/cache/libvirt`. virtlogd and libvirtd are started there with that
//! configuration (QEMU as root, no security driver, no cgroups), vagrant runs there with its own
//! `VAGRANT_HOME`, and when the test ends, also by a panic, every domain and network is destroyed,
//! the processes the test started (and any left in its namespace) are killed and the namespace
//! goes with its last process.
//!
//! The steps, each timed: build `images/container-host.toml`, `berth export --platform
//! vagrant-libvirt` (the box with its Vagrantfile and berth/provision.toml on the ESP), `vagrant box
//! add`, `vagrant up --provider=libvirt` with `libvirt.driver = "qemu"` (TCG: domain type `qemu`)
//! and a hostname, `vagrant ssh -c 'sudo ctr version && cat /etc/os-release'`, the insecure key
//! replaced by the machine's own, a private network's static address on eth1, a file written
//! under `/var`, `vagrant halt` ending with the domain shut off by the guest (`virsh domstate
//! --reason`: `shutdown`, not `destroyed`), `vagrant up` again keeping the file and the hostname
//! (and the static address, from the unit the guest capability enabled), `vagrant destroy -f`
//! leaving no domain.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_builder::build::{BuildOptions, build};
use berth_builder::export::{ExportOptions, export};
use berth_builder::platform::Platform;

/// The box's domain under TCG; `vagrant up` waits this long for SSH (Vagrant's default, 300 s, is
/// too short for an emulated first boot on a busy 2-core host).
const BOOT_TIMEOUT_SECS: u64 = 900;

/// A static address on a private network (the guest's `configure_networks`); like libvirt's
/// management network it exists only inside the test's namespace.
const PRIVATE_IP: &str = "192.168.50.10";

/// The project's Vagrantfile: emulation (no KVM here), one vCPU (a single TCG thread keeps boots
/// steady on a loaded host, as the other QEMU tests do), the serial console to a file, a hostname
/// (the guest's `change_host_name`) and a private network with a static address.
fn project_vagrantfile(console: &Path) -> String {
    format!(
        r#"Vagrant.configure("2") do |config|
  config.vm.box = "berth-test"
  config.vm.hostname = "berth-vagrant"
  config.vm.network :private_network, ip: "{PRIVATE_IP}", libvirt__dhcp_enabled: false
  config.vm.boot_timeout = {BOOT_TIMEOUT_SECS}
  config.vm.graceful_halt_timeout = 300
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "qemu"
    libvirt.cpus = 1
    libvirt.memory = 2048
    libvirt.graphics_type = "none"
    libvirt.serial :type => "file", :source => {{ :path => "{}" }}
  end
end
"#,
        console.display()
    )
}

/// The namespace, the daemons in it and the scratch directory; torn down on drop.
struct Lab {
    dir: tempfile::TempDir,
    /// `sleep infinity`, the namespace's first process: the namespace lives while it does.
    holder: Child,
    /// The network namespace's inode, to find the processes inside it.
    netns: u64,
}

fn step<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    eprintln!("==> {name}");
    let r = f();
    eprintln!("<== {name}: {:.1} s", t.elapsed().as_secs_f64());
    r
}

fn check(what: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

impl Lab {
    fn start() -> Lab {
        let dir = tempfile::Builder::new().prefix("berth-vagrant-").tempdir().unwrap();
        let d = dir.path();
        for sub in ["lib/images", "log", "cache", "etc", "vagrant.d", "project"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // libvirt's installed configuration, with no network of its own (vagrant-libvirt makes its
        // management network) and the settings a daemon in a private namespace needs.
        check(
            "copying /etc/libvirt",
            Command::new("cp").arg("-a").arg("/etc/libvirt/.").arg(d.join("etc")).output().unwrap(),
        );
        let _ = std::fs::remove_dir_all(d.join("etc/qemu/networks"));
        std::fs::create_dir_all(d.join("etc/qemu/networks/autostart")).unwrap();
        append(
            &d.join("etc/qemu.conf"),
            "\n# berth-qemu-tests vagrant.rs\nuser = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\n\
             security_driver = \"none\"\ncgroup_controllers = [ ]\n",
        );
        append(
            &d.join("etc/libvirtd.conf"),
            "\n# berth-qemu-tests vagrant.rs\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\nunix_sock_group = \"root\"\n",
        );
        let script = format!(
            "set -e; mount -t tmpfs -o mode=0755 berth-test-run /run; mkdir -p /run/libvirt; \
             mount --bind {d}/lib /var/lib/libvirt; mount --bind {d}/log /var/log/libvirt; \
             mount --bind {d}/cache /var/cache/libvirt; mount --bind {d}/etc /etc/libvirt; \
             ip link set lo up; echo ready; exec sleep infinity",
            d = d.display()
        );
        let mut holder = Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux)");
        let mut ready = String::new();
        use std::io::Read;
        let mut out = holder.stdout.take().unwrap();
        let mut buf = [0u8; 6];
        let _ = out.read_exact(&mut buf);
        ready.push_str(&String::from_utf8_lossy(&buf));
        assert_eq!(ready, "ready\n", "setting up the namespace failed (the test needs root)");
        let netns = std::fs::metadata(format!("/proc/{}/ns/net", holder.id())).unwrap().ino();
        assert_ne!(netns, std::fs::metadata("/proc/self/ns/net").unwrap().ino(), "not in a namespace of its own");
        let lab = Lab { dir, holder, netns };
        let pids = lab.dir.path().join("run");
        std::fs::create_dir_all(&pids).unwrap();
        check("virtlogd", lab.ns("virtlogd").args(["-d", "-p"]).arg(pids.join("virtlogd.pid")).output().unwrap());
        check("libvirtd", lab.ns("libvirtd").args(["-d", "-p"]).arg(pids.join("libvirtd.pid")).output().unwrap());
        let t = Instant::now();
        while !lab.virsh(&["version"]).status.success() {
            assert!(t.elapsed() < Duration::from_secs(60), "libvirtd did not answer within 60 s");
            std::thread::sleep(Duration::from_millis(500));
        }
        lab
    }

    /// A command run inside the namespace (`nsenter`), with the lab's Vagrant environment.
    fn ns(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        // `--wd`: entering a mount namespace moves to its root directory otherwise.
        let wd = self.dir.path().join("project");
        c.arg("-t").arg(self.holder.id().to_string()).args(["-n", "-m"]).arg(format!("--wd={}", wd.display()));
        c.arg("--").arg(program);
        c.env("VAGRANT_HOME", self.dir.path().join("vagrant.d"))
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .env("VAGRANT_BOX_UPDATE_CHECK_DISABLE", "1")
            .env("VAGRANT_DEFAULT_PROVIDER", "libvirt")
            .env("LIBVIRT_DEFAULT_URI", "qemu:///system")
            .stdin(Stdio::null());
        c
    }

    fn virsh(&self, args: &[&str]) -> Output {
        self.ns("virsh").args(args).output().unwrap()
    }

    /// `vagrant ARGS` with its output shown as it comes (`--nocapture`) and kept.
    fn vagrant(&self, args: &[&str]) -> String {
        let log = self.dir.path().join("vagrant.log");
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let out = self.ns("vagrant").args(args).stderr(f.try_clone().unwrap()).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        // Box uploads draw a progress bar with erase-line escapes: only its last state is shown.
        let shown = stdout.lines().map(|l| l.rsplit("\x1b[K").next().unwrap_or(l));
        eprint!("{}", shown.map(|l| format!("    | {l}\n")).collect::<String>());
        if !out.status.success() {
            let console = std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default();
            let tail: Vec<&str> = console.lines().rev().take(60).collect();
            panic!(
                "vagrant {args:?}: {}\nstderr:\n{}\nconsole (last lines):\n{}",
                out.status,
                std::fs::read_to_string(&log).unwrap_or_default(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        stdout
    }

    /// The domain of the project's machine (vagrant-libvirt keeps its UUID as the machine's id).
    fn domain(&self) -> String {
        let id = self.dir.path().join("project/.vagrant/machines/default/libvirt/id");
        std::fs::read_to_string(&id).unwrap_or_else(|e| panic!("{}: {e}", id.display())).trim().to_string()
    }

    /// The pids of every process in the lab's network namespace.
    fn processes(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == self.netns) {
                pids.push(pid);
            }
        }
        pids
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f =
        std::fs::OpenOptions::new().append(true).open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes()).unwrap();
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Domains and networks first (libvirt stops their QEMU and dnsmasq), then the daemons,
        // then whatever is left in the namespace (all of it started by this test), the holder last.
        let names = |args: &[&str]| {
            let out = self.virsh(args);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        };
        for dom in names(&["list", "--name"]) {
            let _ = self.virsh(&["destroy", &dom]);
        }
        for net in names(&["net-list", "--name"]) {
            let _ = self.virsh(&["net-destroy", &net]);
        }
        for pid_file in ["libvirtd.pid", "virtlogd.pid"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("run").join(pid_file))
                && let Ok(pid) = pid.trim().parse::<i32>()
            {
                kill(pid, 15);
            }
        }
        std::thread::sleep(Duration::from_secs(2));
        let holder = self.holder.id() as i32;
        for pid in self.processes() {
            if pid != holder {
                kill(pid, 9);
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let left = self.processes();
        if !left.is_empty() {
            eprintln!("vagrant lab: processes still in the namespace after teardown: {left:?}");
        }
    }
}

/// kill(1): this crate has no libc binding of its own.
fn kill(pid: i32, signal: i32) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

#[test]
fn vagrant_box_up_halt_up_destroy() {
    if !berth_qemu_tests::slow_enabled("vagrant_box_up_halt_up_destroy") {
        return;
    }
    let all = Instant::now();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = tempfile::Builder::new().prefix("berth-vagrant-box-").tempdir().unwrap();

    let disk = step("berth build images/container-host.toml", || {
        let def = root.join("images/container-host.toml");
        let options = BuildOptions::for_workspace(&root, def, work.path().join("build")).expect("a cache directory");
        build(&options).unwrap_or_else(|e| panic!("berth build: {e:#}")).disk
    });
    let boxfile = step("berth export --platform vagrant-libvirt", || {
        let opts = ExportOptions {
            platforms: vec![Platform::VagrantLibvirt],
            out_dir: work.path().join("export"),
            provision: None,
            source_date_epoch: None,
            progress: false,
        };
        let artifacts = export(&disk, &opts).unwrap_or_else(|e| panic!("berth export: {e}"));
        artifacts.into_iter().find(|a| a.platform == Platform::VagrantLibvirt).expect("the libvirt box").path
    });
    std::fs::remove_dir_all(work.path().join("build")).unwrap();

    let lab = step("network namespace, virtlogd, libvirtd", Lab::start);
    let console = lab.dir.path().join("console.log");
    std::fs::write(lab.dir.path().join("project/Vagrantfile"), project_vagrantfile(&console)).unwrap();

    step("vagrant box add", || lab.vagrant(&["box", "add", "--name", "berth-test", boxfile.to_str().unwrap()]));
    // Disk space: the box is in VAGRANT_HOME now.
    std::fs::remove_dir_all(work.path().join("export")).unwrap();
    step("vagrant up --provider=libvirt", || lab.vagrant(&["up", "--provider=libvirt"]));
    let domain = lab.domain();
    let xml = check("virsh dumpxml", lab.virsh(&["dumpxml", &domain]));
    assert!(xml.contains("<domain type='qemu'"), "not an emulated (TCG) domain:\n{xml}");
    assert!(xml.contains("machine='pc-q35"), "not q35:\n{xml}");
    assert!(xml.contains("OVMF"), "no OVMF loader:\n{xml}");

    let out = step("vagrant ssh -c 'sudo ctr version && cat /etc/os-release'", || {
        lab.vagrant(&["ssh", "-c", "sudo ctr version && cat /etc/os-release"])
    });
    assert!(out.contains("Server:") && out.contains("Revision:"), "ctr version did not reach containerd:\n{out}");
    assert!(out.lines().any(|l| l.trim() == "ID=berth"), "not Berth's os-release:\n{out}");

    let out = step("vagrant ssh: hostname, keys, a file under /var", || {
        lab.vagrant(&[
            "ssh",
            "-c",
            "hostname; cat /etc/hostname; cat ~/.ssh/authorized_keys; ip -4 -o address show; \
             echo berth-vagrant-token | sudo tee /var/lib/berth-vagrant-test >/dev/null; sync",
        ])
    });
    let insecure = include_str!("../../builder/src/export/vagrant/vagrant.pub").trim();
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines.first(), Some(&"berth-vagrant"), "hostname:\n{out}");
    assert_eq!(lines.get(1), Some(&"berth-vagrant"), "/etc/hostname:\n{out}");
    assert!(!out.contains(insecure), "the insecure key is still authorised:\n{out}");
    assert!(lines.iter().any(|l| l.starts_with("ssh-")), "no key of the machine's own:\n{out}");
    let private = format!("inet {PRIVATE_IP}/24 ");
    assert!(lines.iter().any(|l| l.contains("eth1") && l.contains(&private)), "no {PRIVATE_IP}/24 on eth1:\n{out}");

    step("vagrant halt", || lab.vagrant(&["halt"]));
    let state = check("virsh domstate --reason", lab.virsh(&["domstate", "--reason", &domain]));
    eprintln!("    domstate: {}", state.trim());
    assert_eq!(state.trim(), "shut off (shutdown)", "the guest did not power itself off");

    step("vagrant up (again)", || lab.vagrant(&["up", "--provider=libvirt"]));
    let out = step("vagrant ssh: the file and the hostname kept", || {
        lab.vagrant(&["ssh", "-c", "cat /var/lib/berth-vagrant-test; hostname; ip -4 -o address show dev eth1"])
    });
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[..2], ["berth-vagrant-token", "berth-vagrant"], "{out}");
    assert!(
        lines[2..].iter().any(|l| l.contains(&private)),
        "the static address is not kept after halt and up:\n{out}"
    );

    step("vagrant destroy -f", || lab.vagrant(&["destroy", "-f"]));
    let left = check("virsh list --all", lab.virsh(&["list", "--all", "--name"]));
    assert!(left.trim().is_empty(), "domains left after destroy: {left}");
    drop(lab);
    eprintln!("vagrant_box_up_halt_up_destroy: {:.1} s in all", all.elapsed().as_secs_f64());
}
