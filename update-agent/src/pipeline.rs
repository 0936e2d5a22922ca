//! The staging pipeline: receiving and checking the compressed stream, zstd, and writing the
//! slot each run on a thread of their own, joined by bounded channels, so that a host with more
//! than one CPU overlaps them (on one CPU it costs a few context switches). Buffers of the
//! writer are recycled, so the steady state allocates nothing.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, channel, sync_channel};
use std::time::{Duration, Instant};

use anyhow::anyhow;

use crate::http::{ArtifactReader, FetchError};

/// Compressed bytes per message from the network stage.
const IN_CHUNK: usize = 1 << 20;
/// Image bytes per write.
const OUT_CHUNK: usize = 4 << 20;
/// Write buffers in flight (one being filled, the rest queued or being written).
const OUT_BUFFERS: usize = 3;

/// What a finished stream reports.
pub struct Figures {
    /// Image bytes written.
    pub written: u64,
    /// Time the network stage spent receiving and checking (not waiting for the others).
    pub network: Duration,
    /// Time the writer spent writing and syncing.
    pub disk: Duration,
    /// Time the decoder spent decompressing (not waiting for the others).
    pub decompress: Duration,
}

/// The decoder's input: chunks from the network stage.
struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
    /// Time spent waiting for the network stage.
    waiting: Duration,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            let t = Instant::now();
            let next = self.rx.recv();
            self.waiting += t.elapsed();
            match next {
                Ok(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                // The network stage ended (at the end, or with an error it reports itself).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Streams `source` (zstd) into `dev` from byte 0; at most `image_size` bytes are written.
/// `progress(received, written)` is called from this thread after each write is queued.
/// Errors come in this order: the artifact's own check (a flipped byte is a SHA-256 mismatch,
/// not a "corrupt block"), then decompression and size, then the disk.
pub fn stream(
    mut source: ArtifactReader<'_>,
    what: &str,
    image_size: u64,
    dev: &File,
    node: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Figures> {
    let (in_tx, in_rx) = sync_channel::<Vec<u8>>(4);
    let (out_tx, out_rx) = sync_channel::<(Vec<u8>, usize, u64)>(OUT_BUFFERS - 1);
    let (free_tx, free_rx) = channel::<Vec<u8>>();
    let received = AtomicU64::new(0);
    let received = &received;
    std::thread::scope(|scope| {
        let network = scope.spawn(move || -> (Result<(), FetchError>, Duration) {
            let mut busy = Duration::ZERO;
            let mut live = true;
            loop {
                let mut chunk = vec![0u8; IN_CHUNK];
                let t = Instant::now();
                let n = match source.next(&mut chunk) {
                    Ok(n) => n,
                    Err(e) => return (Err(e), busy + t.elapsed()),
                };
                busy += t.elapsed();
                if n == 0 {
                    break;
                }
                chunk.truncate(n);
                received.fetch_add(n as u64, Ordering::Relaxed);
                // Once the decoder has stopped, the rest is still read for the check.
                if live && in_tx.send(chunk).is_err() {
                    live = false;
                }
            }
            drop(in_tx);
            let t = Instant::now();
            let r = source.finish();
            (r, busy + t.elapsed())
        });
        let writer = scope.spawn(move || -> (anyhow::Result<()>, Duration) {
            let mut disk = Duration::ZERO;
            for (buf, n, at) in out_rx {
                let t = Instant::now();
                if let Err(e) = dev.write_all_at(&buf[..n], at) {
                    return (Err(anyhow!("writing {} at byte {at}: {e}", node.display())), disk);
                }
                disk += t.elapsed();
                let _ = free_tx.send(buf);
            }
            let t = Instant::now();
            let r = dev.sync_all().map_err(|e| anyhow!("syncing {}: {e}", node.display()));
            (r, disk + t.elapsed())
        });

        let input = ChannelReader { rx: in_rx, chunk: Vec::new(), at: 0, waiting: Duration::ZERO };
        let mut written = 0u64;
        let mut allocated = 0;
        let started = Instant::now();
        let mut blocked = Duration::ZERO;
        let decoded: anyhow::Result<()> = (|| {
            let mut decoder = zstd::stream::read::Decoder::new(input).map_err(|e| anyhow!("starting zstd: {e}"))?;
            let result = loop {
                let t = Instant::now();
                let mut buf = match free_rx.try_recv() {
                    Ok(b) => b,
                    Err(_) if allocated < OUT_BUFFERS => {
                        allocated += 1;
                        vec![0u8; OUT_CHUNK]
                    }
                    Err(_) => match free_rx.recv() {
                        Ok(b) => b,
                        Err(_) => break Err(anyhow!("the writer stopped")),
                    },
                };
                blocked += t.elapsed();
                let n = match fill(&mut decoder, &mut buf) {
                    Ok(n) => n,
                    Err(e) => break Err(anyhow!("{what}: decompressing: {e}")),
                };
                if n == 0 {
                    break Ok(());
                }
                if written + n as u64 > image_size {
                    break Err(anyhow!("{what}: expands to more than the {image_size} bytes the index announced"));
                }
                let t = Instant::now();
                if out_tx.send((buf, n, written)).is_err() {
                    // The writer failed; it says why.
                    break Ok(());
                }
                blocked += t.elapsed();
                written += n as u64;
                progress(received.load(Ordering::Relaxed), written);
            };
            blocked += decoder.get_ref().get_ref().waiting;
            result
        })();
        let decompress = started.elapsed().saturating_sub(blocked);
        drop(out_tx);
        let (checked, network_time) = network.join().map_err(|_| anyhow!("{what}: the network thread panicked"))?;
        let (wrote, disk) = writer.join().map_err(|_| anyhow!("{what}: the writer thread panicked"))?;
        checked?;
        decoded?;
        wrote?;
        if written != image_size {
            return Err(anyhow!("{what}: expands to {written} bytes, not the {image_size} the index announced"));
        }
        Ok(Figures { written, network: network_time, disk, decompress })
    })
}

/// Reads until `buf` is full or the stream ends.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
