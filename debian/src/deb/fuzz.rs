//! Fuzz targets (berth-fuzzkit) for `.deb` files: the `ar` container, the control archive and
//! paragraph, the data archive's tar headers (PAX, GNU long names, every entry type) and
//! unpacking into a tree. Seeds: `debian/fuzz/corpus/deb/` (dpkg-deb made, uncompressed and
//! xz), `tar/` and `control/`. No input may panic or abort the builder (overflow checks on).

use std::path::{Path, PathBuf};

use berth_fstree::{Metadata, Tree};
use berth_fuzzkit::{Corpus, run};

use super::control::{Control, relation_names};
use super::data::read_tar;
use super::unpack::{UnpackOptions, Unpacker, merged_usr_skeleton};
use super::{DebFile, ar};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

fn unpack(info: &super::DebInfo, data: super::data::DataArchive) {
    let mut tree = Tree::new(Metadata::root(0o755, 0));
    if merged_usr_skeleton(&mut tree, 0).is_ok() {
        let mut u = Unpacker::new(tree, UnpackOptions { mtime_clamp: Some(1_700_000_000) });
        let _ = u.apply(info, data);
    }
}

#[test]
fn fuzz_deb_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.deb");
    let corpus = Corpus::load(&[corpus("deb")]).byte_tokens(&[
        b"!<arch>\n",
        b"debian-binary   ",
        b"control.tar.xz",
        b"data.tar",
        b"`\n",
    ]);
    run("debian/deb", 1500, corpus.inputs(), |input| {
        std::fs::write(&path, &input[..]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let _ = ar::read_index(&file, input.len() as u64);
        if let Ok(deb) = DebFile::open(&path) {
            let _ = relation_names(deb.info().control.depends().unwrap_or_default());
            if let Ok(data) = deb.read_data() {
                unpack(deb.info(), data);
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_data_tar() {
    let info = DebFile::open(corpus("deb").join("fuzz-hello_none.deb")).unwrap().info().clone();
    let corpus =
        Corpus::load(&[corpus("tar")]).byte_tokens(&[b"ustar\x0000", b"ustar  \0", b"././@LongLink", b"PaxHeader"]);
    run("debian/data-tar", 20_000, corpus.inputs(), |input| {
        if let Ok(data) = read_tar(&input[..]) {
            let _ = data.content_bytes();
            unpack(&info, data);
        }
        Ok(())
    });
}

#[test]
fn fuzz_control_paragraphs() {
    let corpus = Corpus::load(&[corpus("control")]).tokens(&["\n ", "\n\t", "\n\n", ": ", "Depends: ", " (>= ", " | "]);
    run("debian/control", 20_000, corpus.inputs(), |input| {
        if let Ok(c) = Control::parse(&input.text()) {
            let _ = (c.package(), c.version(), c.architecture(), c.pre_depends(), c.multi_arch(), c.replaces());
            let _ = relation_names(c.depends().unwrap_or_default());
        }
        Ok(())
    });
}
