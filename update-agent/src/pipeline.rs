//! The staging pipeline. A root arrives as independent zstd frames, each declaring the size it
//! expands to (berth-release's `Compression::Zstd`), so the work spreads over every CPU:
//!
//! - one thread receives the stream through its size and SHA-256 check and cuts it at frame
//!   ends ([`Splitter`]);
//! - a decoder per CPU expands whole frames, each into a buffer of its own;
//! - the calling thread writes every expanded frame at its place in the slot, with `O_DIRECT`
//!   where the device takes it: going through the page cache would cost a copy of every byte,
//!   and the writeback threads' CPU, for pages the read-back drops anyway.
//!
//! Bounded channels hold a few frames per decoder; buffers are recycled, so the steady state
//! allocates nothing.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::anyhow;
use berth_release::index::{FrameList, ZSTD_FRAME_BYTES};
use zstd::zstd_safe;

use crate::http::ArtifactReader;

/// Compressed bytes per read from the network.
const READ_CHUNK: usize = 256 << 10;
/// Image bytes one frame may expand to.
const FRAME: usize = ZSTD_FRAME_BYTES as usize;
/// `O_DIRECT` alignment of buffers, offsets and lengths: the largest logical block size.
const ALIGN: usize = 4096;
/// The most bytes of a zstd frame header (magic number included).
const FRAME_HEADER_MAX: usize = 18;
/// Decoder threads at most (beyond this the network and the disk are the limit).
const MAX_DECODERS: usize = 4;

/// What a finished stream reports. The times are CPU time of each stage's threads (they
/// overlap, so together they may exceed the wall-clock time).
pub struct Figures {
    /// Image bytes written.
    pub written: u64,
    /// Decoder threads.
    pub decoders: usize,
    /// Receiving, checking and cutting the stream.
    pub network: Duration,
    /// Decompressing, all decoders together.
    pub decompress: Duration,
    /// Writing and syncing.
    pub disk: Duration,
}

/// A frame cut from the stream: its bytes (`bytes[..len]`), the image bytes it expands to and
/// where they go.
struct Frame {
    bytes: Vec<u8>,
    len: usize,
    size: usize,
    at: u64,
}

/// Cuts the compressed stream at frame ends, checking each frame's header on the way. The
/// network reads straight into its buffer.
struct Splitter {
    what: String,
    image_size: u64,
    /// `pending[..filled]`: received bytes not yet cut off as a frame.
    pending: Vec<u8>,
    filled: usize,
    /// Stream offset of `pending[0]` (for errors).
    offset: u64,
    /// Image offset of the next frame.
    at: u64,
    /// Buffers of frames the decoders are done with.
    spare: Vec<Vec<u8>>,
    /// M8: the signed frame list and the next frame's place in it. With one, a frame is cut
    /// where the list says and handed on only once its SHA-256 matches: no decoder (nor
    /// libzstd's header parser) sees a byte that is not authenticated.
    expected: Option<(FrameList, usize)>,
}

