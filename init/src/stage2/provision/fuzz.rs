//! Fuzz target (berth-fuzzkit): the first-boot provisioning document, untrusted bytes from
//! fw_cfg that PID 1 parses. Seeds: `init/fuzz/corpus/provision/`. Any input is a document or an
//! error naming where; never a panic (overflow checks on).

use std::path::Path;

use berth_fuzzkit::{Corpus, run};

#[test]
fn fuzz_provisioning_document() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/provision");
    let corpus = Corpus::load(&[dir]).tokens(&[
        "[[users]]\n",
        "[[files]]\n",
        "[[units]]\n",
        "[update]\n",
        "hostname = ",
        "name = ",
        "uid = ",
        "groups = [",
        "path = ",
        "content = ",
        "content_base64 = ",
        "mode = ",
        "owner = ",
        "threshold = ",
        "keys = [",
        "\"\"\"",
        "'''",
        "\\u",
        "=",
        "/..",
    ]);
    run("init/provision", 30_000, corpus.inputs(), |input| {
        let text = input.text();
        if let Ok(config) = super::parse(&text) {
            for f in &config.files {
                let _ = f.bytes();
            }
        }
        Ok(())
    });
}
