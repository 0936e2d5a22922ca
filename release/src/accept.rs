//! What an agent checks before it believes an index, in order: the signatures over its exact
//! bytes (before any of them is parsed), the schema, the channel's name, the expiry, and the
//! sequence against the last one accepted (an equal sequence only for the very same bytes).

use serde::{Deserialize, Serialize};

use crate::artifact::sha256;
use crate::index::{Digest, Index, IndexError};
use crate::signature::{SignatureError, TrustedKeys};
use crate::time::Timestamp;

/// Why an index was refused; the agent changes nothing on disk when it gets one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Not signed as the image requires.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// Signed, but not a valid index.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The index of another channel.
    #[error("the index is for channel {found:?}, not {expected:?}")]
    Channel {
        /// Asked for.
        expected: String,
        /// Named in the index.
        found: String,
    },
    /// Past its expiry.
    #[error("the index expired at {expires} (now {now}): the repository is stale or replayed")]
    Expired {
        /// The index's expiry.
        expires: Timestamp,
        /// The agent's clock.
        now: Timestamp,
    },
    /// The sequence of the index accepted before, with other bytes: a publisher never signs
    /// two indexes with one sequence, so one of them is forged or replayed.
    #[error(
        "the index's sequence {sequence} is the one accepted before, but its bytes differ (SHA-256 {got}, accepted {accepted}): a replayed or forged repository"
    )]
    SameSequence {
        /// The sequence.
        sequence: u64,
        /// SHA-256 of the bytes fetched.
        got: Digest,
        /// SHA-256 of the bytes accepted before.
        accepted: Digest,
    },
    /// Older than one accepted before.
    #[error("the index's sequence {got} is lower than {last}, accepted before: a replayed or rolled-back repository")]
    Replayed {
        /// The index's sequence.
        got: u64,
        /// The highest sequence accepted so far.
        last: u64,
    },
}

/// The highest sequence an agent accepted, and the SHA-256 of the index bytes it accepted with
/// it (`None` when not known: state written before it was kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    /// The sequence.
    pub sequence: u64,
    /// Of the index's exact bytes.
    #[serde(default)]
    pub index_sha256: Option<Digest>,
}

impl Floor {
    /// The higher of two floors (the one with a digest when both have the same sequence).
    pub fn max(a: Option<Floor>, b: Option<Floor>) -> Option<Floor> {
        match (a, b) {
            (Some(a), Some(b)) if a.sequence == b.sequence => {
                Some(Floor { sequence: a.sequence, index_sha256: a.index_sha256.or(b.index_sha256) })
            }
            (Some(a), Some(b)) => Some(if a.sequence > b.sequence { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

/// Accepts `index` (the exact bytes fetched) with `signatures` (the `.sig` file's bytes) for
/// `channel`, at `now`, given the floor of what was accepted before: a lower sequence is
/// refused, an equal one only for the very same bytes (the same index fetched again).
/// Returns the index and the floor to keep.
pub fn accept(
    index: &[u8],
    signatures: &[u8],
    trusted: &TrustedKeys,
    channel: &str,
    now: Timestamp,
    floor: Option<Floor>,
) -> Result<(Index, Floor), Rejected> {
    trusted.verify(index, signatures)?;
    let parsed = Index::parse(index)?;
    if parsed.channel != channel {
        return Err(Rejected::Channel { expected: channel.to_string(), found: parsed.channel });
    }
    if now >= parsed.expires {
        return Err(Rejected::Expired { expires: parsed.expires, now });
    }
    let got = sha256(index);
    if let Some(f) = floor {
        if parsed.sequence < f.sequence {
            return Err(Rejected::Replayed { got: parsed.sequence, last: f.sequence });
        }
        if parsed.sequence == f.sequence
            && let Some(accepted) = f.index_sha256
            && accepted != got
        {
            return Err(Rejected::SameSequence { sequence: parsed.sequence, got, accepted });
        }
    }
    let floor = Floor { sequence: parsed.sequence, index_sha256: Some(got) };
    Ok((parsed, floor))
}
