//! The check of a downloaded artifact against the index: fed the bytes as they arrive (across
//! resumed connections), it refuses the first byte past the announced size and, at the end,
//! a short file or a SHA-256 that differs.

use crate::index::Digest;

/// A running SHA-256: ring's, which on CPUs without SHA extensions (QEMU's default CPU, older
/// hosts) takes half the time of sha2's portable code. An agent hashes every byte it stages.
#[derive(Clone)]
pub struct Sha256(ring::digest::Context);

impl Sha256 {
    /// An empty hash.
    pub fn new() -> Sha256 {
        Sha256(ring::digest::Context::new(&ring::digest::SHA256))
    }

    /// Takes more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The hash of all the bytes taken.
    pub fn finish(self) -> Digest {
        let mut d = [0u8; 32];
        d.copy_from_slice(self.0.finish().as_ref());
        Digest(d)
    }
}

impl Default for Sha256 {
    fn default() -> Sha256 {
        Sha256::new()
    }
}

/// Why an artifact's bytes are not the ones the index announced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    /// More bytes than announced.
    #[error("{what}: the server sent more than the {size} bytes the index announced")]
    TooLong {
        /// Which artifact (its path).
        what: String,
        /// Announced size.
        size: u64,
    },
    /// Fewer bytes than announced.
    #[error("{what}: {got} bytes, not the {size} the index announced")]
    TooShort {
        /// Which artifact.
        what: String,
        /// Received.
        got: u64,
        /// Announced.
        size: u64,
    },
    /// Different bytes.
    #[error("{what}: SHA-256 {got} does not match {expected} in the signed index")]
    Mismatch {
        /// Which artifact.
        what: String,
        /// From the index.
        expected: Digest,
        /// Of the bytes received.
        got: Digest,
    },
}

/// The running check of one artifact.
#[derive(Clone)]
pub struct ArtifactCheck {
    what: String,
    size: u64,
    sha256: Digest,
    hasher: Sha256,
    received: u64,
}

impl ArtifactCheck {
    /// Expecting `size` bytes hashing to `sha256`; `what` names it in errors.
    pub fn new(what: impl Into<String>, size: u64, sha256: Digest) -> ArtifactCheck {
        ArtifactCheck { what: what.into(), size, sha256, hasher: Sha256::new(), received: 0 }
    }

    /// Bytes accepted so far (where a resumed download starts).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The announced size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.size - self.received
    }

    /// Takes the next bytes; refuses (taking none of them) any that would pass the size.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ArtifactError> {
        if bytes.len() as u64 > self.remaining() {
            return Err(ArtifactError::TooLong { what: self.what.clone(), size: self.size });
        }
        self.hasher.update(bytes);
        self.received += bytes.len() as u64;
        Ok(())
    }

    /// The error for bytes seen after the announced end.
    pub fn too_long(&self) -> ArtifactError {
        ArtifactError::TooLong { what: self.what.clone(), size: self.size }
    }

    /// Checks the size and the hash.
    pub fn finish(self) -> Result<(), ArtifactError> {
        if self.received != self.size {
            return Err(ArtifactError::TooShort { what: self.what, got: self.received, size: self.size });
        }
        let got = self.hasher.finish();
        if got != self.sha256 {
            return Err(ArtifactError::Mismatch { what: self.what, expected: self.sha256, got });
        }
        Ok(())
    }
}

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Digest {
    let mut h = Sha256::new();
    h.update(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_hash() {
        let data = b"hello, berth";
        let mut c = ArtifactCheck::new("x", data.len() as u64, sha256(data));
        c.feed(&data[..5]).unwrap();
        c.feed(&data[5..]).unwrap();
        assert_eq!(c.clone().finish(), Ok(()));
        assert!(matches!(c.feed(b"!"), Err(ArtifactError::TooLong { .. })));
        let mut short = ArtifactCheck::new("x", data.len() as u64, sha256(data));
        short.feed(&data[..4]).unwrap();
        assert!(matches!(short.finish(), Err(ArtifactError::TooShort { got: 4, .. })));
        let mut other = ArtifactCheck::new("x", 12, sha256(data));
        other.feed(b"hello, BERTH").unwrap();
        let e = other.finish().unwrap_err();
        assert!(e.to_string().contains("SHA-256"), "{e}");
    }
}
