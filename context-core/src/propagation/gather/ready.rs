//! The ready queue of a [`Gather`](super::Gather): which branches were woken since it last
//! looked, so that a poll of the gather polls those and no others.
//!
//! Each branch has a waker of its own that knows the branch's index. Waking it marks the
//! branch queued (a flag per branch, so a branch woken ten times is polled once), pushes its
//! index and wakes the gather's task. The gather takes the indices at the start of each poll,
//! and clears a branch's flag just before polling it: a wake that comes during or after that
//! poll queues the branch again, for the next poll of the gather.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};

/// Shared by a gather and its branches' wakers, which may outlive it.
pub(super) struct ReadyQueue {
    /// Per branch: woken and not polled since (or finished, which no wake changes).
    queued: Box<[AtomicBool]>,
    state: Mutex<State>,
}

struct State {
    /// Branches woken since the gather last took them, in the order they were woken.
    woken: Vec<usize>,
    /// The gather's task, until a wake uses it: later wakes have nothing to add, the task is
    /// already on its way.
    task: Option<Waker>,
}

/// The waker of one branch.
struct BranchWaker {
    queue: Arc<ReadyQueue>,
    index: usize,
}

impl Wake for BranchWaker {
    fn wake(self: Arc<Self>) {
        self.queue.wake(self.index);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue.wake(self.index);
    }
}

impl ReadyQueue {
    /// A queue for `branches` branches, every one queued: each is polled once to start.
    pub(super) fn new(branches: usize) -> Arc<ReadyQueue> {
        Arc::new(ReadyQueue {
            queued: (0..branches).map(|_| AtomicBool::new(true)).collect(),
            state: Mutex::new(State {
                woken: Vec::new(),
                task: None,
            }),
        })
    }

    /// The waker to poll branch `index` with.
    pub(super) fn waker(self: &Arc<ReadyQueue>, index: usize) -> Waker {
        Waker::from(Arc::new(BranchWaker {
            queue: Arc::clone(self),
            index,
        }))
    }

    fn wake(&self, index: usize) {
        if self.queued[index].swap(true, Ordering::AcqRel) {
            return;
        }
        let task = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.woken.push(index);
            state.task.take()
        };
        // Outside the lock: an executor may do anything in `wake`, even poll the gather.
        if let Some(task) = task {
            task.wake();
        }
    }

    /// Registers the task to wake and moves the branches woken since the last call to the
    /// end of `due`.
    pub(super) fn take_woken(&self, task: &Waker, due: &mut VecDeque<usize>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match &state.task {
            Some(registered) if registered.will_wake(task) => {}
            _ => state.task = Some(task.clone()),
        }
        due.extend(state.woken.drain(..));
    }

    /// Branch `index` is about to be polled: a wake from now on queues it again.
    pub(super) fn polling(&self, index: usize) {
        // A read-modify-write, so that it acquires what a wake released before it: a wake
        // either comes after this (and queues the branch again) or its effects are seen by
        // the poll that follows.
        self.queued[index].swap(false, Ordering::AcqRel);
    }

    /// Branch `index` finished: its wakers, if anything still holds one, do nothing.
    pub(super) fn finished(&self, index: usize) {
        self.queued[index].store(true, Ordering::Release);
    }
}
