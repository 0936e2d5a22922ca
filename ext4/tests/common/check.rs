//! Reads an ext4 image back with tools that share no code with the writer, and compares every
//! entry with the tree it was made from.
//!
//! Two readers, because neither sees everything:
//! - the `ext4-view` crate (pure Rust): looks every path up (through the htree index where the
//!   directory has one), reads contents and symlink targets, lists every directory, and checks
//!   type, mode, owner and mtime;
//! - `debugfs` (e2fsprogs): inode numbers (hard links), link counts, device numbers, inode
//!   flags, fast/slow symlinks, the htree depth and extended attributes, through two runs with
//!   one command file each (one run per entry would take minutes); and every file's content
//!   and symlink target again, from an `rdump` of the whole filesystem.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Display;
use std::path::Path;
use std::process::{Command, Stdio};

use berth_fstree::{NodeId, NodeKind, ROOT, Tree};

use super::{BIG_DIR, show, tool};

const LOST_FOUND: &[u8] = b"lost+found";
const EXT4_INDEX_FL: u32 = 0x1000;

/// What a check found: one line per mismatch, and some facts worth printing.
#[derive(Debug, Default)]
pub struct Report {
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    fn fail(&mut self, check: &str, path: &[u8], what: impl Display) {
        self.failures.push(format!("[{check}] {}: {what}", show(path)));
    }

    fn expect<T: PartialEq + std::fmt::Debug>(&mut self, check: &str, path: &[u8], what: &str, want: T, got: T) {
        if want != got {
            self.fail(check, path, format!("{what}: expected {want:?}, got {got:?}"));
        }
    }

    /// Panics listing the failures (a count per kind, then the first 200) if there are any.
    pub fn assert_ok(&self) {
        if self.failures.is_empty() {
            return;
        }
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for f in &self.failures {
            // `[check] /path: what...`: the kind is the check and the first word group of what.
            let (check, rest) = f.split_once("] ").unwrap_or((f, ""));
            let what = rest.split_once(": ").map_or("", |(_, w)| w);
            let what = what.split([':', '(']).next().unwrap_or("");
            *kinds.entry(format!("{check}] {what}")).or_default() += 1;
        }
        let mut msg = format!("{} check failures:\n", self.failures.len());
        for (k, n) in &kinds {
            msg.push_str(&format!("{n:>6} x {k}\n"));
        }
        for f in self.failures.iter().take(200) {
            msg.push_str(f);
            msg.push('\n');
        }
        if self.failures.len() > 200 {
            msg.push_str("...\n");
        }
        panic!("{msg}");
    }
}

/// Checks `image` against `tree` with both readers. `scratch` holds debugfs' command files.
pub fn check_image(tree: &Tree, image: &Path, scratch: &Path) -> Report {
    let mut r = Report::default();
    let t = std::time::Instant::now();
    with_ext4_view(tree, image, &mut r);
    r.notes.push(format!("ext4-view pass: {:.1} s", t.elapsed().as_secs_f64()));
    let t = std::time::Instant::now();
    with_debugfs(tree, image, scratch, &mut r);
    with_rdump(tree, image, scratch, &mut r);
    r.notes.push(format!("debugfs passes: {:.1} s", t.elapsed().as_secs_f64()));
    if !r.failures.is_empty() {
        let list = scratch.join("failures.txt");
        std::fs::write(&list, r.failures.join("\n")).unwrap();
        r.notes.push(format!(
            "all {} failures: {} (kept if BERTH_KEEP_SCRATCH is set)",
            r.failures.len(),
            list.display()
        ));
    }
    r
}

fn expected_type(kind: &NodeKind) -> ext4_view::FileType {
    use ext4_view::FileType as F;
    match kind {
        NodeKind::File(_) => F::Regular,
        NodeKind::Dir(_) => F::Directory,
        NodeKind::Symlink(_) => F::Symlink,
        NodeKind::CharDevice { .. } => F::CharacterDevice,
        NodeKind::BlockDevice { .. } => F::BlockDevice,
        NodeKind::Fifo => F::Fifo,
        NodeKind::Socket => F::Socket,
    }
}

