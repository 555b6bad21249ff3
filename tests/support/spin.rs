//! A barrier that threads leave within a few instructions of each other, for tests of races
//! between drops on several threads.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `parties` threads meet here, round after round, and leave within a few instructions of
/// each other: a spinning barrier, so that what each does next lands as close together as
/// the cores allow (`std::sync::Barrier` wakes its sleepers microseconds after the last
/// arrives). It yields now and then, so that on a loaded machine the others get to arrive.
pub(crate) struct SpinBarrier {
    parties: usize,
    arrived: AtomicUsize,
}

impl SpinBarrier {
    pub(crate) fn new(parties: usize) -> Self {
        SpinBarrier {
            parties,
            arrived: AtomicUsize::new(0),
        }
    }

    /// Waits for the other parties' calls of round `round` (0, 1, 2, ...).
    pub(crate) fn wait(&self, round: usize) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let mut spins = 0_u32;
        while self.arrived.load(Ordering::SeqCst) < self.parties * (round + 1) {
            spins += 1;
            if spins % 1_000 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}
