//! The archive client's error type.
//!
//! Every variant renders as one line that names what failed (file and line, URL, package) so the
//! builder can print it as is and stop before writing an image. Foreign error texts (OpenPGP,
//! HTTP, liblzma) are squashed onto one line when the variant is built.

use std::path::PathBuf;

use thiserror::Error;

/// Why opening the archive, resolving packages or fetching them failed.
#[derive(Debug, Error)]
pub enum ArchiveError {
    /// A local file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },

    /// An apt sources file is malformed.
    #[error("{}:{line}: {msg}", file.display())]
    Sources {
        /// The `.sources` or `.list` file.
        file: PathBuf,
        /// 1-based line of the offending entry.
        line: usize,
        /// What is wrong.
        msg: String,
    },

    /// The apt configuration names no usable `deb` source.
    #[error("no enabled `deb` source for {arch} in {}/etc/apt/sources.list{{,.d/*.list,.d/*.sources}}", root.display())]
    NoSources {
        /// The apt root that was read.
        root: PathBuf,
        /// The architecture asked for.
        arch: String,
    },

    /// A keyring named by `Signed-By` (or apt's default trusted keyrings) cannot be used.
    #[error("keyring {keyring}: {msg}")]
    Keyring {
        /// Path of the keyring file (or "inline Signed-By key in" the `.sources` file).
        keyring: String,
        /// What is wrong.
        msg: String,
    },

    /// A mirror could not be reached (connection refused, DNS, timeout, repeated 5xx).
    #[error("cannot reach {url}: {msg}")]
    Unreachable {
        /// The URL asked for.
        url: String,
        /// The last failure.
        msg: String,
    },

    /// A mirror answered with an HTTP error status.
    #[error("{url}: HTTP {status}")]
    HttpStatus {
        /// The URL asked for.
        url: String,
        /// The status code.
        status: u16,
    },

    /// `InRelease` is not a well-formed OpenPGP cleartext-signed message.
    #[error("{url}: not a valid OpenPGP signed InRelease: {msg}")]
    SignatureFormat {
        /// Where `InRelease` came from (URL or cache file).
        url: String,
        /// What is wrong.
        msg: String,
    },

    /// A signature on `InRelease` was made by a key of the keyring but does not verify:
    /// the signed text or the signature was altered.
    #[error("{url}: BAD signature from key {key} of {keyring} (InRelease altered?)")]
    BadSignature {
        /// Where `InRelease` came from.
        url: String,
        /// Fingerprint of the keyring's key that the signature claims.
        key: String,
        /// The keyring checked against.
        keyring: String,
    },

    /// No signature on `InRelease` comes from a key in the keyring.
    #[error("{url}: not signed by any key in {keyring} (signed by {signers})")]
    UnknownSigner {
        /// Where `InRelease` came from.
        url: String,
        /// The keyring checked against.
        keyring: String,
        /// Issuer key ids/fingerprints found on the signatures.
        signers: String,
    },

    /// The verified Release text is malformed or does not fit the source.
    #[error("{url}: {msg}")]
    Release {
        /// Where `InRelease` came from.
        url: String,
        /// What is wrong.
        msg: String,
    },

    /// The Release file's `Valid-Until` lies in the past (a stale or replayed mirror).
    #[error("{url}: Release expired: Valid-Until {valid_until} is in the past")]
    Expired {
        /// Where `InRelease` came from.
        url: String,
        /// The `Valid-Until` value as written.
        valid_until: String,
    },

    /// A downloaded or cached file does not have the size the signed index says.
    #[error("{what} from {url}: size {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// The package or index.
        what: String,
        /// Where it came from.
        url: String,
        /// Size in the signed index.
        expected: u64,
        /// Size received.
        actual: u64,
    },

    /// A downloaded or cached file does not have the SHA-256 the signed index says.
    #[error("{what} from {url}: SHA-256 {actual}, expected {expected}")]
    HashMismatch {
        /// The package or index.
        what: String,
        /// Where it came from.
        url: String,
        /// Hex SHA-256 in the signed index.
        expected: String,
        /// Hex SHA-256 of the bytes received.
        actual: String,
    },

    /// A `Packages` index could not be decompressed or parsed.
    #[error("{url}: {msg}")]
    Index {
        /// Where the index came from.
        url: String,
        /// What is wrong (with the line number when it is a parse error).
        msg: String,
    },

    /// Nothing in the indexes is (or provides) the package.
    #[error("unknown package `{name}` (needed by {needed_by})")]
    UnknownPackage {
        /// The name asked for.
        name: String,
        /// `package version`, or "the image definition".
        needed_by: String,
    },

    /// The package exists but no version of it satisfies the dependency.
    #[error("cannot satisfy `{dependency}` (needed by {needed_by}): {msg}")]
    Unsatisfiable {
        /// The dependency as written.
        dependency: String,
        /// `package version`, or "the image definition".
        needed_by: String,
        /// The versions on offer or the conflicting selection.
        msg: String,
    },

    /// A dependency field (or a requested package) cannot be parsed.
    #[error("{context}: bad dependency `{text}`: {msg}")]
    BadDependency {
        /// `Depends of package version`, or "image definition".
        context: String,
        /// The text that failed.
        text: String,
        /// What is wrong.
        msg: String,
    },

    /// `--offline` and something needed is not in the cache.
    #[error("offline: {what} is not in the cache {}", cache.display())]
    NotCached {
        /// The missing package or index.
        what: String,
        /// The cache directory.
        cache: PathBuf,
    },
}

impl ArchiveError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ArchiveError::Io { path: path.into(), source }
    }
}