/// Every entry through `ext4-view`: each directory listed, each path looked up (through the
/// htree index where there is one), each file and symlink target read.
fn with_ext4_view(tree: &Tree, image: &Path, r: &mut Report) {
    const C: &str = "ext4-view";
    let fs = match ext4_view::Ext4::load_from_path(image) {
        Ok(fs) => fs,
        Err(e) => return r.fail(C, b"", format!("cannot load the image: {e}")),
    };
    let mut entries = vec![(Vec::new(), ROOT)];
    entries.extend(tree.walk());
    let mut content_done = BTreeSet::new();
    for (p, id) in &entries {
        let abs = [b"/", p.as_slice()].concat();
        let abs = abs.as_slice();
        let node = tree.node(*id);
        let md = match fs.symlink_metadata(abs) {
            Ok(md) => md,
            Err(e) => {
                r.fail(C, p, format!("lookup failed: {e}"));
                continue;
            }
        };
        r.expect(C, p, "file type", expected_type(&node.kind), md.file_type());
        r.expect(C, p, "mode", format!("{:04o}", node.meta.mode), format!("{:04o}", md.mode()));
        r.expect(C, p, "uid", node.meta.uid, md.uid());
        r.expect(C, p, "gid", node.meta.gid, md.gid());
        r.expect(C, p, "mtime", node.meta.mtime, md.modified().seconds());
        match &node.kind {
            NodeKind::File(data) => {
                r.expect(C, p, "size", data.len(), md.len());
                if !content_done.insert(*id) {
                    continue;
                }
                let want = data.read_all().unwrap();
                match fs.read(abs) {
                    Ok(got) => compare_content(r, C, p, &want, &got),
                    Err(e) => r.fail(C, p, format!("read failed: {e}")),
                }
            }
            NodeKind::Symlink(target) => {
                r.expect(C, p, "size", target.len() as u64, md.len());
                match fs.read_link(abs) {
                    Ok(got) => compare_target(r, C, p, target, got.as_ref()),
                    Err(e) => r.fail(C, p, format!("read_link failed: {e}")),
                }
            }
            NodeKind::Dir(_) => {
                let want: BTreeSet<&[u8]> = tree.entries(*id).map(|(n, _)| n).collect();
                let mut got = BTreeSet::new();
                match fs.read_dir(abs) {
                    Ok(iter) => {
                        for e in iter {
                            let e = match e {
                                Ok(e) => e,
                                Err(e) => {
                                    r.fail(C, p, format!("read_dir entry failed: {e}"));
                                    continue;
                                }
                            };
                            let name = e.file_name().as_ref().to_vec();
                            if let Err(err) = e.metadata() {
                                r.fail(C, p, format!("metadata of entry {}: {err}", show(&name)));
                            }
                            got.insert(name);
                        }
                    }
                    Err(e) => r.fail(C, p, format!("read_dir failed: {e}")),
                }
                got.remove(b".".as_slice());
                got.remove(b"..".as_slice());
                // mkfs.ext4 and (probably) the writer add lost+found; e2fsck wants one.
                if *id == ROOT && !want.contains(LOST_FOUND) {
                    got.remove(LOST_FOUND);
                }
                let got_ref: BTreeSet<&[u8]> = got.iter().map(|v| v.as_slice()).collect();
                let missing: Vec<String> = want.difference(&got_ref).take(5).map(|n| show(n)).collect();
                let extra: Vec<String> = got_ref.difference(&want).take(5).map(|n| show(n)).collect();
                if !missing.is_empty() || !extra.is_empty() {
                    let n = (got.len(), want.len());
                    r.fail(
                        C,
                        p,
                        format!("listing: {} names, expected {}; missing {missing:?}; extra {extra:?}", n.0, n.1),
                    );
                }
            }
            _ => {}
        }
    }
}