/// Why the splitter refused a stream (`what` names the artifact, `at` is a byte offset in the
/// compressed stream). Callers and tests branch on the variant, not on the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream runs on past the last frame of the signed frame list.
    #[error("{what}: byte {at} is past the {frames} frames of the signed frame list")]
    PastList { what: String, at: u64, frames: usize },
    /// The signed frame list names a frame longer than a frame can compress to.
    #[error(
        "{what}: the signed frame list's frame {frame} is {len} bytes, more than a frame of {FRAME} bytes compresses to"
    )]
    ListedTooLong { what: String, frame: usize, len: usize },
    /// A frame's bytes do not match the SHA-256 the signed frame list gives it.
    #[error(
        "{what}: frame {frame} (bytes {at}..{end}) has SHA-256 {got}, not the {want} of the signed frame list: refused \
         before it is decoded"
    )]
    Unauthentic {
        what: String,
        frame: usize,
        at: u64,
        end: u64,
        got: berth_release::index::Digest,
        want: berth_release::index::Digest,
    },
    /// An authenticated frame does not end where the signed frame list says.
    #[error("{what}: frame {frame} at byte {at} does not end where the signed frame list says ({len} bytes)")]
    ListedEndMismatch { what: String, frame: usize, at: u64, len: usize },
    /// No frame end within the most bytes a frame compresses to.
    #[error("{what}: the zstd frame at byte {at} does not end within {len} bytes")]
    Unterminated { what: String, at: u64, len: usize },
    /// The frames expand past the image size the index announced.
    #[error("{what}: expands to more than the {image_size} bytes the index announced")]
    TooLong { what: String, image_size: u64 },
    /// No zstd frame header where a frame must start.
    #[error("{what}: no zstd frame header at byte {at}")]
    NoHeader { what: String, at: u64 },
    /// A frame whose header does not declare its expanded size.
    #[error("{what}: the zstd frame at byte {at} does not declare its size (a root is published as frames that do)")]
    UnsizedFrame { what: String, at: u64 },
    /// A frame that declares more than a frame may expand to.
    #[error(
        "{what}: the zstd frame at byte {at} expands to {size} bytes, more than the {ZSTD_FRAME_BYTES} a frame may"
    )]
    FrameTooLarge { what: String, at: u64, size: u64 },
    /// The stream ends before the last frame of the signed frame list.
    #[error("{what}: the stream ends after frame {next} of the {frames} the signed frame list names")]
    EndsEarly { what: String, next: usize, frames: usize },
    /// The stream ends inside a frame.
    #[error("{what}: the stream ends inside the zstd frame at byte {at} ({len} bytes of it)")]
    EndsInsideFrame { what: String, at: u64, len: usize },
}

/// A compressed frame and a read after it fit in a buffer of this size.
fn buffer_size() -> usize {
    zstd_safe::compress_bound(FRAME) + READ_CHUNK
}

impl Splitter {
    fn new(what: &str, image_size: u64) -> Splitter {
        Splitter {
            what: what.into(),
            image_size,
            pending: vec![0; buffer_size()],
            filled: 0,
            offset: 0,
            at: 0,
            spare: Vec::new(),
            expected: None,
        }
    }

    /// Cuts by the signed frame list `frames` and authenticates each frame before it is used.
    fn with_frames(mut self, frames: FrameList) -> Splitter {
        self.expected = Some((frames, 0));
        self
    }

