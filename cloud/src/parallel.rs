//! Work spread over threads, fed from the calling thread: the clouds take many requests in
//! flight (EBS blocks, Azure pages), and a blocking client on threads keeps that simple.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;

/// Runs `work` on each item `items` yields, on `workers` threads. Items are produced on the
/// calling thread as the workers take them (at most two per worker waiting), so memory stays
/// bounded however large the input. Stops at the first error, from `items` or from `work`, and
/// returns it; otherwise every result, in no particular order.
pub fn for_each<T, R, E>(
    items: impl Iterator<Item = Result<T, E>>,
    workers: usize,
    work: impl Fn(T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E>
where
    T: Send,
    R: Send,
    E: Send,
{
    let workers = workers.max(1);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<E>> = Mutex::new(None);
    let results: Mutex<Vec<R>> = Mutex::new(Vec::new());
    let fail = |e: E| {
        failed.store(true, Ordering::SeqCst);
        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
    };
    let (tx, rx) = sync_channel::<T>(workers * 2);
    let rx = Mutex::new(rx);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    // The lock is held only while one item is taken.
                    let item = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(item) = item else { return };
                    if failed.load(Ordering::SeqCst) {
                        continue;
                    }
                    match work(item) {
                        Ok(r) => results.lock().unwrap_or_else(|p| p.into_inner()).push(r),
                        Err(e) => fail(e),
                    }
                }
            });
        }
        for item in items {
            if failed.load(Ordering::SeqCst) {
                break;
            }
            match item {
                Ok(item) => {
                    if tx.send(item).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    fail(e);
                    break;
                }
            }
        }
        drop(tx);
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(results.into_inner().unwrap_or_else(|p| p.into_inner())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_worked_once() {
        let mut got = for_each((0..1000u32).map(Ok::<_, String>), 8, |n| Ok(n * 2)).unwrap();
        got.sort_unstable();
        assert_eq!(got, (0..1000).map(|n| n * 2).collect::<Vec<_>>());
    }

    #[test]
    fn the_first_error_stops_the_rest() {
        let done = std::sync::atomic::AtomicUsize::new(0);
        let r = for_each((0..10_000u32).map(Ok), 4, |n| {
            done.fetch_add(1, Ordering::SeqCst);
            if n == 10 { Err(format!("item {n}")) } else { Ok(n) }
        });
        assert_eq!(r, Err("item 10".to_string()));
        assert!(done.load(Ordering::SeqCst) < 10_000);
        let r = for_each([Ok(1), Err("unreadable".to_string()), Ok(3)].into_iter(), 2, Ok::<u32, String>);
        assert_eq!(r, Err("unreadable".to_string()));
    }
}