fn compare_content(r: &mut Report, check: &str, p: &[u8], want: &[u8], got: &[u8]) {
    if want != got {
        let at = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
        let n = (want.len(), got.len());
        r.fail(check, p, format!("content differs from byte {at} (expected {} bytes, got {})", n.0, n.1));
    }
}

fn compare_target(r: &mut Report, check: &str, p: &[u8], want: &[u8], got: &[u8]) {
    if want != got {
        let (w, g) = (String::from_utf8_lossy(want), String::from_utf8_lossy(got));
        r.fail(check, p, format!("symlink target: expected {w:?}, got {g:?}"));
    }
}

/// File contents and symlink targets through `debugfs rdump`, which walks directories
/// without hashing names: a second reader of every byte.
fn with_rdump(tree: &Tree, image: &Path, scratch: &Path, r: &mut Report) {
    const C: &str = "debugfs rdump";
    let dest = scratch.join("rdump");
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir(&dest).unwrap();
    let out = Command::new(tool("debugfs", "e2fsprogs"))
        .arg("-R")
        .arg(format!("rdump / {}", dest.display()))
        .arg(image)
        .output()
        .expect("running debugfs");
    if !out.status.success() {
        return r.fail(C, b"", format!("debugfs exited with {}: {}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    let mut done = BTreeSet::new();
    for (p, id) in tree.walk() {
        if !done.insert(id) {
            continue;
        }
        let host = dest.join(super::path(&p));
        match &tree.node(id).kind {
            NodeKind::File(data) => match std::fs::read(&host) {
                Ok(got) => compare_content(r, C, &p, &data.read_all().unwrap(), &got),
                Err(e) => r.fail(C, &p, format!("reading the dumped file: {e}")),
            },
            NodeKind::Symlink(target) => match std::fs::read_link(&host) {
                Ok(got) => compare_target(r, C, &p, target, std::os::unix::ffi::OsStrExt::as_bytes(got.as_os_str())),
                Err(e) => r.fail(C, &p, format!("reading the dumped symlink: {e}")),
            },
            _ => {}
        }
    }
    let _ = std::fs::remove_dir_all(&dest);
}

/// Quotes an argument for a debugfs command line (libss: `""` inside quotes is one `"`).
fn quote(arg: &[u8]) -> Vec<u8> {
    let mut q = vec![b'"'];
    for &b in arg {
        if b == b'"' {
            q.push(b'"');
        }
        q.push(b);
    }
    q.push(b'"');
    q
}

/// Runs debugfs on `image` with `cmds`, one command a line, and returns the output of each
/// command in order. Both streams go to one file: with `-f`, debugfs echoes every command as
/// `debugfs: CMD` and makes stdout and stderr unbuffered, so errors land in their section.
fn debugfs(image: &Path, scratch: &Path, name: &str, cmds: &[Vec<u8>]) -> Result<Vec<Vec<Vec<u8>>>, String> {
    let cmd_file = scratch.join(format!("{name}.cmds"));
    let out_file = scratch.join(format!("{name}.out"));
    std::fs::write(&cmd_file, cmds.join(&b'\n')).unwrap();
    let out = std::fs::File::create(&out_file).unwrap();
    let status = Command::new(tool("debugfs", "e2fsprogs"))
        .arg("-f")
        .arg(&cmd_file)
        .arg(image)
        // htree_dump writes through a pager unless told not to.
        .env("DEBUGFS_PAGER", "__none__")
        .env("PAGER", "__none__")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .expect("running debugfs");
    let text = std::fs::read(&out_file).unwrap();
    if !status.success() {
        return Err(format!(
            "debugfs exited with {status}: {}",
            String::from_utf8_lossy(&text[..text.len().min(2000)])
        ));
    }
    let mut sections: Vec<Vec<Vec<u8>>> = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        if line.starts_with(b"debugfs: ") {
            sections.push(Vec::new());
        } else if let Some(s) = sections.last_mut() {
            s.push(line.to_vec());
        }
    }
    if sections.len() != cmds.len() {
        return Err(format!("debugfs ran {} of {} commands", sections.len(), cmds.len()));
    }
    Ok(sections)
}

/// One line of `ls -p`: `/ino/mode/uid/gid/name/size/` (size empty for directories).
#[derive(Debug, Clone)]
struct LsEntry {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
}

fn parse_ls(section: &[Vec<u8>]) -> Result<BTreeMap<Vec<u8>, LsEntry>, String> {
    let mut out = BTreeMap::new();
    for line in section {
        if line.is_empty() {
            continue;
        }
        let f: Vec<&[u8]> = line.split(|&b| b == b'/').collect();
        let num = |s: &[u8]| String::from_utf8_lossy(s).parse::<i64>().ok();
        let ok = f.len() == 8 && f[0].is_empty() && f[7].is_empty();
        let parsed = ok
            .then(|| {
                Some(LsEntry {
                    ino: num(f[1])? as u32,
                    mode: u32::from_str_radix(std::str::from_utf8(f[2]).ok()?, 8).ok()?,
                    uid: num(f[3])? as u32,
                    gid: num(f[4])? as u32,
                    size: if f[6].is_empty() { None } else { Some(num(f[6])? as u64) },
                })
            })
            .flatten();
        match parsed {
            Some(e) if e.ino == 0 => {}
            Some(e) => {
                out.insert(f[5].to_vec(), e);
            }
            None => return Err(format!("unexpected ls -p line: {}", String::from_utf8_lossy(line))),
        }
    }
    Ok(out)
}

/// The parts of `stat <ino>` the checks use.
#[derive(Debug, Default)]
struct Stat {
    kind: String,
    mode: u32,
    flags: u32,
    uid: u32,
    gid: u32,
    links: u32,
    mtime: Option<i64>,
    /// Names and value lengths listed under "Extended attributes:".
    xattrs: BTreeMap<Vec<u8>, usize>,
    fast_link: bool,
    device: Option<(u32, u32)>,
}

/// The text after `key` up to the next whitespace.
fn after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let i = line.find(key)? + key.len();
    line[i..].split_whitespace().next()
}

fn parse_stat(section: &[Vec<u8>]) -> Result<Stat, String> {
    let mut s = Stat::default();
    let mut seen_inode = false;
    let mut in_xattrs = false;
    let bad = |l: &str| format!("unexpected stat line: {l}");
    for raw in section {
        let line = String::from_utf8_lossy(raw);
        let l = line.as_ref();
        if in_xattrs {
            if let Some(rest) = raw.strip_prefix(b"  ") {
                // `  name (len)` or `  name (len) = value`
                let open = rest.windows(2).position(|w| w == b" (").ok_or_else(|| bad(l))?;
                let len = after(&l[2 + open..], "(").and_then(|t| t.strip_suffix(')')).ok_or_else(|| bad(l))?;
                s.xattrs.insert(rest[..open].to_vec(), len.parse().map_err(|_| bad(l))?);
                continue;
            }
            in_xattrs = false;
        }
        if l.starts_with("Inode:") {
            seen_inode = true;
            s.kind = l.split("Type: ").nth(1).and_then(|t| t.split("    ").next()).unwrap_or("").trim().to_string();
            s.mode = u32::from_str_radix(after(l, "Mode:").ok_or_else(|| bad(l))?, 8).map_err(|_| bad(l))?;
            let flags = after(l, "Flags: 0x").ok_or_else(|| bad(l))?;
            s.flags = u32::from_str_radix(flags, 16).map_err(|_| bad(l))?;
        } else if l.starts_with("User:") {
            // debugfs prints ids with %d, so ids above 2^31 come out negative.
            s.uid = after(l, "User:").and_then(|v| v.parse::<i64>().ok()).ok_or_else(|| bad(l))? as u32;
            s.gid = after(l, "Group:").and_then(|v| v.parse::<i64>().ok()).ok_or_else(|| bad(l))? as u32;
        } else if l.starts_with("Links:") {
            s.links = after(l, "Links:").and_then(|v| v.parse().ok()).ok_or_else(|| bad(l))?;
        } else if let Some(v) = l.trim_start().strip_prefix("mtime: 0x") {
            // `0xSECONDS:EXTRA`: the low 32 bits of the seconds, signed, and in a large inode the
            // extra field whose low two bits extend them past 2038.
            let v = v.split_whitespace().next().ok_or_else(|| bad(l))?;
            let (secs, extra) = v.split_once(':').unwrap_or((v, "0"));
            let secs = u32::from_str_radix(secs, 16).map_err(|_| bad(l))? as i32 as i64;
            let extra = u32::from_str_radix(extra, 16).map_err(|_| bad(l))?;
            s.mtime = Some(secs + (i64::from(extra & 3) << 32));
        } else if l.starts_with("Extended attributes:") {
            in_xattrs = true;
        } else if l.starts_with("Fast link dest:") {
            s.fast_link = true;
        } else if l.contains("Device major/minor number:") {
            let v = after(l, "number:").ok_or_else(|| bad(l))?;
            let (ma, mi) = v.split_once(':').ok_or_else(|| bad(l))?;
            s.device = Some((ma.parse().map_err(|_| bad(l))?, mi.parse().map_err(|_| bad(l))?));
        }
    }
    if !seen_inode {
        let text: Vec<_> = section.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
        return Err(format!("no inode in stat output: {}", text.join(" | ")));
    }
    Ok(s)
}

/// Parses `ea_get -x`: `name (len) = xx xx ...` (no ` = ` part when the value is empty).
fn parse_ea_get(section: &[Vec<u8>], name: &[u8]) -> Result<Vec<u8>, String> {
    let mut prefix = name.to_vec();
    prefix.extend_from_slice(b" (");
    for raw in section {
        if !raw.starts_with(&prefix) {
            continue;
        }
        let line = String::from_utf8_lossy(&raw[name.len()..]).into_owned();
        let len: usize = after(&line, "(")
            .and_then(|t| t.strip_suffix(')'))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("bad ea_get line: {line}"))?;
        let value: Vec<u8> = match line.split_once(" = ") {
            Some((_, hex)) => hex
                .split_whitespace()
                .map(|h| u8::from_str_radix(h, 16))
                .collect::<Result<_, _>>()
                .map_err(|_| format!("bad ea_get value: {line}"))?,
            None => Vec::new(),
        };
        if value.len() != len {
            return Err(format!("ea_get printed {} bytes for a {len}-byte value", value.len()));
        }
        return Ok(value);
    }
    let text: Vec<_> = section.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
    Err(format!("not found: {}", text.join(" | ")))
}

