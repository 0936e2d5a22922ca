//! Extended attributes: name prefixes, the in-inode area and the shared xattr block.

use std::collections::BTreeMap;

use crate::csum::crc32c;
use crate::{BLOCK_SIZE, Error};

pub(crate) const MAGIC: u32 = 0xEA02_0000;
/// Size of the xattr block header; entries follow it.
const BLOCK_HEADER: usize = 32;
/// Fixed part of an entry before its name.
const ENTRY_HEADER: usize = 16;

/// One attribute in on-disk form: name index, name suffix, value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Entry {
    index: u8,
    name: Vec<u8>,
    value: Vec<u8>,
}

/// Splits full names into the on-disk (index, suffix) form, converting POSIX ACLs from the
/// VFS representation to ext4's. Sorted as the kernel expects in a block.
pub(crate) fn entries(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>, what: &str) -> Result<Vec<Entry>, Error> {
    let mut out = Vec::with_capacity(xattrs.len());
    for (full, value) in xattrs {
        let (index, name) = split_name(full).ok_or_else(|| {
            Error::Invalid(format!("{what}: unsupported xattr name {:?}", String::from_utf8_lossy(full)))
        })?;
        let value = if index == 2 || index == 3 {
            acl_to_disk(value).ok_or_else(|| {
                Error::Invalid(format!("{what}: malformed POSIX ACL in {:?}", String::from_utf8_lossy(full)))
            })?
        } else {
            value.clone()
        };
        out.push(Entry { index, name: name.to_vec(), value });
    }
    out.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    Ok(out)
}

fn split_name(full: &[u8]) -> Option<(u8, &[u8])> {
    // Exact names first: the ACL names are whole names with an empty suffix.
    const EXACT: [(&[u8], u8); 2] = [(b"system.posix_acl_access", 2), (b"system.posix_acl_default", 3)];
    const PREFIX: [(&[u8], u8); 4] = [(b"user.", 1), (b"trusted.", 4), (b"security.", 6), (b"system.", 7)];
    if let Some((_, i)) = EXACT.iter().find(|(n, _)| *n == full) {
        return Some((*i, &[]));
    }
    PREFIX
        .iter()
        .find(|(p, _)| full.starts_with(p) && full.len() > p.len())
        .map(|(p, i)| (*i, &full[p.len()..]))
        .filter(|(_, n)| n.len() <= 255)
}

/// VFS ACL (version 2, 8-byte entries) → ext4 ACL (version 1, short entries for the
/// owner/group/mask/other tags that carry no id).
fn acl_to_disk(v: &[u8]) -> Option<Vec<u8>> {
    if v.len() < 4 || !(v.len() - 4).is_multiple_of(8) || u32::from_le_bytes(v[..4].try_into().ok()?) != 2 {
        return None;
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in v[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        out.extend_from_slice(&e[..4]);
        match tag {
            0x01 | 0x04 | 0x10 | 0x20 => {}
            0x02 | 0x08 => out.extend_from_slice(&e[4..8]),
            _ => return None,
        }
    }
    Some(out)
}

const fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

fn entries_len(entries: &[Entry]) -> usize {
    entries.iter().map(|e| pad4(ENTRY_HEADER + e.name.len())).sum::<usize>() + 4
}

fn values_len(entries: &[Entry]) -> usize {
    entries.iter().map(|e| pad4(e.value.len())).sum()
}

/// Whether `entries` fit an in-inode area of `space` bytes (after its 4-byte magic).
pub(crate) fn fits_in_inode(entries: &[Entry], space: usize) -> bool {
    entries_len(entries) + values_len(entries) <= space
}

/// Whether `entries` fit one xattr block.
pub(crate) fn fits_in_block(entries: &[Entry]) -> bool {
    BLOCK_HEADER + entries_len(entries) + values_len(entries) <= BLOCK_SIZE as usize
}

fn entry_hash(e: &Entry) -> u32 {
    let mut h = 0u32;
    for &c in &e.name {
        h = (h << 5) ^ (h >> 27) ^ u32::from(c);
    }
    let mut padded = e.value.clone();
    padded.resize(pad4(padded.len()), 0);
    for w in padded.chunks_exact(4) {
        h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    }
    h
}

/// Lays entries and values into `area`: entries from `entries_at`, values packed at the end,
/// value offsets relative to `base`. With `hash`, each entry carries its hash (block form).
fn lay_out(area: &mut [u8], entries_at: usize, base: usize, entries: &[Entry], hash: bool) -> Vec<u32> {
    let mut pos = entries_at;
    let mut value_end = area.len();
    let mut hashes = Vec::with_capacity(entries.len());
    for e in entries {
        value_end -= pad4(e.value.len());
        let h = if hash { entry_hash(e) } else { 0 };
        hashes.push(h);
        area[pos] = e.name.len() as u8;
        area[pos + 1] = e.index;
        let offs = if e.value.is_empty() { 0 } else { value_end - base };
        area[pos + 2..pos + 4].copy_from_slice(&(offs as u16).to_le_bytes());
        area[pos + 4..pos + 8].copy_from_slice(&0u32.to_le_bytes());
        area[pos + 8..pos + 12].copy_from_slice(&(e.value.len() as u32).to_le_bytes());
        area[pos + 12..pos + 16].copy_from_slice(&h.to_le_bytes());
        area[pos + 16..pos + 16 + e.name.len()].copy_from_slice(&e.name);
        area[value_end..value_end + e.value.len()].copy_from_slice(&e.value);
        pos += pad4(ENTRY_HEADER + e.name.len());
    }
    hashes
}

/// Writes the in-inode xattr area (magic, entries, values) into `area`.
pub(crate) fn write_in_inode(area: &mut [u8], entries: &[Entry]) {
    area[..4].copy_from_slice(&MAGIC.to_le_bytes());
    // In the inode, value offsets count from the first entry, right after the magic.
    lay_out(&mut area[4..], 0, 0, entries, false);
}

/// Builds an xattr block shared by `refcount` inodes, with its checksum for block `blocknr`.
pub(crate) fn block(entries: &[Entry], refcount: u32, blocknr: u64, fs_seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE as usize];
    let hashes = lay_out(&mut b, BLOCK_HEADER, 0, entries, true);
    let block_hash = if hashes.contains(&0) { 0 } else { hashes.iter().fold(0u32, |h, &e| (h << 16) ^ (h >> 16) ^ e) };
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&refcount.to_le_bytes());
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[12..16].copy_from_slice(&block_hash.to_le_bytes());
    let csum = crc32c(crc32c(fs_seed, &blocknr.to_le_bytes()), &b);
    b[16..20].copy_from_slice(&csum.to_le_bytes());
    b
}
