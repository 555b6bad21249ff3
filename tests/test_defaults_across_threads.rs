//! Defaults computed while other threads read: they wait for the one computation, as with
//! `std::sync::LazyLock`. A default must not wait for another thread that reads its own
//! variable (documented on `#[context_var]`); these tests pin down the rule's safe side.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use contextvars::context_var;

static SLOW_RUNS: AtomicUsize = AtomicUsize::new(0);

#[context_var]
static SLOW: usize = {
    let run = SLOW_RUNS.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    run + 100
};

#[test]
fn threads_reading_while_a_default_is_computed_wait_for_that_one_computation() {
    let barrier = Arc::new(Barrier::new(8));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                SLOW.get()
            })
        })
        .collect();
    let seen: Vec<usize> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(seen, [100; 8]);
    assert_eq!(SLOW_RUNS.load(Ordering::SeqCst), 1);
}

/// Where the thread a default spawns reads the variable after the default is done.
static LATER_READ: Mutex<Option<std::thread::JoinHandle<u32>>> = Mutex::new(None);

#[context_var]
static SPAWNS_A_READER: u32 = {
    // Not joined here: joining would wait for a thread that waits for this default.
    *LATER_READ.lock().unwrap() = Some(std::thread::spawn(|| SPAWNS_A_READER.get()));
    7
};

#[test]
fn a_default_may_spawn_a_thread_that_reads_it_if_it_does_not_wait_for_it() {
    assert_eq!(SPAWNS_A_READER.get(), 7);
    let reader = LATER_READ.lock().unwrap().take().unwrap();
    assert_eq!(reader.join().unwrap(), 7);
}
