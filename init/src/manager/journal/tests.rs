use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

use super::*;

fn texts(journal: &Journal, unit: &str) -> Vec<String> {
    journal.tail(unit, usize::MAX).into_iter().map(|l| l.text).collect()
}

/// Writes to a pipe's write end as a child would.
fn writer(fd: OwnedFd) -> File {
    File::from(fd)
}

#[test]
fn lines_split_across_reads_and_eof() {
    let mut j = Journal::new(64 * 1024);
    let mut w = writer(j.pipe("a.service").unwrap());
    j.set_pid("a.service", 42);
    w.write_all(b"first li").unwrap();
    j.on_readable();
    assert!(texts(&j, "a.service").is_empty(), "no newline yet");
    w.write_all(b"ne\nsecond\r\nthi").unwrap();
    j.on_readable();
    assert_eq!(texts(&j, "a.service"), ["first line", "second"]);
    w.write_all(b"rd").unwrap();
    assert_eq!(j.fds().len(), 1);
    drop(w);
    j.on_readable();
    assert_eq!(texts(&j, "a.service"), ["first line", "second", "third"], "the last line is filed at EOF");
    assert!(j.fds().is_empty(), "the pipe is closed at EOF");
    let tail = j.tail("a.service", 1);
    assert_eq!(tail[0].pid, Some(42));
    assert_eq!(tail[0].unit, "a.service");
    assert!(tail[0].time_us > 1_600_000_000_000_000, "CLOCK_REALTIME µs");
    // Nothing waiting: reading again neither blocks nor adds anything.
    j.on_readable();
    assert_eq!(j.tail("a.service", 10).len(), 3);
}

#[test]
fn pids_go_to_the_newest_pipe_of_a_unit() {
    let mut j = Journal::new(64 * 1024);
    let mut pre = writer(j.pipe("b.service").unwrap());
    j.set_pid("b.service", 10);
    let mut main = writer(j.pipe("b.service").unwrap());
    j.set_pid("b.service", 11);
    let mut other = writer(j.pipe("c.service").unwrap());
    pre.write_all(b"pre\n").unwrap();
    main.write_all(b"main\n").unwrap();
    other.write_all(b"other\n").unwrap();
    j.on_readable();
    let pids: Vec<_> = j.tail("b.service", 10).into_iter().map(|l| (l.text, l.pid)).collect();
    assert_eq!(pids, [("pre".to_string(), Some(10)), ("main".to_string(), Some(11))]);
    assert_eq!(j.tail("c.service", 10)[0].pid, None);
    assert!(j.tail("absent.service", 10).is_empty());
}

#[test]
fn long_lines_are_cut() {
    let mut j = Journal::new(64 * 1024);
    let mut w = writer(j.pipe("long.service").unwrap());
    // 5000 bytes without a newline, in two writes: cut at MAX_LINE, the rest waits.
    w.write_all(&[b'x'; 3000]).unwrap();
    j.on_readable();
    w.write_all(&[b'y'; 2000]).unwrap();
    j.on_readable();
    let lines = texts(&j, "long.service");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].len(), MAX_LINE);
    assert!(lines[0].starts_with("xxx") && lines[0].ends_with("yyy"));
    w.write_all(b"\n").unwrap();
    // A line of exactly MAX_LINE bytes and its newline: one line, no empty one after it.
    w.write_all(&[b'z'; MAX_LINE]).unwrap();
    w.write_all(b"\nend\n").unwrap();
    j.on_readable();
    let lines = texts(&j, "long.service");
    let lens: Vec<usize> = lines.iter().map(String::len).collect();
    assert_eq!(lens, [MAX_LINE, 5000 - MAX_LINE, MAX_LINE, 3]);
    assert_eq!(lines[3], "end");
}

#[test]
fn ring_drops_the_oldest_lines() {
    let bound = 1000;
    let mut j = Journal::new(bound);
    for i in 0..200 {
        j.record("r.service", Some(7), &format!("line {i:03}"));
    }
    let lines = texts(&j, "r.service");
    // Each line costs its header and 8 bytes of text.
    let fit = bound / (HEADER + 8);
    assert_eq!(lines.len(), fit);
    assert_eq!(lines.last().unwrap(), "line 199");
    assert_eq!(lines[0], format!("line {:03}", 200 - fit));
    let ring = &j.rings["r.service"];
    assert!(ring.bytes.len() <= bound);
    assert!(ring.bytes.capacity() < 2 * bound, "capacity {}", ring.bytes.capacity());
    // tail(n) is the last n, oldest first.
    let tail: Vec<String> = j.tail("r.service", 3).into_iter().map(|l| l.text).collect();
    assert_eq!(tail, ["line 197", "line 198", "line 199"]);
    assert_eq!(j.tail("r.service", 0).len(), 0);
    // A line longer than the whole ring still leaves the ring within its bound.
    j.record("r.service", None, &"w".repeat(3000));
    assert_eq!(j.rings["r.service"].lines, 1);
    assert!(j.rings["r.service"].bytes.len() <= bound);
}

#[test]
fn record_splits_lines() {
    let mut j = Journal::new(4096);
    // Echoed to the console (stderr here) as well.
    j.set_console_echo(true);
    j.record("m.service", None, "Started\nsecond\n");
    j.set_console_echo(false);
    assert_eq!(texts(&j, "m.service"), ["Started", "second"]);
}

