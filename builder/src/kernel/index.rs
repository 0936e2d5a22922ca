//! kmod's binary index files (`modules.dep.bin`, `modules.alias.bin`, ...) and kmod's string
//! hash, written the way kmod 30's `depmod` writes them so that the bytes are the same.
//!
//! # The file format
//!
//! A file is a 12-byte header, big-endian: the magic `0xB007F457`, the version `0x00020001`
//! and the offset of the root node; then the nodes of a compressed trie over the keys. A node
//! is, in this order and each part only when present:
//! - its prefix: the key bytes it consumes beyond the character that led to it, NUL-ended;
//! - its children: the first and last child character (one byte each), then one big-endian
//!   `u32` offset per character in that range (0 where there is no child);
//! - its values: a `u32` count, then per value a `u32` priority and the value, NUL-ended.
//!
//! A node's offset carries flags in its top nibble telling which parts the node has
//! (`0x80000000` prefix, `0x40000000` values, `0x20000000` children). Keys and prefixes are
//! 7-bit ASCII. A key's values are sorted by ascending priority; depmod inserts a value before
//! those of equal priority, so among equal priorities the value added last comes first.
//!
//! The trie is the unique compressed one for its keys: a node exists at the root, where a key
//! ends and where keys diverge, and the root has no prefix. depmod writes it depth first,
//! children (by character) before their parent, so the root is the last node of the file.
//! Building it from the sorted keys gives the same nodes and the same byte layout.

use std::cmp::Reverse;

/// The file header's magic number.
const MAGIC: u32 = 0xB007_F457;
/// Format version 2.1.
const VERSION: u32 = 0x0002_0001;
/// Node offset flags.
const HAS_PREFIX: u32 = 0x8000_0000;
const HAS_VALUES: u32 = 0x4000_0000;
const HAS_CHILDREN: u32 = 0x2000_0000;
/// Offsets share their `u32` with the flags.
const MAX_OFFSET: usize = 0x0FFF_FFFF;

/// Why an index cannot be written. The caller adds the file's name.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{what} {text:?} has a byte outside 7-bit ASCII, which kmod's index cannot hold")]
    NotAscii { what: &'static str, text: String },
    #[error("the index outgrows the format's 256 MiB of node offsets")]
    TooLarge,
}

/// An index being collected: keys with their values and priorities.
#[derive(Debug, Default)]
pub struct IndexBuilder {
    /// (key, priority, insertion number, value).
    entries: Vec<(Vec<u8>, u32, usize, Vec<u8>)>,
}

impl IndexBuilder {
    pub fn new() -> IndexBuilder {
        IndexBuilder::default()
    }

    /// Adds `value` under `key`, as depmod's `index_insert` does (duplicates are kept).
    /// Like depmod, which stops there, refuses keys and values that are not 7-bit ASCII.
    pub fn insert(&mut self, key: &str, value: &str, priority: u32) -> Result<(), IndexError> {
        for (what, text) in [("key", key), ("value", value)] {
            if !text.is_ascii() {
                return Err(IndexError::NotAscii { what, text: text.to_owned() });
            }
        }
        let n = self.entries.len();
        self.entries.push((key.as_bytes().to_vec(), priority, n, value.as_bytes().to_vec()));
        Ok(())
    }

    /// The index file's bytes.
    pub fn write(mut self) -> Result<Vec<u8>, IndexError> {
        self.entries.sort_by(|a, b| (&a.0, a.1, Reverse(a.2)).cmp(&(&b.0, b.1, Reverse(b.2))));
        let mut out = Vec::with_capacity(12 + self.entries.len() * 32);
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        let root = write_node(&mut out, &self.entries, 0, true)?;
        out[8..12].copy_from_slice(&root.to_be_bytes());
        Ok(out)
    }
}

type Entry = (Vec<u8>, u32, usize, Vec<u8>);

/// Writes the node for `entries` (sorted, non-empty unless this is the root, all sharing
/// `key[..at]`) and the nodes under it; returns its flagged offset.
fn write_node(out: &mut Vec<u8>, entries: &[Entry], at: usize, root: bool) -> Result<u32, IndexError> {
    // The prefix: what all keys share past `at` (sorted keys: the first and last suffice).
    let prefix_len = match (root, entries.first(), entries.last()) {
        (false, Some(first), Some(last)) => first.0[at..].iter().zip(&last.0[at..]).take_while(|(a, b)| a == b).count(),
        _ => 0,
    };
    let end = at + prefix_len;
    // Keys ending here sort first; the rest group by their next byte.
    let ending = entries.iter().take_while(|e| e.0.len() == end).count();
    let (values, rest) = entries.split_at(ending);
    let mut children: Vec<(u8, u32)> = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        let c = rest[i].0[end];
        let n = rest[i..].iter().take_while(|e| e.0[end] == c).count();
        children.push((c, write_node(out, &rest[i..i + n], end + 1, false)?));
        i += n;
    }

    let offset = out.len();
    if offset > MAX_OFFSET {
        return Err(IndexError::TooLarge);
    }
    let mut flagged = offset as u32;
    if prefix_len > 0 {
        out.extend_from_slice(&entries[0].0[at..end]);
        out.push(0);
        flagged |= HAS_PREFIX;
    }
    if let (Some(&(first, _)), Some(&(last, _))) = (children.first(), children.last()) {
        out.push(first);
        out.push(last);
        let mut next = children.iter().peekable();
        for c in first..=last {
            let off = next.next_if(|(ch, _)| *ch == c).map_or(0, |(_, off)| *off);
            out.extend_from_slice(&off.to_be_bytes());
        }
        flagged |= HAS_CHILDREN;
    }
    if !values.is_empty() {
        out.extend_from_slice(&(values.len() as u32).to_be_bytes());
        for (_, priority, _, value) in values {
            out.extend_from_slice(&priority.to_be_bytes());
            out.extend_from_slice(value);
            out.push(0);
        }
        flagged |= HAS_VALUES;
    }
    Ok(flagged)
}

