//! Threads: a thread that inherits the spawner's context, a thread given a context of its
//! own, and jobs carried into a thread pool with `Context::wrap`.
//!
//! A thread from `std::thread::spawn` starts with an empty context, as in Python;
//! `contextvars::thread::spawn` starts it in a copy of the caller's. A pool's worker threads
//! were started long before the job, so the job has to bring its context along: `wrap` does
//! that, and also keeps what one job sets from reaching the next job on the same worker.
//!
//! Run with `cargo run --example threads`.

use std::sync::mpsc;
use std::thread;

use contextvars::{Context, context_var};

#[context_var]
static REQUEST_ID: String;

#[context_var]
static LOCALE: &'static str = "en";

type Job = Box<dyn FnOnce() + Send>;

/// A tiny thread pool: one worker, started before any request, running jobs in order.
struct Pool {
    jobs: mpsc::Sender<Job>,
    worker: thread::JoinHandle<()>,
}

impl Pool {
    fn new() -> Pool {
        let (jobs, queue) = mpsc::channel::<Job>();
        let worker = thread::spawn(move || {
            for job in queue {
                job();
            }
        });
        Pool { jobs, worker }
    }

    fn execute(&self, job: impl FnOnce() + Send + 'static) {
        self.jobs
            .send(Box::new(job))
            .expect("the worker is running");
    }

    fn join(self) {
        drop(self.jobs);
        self.worker.join().expect("the worker ran every job");
    }
}

fn main() {
    let _id = REQUEST_ID.set("req-7".to_string());
    let _locale = LOCALE.set("fr");

    // A thread that inherits a copy of this context.
    let inherited = contextvars::thread::spawn(|| {
        let _ = LOCALE.set("de"); // stays in the thread
        (REQUEST_ID.get(), LOCALE.get())
    });
    let seen = inherited.join().expect("thread");
    println!("contextvars::thread::spawn sees {seen:?}");
    assert_eq!(seen, (Some("req-7".into()), "de"));
    assert_eq!(LOCALE.get(), "fr", "the thread's set stayed in the thread");

    // A plain thread starts empty.
    let plain = thread::spawn(|| (REQUEST_ID.get(), LOCALE.get()))
        .join()
        .expect("thread");
    println!("std::thread::spawn sees {plain:?}");
    assert_eq!(plain, (None, "en"));

    // A named thread with a context of its own.
    let named = contextvars::thread::Builder::new()
        .name("report".into())
        .context(Context::new().with_value(&REQUEST_ID, "nightly".to_string()))
        .spawn(|| {
            format!(
                "{} runs for {:?}",
                thread::current().name().unwrap_or("?"),
                REQUEST_ID.get()
            )
        })
        .expect("spawn")
        .join()
        .expect("thread");
    println!("{named}");
    assert_eq!(named, r#"report runs for Some("nightly")"#);

    // A thread pool. Wrapped jobs run in a copy of the context they were wrapped in.
    let pool = Pool::new();
    let (results, answers) = mpsc::channel();
    for (id, locale) in [("req-1", "it"), ("req-2", "es")] {
        let _id = REQUEST_ID.scoped(id.to_string());
        let _locale = LOCALE.scoped(locale);
        let results = results.clone();
        pool.execute(Context::current().wrap(move || {
            let _ = LOCALE.set("changed by the job"); // gone when the job ends
            results
                .send(format!("wrapped job for {:?}", REQUEST_ID.get()))
                .expect("main listens");
        }));
    }
    let results_for_plain = results.clone();
    pool.execute(move || {
        // Not wrapped: the worker's own (empty) context, untouched by the jobs before.
        let line = format!(
            "plain job sees {:?} and locale {}",
            REQUEST_ID.get(),
            LOCALE.get()
        );
        results_for_plain.send(line).expect("main listens");
    });
    drop(results);
    pool.join();
    let answers: Vec<String> = answers.iter().collect();
    for answer in &answers {
        println!("{answer}");
    }
    assert_eq!(
        answers,
        [
            r#"wrapped job for Some("req-1")"#,
            r#"wrapped job for Some("req-2")"#,
            "plain job sees None and locale en",
        ]
    );

    // `wrap_mut`: a callback called many times, each call in a fresh copy of the context.
    let mut on_event = Context::current().wrap_mut(|| REQUEST_ID.get());
    let ticks: Vec<_> = (0..3).map(|_| on_event()).collect();
    assert!(ticks.iter().all(|id| id.as_deref() == Some("req-7")));
    println!("wrap_mut callback saw {:?} three times", ticks[0]);
}
