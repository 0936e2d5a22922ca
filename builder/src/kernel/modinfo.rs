//! Reading what depmod reads from a kernel module: the `.modinfo` section, the `key=value`
//! strings `modpost` and the `MODULE_*` macros leave in every `.ko` (`depends=`, `softdep=`,
//! `alias=`, `license=`, ...), and, for the modules an image keeps, the symbols it exports and
//! uses ([`ModuleSymbols`]).
//!
//! Modules are relocatable ELF objects; only the section header table is needed to find a
//! section, so this is a small ELF64 reader of its own (header, section headers, section
//! name table) rather than a general ELF crate. For an uncompressed module held as a byte range
//! of a host file, only those few structures and the wanted sections are read: indexing all of
//! `linux-image-amd64`'s 4,000 modules (`.modinfo` only) reads well under 1% of their 390 MB.
//! Compressed modules (`.ko.xz`, `.ko.zst`) are decompressed in memory first, because a
//! section can be anywhere in the stream.

use std::io::Read;
use std::os::unix::fs::FileExt;

use berth_fstree::FileData;

/// How a module file is compressed, from its name (as depmod and kmod tell them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModuleCompression {
    /// `.ko`
    None,
    /// `.ko.xz`
    Xz,
    /// `.ko.zst`
    Zstd,
}

impl ModuleCompression {
    /// The compression of a file name ending in `.ko`, `.ko.xz` or `.ko.zst`, with the name's
    /// length without the compression suffix; `None` for any other name.
    pub fn of_name(name: &str) -> Option<(ModuleCompression, usize)> {
        for (suffix, c) in [(".ko", Self::None), (".ko.xz", Self::Xz), (".ko.zst", Self::Zstd)] {
            if let Some(stem) = name.strip_suffix(suffix)
                && !stem.is_empty()
            {
                return Some((c, stem.len() + 3));
            }
        }
        None
    }
}

/// Why a module's `.modinfo` could not be read. The caller adds the module's path.
#[derive(Debug, thiserror::Error)]
pub enum ModinfoError {
    #[error("reading the file: {0}")]
    Read(#[source] std::io::Error),
    #[error("decompressing ({format}): {source}")]
    Decompress {
        format: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("not a kernel module: {0}")]
    Elf(String),
}

/// The fields of `.modinfo` that dependency handling needs, in the order the module lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// Module names from `depends=` (as `modpost` wrote them; may contain `-`).
    pub depends: Vec<String>,
    /// Each `softdep=` value verbatim (`pre: a b post: c`); a module may have several.
    pub softdeps: Vec<String>,
    /// Each `alias=` value verbatim (patterns such as `pci:v00008086d*sv*sd*bc01sc06i01*`).
    pub aliases: Vec<String>,
}

impl ModInfo {
    /// Collects the fields from the raw section: NUL-separated `key=value` strings. Empty
    /// strings (padding between entries compiled without `__aligned(1)`) are skipped, as kmod
    /// skips them.
    pub fn parse(section: &[u8]) -> ModInfo {
        let mut info = ModInfo::default();
        for entry in section.split(|&b| b == 0).filter(|e| !e.is_empty()) {
            let entry = String::from_utf8_lossy(entry);
            let Some((key, value)) = entry.split_once('=') else { continue };
            match key {
                // `depends=` is present (and empty) on modules without dependencies.
                "depends" => info.depends.extend(value.split(',').filter(|d| !d.is_empty()).map(str::to_owned)),
                "softdep" => info.softdeps.push(value.to_owned()),
                "alias" => info.aliases.push(value.to_owned()),
                _ => {}
            }
        }
        info
    }

    /// The `pre:` and `post:` names of all `softdep=` values, in order. Words before the first
    /// `pre:`/`post:` marker are ignored, as kmod's softdep parser does.
    pub fn softdep_names(&self) -> (Vec<String>, Vec<String>) {
        let (mut pre, mut post) = (Vec::new(), Vec::new());
        for value in &self.softdeps {
            let mut into: Option<&mut Vec<String>> = None;
            for word in value.split_ascii_whitespace() {
                match word {
                    "pre:" => into = Some(&mut pre),
                    "post:" => into = Some(&mut post),
                    _ => {
                        if let Some(list) = into.as_deref_mut() {
                            list.push(word.to_owned());
                        }
                    }
                }
            }
        }
        (pre, post)
    }
}