/// kmod's string hash (Paul Hsieh's "SuperFastHash", as kmod's `hash.c` has it, reading
/// 16-bit words little-endian as on x86). depmod iterates its hash tables bucket by bucket,
/// keys sorted within a bucket, and two of its outputs follow that order: the module order
/// for modules missing from `modules.order` (512 buckets) and `modules.symbols` (2048).
pub fn kmod_hash(key: &[u8]) -> u32 {
    let word = |b: &[u8]| u32::from(u16::from_le_bytes([b[0], b[1]]));
    // kmod reads single bytes as (signed) `char`.
    let byte = |b: u8| i32::from(b as i8) as u32;
    let mut hash = key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        hash = hash.wrapping_add(word(c));
        let tmp = (word(&c[2..]) << 11) ^ hash;
        hash = (hash << 16) ^ tmp;
        hash = hash.wrapping_add(hash >> 11);
    }
    let rest = chunks.remainder();
    match rest.len() {
        3 => {
            hash = hash.wrapping_add(word(rest));
            hash ^= hash << 16;
            hash ^= byte(rest[2]) << 18;
            hash = hash.wrapping_add(hash >> 11);
        }
        2 => {
            hash = hash.wrapping_add(word(rest));
            hash ^= hash << 11;
            hash = hash.wrapping_add(hash >> 17);
        }
        1 => {
            hash = hash.wrapping_add(byte(rest[0]));
            hash ^= hash << 10;
            hash = hash.wrapping_add(hash >> 1);
        }
        _ => {}
    }
    hash ^= hash << 3;
    hash = hash.wrapping_add(hash >> 5);
    hash ^= hash << 4;
    hash = hash.wrapping_add(hash >> 17);
    hash ^= hash << 25;
    hash.wrapping_add(hash >> 6)
}

/// The position of `key` in an iteration over a kmod hash table of `buckets` buckets (a power
/// of two): bucket, then the key's bytes.
pub fn kmod_hash_order(key: &str, buckets: u32) -> (u32, &[u8]) {
    (kmod_hash(key.as_bytes()) & (buckets - 1), key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn empty_index_is_a_bare_root() {
        let b = IndexBuilder::new().write().unwrap();
        assert_eq!(b, [0xB0, 0x07, 0xF4, 0x57, 0, 2, 0, 1, 0, 0, 0, 12]);
    }

    #[test]
    fn layout_of_a_small_trie() {
        let mut ix = IndexBuilder::new();
        ix.insert("ab", "x", 3).unwrap();
        ix.insert("ab", "y", 1).unwrap();
        ix.insert("ab", "z", 3).unwrap();
        ix.insert("ac", "w", 0).unwrap();
        let b = ix.write().unwrap();
        // Nodes, children first: "b" leaf (prefix none), "c" leaf, "a" (children b..c), root.
        // The "a" node: no prefix (the keys diverge right after it).
        let leaf_b = 12;
        // values: count 3, (1,"y"), (3,"z") added after (3,"x") so first, (3,"x").
        let mut want = Vec::new();
        want.extend_from_slice(&3u32.to_be_bytes());
        for (p, v) in [(1u32, "y"), (3, "z"), (3, "x")] {
            want.extend_from_slice(&p.to_be_bytes());
            want.extend_from_slice(v.as_bytes());
            want.push(0);
        }
        assert_eq!(&b[leaf_b..leaf_b + want.len()], &want[..]);
        let leaf_c = leaf_b + want.len();
        let node_a = leaf_c + 4 + 4 + 2;
        assert_eq!(&b[node_a..node_a + 2], b"bc");
        assert_eq!(be(&b, node_a + 2), leaf_b as u32 | HAS_VALUES);
        assert_eq!(be(&b, node_a + 6), leaf_c as u32 | HAS_VALUES);
        let root = node_a + 10;
        assert_eq!(be(&b, 8), root as u32 | HAS_CHILDREN);
        assert_eq!(&b[root..root + 2], b"aa");
        assert_eq!(be(&b, root + 2), node_a as u32 | HAS_CHILDREN);
        assert_eq!(b.len(), root + 6);
    }

    #[test]
    fn rejects_non_ascii() {
        let e = IndexBuilder::new().insert("caf\u{e9}", "m", 0).unwrap_err();
        assert!(e.to_string().contains("key \"caf\u{e9}\""), "{e}");
        let e = IndexBuilder::new().insert("m", "\u{e9}", 0).unwrap_err();
        assert!(e.to_string().contains("value \"\u{e9}\""), "{e}");
    }

    #[test]
    fn hash_matches_kmod() {
        // Values from kmod's hash_superfast, one key per length modulo 4.
        for (key, want) in [
            ("", 0u32),
            ("a", 0x115e_a782),
            ("ab", 0x516b_8b44),
            ("abc", 0xd2be_198a),
            ("abcd", 0xdad8_b8db),
            ("overlay", 0x0c4c_042e),
            ("nf_conntrack", 0x94a6_5959),
        ] {
            assert_eq!(kmod_hash(key.as_bytes()), want, "{key:?}");
        }
    }
}