    /// With a frame list: the length of the next frame once it has arrived whole and matches
    /// its SHA-256 (`Ok(None)` until it has arrived).
    fn authenticated(&mut self) -> Result<Option<usize>, FrameError> {
        let Some((list, next)) = &mut self.expected else { return Ok(None) };
        let pending = &self.pending[..self.filled];
        let what = || self.what.clone();
        let Some(&(len, sha)) = list.0.get(*next) else {
            return Err(FrameError::PastList { what: what(), at: self.offset, frames: list.0.len() });
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > zstd_safe::compress_bound(FRAME) {
            return Err(FrameError::ListedTooLong { what: what(), frame: *next, len });
        }
        if pending.len() < len {
            return Ok(None);
        }
        let got = berth_release::artifact::sha256(&pending[..len]);
        if got != sha {
            return Err(FrameError::Unauthentic {
                what: what(),
                frame: *next,
                at: self.offset,
                end: self.offset + len as u64,
                got,
                want: sha,
            });
        }
        // Authenticated bytes from here on; the frame must also end where the list says.
        if zstd_safe::find_frame_compressed_size(&pending[..len]) != Ok(len) {
            return Err(FrameError::ListedEndMismatch { what: what(), frame: *next, at: self.offset, len });
        }
        *next += 1;
        Ok(Some(len))
    }

    /// Where the next bytes are read to: at least [`READ_CHUNK`] of them.
    fn space(&mut self) -> &mut [u8] {
        &mut self.pending[self.filled..]
    }

    /// `n` bytes were read into [`Splitter::space`].
    fn received(&mut self, n: usize) {
        self.filled += n;
    }

    /// The next whole frame of what has arrived, if there is one; an error when the stream
    /// cannot be a root (checked as early as the bytes allow). After `Ok(None)` the buffer has
    /// room for another read; after an error it is emptied, for the rest to be read through it.
    fn cut(&mut self) -> Result<Option<Frame>, FrameError> {
        let r = self.try_cut();
        if r.is_err() {
            self.filled = 0;
        }
        r
    }

    fn try_cut(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.filled == 0 {
            return Ok(None);
        }
        if self.expected.is_some() {
            let Some(len) = self.authenticated()? else { return Ok(None) };
            return self.take(len);
        }
        let pending = &self.pending[..self.filled];
        let Ok(len) = zstd_safe::find_frame_compressed_size(pending) else {
            if pending.len() >= FRAME_HEADER_MAX {
                self.frame_size(pending)?;
            }
            if pending.len() > zstd_safe::compress_bound(FRAME) {
                return Err(FrameError::Unterminated { what: self.what.clone(), at: self.offset, len: pending.len() });
            }
            return Ok(None);
        };
        self.take(len)
    }

    /// Cuts the first `len` pending bytes off as a frame, checking its header.
    fn take(&mut self, len: usize) -> Result<Option<Frame>, FrameError> {
        let pending = &self.pending[..self.filled];
        let size = self.frame_size(&pending[..len])?;
        if self.at + size as u64 > self.image_size {
            return Err(FrameError::TooLong { what: self.what.clone(), image_size: self.image_size });
        }
        let mut rest = self.spare.pop().unwrap_or_else(|| vec![0; buffer_size()]);
        rest[..self.filled - len].copy_from_slice(&pending[len..]);
        let bytes = std::mem::replace(&mut self.pending, rest);
        let frame = Frame { bytes, len, size, at: self.at };
        self.filled -= len;
        self.at += size as u64;
        self.offset += len as u64;
        Ok(Some(frame))
    }

    /// The image bytes the frame starting `bytes` expands to, from its header (a skippable
    /// frame expands to none).
    fn frame_size(&self, bytes: &[u8]) -> Result<usize, FrameError> {
        let (what, at) = (self.what.clone(), self.offset);
        match zstd_safe::get_frame_content_size(bytes) {
            Err(_) => Err(FrameError::NoHeader { what, at }),
            Ok(None) => Err(FrameError::UnsizedFrame { what, at }),
            Ok(Some(size)) if size > ZSTD_FRAME_BYTES => Err(FrameError::FrameTooLarge { what, at, size }),
            Ok(Some(n)) => Ok(n as usize),
        }
    }

    /// At the end of the stream: nothing may be left over.
    fn finish(&self) -> Result<(), FrameError> {
        if let Some((list, next)) = &self.expected
            && *next != list.0.len()
        {
            return Err(FrameError::EndsEarly { what: self.what.clone(), next: *next, frames: list.0.len() });
        }
        match self.filled {
            0 => Ok(()),
            len => Err(FrameError::EndsInsideFrame { what: self.what.clone(), at: self.offset, len }),
        }
    }
}

/// A buffer aligned for `O_DIRECT`.
pub struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    /// `len` zero bytes.
    pub fn new(len: usize) -> Aligned {
        let raw = vec![0u8; len + ALIGN];
        // Never more than ALIGN for bytes; a buffer that could not be aligned goes through
        // the page cache.
        let start = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        Aligned { raw, start, len }
    }

    /// The whole buffer.
    pub fn all(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }

    fn bytes(&self, n: usize) -> &[u8] {
        &self.raw[self.start..self.start + n]
    }
}

/// `node` opened again with `O_DIRECT` (for writing, or reading), if its filesystem or device
/// takes that.
pub fn open_direct(node: &Path, write: bool) -> Option<File> {
    File::options().read(!write).write(write).custom_flags(nix::libc::O_DIRECT).open(node).ok()
}

