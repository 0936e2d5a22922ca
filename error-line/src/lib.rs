//! Berth's error-chain printer: [`one_line`] writes an error and its causes as the one line a
//! program prints before it exits (`berth: error: …`, `berth-update: error: …`) or a library
//! keeps in an error of its own (`berth-debian`'s archive errors stay one line each).
//!
//! It is its own crate, without dependencies, because its users share nothing else: the two
//! command-line programs (`berth`, `berth-update`) and a library (`berth-debian`). Putting it in
//! `berth-http` would make the builder's error printing depend on an HTTP client.

use std::error::Error;

/// `error` and its `source()` chain, joined by `: `, each on one line (runs of white space,
/// newlines included, become one space). A cause whose text the line already carries is left out:
/// library errors often put their source in their own message (`"reading x: {source}"`) and
/// expose it as `source()` as well.
///
/// For an `anyhow::Error`, pass `e.as_ref()`.
pub fn one_line(error: &(dyn Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        let text = cause.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Fetch {
        /// Says its source in its own message, as many library errors do.
        #[error("reading {path}: {source}")]
        Read { path: String, source: std::io::Error },
        /// Leaves its source to the chain.
        #[error("fetching {url}")]
        Fetch {
            url: String,
            #[source]
            source: std::io::Error,
        },
    }

    #[test]
    fn causes_are_joined_and_a_cause_already_said_is_left_out() {
        let e = Fetch::Read { path: "/x".into(), source: std::io::Error::other("disk on fire") };
        assert_eq!(one_line(&e), "reading /x: disk on fire");
        let e = Fetch::Fetch { url: "http://127.0.0.1/a".into(), source: std::io::Error::other("refused") };
        assert_eq!(one_line(&e), "fetching http://127.0.0.1/a: refused");
    }

    #[test]
    fn anyhow_contexts_and_multi_line_messages_end_up_on_one_line() {
        let inner = Fetch::Read { path: "/x".into(), source: std::io::Error::other("line one\n  line two") };
        let e = anyhow::Error::new(inner).context("loading the image definition");
        assert_eq!(one_line(e.as_ref()), "loading the image definition: reading /x: line one line two");
    }
}
