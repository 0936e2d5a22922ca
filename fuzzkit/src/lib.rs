//! Test-only support for the fuzz targets of the workspace (a dev-dependency, never linked into
//! a binary). Each crate keeps its targets next to the code they feed, as `#[cfg(test)]`
//! modules or integration tests, so they reach private parsers; this crate is the part they
//! share, written once:
//!
//! - [`Corpus`]: the committed seed files of a target (`<crate>/fuzz/corpus/<target>/`) and a
//!   proptest strategy over them: a seed as it is, a seed after a few mutations (bit flips,
//!   interesting integers, splices from other seeds, token insertions, big numbers in place of
//!   digits, deletions, duplications, truncation), or arbitrary bytes;
//! - [`run`]: a target's bounded run: a number of cases, or a time, from the environment.
//!
//! No coverage feedback (cargo-fuzz needs a nightly toolchain): the targets make up for it by
//! being structure-aware (signatures re-signed, checksums fixed up, transaction ids patched in)
//! so that mutations reach the code past the first check. Cases run with the test profile's
//! overflow checks, so arithmetic overflow fails a target as a panic does.
//!
//! Environment (per target): `BERTH_FUZZ_CASES=N` runs N cases instead of the target's
//! default; `BERTH_FUZZ_SECONDS=S` runs for S seconds (cases unbounded unless also set);
//! `BERTH_FUZZ_SEED=N` replays a run. Without them a target runs its default cases, at most
//! [`DEFAULT_SECONDS`], from a random seed that a failure prints.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use proptest;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// The longest a target runs in `cargo test` when the environment does not say (a slow CI
/// machine runs fewer cases rather than more minutes).
pub const DEFAULT_SECONDS: u64 = 20;

/// Inserted by [`Corpus`] mutations; targets add their format's own (directives, keys).
const TOKENS: &[&str] = &[
    "=",
    "\n",
    "\r\n",
    "[",
    "]",
    "{",
    "}",
    "%",
    "%%",
    "\\",
    "\\x",
    "\\u{",
    "${",
    "$",
    "'",
    "\"",
    "é",
    "\0",
    " ",
    "\t",
    "#",
    ";",
    ":",
    ",",
    "-",
    "..",
    "/",
    "\u{feff}",
    "\u{1F4A5}",
    "true",
    "null",
    "\\\n",
];

/// Put in place of a run of digits (or inserted where there is none).
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "-1",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999999",
    "1e308",
    "0.0000000001",
    "NaN",
    "inf",
];

/// Written over bytes, in 1, 2, 4 or 8 bytes, either byte order.
const INTEGERS: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x200,
    0x1000,
    0x7fff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    1 << 63,
    u64::MAX,
];

/// Bytes a target is fed; `Debug` writes them as a byte string literal, for pasting into a test.
#[derive(Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    /// The bytes as text, invalid UTF-8 replaced (what a text parser is fed).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Bytes {
    /// Escaped like a byte string literal, except that a run of 16 or more equal bytes is
    /// written `{0x00 × 2000}` (a mutated disk sector is mostly zeros).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"")?;
        let mut rest = &self.0[..];
        while let Some(&first) = rest.first() {
            let run = rest.iter().take_while(|&&b| b == first).count();
            if run >= 16 {
                write!(f, "{{{first:#04x} × {run}}}")?;
            } else {
                write!(f, "{}", rest[..run].escape_ascii())?;
            }
            rest = &rest[run..];
        }
        write!(f, "\" ({} bytes)", self.0.len())
    }
}

thread_local! {
    /// Set while a target's case runs on this thread: where its last panic was.
    static PANICKED_AT: std::cell::RefCell<Option<Option<String>>> = const { std::cell::RefCell::new(None) };
}

/// A panic hook that, on a thread running a case, only records where (proptest reports the
/// message; shrinking would print hundreds of backtraces), and otherwise does what the previous
/// hook did.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let recorded = PANICKED_AT.with(|p| match &mut *p.borrow_mut() {
                Some(at) => {
                    *at = info.location().map(|l| l.to_string());
                    true
                }
                None => false,
            });
            if !recorded {
                previous(info);
            }
        }));
    });
}

/// One change to a seed; positions are resolved against the length at the time.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Integer { at: Index, which: Index, width: u8, big_endian: bool },
    Number(Index, Index),
    Token(Index, Index),
    Delete(Index, usize),
    Duplicate(Index, usize),
    Splice { seed: Index, from: Index, len: usize, at: Index },
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(a, b)| Mutation::FlipBit(a, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(a, v)| Mutation::SetByte(a, v)),
        2 => (any::<Index>(), any::<Index>(), prop::sample::select(vec![1u8, 2, 4, 8]), any::<bool>())
            .prop_map(|(at, which, width, big_endian)| Mutation::Integer { at, which, width, big_endian }),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, w)| Mutation::Number(a, w)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, w)| Mutation::Token(a, w)),
        2 => (any::<Index>(), 1usize..64).prop_map(|(a, n)| Mutation::Delete(a, n)),
        1 => (any::<Index>(), 1usize..256).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        2 => (any::<Index>(), any::<Index>(), 0usize..512, any::<Index>())
            .prop_map(|(seed, from, len, at)| Mutation::Splice { seed, from, len, at }),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