/// Reads `buf.len()` bytes at `at`: with `direct` when the place and length are aligned for
/// it, else (or when the device refuses) through `dev`.
pub fn read_exact_at(dev: &File, direct: &mut Option<File>, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    if let Some(d) = direct.as_ref()
        && at.is_multiple_of(ALIGN as u64)
        && buf.len().is_multiple_of(ALIGN)
        && (buf.as_ptr() as usize).is_multiple_of(ALIGN)
    {
        match d.read_exact_at(buf, at) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => *direct = None,
            r => return r,
        }
    }
    dev.read_exact_at(buf, at)
}

/// Writes image bytes into the slot: the aligned part with `O_DIRECT` when the device takes
/// it, the rest (and everything, on devices that refuse `O_DIRECT`) through the page cache.
struct SlotWriter<'a> {
    dev: &'a File,
    direct: Option<File>,
}

impl SlotWriter<'_> {
    fn write(&mut self, bytes: &[u8], at: u64) -> std::io::Result<()> {
        let mut done = 0;
        if let Some(direct) = &self.direct
            && at.is_multiple_of(ALIGN as u64)
            && (bytes.as_ptr() as usize).is_multiple_of(ALIGN)
        {
            let k = bytes.len() / ALIGN * ALIGN;
            match direct.write_all_at(&bytes[..k], at) {
                Ok(()) => done = k,
                // Not for this device after all.
                Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => self.direct = None,
                Err(e) => return Err(e),
            }
        }
        self.dev.write_all_at(&bytes[done..], at + done as u64)
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map(Duration::from).unwrap_or_default()
}

