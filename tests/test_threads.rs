//! Threads (SPEC S6, B30–B31): plain threads start empty, `contextvars::thread` inherits a
//! copy, threads stay isolated under contention, and pool workers do not carry a wrapped
//! job's values into the next job.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};

use contextvars::{Context, context_var};

#[context_var]
static A: u32;

#[context_var]
static B: String;

#[context_var]
static HITS: u32 = 0;

/// Reads (and, if asked, sets) variables from its `Drop`, then records that it finished.
struct UsesContextWhenDropped {
    set: bool,
    finished: Arc<AtomicBool>,
}

impl Drop for UsesContextWhenDropped {
    fn drop(&mut self) {
        let _ = (A.get(), HITS.get(), Context::current().len());
        if self.set {
            drop(HITS.set(1));
            drop(A.scoped(2));
        }
        self.finished.store(true, Ordering::SeqCst);
    }
}

#[context_var]
static ON_EXIT: UsesContextWhenDropped;

type Job = Box<dyn FnOnce() + Send>;

/// A hand-made thread pool: `workers` threads taking jobs from one channel.
struct Pool {
    sender: Option<mpsc::Sender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    fn new(workers: usize) -> Self {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = (0..workers)
            .map(|_| {
                let receiver = Arc::clone(&receiver);
                // Plain threads, as a pool that knows nothing of contexts would start.
                std::thread::spawn(move || {
                    loop {
                        let job = receiver.lock().unwrap().recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        Pool {
            sender: Some(sender),
            threads,
        }
    }

    /// Runs `f` on a worker and returns its result.
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || tx.send(f()).unwrap());
        self.sender.as_ref().unwrap().send(job).unwrap();
        rx.recv().unwrap()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        drop(self.sender.take());
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
    }
}

fn read_all() -> (Option<u32>, Option<String>, u32) {
    (A.get(), B.get(), HITS.get())
}

// B30: `std::thread::spawn` starts with an empty context (Python's default).
#[test]
fn std_thread_starts_with_an_empty_context() {
    Context::new().run(|| {
        let _a = A.set(1);
        let _b = B.set("parent".to_string());
        let seen = std::thread::spawn(|| (read_all(), Context::current().is_empty()))
            .join()
            .unwrap();
        assert_eq!(seen, ((None, None, 0), true));
    });
}

// B30: `contextvars::thread::spawn` starts with a copy taken at the call; later sets on either
// side are invisible to the other.
#[test]
fn thread_spawn_inherits_a_copy_taken_at_the_call() {
    Context::new().run(|| {
        let token = A.set(1);
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (set_tx, set_rx) = mpsc::channel::<()>();
        let child = contextvars::thread::spawn(move || {
            go_rx.recv().unwrap();
            let seen = read_all();
            drop(A.set(10));
            drop(B.set("child".to_string()));
            set_tx.send(()).unwrap();
            (seen, read_all())
        });
        A.reset(token).unwrap();
        let _later = A.set(2);
        go_tx.send(()).unwrap();
        set_rx.recv().unwrap();
        assert_eq!(
            read_all(),
            (Some(2), None, 0),
            "the thread's sets reached the parent"
        );
        let (seen, after) = child.join().unwrap();
        assert_eq!(seen, (Some(1), None, 0));
        assert_eq!(after, (Some(10), Some("child".to_string()), 0));
    });
}

// B30: `thread::Builder` inherits a copy too, or runs in the context it is given.
#[test]
fn thread_builder_inherits_or_takes_a_context() {
    Context::new().run(|| {
        let _a = A.set(1);
        let inherited = contextvars::thread::Builder::new()
            .name("inherits".to_string())
            .stack_size(256 * 1024)
            .spawn(|| (std::thread::current().name().map(String::from), read_all()))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            inherited,
            (Some("inherits".to_string()), (Some(1), None, 0))
        );

        let given = Context::new().with_value(&B, "given".to_string());
        let seen = contextvars::thread::Builder::new()
            .context(given.clone())
            .spawn(read_all)
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(seen, (None, Some("given".to_string()), 0));
        assert_eq!(given.len(), 1);
        assert_eq!(read_all(), (Some(1), None, 0));

        // The given context is that very context (B14): its tokens reset there.
        let mut given = Context::new();
        let token = given.run(|| A.set(3));
        let reset = contextvars::thread::Builder::new()
            .context(given)
            .spawn(move || (A.reset(token), A.get()))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(reset, (Ok(()), None));
    });
}

// B31: many threads setting and reading in tight loops never see each other's values.
#[test]
fn threads_are_isolated_under_contention() {
    const THREADS: u32 = 8;
    const ROUNDS: u32 = 20_000;
    let start = Arc::new(Barrier::new(THREADS as usize));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let start = Arc::clone(&start);
            // Half inherit an (empty) copy, half are plain threads.
            let body = move || {
                start.wait();
                assert_eq!(read_all(), (None, None, 0));
                let name = format!("thread {t}");
                let _b = B.set(name.clone());
                for round in 0..ROUNDS {
                    let value = t * ROUNDS + round;
                    let token = A.set(value);
                    if round % 64 == 0 {
                        std::thread::yield_now();
                    }
                    let guard = HITS.scoped(round);
                    assert_eq!(read_all(), (Some(value), Some(name.clone()), round));
                    drop(guard);
                    if round % 2 == 0 {
                        A.reset(token).unwrap();
                        assert_eq!(A.get(), (round > 0).then(|| value - 1));
                    }
                    // Snapshots taken here see this thread's values only.
                    if round % 1000 == 0 {
                        let snapshot = Context::current();
                        assert_eq!(snapshot.get(&B), Some(&name));
                        assert_eq!(snapshot.len(), if round == 0 { 1 } else { 2 });
                    }
                }
                true
            };
            if t % 2 == 0 {
                Context::new().run(|| contextvars::thread::spawn(body))
            } else {
                std::thread::spawn(body)
            }
        })
        .collect();
    for thread in threads {
        assert!(thread.join().unwrap());
    }
}