/// A position in `0..=len` (an insertion point) or `0..len` (a byte; `None` when empty).
fn point(i: &Index, len: usize) -> usize {
    i.index(len + 1)
}

fn byte(i: &Index, len: usize) -> Option<usize> {
    (len > 0).then(|| i.index(len))
}

/// A target's seeds and the extra tokens its format has.
#[derive(Clone)]
pub struct Corpus {
    seeds: Arc<Vec<Vec<u8>>>,
    tokens: Arc<Vec<Vec<u8>>>,
}

impl Corpus {
    /// Every file in `dirs`, in name order. Panics when there is none (a target without seeds
    /// would only ever see random bytes).
    pub fn load<P: AsRef<Path>>(dirs: &[P]) -> Corpus {
        let mut seeds = Vec::new();
        for dir in dirs {
            let dir = dir.as_ref();
            let mut files: Vec<_> = std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
                .map(|e| e.expect("corpus entry").path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for f in files {
                seeds.push(std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())));
            }
        }
        let names: Vec<_> = dirs.iter().map(|d| d.as_ref().display().to_string()).collect();
        assert!(!seeds.is_empty(), "no seed files in {names:?}");
        Corpus { seeds: Arc::new(seeds), tokens: Arc::new(TOKENS.iter().map(|t| t.as_bytes().to_vec()).collect()) }
    }

    /// Adds tokens of the target's format (`ExecStart=`, `"sequence":`, …) to the insertions.
    pub fn tokens(mut self, extra: &[&str]) -> Corpus {
        Arc::make_mut(&mut self.tokens).extend(extra.iter().map(|t| t.as_bytes().to_vec()));
        self
    }

    /// Like [`Corpus::tokens`] for binary formats (magic numbers, headers).
    pub fn byte_tokens(mut self, extra: &[&[u8]]) -> Corpus {
        Arc::make_mut(&mut self.tokens).extend(extra.iter().map(|t| t.to_vec()));
        self
    }

    /// The seeds as committed.
    pub fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }

    /// Inputs: mostly mutated seeds, some seeds as they are, some arbitrary bytes.
    pub fn inputs(&self) -> impl Strategy<Value = Bytes> + use<> {
        let n = self.seeds.len();
        let (seeds, tokens) = (self.seeds.clone(), self.tokens.clone());
        let pristine = self.seeds.clone();
        prop_oneof![
            1 => proptest::collection::vec(any::<u8>(), 0..4096).prop_map(Bytes),
            1 => (0..n).prop_map(move |i| Bytes(pristine[i].clone())),
            8 => (0..n, proptest::collection::vec(mutation(), 1..8))
                .prop_map(move |(i, ms)| Bytes(mutate(&seeds, &tokens, i, &ms))),
        ]
    }
}