/// A lock whose holder cannot have left it half-changed (it only guards a receiver).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Streams `source` (zstd frames) into `dev` (opened read-write at `node`) from byte 0; at most
/// `image_size` bytes are written. `progress(received, written)` is called from this thread
/// after each write. Errors come in this order: the artifact's own check (a flipped byte is a
/// SHA-256 mismatch, not a "corrupt block"), then the frames and their sizes, then the disk.
#[cfg(test)]
pub fn stream(
    source: ArtifactReader<'_>,
    what: &str,
    image_size: u64,
    dev: &File,
    node: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Figures> {
    stream_with(source, what, image_size, None, dev, node, progress)
}

/// [`stream`], each frame cut and authenticated by the signed frame list `frames` before it is
/// decoded (M8): what the agent stages with.
pub fn stream_frames(
    source: ArtifactReader<'_>,
    what: &str,
    image_size: u64,
    frames: FrameList,
    dev: &File,
    node: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Figures> {
    stream_with(source, what, image_size, Some(frames), dev, node, progress)
}

fn stream_with(
    mut source: ArtifactReader<'_>,
    what: &str,
    image_size: u64,
    frames: Option<FrameList>,
    dev: &File,
    node: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Figures> {
    let decoders = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_DECODERS);
    let max_buffers = decoders + 2;
    let (frame_tx, frame_rx) = sync_channel::<Frame>(decoders);
    let frame_rx = Mutex::new(frame_rx);
    let (back_tx, back_rx) = channel::<Vec<u8>>();
    let (out_tx, out_rx) = sync_channel::<(Aligned, usize, u64)>(max_buffers);
    let (free_tx, free_rx) = channel::<Aligned>();
    let free_rx = Mutex::new(free_rx);
    let allocated = AtomicUsize::new(0);
    let received = AtomicU64::new(0);
    let (frame_rx, free_rx, allocated, received) = (&frame_rx, &free_rx, &allocated, &received);
    let mut writer = SlotWriter { dev, direct: open_direct(node, true) };

    std::thread::scope(|scope| {
        let network = scope.spawn(move || {
            let mut splitter = Splitter::new(what, image_size);
            if let Some(f) = frames {
                splitter = splitter.with_frames(f);
            }
            let mut refused: Option<FrameError> = None;
            loop {
                // Once the stream is refused, the rest is still read (into the same place) for
                // the check.
                let n = match source.next(&mut splitter.space()[..READ_CHUNK]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => return (Err(e), refused, thread_cpu()),
                };
                received.fetch_add(n as u64, Ordering::Relaxed);
                if refused.is_some() {
                    continue;
                }
                splitter.received(n);
                splitter.spare.extend(back_rx.try_iter());
                loop {
                    match splitter.cut() {
                        Ok(Some(frame)) if frame.size == 0 => splitter.spare.push(frame.bytes),
                        Ok(Some(frame)) => {
                            // The decoders drain the channel to its end, even after an error.
                            let _ = frame_tx.send(frame);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            refused = Some(e);
                            break;
                        }
                    }
                }
            }
            drop(frame_tx);
            if refused.is_none() {
                refused = splitter.finish().err();
            }
            (source.finish(), refused, thread_cpu())
        });

        let decoding: Vec<_> = (0..decoders)
            .map(|_| {
                let (out_tx, back_tx, free_tx) = (out_tx.clone(), back_tx.clone(), free_tx.clone());
                scope.spawn(move || {
                    let mut failed: Option<String> = None;
                    let mut dctx = match zstd::bulk::Decompressor::new() {
                        Ok(d) => Some(d),
                        Err(e) => {
                            failed = Some(format!("starting zstd: {e}"));
                            None
                        }
                    };
                    loop {
                        let Ok(frame) = lock(frame_rx).recv() else { break };
                        if let (None, Some(d)) = (&failed, dctx.as_mut()) {
                            let mut buf = if allocated.fetch_add(1, Ordering::Relaxed) < max_buffers {
                                Aligned::new(FRAME)
                            } else {
                                match lock(free_rx).recv() {
                                    Ok(b) => b,
                                    Err(_) => break,
                                }
                            };
                            let end = frame.at + frame.size as u64;
                            match d.decompress_to_buffer(&frame.bytes[..frame.len], &mut buf.all()[..frame.size]) {
                                Ok(n) if n == frame.size => {
                                    let _ = out_tx.send((buf, n, frame.at));
                                }
                                Ok(n) => {
                                    failed = Some(format!(
                                        "{what}: the zstd frame for image bytes {}..{end} expands to {n} bytes, not the {} it declares",
                                        frame.at, frame.size
                                    ));
                                    let _ = free_tx.send(buf);
                                }
                                Err(e) => {
                                    failed = Some(format!(
                                        "{what}: decompressing the zstd frame for image bytes {}..{end}: {e}",
                                        frame.at
                                    ));
                                    let _ = free_tx.send(buf);
                                }
                            }
                        }
                        let _ = back_tx.send(frame.bytes);
                    }
                    (failed, thread_cpu())
                })
            })
            .collect();
        drop((out_tx, back_tx));

        // This thread writes, in whatever order the frames come.
        let started_cpu = thread_cpu();
        let mut written = 0u64;
        let mut wrote: anyhow::Result<()> = Ok(());
        for (buf, n, at) in out_rx {
            if wrote.is_ok() {
                match writer.write(buf.bytes(n), at) {
                    Ok(()) => {
                        written += n as u64;
                        progress(received.load(Ordering::Relaxed), written);
                    }
                    Err(e) => wrote = Err(anyhow!("writing {} at byte {at}: {e}", node.display())),
                }
            }
            let _ = free_tx.send(buf);
        }
        drop(free_tx);
        if wrote.is_ok() {
            wrote = dev.sync_all().map_err(|e| anyhow!("syncing {}: {e}", node.display()));
        }
        let disk = thread_cpu().saturating_sub(started_cpu);

        let (checked, refused, network) = network.join().map_err(|_| anyhow!("{what}: the network thread panicked"))?;
        let mut decompress = Duration::ZERO;
        let mut decode_error = None;
        for d in decoding {
            let (failed, cpu) = d.join().map_err(|_| anyhow!("{what}: a decoder thread panicked"))?;
            decompress += cpu;
            decode_error = decode_error.or(failed);
        }
        checked?;
        if let Some(e) = refused {
            return Err(e.into());
        }
        if let Some(e) = decode_error {
            return Err(anyhow!(e));
        }
        wrote?;
        if written != image_size {
            return Err(anyhow!("{what}: expands to {written} bytes, not the {image_size} the index announced"));
        }
        Ok(Figures { written, decoders, network, decompress, disk })
    })
}

/// Splits `image` into frames as `berth publish` does; for tests.
#[cfg(test)]
pub fn frames(image: &[u8], level: i32) -> Vec<u8> {
    let mut c = zstd::bulk::Compressor::new(level).unwrap();
    image.chunks(FRAME).flat_map(|chunk| c.compress(chunk).unwrap()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cuts `stream` as it arrives in `step`-byte pieces.
    fn cut_all(stream: &[u8], image_size: u64, step: usize) -> Result<Vec<(usize, usize, u64)>, FrameError> {
        let mut s = Splitter::new("root.img.zst", image_size);
        let mut out = Vec::new();
        for piece in stream.chunks(step) {
            s.space()[..piece.len()].copy_from_slice(piece);
            s.received(piece.len());
            while let Some(f) = s.cut()? {
                out.push((f.len, f.size, f.at));
            }
        }
        s.finish()?;
        Ok(out)
    }

    /// Frames of `image` as `berth publish` makes them, and their signed list.
    fn listed(image: &[u8]) -> (Vec<u8>, FrameList) {
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        let parts: Vec<Vec<u8>> = image.chunks(FRAME).map(|chunk| c.compress(chunk).unwrap()).collect();
        let list = parts.iter().map(|p| (p.len() as u64, berth_release::artifact::sha256(p))).collect();
        (parts.concat(), FrameList(list))
    }

    /// Feeds `stream` in `step`-byte pieces through a splitter with `list`; the frames handed
    /// on (to the decoders) and the first refusal.
    fn cut_listed(stream: &[u8], image_size: u64, list: FrameList, step: usize) -> (usize, Result<(), FrameError>) {
        let mut s = Splitter::new("root.img.zst", image_size).with_frames(list);
        let mut handed = 0;
        for piece in stream.chunks(step) {
            s.space()[..piece.len()].copy_from_slice(piece);
            s.received(piece.len());
            loop {
                match s.cut() {
                    Ok(Some(_)) => handed += 1,
                    Ok(None) => break,
                    Err(e) => return (handed, Err(e)),
                }
            }
        }
        (handed, s.finish())
    }

    #[test]
    fn m8_a_frame_is_authenticated_before_any_decoder_sees_it() {
        let image: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8 ^ (i >> 16) as u8).collect();
        let (packed, list) = listed(&image);
        assert_eq!(list.0.len(), 3);
        for step in [1000, 1 << 20, packed.len()] {
            assert_eq!(cut_listed(&packed, image.len() as u64, list.clone(), step), (3, Ok(())), "step {step}");
        }
        // One byte changed in the second frame (a mirror's choice): the first frame is handed
        // on, the second refused before anything parses it; nothing after it is handed on.
        let mut bad = packed.clone();
        let second = list.0[0].0 as usize + 100;
        bad[second] ^= 0x40;
        let (handed, r) = cut_listed(&bad, image.len() as u64, list.clone(), 4096);
        assert_eq!(handed, 1);
        let e = r.unwrap_err();
        assert!(matches!(e, FrameError::Unauthentic { frame: 1, .. }), "{e:?}");
        assert!(e.to_string().contains("refused before it is decoded"), "{e}");
        // A frame a mirror built itself (valid zstd, other bytes) is refused just the same.
        let (other, _) = listed(&vec![0u8; image.len()]);
        let (handed, r) = cut_listed(&other, image.len() as u64, list.clone(), 4096);
        assert_eq!(handed, 0);
        // (Its first frame is shorter than the listed one: waited for whole, it never is.)
        assert!(matches!(r, Err(FrameError::EndsEarly { next: 0, frames: 3, .. })), "{r:?}");
        // A stream that stops early, or runs on past the list, is refused.
        let short = &packed[..(list.0[0].0 + list.0[1].0) as usize];
        let (_, r) = cut_listed(short, image.len() as u64, list.clone(), 4096);
        assert_eq!(r, Err(FrameError::EndsEarly { what: "root.img.zst".into(), next: 2, frames: 3 }));
        let mut longer = packed.clone();
        longer.extend_from_slice(&packed[..list.0[0].0 as usize]);
        let (_, r) = cut_listed(&longer, image.len() as u64, list, 4096);
        assert!(matches!(r, Err(FrameError::PastList { frames: 3, .. })), "{r:?}");
    }

    #[test]
    fn frames_are_cut_where_they_end_whatever_the_pieces() {
        let image: Vec<u8> = (0..10_000_000u32).map(|i| if i < 5_000_000 { 0 } else { (i % 253) as u8 }).collect();
        let packed = frames(&image, 3);
        for step in [1, 7, 4096, 1 << 20, packed.len()] {
            let cut = cut_all(&packed, image.len() as u64, step).unwrap();
            assert_eq!(cut.iter().map(|c| c.0).sum::<usize>(), packed.len(), "step {step}");
            assert_eq!(
                cut.iter().map(|c| (c.1, c.2)).collect::<Vec<_>>(),
                [(FRAME, 0), (FRAME, FRAME as u64), (10_000_000 - 2 * FRAME, 2 * FRAME as u64)]
            );
        }
        // A skippable frame in between expands to nothing.
        let mut with_skippable = packed.clone();
        let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3];
        skippable.extend_from_slice(&with_skippable);
        with_skippable = skippable;
        let cut = cut_all(&with_skippable, image.len() as u64, 1000).unwrap();
        assert_eq!(cut[0], (11, 0, 0));
        assert_eq!(cut.len(), 4);
    }

    #[test]
    fn streams_that_are_not_roots_are_refused_with_where() {
        let image = vec![7u8; 3 * FRAME];
        // One frame for the whole image: more than a frame may expand to.
        let whole = zstd::bulk::compress(&image, 3).unwrap();
        let e = cut_all(&whole, image.len() as u64, 4096).unwrap_err();
        assert!(matches!(e, FrameError::FrameTooLarge { at: 0, size: 12582912, .. }), "{e:?}");
        assert!(e.to_string().contains("expands to 12582912 bytes, more than the 4194304"), "{e}");
        // A frame that does not declare its size (as a pipe into `zstd` writes).
        let mut unsized_frame = Vec::new();
        let mut enc = zstd::stream::Encoder::new(&mut unsized_frame, 3).unwrap();
        std::io::Write::write_all(&mut enc, &image[..1000]).unwrap();
        enc.finish().unwrap();
        let e = cut_all(&unsized_frame, image.len() as u64, 4096).unwrap_err();
        assert!(matches!(e, FrameError::UnsizedFrame { at: 0, .. }), "{e:?}");
        // Not zstd at all.
        let e = cut_all(&[0u8; 64], 64, 64).unwrap_err();
        assert_eq!(e, FrameError::NoHeader { what: "root.img.zst".into(), at: 0 });
        assert_eq!(e.to_string(), "root.img.zst: no zstd frame header at byte 0");
        // Good frames, then a cut-off one.
        let packed = frames(&image, 3);
        let e = cut_all(&packed[..packed.len() - 1], image.len() as u64, 4096).unwrap_err();
        assert!(matches!(e, FrameError::EndsInsideFrame { .. }), "{e:?}");
        // More than the index announced.
        let e = cut_all(&packed, image.len() as u64 - 1, 4096).unwrap_err();
        assert_eq!(e, FrameError::TooLong { what: "root.img.zst".into(), image_size: 12582911 });
    }
}

#[cfg(test)]
mod fuzz;
