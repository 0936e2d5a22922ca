//! What an agent checks before it believes an index, in order: the signatures over its exact
//! bytes (before any of them is parsed), the schema, the channel's name, the expiry, and the
//! sequence against the last one accepted.

use crate::index::{Index, IndexError};
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
    /// Older than one accepted before.
    #[error("the index's sequence {got} is lower than {last}, accepted before: a replayed or rolled-back repository")]
    Replayed {
        /// The index's sequence.
        got: u64,
        /// The highest sequence accepted so far.
        last: u64,
    },
}

/// Accepts `index` (the exact bytes fetched) with `signatures` (the `.sig` file's bytes) for
/// `channel`, at `now`, given the highest sequence accepted before (an equal one is accepted:
/// the same index fetched again).
pub fn accept(
    index: &[u8],
    signatures: &[u8],
    trusted: &TrustedKeys,
    channel: &str,
    now: Timestamp,
    last_sequence: Option<u64>,
) -> Result<Index, Rejected> {
    trusted.verify(index, signatures)?;
    let parsed = Index::parse(index)?;
    if parsed.channel != channel {
        return Err(Rejected::Channel { expected: channel.to_string(), found: parsed.channel });
    }
    if now >= parsed.expires {
        return Err(Rejected::Expired { expires: parsed.expires, now });
    }
    if let Some(last) = last_sequence
        && parsed.sequence < last
    {
        return Err(Rejected::Replayed { got: parsed.sequence, last });
    }
    Ok(parsed)
}