/// Reads the `.modinfo` section of a module file.
pub fn read_modinfo(data: &FileData, compression: ModuleCompression) -> Result<ModInfo, ModinfoError> {
    let section = match compression {
        ModuleCompression::None => match data {
            FileData::Memory(bytes) => modinfo_section(&Slice(bytes))?,
            FileData::Range { path, offset, len } => {
                let file = std::fs::File::open(path).map_err(ModinfoError::Read)?;
                modinfo_section(&HostRange { file, offset: *offset, len: *len })?
            }
        },
        ModuleCompression::Xz | ModuleCompression::Zstd => {
            let plain = decompress(data, compression)?;
            modinfo_section(&Slice(&plain))?
        }
    };
    Ok(ModInfo::parse(&section))
}

/// The whole module file, decompressed if it is compressed.
pub fn decompress(data: &FileData, compression: ModuleCompression) -> Result<Vec<u8>, ModinfoError> {
    let raw = data.read_all().map_err(|e| match e {
        berth_fstree::TreeError::Io { source, .. } => ModinfoError::Read(source),
        other => ModinfoError::Read(std::io::Error::other(other.to_string())),
    })?;
    let mut out = Vec::new();
    match compression {
        ModuleCompression::None => return Ok(raw),
        ModuleCompression::Xz => {
            // The kernel writes `.ko.xz` as a single xz stream (`xz --check=crc32`); the
            // decoder verifies the check.
            liblzma::read::XzDecoder::new(raw.as_slice())
                .read_to_end(&mut out)
                .map_err(|source| ModinfoError::Decompress { format: "xz", source })?;
        }
        ModuleCompression::Zstd => {
            zstd::stream::read::Decoder::new(raw.as_slice())
                .and_then(|mut d| d.read_to_end(&mut out))
                .map_err(|source| ModinfoError::Decompress { format: "zstd", source })?;
        }
    }
    Ok(out)
}

/// Random access to a module's bytes.
trait ReadAt {
    fn len(&self) -> u64;
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, ModinfoError>;

    /// Reads `len` bytes at `offset`, or says which structure does not fit in the file.
    fn read_checked(&self, offset: u64, len: u64, what: &str) -> Result<Vec<u8>, ModinfoError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => self.read_at(offset, len),
            _ => Err(ModinfoError::Elf(format!(
                "{what} (offset {offset}, {len} bytes) lies beyond the end of the file ({} bytes)",
                self.len()
            ))),
        }
    }
}

struct Slice<'a>(&'a [u8]);

impl ReadAt for Slice<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, ModinfoError> {
        // Bounds were checked against `len()` by `read_checked`, so these fit in usize.
        Ok(self.0[offset as usize..(offset + len) as usize].to_vec())
    }
}

struct HostRange {
    file: std::fs::File,
    offset: u64,
    len: u64,
}

impl ReadAt for HostRange {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, ModinfoError> {
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, self.offset + offset).map_err(ModinfoError::Read)?;
        Ok(buf)
    }
}

/// Size of the ELF64 file header and of one ELF64 section header.
const EHDR_SIZE: u64 = 64;
const SHDR_SIZE: u64 = 64;
/// `e_shstrndx` value meaning "the index is in section 0's `sh_link`".
const SHN_XINDEX: u32 = 0xffff;
/// `SHT_NOBITS`: a section with no bytes in the file.
const SHT_NOBITS: u32 = 8;

/// Integer decoding for the file's byte order.
#[derive(Debug, Clone, Copy)]
struct Endian {
    big: bool,
}

impl Endian {
    fn u16(self, b: &[u8], at: usize) -> u16 {
        let a = [b[at], b[at + 1]];
        if self.big { u16::from_be_bytes(a) } else { u16::from_le_bytes(a) }
    }
    fn u32(self, b: &[u8], at: usize) -> u32 {
        let a = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if self.big { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) }
    }
    fn u64(self, b: &[u8], at: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        if self.big { u64::from_be_bytes(a) } else { u64::from_le_bytes(a) }
    }
}

/// A file's byte order and the bytes of some of its sections.
type Sections = (Endian, Vec<Option<Vec<u8>>>);

