//! OpenTelemetry's current context flows with the context once `carry_context()` is on: into
//! every spawn helper and, under the hooks, every task; attached only while its context runs,
//! and detached on the thread that attached it. Every test here turns carrying on (it is
//! process-wide).

#![cfg(feature = "opentelemetry")]

use std::time::Duration;

use contextvars::{Context, FutureExt};
use opentelemetry::Context as OtelContext;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Tag(String);

fn tag() -> Option<String> {
    OtelContext::current().get::<Tag>().map(|tag| tag.0.clone())
}

async fn read_tag() -> Option<String> {
    tokio::task::yield_now().await;
    tag()
}

fn attach(tag: &str) -> opentelemetry::ContextGuard {
    OtelContext::current_with_value(Tag(tag.to_string())).attach()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_helper_carries_opentelemetrys_context() {
    contextvars::opentelemetry::carry_context();
    let attached = attach("helpers");
    let spawn = contextvars::spawn(async {
        tokio::task::yield_now().await;
        let grandchild = contextvars::spawn(async { tag() }).await.unwrap();
        (tag(), grandchild)
    });
    let blocking = contextvars::spawn_blocking(tag);
    let thread = contextvars::thread::spawn(tag);
    let executor = contextvars::run_in_executor(|job| drop(std::thread::spawn(job)), tag);
    let gathered = contextvars::gather([read_tag(), read_tag()]);
    let wrapped = async { tag() }.in_current_context();
    drop(attached);
    assert_eq!(tag(), None);

    let helpers = Some("helpers".to_string());
    assert_eq!(spawn.await.unwrap(), (helpers.clone(), helpers.clone()));
    assert_eq!(blocking.await.unwrap(), helpers);
    assert_eq!(thread.join().unwrap(), helpers);
    assert_eq!(executor.await.unwrap(), helpers);
    assert_eq!(gathered.await, [helpers.clone(), helpers.clone()]);
    assert_eq!(wrapped.await, helpers);
    assert_eq!(tag(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_a_task_attaches_is_what_its_own_spawns_carry() {
    contextvars::opentelemetry::carry_context();
    let _outer = attach("outer");
    let seen = contextvars::spawn(async {
        let inner = {
            let _inner = attach("inner");
            contextvars::spawn(async { tag() })
        };
        let after = contextvars::spawn(async { tag() });
        (inner.await.unwrap(), after.await.unwrap(), tag())
    })
    .await
    .unwrap();
    assert_eq!(
        seen,
        (
            Some("inner".to_string()),
            Some("outer".to_string()),
            Some("outer".to_string())
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attached_only_while_its_context_runs_and_detached_on_every_worker() {
    contextvars::opentelemetry::carry_context();
    let mut ctx = {
        let _attached = attach("run");
        Context::current()
    };
    assert_eq!(tag(), None);
    assert_eq!(ctx.run(tag), Some("run".to_string()));
    assert_eq!(tag(), None);

    // Many tasks, polled many times over four workers; between polls no worker keeps one
    // attached: a task without a context, on any worker, sees none.
    let mut tasks = Vec::new();
    let mut plain = Vec::new();
    for n in 0..200_u32 {
        let _attached = attach(&format!("task {n}"));
        tasks.push(contextvars::spawn(async move {
            for _ in 0..5 {
                tokio::task::yield_now().await;
                assert_eq!(tag(), Some(format!("task {n}")));
            }
        }));
        plain.push(tokio::spawn(async { assert_eq!(tag(), None) }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for task in plain {
        task.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut probes = Vec::new();
    for _ in 0..100 {
        probes.push(tokio::spawn(async { tag() }));
    }
    for probe in probes {
        assert_eq!(probe.await.unwrap(), None);
    }
}

#[cfg(all(feature = "hooks", tokio_unstable))]
#[test]
fn under_the_hooks_a_plain_tokio_spawn_inherits_opentelemetrys_context() {
    contextvars::opentelemetry::carry_context();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let runtime = contextvars::hooks::install(builder.worker_threads(4).enable_all())
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for n in 0..200_u32 {
            let _attached = attach(&format!("hooked {n}"));
            tasks.push(tokio::spawn(async move {
                tokio::task::yield_now().await;
                let child = tokio::spawn(async { tag() }).await.unwrap();
                (n, tag(), child)
            }));
        }
        for task in tasks {
            let (n, seen, child) = task.await.unwrap();
            assert_eq!(seen, Some(format!("hooked {n}")));
            assert_eq!(child, Some(format!("hooked {n}")));
        }
        assert_eq!(tokio::spawn(async { tag() }).await.unwrap(), None);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mapping_view_does_not_show_opentelemetrys_context() {
    contextvars::opentelemetry::carry_context();
    let _attached = attach("view");
    let ctx = Context::current();
    assert_eq!(ctx.len(), 0);
    assert_eq!(format!("{ctx:?}"), "Context {}");
}