// B31 + B21: jobs wrapped with the submitter's context run in a copy of it, and nothing one
// job sets is seen by the next job on the same worker.
#[test]
fn wrapped_pool_jobs_do_not_carry_values_into_the_next_job() {
    let pool = Pool::new(1);
    Context::new().run(|| {
        for i in 0..50u32 {
            let _a = A.set(i);
            let job = Context::current().wrap(move || {
                let seen = read_all();
                drop(B.set(format!("job {i}")));
                drop(HITS.set(HITS.get() + 1));
                drop(A.set(1_000 + i));
                seen
            });
            assert_eq!(
                pool.run(job),
                (Some(i), None, 0),
                "a job saw the previous job's values"
            );
        }
        // A plain job on the same worker afterwards sees none of it either.
        assert_eq!(pool.run(read_all), (None, None, 0));
    });
}

// B30 + B31: an unwrapped job runs in the worker thread's own context, not the submitter's.
#[test]
fn unwrapped_pool_jobs_do_not_see_the_submitters_values() {
    let pool = Pool::new(3);
    Context::new().run(|| {
        let _a = A.set(1);
        let _b = B.set("submitter".to_string());
        for _ in 0..30 {
            assert_eq!(pool.run(read_all), (None, None, 0));
        }
    });
}

// B26 (plain threads keep a context of their own, as in Python): an unwrapped job that sets
// without resetting leaves the value in its worker thread's context, where the next unwrapped
// job on that worker sees it. Wrapping (above) is how to keep jobs apart.
#[test]
fn unwrapped_pool_jobs_share_their_worker_threads_context() {
    let pool = Pool::new(1);
    pool.run(|| drop(A.set(5)));
    assert_eq!(pool.run(|| A.get()), Some(5));
    // A wrapped job still sees only its own context.
    assert_eq!(pool.run(Context::new().wrap(|| A.get())), None);
}

// S9: a value still bound when its thread exits is dropped with the thread's context, and
// its `Drop` may read variables (they read as unset).
#[test]
fn value_dropped_at_thread_exit_may_read_variables() {
    let finished = Arc::new(AtomicBool::new(false));
    let value = UsesContextWhenDropped {
        set: false,
        finished: Arc::clone(&finished),
    };
    std::thread::spawn(move || drop(ON_EXIT.set(value)))
        .join()
        .unwrap();
    assert!(finished.load(Ordering::SeqCst));
}

// S9 regression: the same value setting a variable from its `Drop` at thread exit. `set` and
// `scoped` used to panic there ("this thread is exiting"), inside the thread-local's
// destructor, which aborts the whole process; now they change nothing.
#[test]
fn value_dropped_at_thread_exit_may_set_variables() {
    let finished = Arc::new(AtomicBool::new(false));
    let value = UsesContextWhenDropped {
        set: true,
        finished: Arc::clone(&finished),
    };
    std::thread::spawn(move || drop(ON_EXIT.set(value)))
        .join()
        .unwrap();
    assert!(finished.load(Ordering::SeqCst));
}