fn mutate(seeds: &[Vec<u8>], tokens: &[Vec<u8>], seed: usize, ms: &[Mutation]) -> Vec<u8> {
    let mut b = seeds[seed].clone();
    for m in ms {
        let len = b.len();
        match m {
            Mutation::FlipBit(at, bit) => {
                if let Some(i) = byte(at, len) {
                    b[i] ^= 1 << bit;
                }
            }
            Mutation::SetByte(at, v) => {
                if let Some(i) = byte(at, len) {
                    b[i] = *v;
                }
            }
            Mutation::Integer { at, which, width, big_endian } => {
                let v = INTEGERS[which.index(INTEGERS.len())];
                let w = usize::from(*width);
                let bytes = if *big_endian { v.to_be_bytes()[8 - w..].to_vec() } else { v.to_le_bytes()[..w].to_vec() };
                if len >= w {
                    let i = at.index(len - w + 1);
                    b[i..i + w].copy_from_slice(&bytes);
                }
            }
            Mutation::Number(at, which) => {
                let n = NUMBERS[which.index(NUMBERS.len())].as_bytes();
                let start = point(at, len);
                // The digit run at or after `start`, else an insertion there.
                let from = b[start..].iter().position(u8::is_ascii_digit).map_or(start, |p| start + p);
                let to = b[from..].iter().position(|c| !c.is_ascii_digit()).map_or(len, |p| from + p);
                b.splice(from..to, n.iter().copied());
            }
            Mutation::Token(at, which) => {
                let t = &tokens[which.index(tokens.len())];
                let i = point(at, len);
                b.splice(i..i, t.iter().copied());
            }
            Mutation::Delete(at, n) => {
                if let Some(i) = byte(at, len) {
                    b.drain(i..(i + n).min(len));
                }
            }
            Mutation::Duplicate(at, n) => {
                if let Some(i) = byte(at, len) {
                    let part = b[i..(i + n).min(len)].to_vec();
                    b.splice(i..i, part);
                }
            }
            Mutation::Splice { seed, from, len: n, at } => {
                let other = &seeds[seed.index(seeds.len())];
                if let Some(f) = byte(from, other.len()) {
                    let part = &other[f..(f + n).min(other.len())];
                    let i = point(at, len);
                    b.splice(i..i, part.iter().copied());
                }
            }
            Mutation::Truncate(at) => b.truncate(point(at, len)),
        }
    }
    b
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.trim().parse().unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

/// Runs target `name`: `test` on values of `strategy`, `cases` of them by default (see the
/// crate's doc for the environment), and reports cases and time on stderr. A case that fails
/// or panics is shrunk to a small input; the test then panics with it and the seed.
pub fn run<S>(name: &str, cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: fmt::Debug,
{
    let env_cases = env_u64("BERTH_FUZZ_CASES");
    let env_seconds = env_u64("BERTH_FUZZ_SECONDS");
    let (max_cases, max_time) = match (env_cases, env_seconds) {
        (c, Some(s)) => (c.unwrap_or(u64::MAX), Duration::from_secs(s)),
        (Some(c), None) => (c, Duration::MAX),
        (None, None) => (u64::from(cases), Duration::from_secs(DEFAULT_SECONDS)),
    };
    let seed = env_u64("BERTH_FUZZ_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
    });
    install_panic_hook();
    PANICKED_AT.with(|p| *p.borrow_mut() = Some(None));
    let started = Instant::now();
    let mut done = 0u64;
    let mut batch = 0u64;
    // Batches, so that the clock is looked at between them; each has its own RNG stream.
    while done < max_cases && started.elapsed() < max_time {
        let n = (max_cases - done).min(64) as u32;
        let config = Config {
            cases: n,
            failure_persistence: None,
            max_shrink_iters: 4096,
            max_global_rejects: n.saturating_mul(64),
            ..Config::default()
        };
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&batch.to_le_bytes());
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
        let result = runner.run(&strategy, &test);
        if result.is_err() {
            // The hook's record is of the last run, the minimal input's.
            let at = PANICKED_AT.with(|p| p.borrow_mut().take().flatten());
            let at = at.map_or(String::new(), |at| format!(" (panicked at {at})"));
            match result {
                Err(TestError::Abort(why)) => panic!("fuzz {name}: aborted: {why} (BERTH_FUZZ_SEED={seed})"),
                Err(TestError::Fail(why, input)) => panic!(
                    "fuzz {name}: {why}{at}\nminimal input: {input:?}\nreplay: BERTH_FUZZ_SEED={seed} (after {done} cases)"
                ),
                Ok(()) => {}
            }
        }
        done += u64::from(n);
        batch += 1;
    }
    PANICKED_AT.with(|p| *p.borrow_mut() = None);
    eprintln!("fuzz {name}: {done} cases in {:.1} s, no failure (seed {seed})", started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_in_bounds_and_change_seeds() {
        let dir = std::env::temp_dir().join(format!("fuzzkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), b"Key=123\n").unwrap();
        std::fs::write(dir.join("b"), b"").unwrap();
        let corpus = Corpus::load(&[&dir]).tokens(&["Key="]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(corpus.seeds(), [b"Key=123\n".to_vec(), Vec::new()]);
        let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
        run("fuzzkit-self", 500, corpus.inputs(), |b| {
            seen.lock().unwrap().insert(b.0);
            Ok(())
        });
        let seen = seen.into_inner().unwrap();
        assert!(seen.len() > 100, "only {} distinct inputs", seen.len());
        assert!(seen.iter().any(|b| b.windows(4).any(|w| w == b"4294")), "no big number");
        let d = format!("{:?}", Bytes([&b"a\n\xff"[..], &[0; 20]].concat()));
        assert_eq!(d, "b\"a\\n\\xff{0x00 × 20}\" (23 bytes)");
    }

    #[test]
    fn a_failing_target_is_shrunk_and_named() {
        let r = std::panic::catch_unwind(|| {
            run("fuzzkit-fails", 10_000, proptest::collection::vec(any::<u8>(), 0..64), |v| {
                prop_assert!(!v.contains(&7));
                Ok(())
            })
        });
        let e = r.unwrap_err();
        let msg = e.downcast_ref::<String>().unwrap();
        assert!(msg.contains("fuzz fuzzkit-fails") && msg.contains("minimal input: [7]"), "{msg}");
        let r = std::panic::catch_unwind(|| {
            run("fuzzkit-panics", 10_000, any::<u8>(), |v| {
                let _ = 250u8 + v;
                Ok(())
            })
        });
        let e = r.unwrap_err();
        let msg = e.downcast_ref::<String>().unwrap();
        assert!(msg.contains("attempt to add with overflow (panicked at fuzzkit/src/lib.rs:"), "{msg}");
        assert!(msg.contains("minimal input: 6"), "{msg}");
    }
}