/// The bytes of the sections named `names`, each the first section of that name (`None` when
/// there is none; empty for a section with no bytes in the file), found through the section
/// header table.
fn read_sections(f: &dyn ReadAt, names: &[&str]) -> Result<Sections, ModinfoError> {
    let bad = |why: String| ModinfoError::Elf(why);
    if f.len() < EHDR_SIZE {
        return Err(bad(format!("{} bytes is too short for an ELF header", f.len())));
    }
    let eh = f.read_at(0, EHDR_SIZE)?;
    if eh[..4] != *b"\x7fELF" {
        return Err(bad("no ELF magic".into()));
    }
    if eh[4] != 2 {
        return Err(bad(format!("ELF class {} is not ELF64 (only 64-bit kernels are supported)", eh[4])));
    }
    let e = match eh[5] {
        1 => Endian { big: false },
        2 => Endian { big: true },
        other => return Err(bad(format!("unknown ELF data encoding {other}"))),
    };
    let shoff = e.u64(&eh, 0x28);
    let shentsize = u64::from(e.u16(&eh, 0x3a));
    let mut shnum = u64::from(e.u16(&eh, 0x3c));
    let mut shstrndx = u32::from(e.u16(&eh, 0x3e));
    if shoff == 0 {
        return Err(bad("no section header table".into()));
    }
    if shentsize < SHDR_SIZE {
        return Err(bad(format!("section header size {shentsize} is below 64")));
    }
    // Objects with 0xff00 or more sections keep the real count and name-table index in
    // section 0 (`e_shnum` = 0, `e_shstrndx` = SHN_XINDEX).
    if shnum == 0 || shstrndx == SHN_XINDEX {
        let s0 = f.read_checked(shoff, SHDR_SIZE, "section header 0")?;
        if shnum == 0 {
            shnum = e.u64(&s0, 32);
        }
        if shstrndx == SHN_XINDEX {
            shstrndx = e.u32(&s0, 40);
        }
    }
    let table_len = shnum.checked_mul(shentsize).ok_or_else(|| bad(format!("{shnum} section headers overflow")))?;
    let table = f.read_checked(shoff, table_len, "the section header table")?;
    let header = |i: u64| {
        let at = (i * shentsize) as usize;
        (e.u32(&table, at), e.u32(&table, at + 4), e.u64(&table, at + 24), e.u64(&table, at + 32))
    };
    if u64::from(shstrndx) >= shnum {
        return Err(bad(format!("section name table index {shstrndx} is not below the section count {shnum}")));
    }
    let (_, _, str_off, str_size) = header(u64::from(shstrndx));
    let section_names = f.read_checked(str_off, str_size, "the section name table")?;
    let mut found: Vec<Option<Vec<u8>>> = vec![None; names.len()];
    for i in 1..shnum {
        let (name, kind, offset, size) = header(i);
        let name = section_names.get(name as usize..).unwrap_or_default();
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        let Some(k) = names.iter().position(|n| n.as_bytes() == name) else { continue };
        if found[k].is_some() {
            continue;
        }
        found[k] = Some(if kind == SHT_NOBITS {
            Vec::new()
        } else {
            f.read_checked(offset, size, &format!("the {} section", names[k]))?
        });
    }
    Ok((e, found))
}

/// Finds `.modinfo` and returns its bytes.
fn modinfo_section(f: &dyn ReadAt) -> Result<Vec<u8>, ModinfoError> {
    let (_, mut found) = read_sections(f, &[".modinfo"])?;
    found.pop().flatten().ok_or_else(|| ModinfoError::Elf("no .modinfo section".into()))
}

/// The symbols depmod reads from a module: those it exports (which `modules.symbols` maps to
/// it) and those it uses (whose exporters are its dependencies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleSymbols {
    /// Exported symbol names, in the module's order.
    pub exports: Vec<String>,
    /// Undefined symbol names in symbol-table order, then the `__versions` entries no
    /// undefined symbol named: the order depmod records the module's dependencies in.
    pub imports: Vec<String>,
}

/// Size of an ELF64 symbol table entry, and of a `__versions` entry (a 64-bit CRC, then the
/// NUL-padded name).
const SYM_SIZE: usize = 24;
const MODVERSION_SIZE: usize = 64;

