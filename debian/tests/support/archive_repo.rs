//! A throwaway signed Debian repository served over HTTP on 127.0.0.1, for the archive client's
//! tests. The parts are made by external tools, not by the code under test: `.deb`s by
//! `dpkg-deb --build`, hashes by `sha256sum`, `Packages.xz` by `xz`, keys and the `InRelease`
//! signature by `gpg` (in its own temporary GNUPGHOME, whose agent is stopped on drop).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use berth_debian::ArchiveConfig;
use berth_testkit::Response;

/// Runs a tool and returns its stdout; a missing tool fails naming the Debian package.
pub fn run(cmd: &mut Command, package: &str) -> Vec<u8> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = match cmd.stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` is needed by this test: apt-get install {package}")
        }
        Err(e) => panic!("running {program}: {e}"),
    };
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn run_with_input(cmd: &mut Command, input: &[u8], package: &str) -> Vec<u8> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = match cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` is needed by this test: apt-get install {package}")
        }
        Err(e) => panic!("running {program}: {e}"),
    };
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A GnuPG home with its own keys.
pub struct Gpg {
    home: tempfile::TempDir,
}

impl Gpg {
    pub fn new() -> Gpg {
        // Short path: gpg-agent's socket path must fit in sun_path.
        let home = tempfile::Builder::new().prefix("gpg").tempdir_in("/tmp").unwrap();
        Gpg { home }
    }

    fn gpg(&self) -> Command {
        let mut c = Command::new("gpg");
        c.arg("--homedir").arg(self.home.path()).args(["--batch", "--quiet", "--no-tty", "--passphrase", ""]);
        c
    }

    /// Makes a key shaped like Debian's archive keys: a certification-only primary key and a
    /// separate signing subkey (so verification has to follow the subkey binding). Returns the
    /// primary fingerprint.
    pub fn gen_key(&self, uid: &str, algo: &str) -> String {
        run(self.gpg().args(["--quick-gen-key", uid, algo, "cert", "1y"]), "gnupg");
        let fpr = self.fingerprint(uid);
        run(self.gpg().args(["--quick-add-key", &fpr, algo, "sign", "1y"]), "gnupg");
        fpr
    }

    fn fingerprint(&self, uid: &str) -> String {
        let out = run(self.gpg().args(["--with-colons", "--list-keys", uid]), "gnupg");
        let text = String::from_utf8(out).unwrap();
        let line = text.lines().find(|l| l.starts_with("fpr:")).expect("gpg listed no fingerprint");
        line.split(':').nth(9).unwrap().to_string()
    }

    /// The public key (with its subkeys), binary or armored.
    pub fn export(&self, fpr: &str, armor: bool) -> Vec<u8> {
        let mut cmd = self.gpg();
        if armor {
            cmd.arg("--armor");
        }
        run(cmd.args(["--export", fpr]), "gnupg")
    }

