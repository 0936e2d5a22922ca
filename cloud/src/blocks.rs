//! A disk image's data, found without reading its holes: the clouds store only what is not zero
//! (EBS skips blocks never written, a page blob's unwritten pages read as zeros), so an upload
//! sends only the runs this module finds.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// A stretch of the file that is not all zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Where it starts in the file: a multiple of the granule.
    pub offset: u64,
    /// Its bytes: whole granules, except a last one cut by the end of the file.
    pub data: Vec<u8>,
}

/// The data runs of a file, in order: holes (`SEEK_DATA`/`SEEK_HOLE`) are passed over without
/// being read, granules of `granule` bytes that read as all zeros are skipped, and adjacent data
/// granules are joined up to `max_run` bytes without crossing a multiple of `max_run` (so with
/// `granule == max_run` each run is exactly one aligned block).
pub struct DataRuns {
    file: File,
    path: PathBuf,
    len: u64,
    granule: u64,
    max_run: u64,
    next: u64,
    zero_granules: u64,
    hole_bytes: u64,
}

impl DataRuns {
    /// Opens `path` for reading in granules of `granule` bytes, runs of at most `max_run`
    /// (a multiple of `granule`).
    pub fn open(path: &Path, granule: u64, max_run: u64) -> Result<DataRuns, Error> {
        if granule == 0 || max_run < granule || !max_run.is_multiple_of(granule) {
            return Err(Error::Invalid(format!("data runs of {max_run} bytes in granules of {granule}")));
        }
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Ok(DataRuns { file, path: path.to_path_buf(), len, granule, max_run, next: 0, zero_granules: 0, hole_bytes: 0 })
    }

    /// The file's size.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the scan has come to: everything before it was given or skipped.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Granules read and found all zeros so far.
    pub fn zero_granules(&self) -> u64 {
        self.zero_granules
    }

    /// Bytes passed over as holes, unread, so far.
    pub fn hole_bytes(&self) -> u64 {
        self.hole_bytes
    }

    /// The next data at or after `from`, rounded down to a granule: where the file system says
    /// data is, or the end of the file.
    fn next_data(&self, from: u64) -> Result<u64, Error> {
        use rustix::fs::{SeekFrom, seek};
        match seek(&self.file, SeekFrom::Data(from)) {
            Ok(at) => Ok((at / self.granule * self.granule).max(from)),
            // No data after `from`.
            Err(rustix::io::Errno::NXIO) => Ok(self.len),
            // A file system without SEEK_DATA: everything is data.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => Ok(from),
            Err(e) => Err(Error::io(&self.path, e.into())),
        }
    }

    fn read_granule(&self, at: u64) -> Result<Vec<u8>, Error> {
        let n = self.granule.min(self.len - at) as usize;
        let mut buf = vec![0; n];
        self.file.read_exact_at(&mut buf, at).map_err(|e| Error::io(&self.path, e))?;
        Ok(buf)
    }

    /// The next run, or `None` at the end of the file.
    pub fn next_run(&mut self) -> Result<Option<Run>, Error> {
        loop {
            if self.next >= self.len {
                return Ok(None);
            }
            let data = self.next_data(self.next)?;
            self.hole_bytes += data - self.next;
            self.next = data;
            if self.next >= self.len {
                return Ok(None);
            }
            let start = self.next;
            let boundary = (start / self.max_run + 1) * self.max_run;
            let mut run = Vec::new();
            while self.next < self.len && self.next < boundary {
                let granule = self.read_granule(self.next)?;
                if granule.iter().all(|&b| b == 0) {
                    self.zero_granules += 1;
                    self.next += granule.len() as u64;
                    break;
                }
                self.next += granule.len() as u64;
                run.extend_from_slice(&granule);
            }
            if !run.is_empty() {
                return Ok(Some(Run { offset: start, data: run }));
            }
        }
    }
}

impl Iterator for DataRuns {
    type Item = Result<Run, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_run().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(path: &Path, granule: u64, max_run: u64) -> Vec<(u64, usize)> {
        DataRuns::open(path, granule, max_run).unwrap().map(|r| r.map(|r| (r.offset, r.data.len())).unwrap()).collect()
    }

    #[test]
    fn holes_and_zero_granules_are_skipped_and_runs_stop_at_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let f = File::create(&path).unwrap();
        f.set_len(64 << 10).unwrap();
        // Data in granules 1, 2, 3 (a run crossing the 8 KiB boundary at 8192), zeros written in 5,
        // data in 15, whose last granule the end of the file cuts short.
        f.write_all_at(&[1; 3 << 10], 1 << 10).unwrap();
        f.write_all_at(&[0; 1 << 10], 5 << 10).unwrap();
        f.write_all_at(&[2; 10], (15 << 10) + 5).unwrap();
        f.set_len((15 << 10) + 700).unwrap();
        assert_eq!(runs(&path, 1 << 10, 8 << 10), [(1 << 10, 3 << 10), (15 << 10, 700)]);
        assert_eq!(runs(&path, 1 << 10, 2 << 10), [(1 << 10, 1 << 10), (2 << 10, 2 << 10), (15 << 10, 700)]);
        let mut scan = DataRuns::open(&path, 1 << 10, 1 << 10).unwrap();
        let all: Vec<_> = scan.by_ref().map(|r| r.unwrap()).collect();
        assert_eq!(all.iter().map(|r| r.offset / 1024).collect::<Vec<_>>(), [1, 2, 3, 15]);
        assert_eq!(all[3].data[5..15], [2; 10]);
        assert_eq!(scan.position(), scan.len());
        assert!(scan.zero_granules() >= 1, "granule 5 was written as zeros");
    }

    #[test]
    fn bad_sizes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        File::create(&path).unwrap();
        assert!(DataRuns::open(&path, 512, 700).is_err());
        assert!(DataRuns::open(&path, 0, 0).is_err());
        assert_eq!(runs(&path, 512, 512), []);
    }
}