impl ModuleSymbols {
    /// Derives the symbols from the raw sections as kmod 30 does; a malformed table yields
    /// nothing, as kmod ignores it:
    /// - exports: the names of the `__crc_<name>` symbols of `.symtab` (the exports of a
    ///   kernel built with `CONFIG_MODVERSIONS`), or, when there are none, the strings of
    ///   `__ksymtab_strings`;
    /// - imports: the undefined symbols of `.symtab`, then the `__versions` names left over.
    fn from_sections(
        e: Endian,
        symtab: Option<&[u8]>,
        strtab: Option<&[u8]>,
        versions: Option<&[u8]>,
        ksymtab_strings: Option<&[u8]>,
    ) -> ModuleSymbols {
        let table = match (symtab, strtab) {
            (Some(sym), Some(str)) if sym.len() % SYM_SIZE == 0 => Some((sym, str)),
            _ => None,
        };
        ModuleSymbols {
            exports: table
                .and_then(|(sym, str)| crc_exports(e, sym, str))
                .unwrap_or_else(|| ksymtab_strings.map(ksymtab_string_exports).unwrap_or_default()),
            imports: table.and_then(|(sym, str)| imports(e, sym, str, versions)).unwrap_or_default(),
        }
    }
}

/// The C string at `at` in a string table (to its NUL or the table's end).
fn c_str(table: &[u8], at: usize) -> &[u8] {
    let s = table.get(at..).unwrap_or_default();
    s.split(|&b| b == 0).next().unwrap_or_default()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `__crc_*` names (without the prefix); `None` when there are none or a name lies outside
/// the string table (kmod then falls back to `__ksymtab_strings`).
fn crc_exports(e: Endian, symtab: &[u8], strtab: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    // Entry 0 is the null symbol.
    for sym in symtab.chunks_exact(SYM_SIZE).skip(1) {
        let name = e.u32(sym, 0) as usize;
        if name >= strtab.len() {
            return None;
        }
        if let Some(exported) = c_str(strtab, name).strip_prefix(b"__crc_") {
            out.push(text(exported));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The NUL-separated names of `__ksymtab_strings`, empty ones skipped.
fn ksymtab_string_exports(strings: &[u8]) -> Vec<String> {
    // Leading padding goes, but kmod keeps the last byte; a single byte left is no name.
    let start = strings.iter().position(|&b| b != 0).unwrap_or(strings.len()).min(strings.len().saturating_sub(1));
    let strings = &strings[start..];
    if strings.len() <= 1 {
        return Vec::new();
    }
    strings.split(|&b| b == 0).filter(|s| !s.is_empty()).map(text).collect()
}

/// Undefined symbols, then unmatched `__versions` names; `None` when an undefined symbol's
/// name lies outside the string table (kmod then records no dependency symbols at all).
fn imports(e: Endian, symtab: &[u8], strtab: &[u8], versions: Option<&[u8]>) -> Option<Vec<String>> {
    // A `__versions` section of the wrong size is ignored entirely.
    let versions: Vec<&[u8]> = match versions {
        Some(v) if v.len() % MODVERSION_SIZE == 0 => {
            v.chunks_exact(MODVERSION_SIZE).map(|entry| c_str(&entry[8..], 0)).collect()
        }
        _ => Vec::new(),
    };
    let mut matched = vec![false; versions.len()];
    let mut out = Vec::new();
    for sym in symtab.chunks_exact(SYM_SIZE).skip(1) {
        // st_shndx 0: SHN_UNDEF.
        if e.u16(sym, 6) != 0 {
            continue;
        }
        let name = e.u32(sym, 0) as usize;
        if name >= strtab.len() {
            return None;
        }
        let name = c_str(strtab, name);
        if name.is_empty() {
            continue;
        }
        if let Some(i) = versions.iter().position(|v| *v == name) {
            matched[i] = true;
        }
        out.push(text(name));
    }
    out.extend(versions.iter().zip(&matched).filter(|(_, m)| !**m).map(|(v, _)| text(v)));
    Some(out)
}

/// Reads a module's exported and imported symbols.
pub fn read_symbols(data: &FileData, compression: ModuleCompression) -> Result<ModuleSymbols, ModinfoError> {
    const NAMES: [&str; 4] = [".symtab", ".strtab", "__versions", "__ksymtab_strings"];
    let (e, found) = match compression {
        ModuleCompression::None => match data {
            FileData::Memory(bytes) => read_sections(&Slice(bytes), &NAMES)?,
            FileData::Range { path, offset, len } => {
                let file = std::fs::File::open(path).map_err(ModinfoError::Read)?;
                read_sections(&HostRange { file, offset: *offset, len: *len }, &NAMES)?
            }
        },
        ModuleCompression::Xz | ModuleCompression::Zstd => {
            let plain = decompress(data, compression)?;
            read_sections(&Slice(&plain), &NAMES)?
        }
    };
    let s = |i: usize| found[i].as_deref();
    Ok(ModuleSymbols::from_sections(e, s(0), s(1), s(2), s(3)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_softdeps() {
        let raw = b"license=GPL\0depends=a,b-c\0\0\0softdep=pre: x y post: z\0softdep=junk pre: w\0alias=fs-foo\0\0";
        let info = ModInfo::parse(raw);
        assert_eq!(info.depends, ["a", "b-c"]);
        assert_eq!(info.aliases, ["fs-foo"]);
        assert_eq!(info.softdep_names(), (vec!["x".into(), "y".into(), "w".into()], vec!["z".into()]));
        assert_eq!(ModInfo::parse(b"depends=\0").depends, Vec::<String>::new());
    }

    #[test]
    fn compression_from_name() {
        assert_eq!(ModuleCompression::of_name("a-b.ko"), Some((ModuleCompression::None, 6)));
        assert_eq!(ModuleCompression::of_name("a.ko.xz"), Some((ModuleCompression::Xz, 4)));
        assert_eq!(ModuleCompression::of_name("a.ko.zst"), Some((ModuleCompression::Zstd, 4)));
        assert_eq!(ModuleCompression::of_name(".ko"), None);
        assert_eq!(ModuleCompression::of_name("a.ko.gz"), None);
    }

    /// An ELF64 symbol table entry: name offset, section index (0: undefined).
    fn sym(name: u32, shndx: u16) -> Vec<u8> {
        let mut e = vec![0u8; SYM_SIZE];
        e[..4].copy_from_slice(&name.to_le_bytes());
        e[6..8].copy_from_slice(&shndx.to_le_bytes());
        e
    }

    fn version(name: &str) -> Vec<u8> {
        let mut e = vec![0u8; MODVERSION_SIZE];
        e[8..8 + name.len()].copy_from_slice(name.as_bytes());
        e
    }

    #[test]
    fn symbols_as_kmod_reads_them() {
        let le = Endian { big: false };
        let strtab = b"\0__crc_foo\0bar\0__crc_baz\0qux\0";
        let symtab = [sym(0, 0), sym(1, 5), sym(11, 0), sym(15, 3), sym(25, 0), sym(0, 0)].concat();
        let versions = [version("qux"), version("module_layout"), version("bar")].concat();
        let strings = b"\0\0a\0\0b";
        let s = ModuleSymbols::from_sections(le, Some(&symtab), Some(strtab), Some(&versions), Some(strings));
        // `__crc_` symbols win over `__ksymtab_strings`; the unnamed undefined symbol is
        // skipped; the `__versions` name no symbol used comes last.
        assert_eq!(s.exports, ["foo", "baz"]);
        assert_eq!(s.imports, ["bar", "qux", "module_layout"]);

        // Without `__crc_` symbols, the strings; a `__versions` of a wrong size is ignored.
        let symtab = [sym(0, 0), sym(11, 0)].concat();
        let s = ModuleSymbols::from_sections(le, Some(&symtab), Some(strtab), Some(&versions[1..]), Some(strings));
        assert_eq!((s.exports, s.imports), (vec!["a".to_owned(), "b".to_owned()], vec!["bar".to_owned()]));

        // An undefined symbol named outside the string table: no imports at all; exports
        // fall back to the strings too.
        let symtab = [sym(0, 0), sym(1, 1), sym(500, 0)].concat();
        let s = ModuleSymbols::from_sections(le, Some(&symtab), Some(strtab), None, Some(b"x"));
        assert_eq!(s, ModuleSymbols::default(), "a single byte is no name either");
        // No symbol table: nothing but the strings.
        let s = ModuleSymbols::from_sections(le, None, Some(strtab), None, Some(b"x\0y\0"));
        assert_eq!((s.exports, s.imports), (vec!["x".to_owned(), "y".to_owned()], Vec::new()));
    }

    #[test]
    fn rejects_non_elf() {
        let e = modinfo_section(&Slice(&[0u8; 100])).unwrap_err();
        assert!(e.to_string().contains("no ELF magic"), "{e}");
        let e = modinfo_section(&Slice(b"\x7fELF")).unwrap_err();
        assert!(e.to_string().contains("too short"), "{e}");
    }
}
