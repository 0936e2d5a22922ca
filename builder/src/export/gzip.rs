//! A deterministic gzip writer (RFC 1952), for GCE's image tarball.
//!
//! The deflate stream comes from `miniz_oxide` directly, as the VMDK writer's grains do
//! (`crate::vmdk`): through flate2 the backend could change with a feature another crate of
//! the workspace turns on (zlib-rs is in the lock file), and with it the artifact's bytes. The
//! header carries nothing that depends on the machine or the time: no file name, modification
//! time 0 ("none"), extra flags 0, OS 255 ("unknown"). Same input, same level, same
//! `miniz_oxide`: same bytes.

use std::io::{self, Write};

use miniz_oxide::DataFormat;
use miniz_oxide::deflate::core::{CompressorOxide, TDEFLFlush, TDEFLStatus, compress_to_output};

/// The fixed 10-byte member header: magic, deflate, no flags, mtime 0, XFL 0, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// Compresses what is written into one gzip member on `W`; [`GzWriter::finish`] ends it.
pub struct GzWriter<W: Write> {
    out: W,
    deflate: Box<CompressorOxide>,
    crc: crc32fast::Hasher,
    /// Input length modulo 2^32 (gzip's ISIZE).
    len: u32,
    /// Whether the header has been written (at the first write, so `new` cannot fail).
    started: bool,
}

impl<W: Write> GzWriter<W> {
    /// A writer compressing at `level` (0–10; 6 is gzip's default).
    pub fn new(out: W, level: u8) -> Self {
        let mut deflate = Box::<CompressorOxide>::default();
        deflate.set_format_and_level(DataFormat::Raw, level);
        GzWriter { out, deflate, crc: crc32fast::Hasher::new(), len: 0, started: false }
    }

    fn start(&mut self) -> io::Result<()> {
        if !self.started {
            self.out.write_all(&HEADER)?;
            self.started = true;
        }
        Ok(())
    }

    /// Runs the compressor over `input` with `flush`, writing what it produces.
    fn deflate(&mut self, mut input: &[u8], flush: TDEFLFlush) -> io::Result<TDEFLStatus> {
        loop {
            let mut failed: Option<io::Error> = None;
            let out = &mut self.out;
            let (status, used) =
                compress_to_output(&mut self.deflate, input, flush, |chunk| match out.write_all(chunk) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                });
            if let Some(e) = failed {
                return Err(e);
            }
            match status {
                TDEFLStatus::Okay | TDEFLStatus::Done => {}
                other => return Err(io::Error::other(format!("deflate failed ({other:?})"))),
            }
            input = &input[used..];
            if input.is_empty() || status == TDEFLStatus::Done {
                return Ok(status);
            }
        }
    }

    /// Ends the deflate stream, writes the trailer (CRC-32, length) and gives the writer back.
    pub fn finish(mut self) -> io::Result<W> {
        self.start()?;
        if self.deflate(&[], TDEFLFlush::Finish)? != TDEFLStatus::Done {
            return Err(io::Error::other("deflate did not end its stream"));
        }
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(&self.len.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for GzWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.start()?;
        self.deflate(buf, TDEFLFlush::None)?;
        self.crc.update(buf);
        self.len = self.len.wrapping_add(buf.len() as u32);
        Ok(buf.len())
    }

    /// Only flushes the underlying writer: a deflate sync flush would put bytes into the stream
    /// that depend on when the caller flushed.
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn gz(data: &[u8], chunk: usize) -> Vec<u8> {
        let mut w = GzWriter::new(Vec::new(), 6);
        for part in data.chunks(chunk.max(1)) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    /// GNU gzip, a reader Berth did not write, tests and decompresses it.
    #[test]
    fn gzip_reads_it_back() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| if i % 7000 < 3000 { 0 } else { (i * 31 % 251) as u8 }).collect();
        let out = gz(&data, 100_000);
        assert_eq!(out[..10], HEADER);
        assert!(out.len() < data.len() / 2, "compressed to {}", out.len());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gz");
        std::fs::write(&path, &out).unwrap();
        let t = Command::new("gzip").arg("-t").arg(&path).output().unwrap();
        assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
        let d = Command::new("gzip").arg("-dc").arg(&path).output().unwrap();
        assert!(d.status.success());
        assert!(d.stdout == data, "gzip -dc gives other bytes");
        // -l reads ISIZE from the trailer.
        let l = Command::new("gzip").arg("-l").arg(&path).output().unwrap();
        assert!(String::from_utf8_lossy(&l.stdout).contains(&data.len().to_string()));
    }

    #[test]
    fn same_input_same_bytes_however_it_is_written() {
        let data: Vec<u8> = (0..500_000u32).map(|i| (i % 97) as u8).collect();
        let a = gz(&data, 4096);
        assert_eq!(a, gz(&data, 333_333));
        assert_eq!(a, gz(&data, data.len()));
        // An empty member is still a valid gzip file.
        let empty = gz(&[], 1);
        assert_eq!(empty[..10], HEADER);
        assert_eq!(empty[empty.len() - 8..], [0u8; 8]);
    }
}