    /// A cleartext signature of `text` made with `fpr` (its signing subkey), as InRelease is.
    pub fn clearsign(&self, fpr: &str, text: &[u8]) -> Vec<u8> {
        run_with_input(self.gpg().args(["--local-user", fpr, "--digest-algo", "SHA512", "--clearsign"]), text, "gnupg")
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        // Stop the agent gpg started for this home; it would outlive the test otherwise.
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--kill", "gpg-agent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A file server on 127.0.0.1 (Berth's loopback test server) that logs every request.
pub struct Server {
    server: berth_testkit::Server,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl Server {
    pub fn start() -> Server {
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let served = files.clone();
        let server = berth_testkit::Server::start(move |r| match served.lock().unwrap().get(&r.target) {
            Some(body) => Response::ok(body.clone()).into(),
            None => Response::status(404).into(),
        })
        .unwrap();
        Server { server, files }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn put(&self, path: &str, bytes: Vec<u8>) {
        self.files.lock().unwrap().insert(path.to_string(), bytes);
    }

    pub fn get(&self, path: &str) -> Vec<u8> {
        self.files.lock().unwrap()[path].clone()
    }

    /// Paths requested since the last call.
    pub fn take_requests(&self) -> Vec<String> {
        self.server.take_requests().into_iter().map(|r| r.target).collect()
    }
}

/// One package of the test repository.
#[derive(Clone)]
pub struct Spec {
    pub name: &'static str,
    pub version: &'static str,
    pub arch: &'static str,
    /// Extra control fields (`Depends: ...`), one per line.
    pub fields: &'static str,
}

pub const fn spec(name: &'static str, version: &'static str, arch: &'static str, fields: &'static str) -> Spec {
    Spec { name, version, arch, fields }
}

/// How the repository's Release is made.
#[derive(Clone, Default)]
pub struct Options {
    /// `Valid-Until:` value, if any.
    pub valid_until: Option<String>,
    /// Sign with a second key that is NOT exported to the keyring.
    pub foreign_signer: bool,
    /// Put the key in the `.sources` file inline (armored) instead of a keyring file.
    pub inline_key: bool,
    /// Offer only `Packages.gz` (no `.xz`), to exercise the fallback.
    pub gz_only: bool,
}

/// The whole fixture: keys, `.deb`s, signed indexes, server, apt root and cache.
pub struct Repo {
    pub server: Server,
    pub gpg: Gpg,
    pub key: String,
    pub apt_root: tempfile::TempDir,
    pub cache: tempfile::TempDir,
    work: tempfile::TempDir,
    /// name → (pool path served, .deb bytes).
    pub debs: HashMap<String, (String, Vec<u8>)>,
}

pub const DIST: &str = "/debian/dists/stable";

impl Repo {
    pub fn new(specs: &[Spec], options: &Options) -> Repo {
        let server = Server::start();
        let gpg = Gpg::new();
        let key = gpg.gen_key("Berth Test Archive <archive@berth.invalid>", "ed25519");
        let work = tempfile::tempdir().unwrap();
        let mut debs = HashMap::new();
        let mut packages = String::new();
        for s in specs {
            let (pool, bytes) = build_deb(work.path(), s);
            let size = bytes.len();
            let sha = sha256sum(work.path(), &bytes);
            // The stanza as the archive writes it: the control fields plus where and what.
            let control = run(Command::new("dpkg-deb").arg("--field").arg(work.path().join(&pool)), "dpkg");
            packages.push_str(&String::from_utf8(control).unwrap());
            packages.push_str(&format!("Filename: {pool}\nSize: {size}\nSHA256: {sha}\n\n"));
            server.put(&format!("/debian/{pool}"), bytes.clone());
            debs.insert(s.name.to_string(), (pool, bytes));
        }
        let repo = Repo {
            server,
            gpg,
            key,
            apt_root: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
            work,
            debs,
        };
        repo.publish(&packages, options);
        repo
    }

    /// Writes Packages(.xz|.gz), Release and the signed InRelease, and the apt config.
    pub fn publish(&self, packages: &str, options: &Options) {
        let plain = packages.as_bytes().to_vec();
        let xz = run_with_input(Command::new("xz").args(["-c", "-6"]), &plain, "xz-utils");
        let gz = run_with_input(Command::new("gzip").args(["-c", "-n"]), &plain, "gzip");
        let mut indexes = vec![("Packages.gz", gz)];
        if !options.gz_only {
            indexes.push(("Packages.xz", xz));
        }
        let date = String::from_utf8(run(Command::new("date").args(["-u", "+%a, %d %b %Y %H:%M:%S UTC"]), "coreutils"))
            .unwrap();
        let mut release = format!(
            "Origin: Berth test\nLabel: Berth test\nSuite: stable\nCodename: berth-test\nDate: {}\n",
            date.trim()
        );
        if let Some(v) = &options.valid_until {
            release.push_str(&format!("Valid-Until: {v}\n"));
        }
        release.push_str("Acquire-By-Hash: yes\nArchitectures: amd64 all\nComponents: main\nSHA256:\n");
        // The uncompressed index is listed but not served, as on Debian's mirrors.
        let mut listed = vec![("Packages", plain.clone())];
        listed.extend(indexes.iter().cloned());
        for (name, bytes) in &listed {
            let sha = sha256sum(self.work.path(), bytes);
            release.push_str(&format!(" {sha} {:>8} main/binary-amd64/{name}\n", bytes.len()));
        }
        for (name, bytes) in indexes {
            let sha = sha256sum(self.work.path(), &bytes);
            self.server.put(&format!("{DIST}/main/binary-amd64/{name}"), bytes.clone());
            self.server.put(&format!("{DIST}/main/binary-amd64/by-hash/SHA256/{sha}"), bytes);
        }
        let signer = if options.foreign_signer {
            self.gpg.gen_key("Somebody Else <else@berth.invalid>", "ed25519")
        } else {
            self.key.clone()
        };
        self.server.put(&format!("{DIST}/Release"), release.clone().into_bytes());
        self.server.put(&format!("{DIST}/InRelease"), self.gpg.clearsign(&signer, release.as_bytes()));

        let apt = self.apt_root.path().join("etc/apt/sources.list.d");
        std::fs::create_dir_all(&apt).unwrap();
        let signed_by = if options.inline_key {
            let armored = String::from_utf8(self.gpg.export(&self.key, true)).unwrap();
            let folded: Vec<String> =
                armored.lines().map(|l| if l.is_empty() { " .".to_string() } else { format!(" {l}") }).collect();
            format!("\n{}", folded.join("\n"))
        } else {
            let keyring = self.apt_root.path().join("keys/archive.gpg");
            std::fs::create_dir_all(keyring.parent().unwrap()).unwrap();
            std::fs::write(&keyring, self.gpg.export(&self.key, false)).unwrap();
            " /keys/archive.gpg".to_string()
        };
        std::fs::write(
            apt.join("berth-test.sources"),
            format!(
                "# written by the archive test\nTypes: deb\nURIs: {}/debian/\nSuites: stable\nComponents: main\nSigned-By:{signed_by}\n",
                self.server.url()
            ),
        )
        .unwrap();
    }

    pub fn config(&self) -> ArchiveConfig {
        let mut c = ArchiveConfig::new(self.apt_root.path(), self.cache.path());
        c.progress = false;
        c
    }

    /// Files in the cache's `debs/` directory.
    pub fn cached_debs(&self) -> Vec<PathBuf> {
        let dir = self.cache.path().join("debs");
        let mut v: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        };
        v.sort();
        v
    }
}

fn build_deb(work: &Path, s: &Spec) -> (String, Vec<u8>) {
    let root = work.join(format!("src-{}", s.name));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    let doc = root.join("usr/share/doc").join(s.name);
    std::fs::create_dir_all(&doc).unwrap();
    std::fs::write(doc.join("README"), format!("{} {}\n", s.name, s.version)).unwrap();
    let mut control = format!(
        "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: Berth <test@berth.invalid>\n",
        s.name, s.version, s.arch
    );
    for line in s.fields.lines().filter(|l| !l.trim().is_empty()) {
        control.push_str(line.trim());
        control.push('\n');
    }
    control.push_str(&format!("Description: test package {}\n A package for the archive tests.\n", s.name));
    std::fs::write(root.join("DEBIAN/control"), control).unwrap();
    let pool = format!("pool/main/{}/{}_{}_{}.deb", &s.name[..1], s.name, s.version, s.arch);
    let out = work.join(&pool);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zgzip", "--build"]).arg(&root).arg(&out), "dpkg");
    let mut bytes = Vec::new();
    std::fs::File::open(&out).unwrap().read_to_end(&mut bytes).unwrap();
    (pool, bytes)
}

fn sha256sum(work: &Path, bytes: &[u8]) -> String {
    let _ = work;
    let out = run_with_input(&mut Command::new("sha256sum"), bytes, "coreutils");
    String::from_utf8(out).unwrap().split_whitespace().next().unwrap().to_string()
}

/// A 127.0.0.1 port nothing listens on (bound, then released).
pub fn dead_port() -> u16 {
    berth_testkit::dead_port()
}