#[test]
fn persist_writes_the_ring_then_new_lines() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("var/log/berth");
    let mut j = Journal::new(64 * 1024);
    j.record("early.service", Some(5), "before /var");
    j.persist_to(&logs).unwrap();
    j.record("early.service", None, "after /var");
    let mut w = writer(j.pipe("late.service").unwrap());
    j.set_pid("late.service", 77);
    w.write_all(b"hello \xff\n").unwrap();
    j.on_readable();
    let early = std::fs::read_to_string(logs.join("early.service.log")).unwrap();
    let lines: Vec<&str> = early.lines().collect();
    assert_eq!(lines.len(), 2, "{early}");
    assert!(lines[0].ends_with("Z early.service[5]: before /var"), "{early}");
    assert!(lines[1].ends_with("Z early.service: after /var"), "{early}");
    let stamp = lines[0].split(' ').next().unwrap();
    assert_eq!(stamp.len(), "2026-11-22T09:01:02.123456Z".len(), "{stamp}");
    assert_eq!(&stamp[4..5], "-");
    assert_eq!(&stamp[10..11], "T");
    let late = std::fs::read(logs.join("late.service.log")).unwrap();
    assert!(late.ends_with(b" late.service[77]: hello \xff\n"), "raw bytes are kept in the file");
    assert_eq!(j.tail("late.service", 1)[0].text, "hello \u{fffd}");
}

#[test]
fn persist_reports_an_unusable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let mut j = Journal::new(1024);
    let err = j.persist_to(&file.join("logs")).unwrap_err();
    assert!(err.contains("not-a-dir"), "{err}");
    // Still works in memory.
    j.record("x.service", None, "kept");
    assert_eq!(texts(&j, "x.service"), ["kept"]);
}

#[test]
fn rotation_keeps_two_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::new(64 * 1024);
    j.set_max_file_bytes(1000);
    j.persist_to(dir.path()).unwrap();
    for i in 0..200 {
        j.record("busy.service", Some(3), &format!("message number {i:04}"));
    }
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let current = read("busy.service.log");
    let one = read("busy.service.log.1");
    let two = read("busy.service.log.2");
    assert!(!dir.path().join("busy.service.log.3").exists());
    // A rotated file is as full as whole lines make it; the current one fills up.
    for text in [&one, &two] {
        assert!(text.len() <= 1000 && text.len() > 900, "{}", text.len());
    }
    assert!(!current.is_empty() && current.len() <= 1000, "{}", current.len());
    assert!(current.trim_end().ends_with("message number 0199"));
    // The files continue each other: .2, then .1, then the current one.
    let first_number = |t: &str| t.lines().next().unwrap().rsplit(' ').next().unwrap().parse::<u32>().unwrap();
    let last_number = |t: &str| t.lines().last().unwrap().rsplit(' ').next().unwrap().parse::<u32>().unwrap();
    assert_eq!(last_number(&two) + 1, first_number(&one));
    assert_eq!(last_number(&one) + 1, first_number(&current));
}

#[test]
fn rotation_applies_to_a_file_from_the_last_boot() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("old.service.log"), "x".repeat(2000)).unwrap();
    let mut j = Journal::new(4096);
    j.set_max_file_bytes(1000);
    j.persist_to(dir.path()).unwrap();
    j.record("old.service", None, "new boot");
    assert_eq!(std::fs::read_to_string(dir.path().join("old.service.log.1")).unwrap().len(), 2000);
    assert!(std::fs::read_to_string(dir.path().join("old.service.log")).unwrap().ends_with(": new boot\n"));
}

#[test]
fn followers_get_new_lines_and_go_when_closed() {
    let mut j = Journal::new(64 * 1024);
    j.record("f.service", None, "old");
    let (server, client) = UnixStream::pair().unwrap();
    j.follow("f.service", server);
    assert_eq!(j.fds().len(), 1, "the follower's socket is polled for hang-up");
    j.record("other.service", None, "not for this follower");
    let mut w = writer(j.pipe("f.service").unwrap());
    j.set_pid("f.service", 9);
    w.write_all(b"new one\n").unwrap();
    j.on_readable();
    j.record("f.service", None, "Stopped");
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut got = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let l: LogLine = serde_json::from_str(line.trim_end()).unwrap();
        got.push((l.unit, l.pid, l.text));
    }
    assert_eq!(
        got,
        [
            ("f.service".to_string(), Some(9), "new one".to_string()),
            ("f.service".to_string(), None, "Stopped".to_string())
        ]
    );
    drop(reader);
    drop(client);
    j.on_readable();
    assert_eq!(j.followers(), 0, "a closed follower is dropped at the next poll");
    // Lines still go to the ring.
    j.record("f.service", None, "later");
    assert_eq!(j.tail("f.service", 1)[0].text, "later");
}

#[test]
fn a_follower_that_does_not_read_is_dropped() {
    let mut j = Journal::new(64 * 1024);
    let (server, mut client) = UnixStream::pair().unwrap();
    j.follow("slow.service", server);
    let text = "x".repeat(1000);
    // The socket buffer fills, then 64 KiB more are pending: the follower goes, PID 1 never
    // blocks.
    for _ in 0..2000 {
        j.record("slow.service", None, &text);
        if j.followers() == 0 {
            break;
        }
    }
    assert_eq!(j.followers(), 0);
    client.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut all = Vec::new();
    client.read_to_end(&mut all).unwrap();
    assert!(!all.is_empty(), "it got what fit before it was dropped");
}

#[test]
fn dates() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(rfc3339(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
    assert_eq!(rfc3339(1_795_338_062_123_456), "2026-11-22T09:01:02.123456Z");
    assert_eq!(rfc3339(4_107_542_399_999_999), "2100-02-28T23:59:59.999999Z");
    assert_eq!(berth_release::time::civil_from_days(365 + 365 + 366 - 1), (1972, 12, 31));
}

#[test]
fn unit_names_as_file_names() {
    assert_eq!(file_stem("a@b.service"), "a@b.service");
    assert_eq!(file_stem("../x"), "_.._x");
    assert_eq!(file_stem(""), "_");
}
