//! The checksum and hash functions of the ext4 on-disk format.

/// crc32c as ext4 uses it: no pre- or post-inversion, the caller carries the running value.
pub(crate) fn crc32c(crc: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!crc, data)
}

/// Seed for every metadata checksum: crc32c(~0, uuid).
pub(crate) fn fs_seed(uuid: &[u8; 16]) -> u32 {
    crc32c(!0, uuid)
}

/// Per-inode seed: the inode number and generation folded into the filesystem seed.
pub(crate) fn inode_seed(fs_seed: u32, ino: u32, generation: u32) -> u32 {
    crc32c(crc32c(fs_seed, &ino.to_le_bytes()), &generation.to_le_bytes())
}

/// The directory-index hash (`half_md4`, signed-char variant) with its minor hash.
/// The filesystem records the signed variant in `s_flags`, so lookups agree on every arch; it is
/// what mke2fs writes on x86, so readers that only implement that variant work too.
pub(crate) fn dx_hash(name: &[u8], seed: &[u32; 4]) -> (u32, u32) {
    let mut buf =
        if seed.iter().all(|&w| w == 0) { [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476] } else { *seed };
    let mut rest = name;
    while !rest.is_empty() {
        // Each round sees the whole remaining length: it goes into the padding word.
        let input = str2hashbuf(rest, 8);
        half_md4_transform(&mut buf, &input);
        rest = &rest[rest.len().min(32)..];
    }
    let mut hash = buf[1] & !1;
    // The all-ones value is reserved as the end-of-directory marker for 32-bit cookies.
    if hash == (0x7fff_ffff << 1) {
        hash = (0x7fff_ffff - 1) << 1;
    }
    (hash, buf[2])
}

fn str2hashbuf(msg: &[u8], num: usize) -> [u32; 8] {
    let len = msg.len() as u32;
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let mut out = [pad; 8];
    let take = msg.len().min(num * 4);
    let mut val = pad;
    let mut idx = 0;
    for (i, &c) in msg[..take].iter().enumerate() {
        // Bytes are widened as C's signed char, which is what the signed variant means.
        val = (c as i8 as i32 as u32).wrapping_add(val << 8);
        if i % 4 == 3 {
            out[idx] = val;
            idx += 1;
            val = pad;
        }
    }
    if idx < num {
        out[idx] = val;
    }
    out
}

fn half_md4_transform(buf: &mut [u32; 4], x: &[u32; 8]) {
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! round {
        ($f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a.wrapping_add($f($b, $c, $d)).wrapping_add($x).rotate_left($s)
        };
    }
    round!(f, a, b, c, d, x[0], 3);
    round!(f, d, a, b, c, x[1], 7);
    round!(f, c, d, a, b, x[2], 11);
    round!(f, b, c, d, a, x[3], 19);
    round!(f, a, b, c, d, x[4], 3);
    round!(f, d, a, b, c, x[5], 7);
    round!(f, c, d, a, b, x[6], 11);
    round!(f, b, c, d, a, x[7], 19);
    round!(g, a, b, c, d, x[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, x[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[6].wrapping_add(K2), 13);
    round!(h, a, b, c, d, x[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, x[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[4].wrapping_add(K3), 15);
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_value() {
        // The standard check value of CRC-32C, expressed in ext4's raw form.
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
    }
}