fn stat_type(kind: &NodeKind) -> &'static str {
    match kind {
        NodeKind::File(_) => "regular",
        NodeKind::Dir(_) => "directory",
        NodeKind::Symlink(_) => "symlink",
        NodeKind::CharDevice { .. } => "character special",
        NodeKind::BlockDevice { .. } => "block special",
        NodeKind::Fifo => "FIFO",
        NodeKind::Socket => "socket",
    }
}

/// Inode numbers, link counts, devices, flags and xattrs through `debugfs`.
fn with_debugfs(tree: &Tree, image: &Path, scratch: &Path, r: &mut Report) {
    const C: &str = "debugfs";
    let walk = tree.walk();
    let name_counts = tree.name_counts();

    // Pass 1: list every directory; that gives each name's inode number.
    let mut dirs: Vec<(Vec<u8>, NodeId)> = vec![(Vec::new(), ROOT)];
    dirs.extend(walk.iter().filter(|(_, id)| tree.node(*id).kind.is_dir()).cloned());
    let cmds: Vec<Vec<u8>> =
        dirs.iter().map(|(p, _)| [b"ls -p ".as_slice(), &quote(&[b"/", p.as_slice()].concat())].concat()).collect();
    let sections = match debugfs(image, scratch, "ls", &cmds) {
        Ok(s) => s,
        Err(e) => return r.fail(C, b"", e),
    };
    let mut listing: HashMap<Vec<u8>, BTreeMap<Vec<u8>, LsEntry>> = HashMap::new();
    for ((p, _), section) in dirs.iter().zip(&sections) {
        match parse_ls(section) {
            Ok(l) => {
                listing.insert(p.clone(), l);
            }
            Err(e) => r.fail(C, p, format!("ls -p: {e}")),
        }
    }

    // Every name: its inode agrees with ls, and names share an inode exactly when the tree
    // says they are hard links.
    let mut ino_of: BTreeMap<NodeId, u32> = BTreeMap::new();
    let mut node_of: HashMap<u32, NodeId> = HashMap::new();
    ino_of.insert(ROOT, 2);
    node_of.insert(2, ROOT);
    for (p, id) in &walk {
        let (parent, name) = match p.iter().rposition(|&b| b == b'/') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (&p[..0], p.as_slice()),
        };
        let Some(e) = listing.get(parent).and_then(|l| l.get(name)) else {
            r.fail(C, p, "not in its directory's ls -p listing");
            continue;
        };
        let node = tree.node(*id);
        r.expect(C, p, "ls mode", format!("{:06o}", node.st_mode()), format!("{:06o}", e.mode));
        r.expect(C, p, "ls uid", node.meta.uid, e.uid);
        r.expect(C, p, "ls gid", node.meta.gid, e.gid);
        match &node.kind {
            NodeKind::File(d) => r.expect(C, p, "ls size", Some(d.len()), e.size),
            NodeKind::Symlink(t) => r.expect(C, p, "ls size", Some(t.len() as u64), e.size),
            _ => {}
        }
        match ino_of.get(id) {
            Some(&ino) if ino != e.ino => {
                r.fail(C, p, format!("hard link: inode {}, but another name of the same file has inode {ino}", e.ino))
            }
            Some(_) => {}
            None => {
                ino_of.insert(*id, e.ino);
            }
        }
        match node_of.get(&e.ino) {
            Some(&other) if other != *id => {
                r.fail(C, p, format!("inode {} is shared with a different tree node (not a hard link)", e.ino))
            }
            Some(_) => {}
            None => {
                node_of.insert(e.ino, *id);
            }
        }
    }
    let path_of: HashMap<NodeId, Vec<u8>> = walk.iter().rev().map(|(p, id)| (*id, p.clone())).collect();
    let path_of = |id: NodeId| path_of.get(&id).cloned().unwrap_or_default();

    // Pass 2: stat every inode, fetch every expected xattr value, dump the big directory's index.
    let mut cmds = Vec::new();
    let mut what: Vec<(NodeId, Option<Vec<u8>>)> = Vec::new();
    for (&id, &ino) in &ino_of {
        cmds.push(format!("stat <{ino}>").into_bytes());
        what.push((id, None));
        for name in tree.node(id).meta.xattrs.keys() {
            cmds.push([format!("ea_get -x <{ino}> ").as_bytes(), &quote(name)[..]].concat());
            what.push((id, Some(name.clone())));
        }
    }
    let big = tree.lookup(BIG_DIR).and_then(|id| ino_of.get(&id).copied());
    if let Some(ino) = big {
        cmds.push(format!("htree_dump <{ino}>").into_bytes());
    }
    let sections = match debugfs(image, scratch, "stat", &cmds) {
        Ok(s) => s,
        Err(e) => return r.fail(C, b"", e),
    };
    for ((id, xattr), section) in what.iter().zip(&sections) {
        let node = tree.node(*id);
        let p = path_of(*id);
        if let Some(name) = xattr {
            let want = &node.meta.xattrs[name];
            match parse_ea_get(section, name) {
                Ok(got) if &got == want => {}
                Ok(got) => r.fail(
                    C,
                    &p,
                    format!(
                        "xattr {}: expected {} bytes {}, got {} bytes {}",
                        show_x(name),
                        want.len(),
                        hex(want),
                        got.len(),
                        hex(&got)
                    ),
                ),
                Err(e) => r.fail(C, &p, format!("xattr {}: {e}", show_x(name))),
            }
            continue;
        }
        let s = match parse_stat(section) {
            Ok(s) => s,
            Err(e) => {
                r.fail(C, &p, e);
                continue;
            }
        };
        r.expect(C, &p, "type", stat_type(&node.kind), s.kind.as_str());
        r.expect(C, &p, "mode", format!("{:04o}", node.meta.mode), format!("{:04o}", s.mode));
        r.expect(C, &p, "uid", node.meta.uid, s.uid);
        r.expect(C, &p, "gid", node.meta.gid, s.gid);
        r.expect(C, &p, "mtime", Some(node.meta.mtime), s.mtime);
        let want_links = match &node.kind {
            // `.`, the name in the parent, and each subdirectory's `..`.
            NodeKind::Dir(_) => {
                2 + listing.get(&p).map_or(0, |l| {
                    l.iter().filter(|(n, e)| n.as_slice() != b"." && n.as_slice() != b".." && e.size.is_none()).count()
                }) as u32
            }
            _ => name_counts[*id],
        };
        r.expect(C, &p, "link count", want_links, s.links);
        let want_x: BTreeMap<Vec<u8>, usize> = node.meta.xattrs.iter().map(|(k, v)| (k.clone(), v.len())).collect();
        if want_x != s.xattrs {
            let fmt = |m: &BTreeMap<Vec<u8>, usize>| {
                m.iter().map(|(k, v)| format!("{}({v})", show_x(k))).collect::<Vec<_>>().join(", ")
            };
            r.fail(C, &p, format!("xattr names (lengths): expected [{}], got [{}]", fmt(&want_x), fmt(&s.xattrs)));
        }
        match &node.kind {
            NodeKind::Symlink(t) => {
                // The kernel keeps targets under 60 bytes in the inode and longer ones in a block.
                r.expect(C, &p, &format!("fast symlink ({}-byte target)", t.len()), t.len() < 60, s.fast_link);
            }
            NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                r.expect(C, &p, "device number", Some((*major, *minor)), s.device);
            }
            _ => {}
        }
        if *id == tree.lookup(BIG_DIR).unwrap_or(usize::MAX) {
            r.expect(C, &p, "htree flag (EXT4_INDEX_FL) on the big directory", true, s.flags & EXT4_INDEX_FL != 0);
        }
    }
    if big.is_some() {
        let section = sections.last().unwrap();
        let text: Vec<String> = section.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
        let levels = text.iter().find_map(|l| after(l, "Indirect levels:")).and_then(|v| v.parse::<u32>().ok());
        let leaves = text.iter().filter(|l| l.starts_with("Entry #") && l.contains("block ")).count();
        r.notes.push(format!("/{BIG_DIR}: htree indirect levels {levels:?}, {leaves} index entries"));
        // htree_dump recomputes the checksums of the index blocks it walks.
        for l in text.iter().filter(|l| l.contains("EXPECTED") || l.contains("Corrupt")) {
            r.fail(C, BIG_DIR.as_bytes(), format!("htree_dump: {l}"));
        }
        // 10,000 names of 255 bytes fill ~700 leaf blocks, more than one index block (~508
        // entries) can point to: the index must have two levels.
        if tree.entries(tree.lookup(BIG_DIR).unwrap()).count() >= 10_000 {
            r.expect(C, BIG_DIR.as_bytes(), "htree indirect levels", Some(1), levels);
        }
    }
    r.notes.push(format!("{} inodes compared through debugfs", ino_of.len()));
}

fn show_x(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name);
    if s.len() > 40 { format!("{}...", &s[..37]) } else { s.into_owned() }
}

fn hex(v: &[u8]) -> String {
    let h: String = v.iter().take(16).map(|b| format!("{b:02x}")).collect();
    if v.len() > 16 { format!("{h}...") } else { h }
}
