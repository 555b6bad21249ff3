//! S9 under the hooks (S12): a task whose poll panics while its context is entered (inherited
//! read-only, or its own with `install_writable`, inside `Context::run` or not) leaves the
//! worker thread's context as it was: tasks polled after it on the same threads, spawned
//! where nothing was set, the `block_on` root and plain blocking jobs never read its values.

#![cfg(all(tokio_unstable, feature = "hooks"))]

mod support;

use contextvars::{Context, context_var};
use support::Rng;

#[context_var]
static TENANT: String;

/// The panicking tasks: `n` of them, each with its own tenant, entering its context and
/// panicking at a random point; the clean tasks, spawned from a context where nothing is set,
/// read at random points in between. Returns what the clean tasks read.
async fn panicking_and_clean(n: usize, writable: bool, seed: u64) -> Vec<Option<String>> {
    let mut rng = Rng::new(seed);
    let mut panicking = Vec::new();
    let mut clean = Vec::new();
    for i in 0..n {
        let tenant = format!("panicking-{i}");
        let yields = rng.below(3);
        let in_run = rng.below(2) == 0;
        let mut context = Context::new().with_value(&TENANT, tenant.clone());
        panicking.push(context.run(|| {
            tokio::spawn(async move {
                if writable {
                    let _ = TENANT.set(format!("{tenant}-own"));
                }
                for _ in 0..yields {
                    tokio::task::yield_now().await;
                }
                assert!(TENANT.get().unwrap().starts_with(&tenant));
                if in_run {
                    Context::current().run(|| panic!("{tenant} panics inside run"));
                }
                panic!("{tenant} panics");
            })
        }));
        let yields = rng.below(4);
        clean.push(Context::new().run(|| {
            tokio::spawn(async move {
                let mut read = TENANT.get();
                for _ in 0..yields {
                    tokio::task::yield_now().await;
                    read = read.or(TENANT.get());
                }
                read
            })
        }));
    }
    for task in panicking {
        assert!(task.await.unwrap_err().is_panic());
    }
    let mut reads = Vec::new();
    for task in clean {
        reads.push(task.await.unwrap());
    }
    // The `block_on` root (the thread's own context, no hook) and a plain blocking job (no
    // hook either), after them all.
    reads.push(TENANT.get());
    reads.push(tokio::task::spawn_blocking(|| TENANT.get()).await.unwrap());
    // And a task spawned after them all.
    reads.push(
        Context::new()
            .run(|| tokio::spawn(async { TENANT.get() }))
            .await
            .unwrap(),
    );
    reads
}

/// 10 panicking tasks and 10 clean ones at once, on both runtime flavors, with the read-only
/// inheritance and with `install_writable`: no clean task reads a panicking task's tenant.
#[test]
fn a_panicking_poll_leaves_no_value_on_its_thread_for_the_next_task() {
    for multi_thread in [false, true] {
        for writable in [false, true] {
            let seen =
                support::hooked_runtime(multi_thread, writable).block_on(panicking_and_clean(
                    10,
                    writable,
                    u64::from(multi_thread) * 2 + u64::from(writable),
                ));
            assert!(
                seen.iter().all(Option::is_none),
                "multi {multi_thread}, writable {writable}: {seen:?}"
            );
        }
    }
}
