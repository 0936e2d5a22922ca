//! Fuzz target (berth-fuzzkit): the staging pipeline's [`Splitter`] on a compressed root as it
//! arrives, in pieces of any size, then each frame it cuts through libzstd into a buffer of
//! the size its header declares, as the decoders do. Seeds: `update-agent/fuzz/corpus/zstd/`
//! (several frames, skippable frames, an empty frame). Nothing may panic (overflow checks
//! on), and what is cut must be a contiguous tiling of the stream and of the image.

use std::path::Path;

use berth_fuzzkit::proptest::prelude::*;
use berth_fuzzkit::{Bytes, Corpus, run};

use super::{READ_CHUNK, Splitter};

#[test]
fn fuzz_zstd_frame_splitter() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/zstd");
    // Frame magic numbers (zstd, skippable) and a frame header declaring 4 MiB.
    let corpus = Corpus::load(&[dir]).byte_tokens(&[b"\x28\xb5\x2f\xfd", b"\x50\x2a\x4d\x18", b"\x60\x40"]);
    let pieces = prop::collection::vec(prop_oneof![1usize..8, 1usize..4096, Just(READ_CHUNK)], 1..8);
    let image_size = prop_oneof![0u64..20_000, Just(1 << 22), Just(u64::MAX), any::<u64>()];
    let decoder = std::cell::RefCell::new(zstd::bulk::Decompressor::new().unwrap());
    run(
        "update-agent/zstd-splitter",
        1000,
        (corpus.inputs(), pieces, image_size),
        |(stream, pieces, image_size): (Bytes, Vec<usize>, u64)| {
            let mut s = Splitter::new("root.img.zst", image_size);
            let (mut offset, mut at) = (0usize, 0u64);
            let mut refused = false;
            let mut rest: &[u8] = &stream;
            'stream: for step in pieces.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, tail) = rest.split_at((*step).min(rest.len()));
                rest = tail;
                s.space()[..piece.len()].copy_from_slice(piece);
                s.received(piece.len());
                loop {
                    match s.cut() {
                        Ok(Some(frame)) => {
                            prop_assert_eq!(&frame.bytes[..frame.len], &stream[offset..offset + frame.len]);
                            prop_assert_eq!(frame.at, at);
                            offset += frame.len;
                            at += frame.size as u64;
                            prop_assert!(at <= image_size);
                            if frame.size > 0 {
                                let mut out = vec![0u8; frame.size];
                                let _ =
                                    decoder.borrow_mut().decompress_to_buffer(&frame.bytes[..frame.len], &mut out[..]);
                            }
                            s.spare.push(frame.bytes);
                        }
                        Ok(None) => break,
                        Err(_) => {
                            refused = true;
                            break 'stream;
                        }
                    }
                }
            }
            if !refused && s.finish().is_ok() {
                prop_assert_eq!(offset, stream.len(), "the whole stream is cut into frames");
            }
            Ok(())
        },
    );
}
