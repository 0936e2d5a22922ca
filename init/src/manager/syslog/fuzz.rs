//! Fuzz target (berth-fuzzkit): the datagrams any local process can send PID 1, on `/dev/log`
//! (syslog) and the sd_notify socket. Seeds: `init/fuzz/corpus/syslog/` and `notify/`. Each
//! input goes through a real `SO_PASSCRED` socket and PID 1's receive path, then the parser;
//! nothing may panic (overflow checks on).

use std::os::unix::net::UnixDatagram;
use std::path::Path;

use berth_fuzzkit::proptest::prelude::*;
use berth_fuzzkit::{Corpus, run};

use crate::manager::notify;

#[test]
fn fuzz_syslog_and_notify_datagrams() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sock");
    let path = path.to_str().unwrap();
    let fd = notify::bind_datagram(path, 0o600).unwrap();
    let sender = UnixDatagram::unbound().unwrap();
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let corpus = Corpus::load(&[seeds.join("syslog"), seeds.join("notify")]).tokens(&[
        "<38>",
        "<",
        ">",
        "Nov 22 09:34:02 ",
        "READY=1\n",
        "MAINPID=",
        "STATUS=",
        "WATCHDOG=trigger\n",
        "\n",
        "\0",
    ]);
    run("init/syslog-notify", 30_000, corpus.inputs(), |input| {
        let mut buf = [0u8; 8192];
        sender.send_to(&input, path).unwrap();
        let got = notify::receive_one(&fd, &mut buf);
        prop_assert_eq!(got, Some((std::process::id() as i32, input.len())));
        let text = String::from_utf8_lossy(&buf[..input.len()]);
        let line = super::message(&text);
        prop_assert!(line.len() <= text.len());
        let m = notify::Message { pid: 1, fields: notify::parse(&text) };
        for key in ["READY", "STATUS", "MAINPID", "WATCHDOG", "STOPPING"] {
            if let Some(v) = m.get(key) {
                let _ = v.trim().parse::<i32>();
            }
        }
        Ok(())
    });
}
