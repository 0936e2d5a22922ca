//! Fuzz target (berth-fuzzkit): the GPT as berth-init and the update agent read it from a
//! disk. Seeds: `fuzz/corpus/gpt/`, LBA 1–33 (header and entry array) of small disks
//! partitioned by sgdisk, one with Berth's layout. Most mutations get their CRCs fixed up so
//! that they reach the checks after the CRCs. Whatever the bytes: no panic (overflow checks
//! on); a GPT that parses encodes to sectors that parse back to it, with a backup that checks.

use std::path::Path;

use berth_fuzzkit::proptest::prelude::*;
use berth_fuzzkit::{Bytes, Corpus, run};
use berth_slot::gpt::{Gpt, Header, crc32};
use berth_slot::{Slot, Slots};

const SECTOR: usize = 512;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The entry array's CRC into the header (when the array is there), then the header's own.
fn fix_crcs(b: &mut [u8]) {
    if b.len() < 92 || &b[..8] != b"EFI PART" {
        return;
    }
    let n = u32_at(b, 80) as usize * u32_at(b, 84) as usize;
    if let Some(entries) = b.get(SECTOR..SECTOR + n) {
        let crc = crc32(entries);
        b[88..92].copy_from_slice(&crc.to_le_bytes());
    }
    let size = (u32_at(b, 12) as usize).clamp(92, SECTOR.min(b.len()));
    b[16..20].fill(0);
    let crc = crc32(&b[..size]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
}

fn check(gpt: &Gpt, disk_lbas: u64, number: u32, align: u64) -> Result<(), TestCaseError> {
    let parts: Vec<_> = gpt.partitions().collect();
    for e in &parts {
        let _ = gpt.partition(e.number);
    }
    if let Ok(slots) = gpt.slots() {
        let _ = slots.select();
        let _ = gpt.with_slots(slots.begin_write(Slot::B).unwrap_or(Slots::FRESH));
    }
    let _ = gpt.with_attributes(number, u64::MAX);
    if let Ok(Some(g)) = gpt.grow_partition(disk_lbas, number, align) {
        prop_assert!(g.new_last_lba >= g.old_last_lba);
        let _ = g.gpt.encode();
    }
    let enc = gpt.encode();
    let _ = enc.copies();
    // What was encoded parses back and encodes to the same sectors; its backup checks.
    let mut again = match Gpt::parse(&enc.primary_header, &enc.entries) {
        Ok(g) => g,
        Err(e) => return Err(TestCaseError::fail(format!("own encoding refused: {e}"))),
    };
    let enc2 = again.encode();
    prop_assert_eq!((&enc2.primary_header, &enc2.entries), (&enc.primary_header, &enc.entries));
    prop_assert!(again.check_backup(&enc.backup_header).is_ok(), "own backup refused");
    Ok(())
}

/// Header fields (offset, width) and entry fields of the first four partitions: a mutation
/// aimed at them, after the generic ones, reaches the geometry checks far more often.
const FIELDS: &[(usize, usize)] = &[
    (12, 4),
    (24, 8),
    (32, 8),
    (40, 8),
    (48, 8),
    (72, 8),
    (80, 4),
    (84, 4),
    (SECTOR + 32, 8),
    (SECTOR + 40, 8),
    (SECTOR + 128 + 32, 8),
    (SECTOR + 128 + 40, 8),
    (SECTOR + 128 + 48, 8),
    (SECTOR + 256 + 48, 8),
    (SECTOR + 384 + 40, 8),
];

fn field_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..4,
        Just(33),
        Just(34),
        Just(128),
        Just(8191),
        Just(8192),
        Just(1 << 32),
        Just(1 << 55),
        Just(i64::MAX as u64),
        Just(u64::MAX - 1),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

#[test]
fn fuzz_gpt() {
    let corpus = Corpus::load(&[Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/gpt")]).byte_tokens(&[
        b"EFI PART",
        b"\x00\x00\x01\x00\x5c\x00\x00\x00",
        b"\x80\x00\x00\x00",
    ]);
    let disk = prop_oneof![34u64..20_000, Just(8192), 0u64..34, 1u64 << 30..1u64 << 40];
    let field = proptest::option::weighted(0.7, (0..FIELDS.len(), field_value()));
    let align = prop_oneof![Just(2048u64), any::<u64>()];
    let strategy = (corpus.inputs(), field, prop::bool::weighted(0.8), disk, 0u32..6, align);
    #[cfg(feature = "std")]
    let file = tempfile::NamedTempFile::new().unwrap();
    run(
        "slot/gpt",
        6000,
        strategy,
        |(input, field, fix, disk_lbas, number, align): (Bytes, Option<(usize, u64)>, bool, u64, u32, u64)| {
            let mut b = input.0;
            if let Some((f, v)) = field {
                let (at, width) = FIELDS[f];
                if let Some(dst) = b.get_mut(at..at + width) {
                    dst.copy_from_slice(&v.to_le_bytes()[..width]);
                }
            }
            if fix {
                fix_crcs(&mut b);
            }
            let mut sector = b.get(..SECTOR).unwrap_or(&b).to_vec();
            sector.resize(SECTOR, 0);
            let entries = b.get(SECTOR..).unwrap_or_default();
            if let Ok(h) = Header::parse(&sector) {
                let _ = (h.entries_bytes(), h.entries_sectors(SECTOR));
                if let Ok(gpt) = Gpt::with_header(h, entries) {
                    check(&gpt, disk_lbas, number, align)?;
                }
            }
            if let Ok(gpt) = Gpt::parse(&sector, entries) {
                check(&gpt, disk_lbas, number, align)?;
            }
            #[cfg(feature = "std")]
            {
                // The same bytes at LBA 1 of a sparse disk, the header again on its last sector.
                use std::os::unix::fs::FileExt;
                let lbas = disk_lbas.min(1 << 21);
                let f = file.as_file();
                f.set_len(0).unwrap();
                f.set_len(lbas * SECTOR as u64).unwrap();
                f.write_all_at(&b, SECTOR as u64).unwrap();
                if lbas > 34 {
                    f.write_all_at(&sector, (lbas - 1) * SECTOR as u64).unwrap();
                }
                if let Ok((gpt, _)) = berth_slot::device::read(f, file.path(), lbas) {
                    check(&gpt, lbas, number, align)?;
                }
            }
            Ok(())
        },
    );
}
