//! Contexts (SPEC S4, B17–B22): snapshots and copies, `new`, `run`, the mapping view, `wrap`
//! and `with_value`. Ports the `Context` cases of `CPython`'s `test_context.py`.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use contextvars::{Context, FutureExt, context_var, copy_context};

#[context_var]
static A: u32;

#[context_var]
static B: String;

#[context_var]
static RETRIES: u32 = 3;

#[context_var(name = "dup")]
static DUP_FIRST: u32;

#[context_var(name = "dup")]
static DUP_SECOND: u32;

/// A value type without `Debug`.
struct Opaque;

#[context_var]
static OPAQUE: Opaque;

// B17: a snapshot holds the bindings of the moment; later sets on either side stay there.
#[test]
fn snapshot_is_independent_of_the_current_context_both_ways() {
    Context::new().run(|| {
        let _a = A.set(1);
        let mut snapshot = Context::current();
        let alias = copy_context();
        let _later = A.set(2);
        assert_eq!(snapshot.get(&A), Some(&1));
        assert_eq!(alias.get(&A), Some(&1));

        snapshot.run(|| {
            assert_eq!(A.get(), Some(1));
            drop(A.set(10));
            drop(B.set("in snapshot".to_string()));
        });
        assert_eq!((A.get(), B.get()), (Some(2), None));
        assert_eq!(snapshot.get(&A), Some(&10));
        assert_eq!(alias.get(&A), Some(&1), "two snapshots are two contexts");
    });
}

// B18 (CPython test_context_copy_1): `clone` is an independent copy, both ways.
#[test]
fn clones_are_independent_both_ways() {
    let mut ctx1 = Context::new();
    ctx1.run(|| drop(A.set(1)));
    let mut ctx2 = ctx1.clone();
    assert_eq!(ctx2.get(&A), Some(&1));

    ctx2.run(|| {
        drop(A.set(2));
        drop(B.set("two".to_string()));
    });
    assert_eq!(ctx1.get(&A), Some(&1));
    assert!(!ctx1.contains(&B));

    ctx1.run(|| drop(A.set(10)));
    assert_eq!(ctx2.get(&A), Some(&2));
    assert_eq!(ctx2.len(), 2);
    assert_eq!(ctx1.len(), 1);
}

// B18 (CPython test_context_new_1): a new context is empty whatever the caller has set.
#[test]
fn new_context_is_empty() {
    Context::new().run(|| {
        let _a = A.set(1);
        let _r = RETRIES.set(9);
        let mut ctx = Context::new();
        assert!(ctx.is_empty());
        assert_eq!(ctx.len(), 0);
        assert_eq!(ctx.iter().count(), 0);
        assert_eq!(ctx.run(|| (A.get(), RETRIES.get())), (None, 3));
        assert!(Context::default().is_empty());
    });
}

// B19 (CPython test_context_run_1/2/6): `run` returns the closure's result and keeps its sets.
#[test]
fn run_returns_the_result_and_stores_the_sets() {
    Context::new().run(|| {
        let _outer = A.set(100);
        let mut ctx = Context::new();
        let result = ctx.run(|| {
            assert_eq!(A.get(), None);
            drop(A.set(1));
            drop(B.set("b".to_string()));
            "result"
        });
        assert_eq!(result, "result");
        assert_eq!(ctx.get(&A), Some(&1));
        assert_eq!(ctx.get(&B).map(String::as_str), Some("b"));
        assert_eq!(
            (A.get(), B.get()),
            (Some(100), None),
            "run leaked into the caller"
        );

        // Running the same context again sees and accumulates its earlier sets.
        for _ in 0..3 {
            ctx.run(|| drop(A.set(A.get().unwrap() + 1)));
        }
        assert_eq!(ctx.get(&A), Some(&4));
    });
}

// B19 (CPython test_context_run_3): a panic in `run` propagates and restores the caller.
#[test]
fn run_restores_the_caller_when_the_closure_panics() {
    Context::new().run(|| {
        let _outer = A.set(1);
        let mut ctx = Context::new();
        let result = catch_unwind(AssertUnwindSafe(|| {
            ctx.run(|| {
                drop(A.set(2));
                drop(B.set("lost?".to_string()));
                panic!("inside run");
            })
        }));
        assert!(result.is_err(), "the panic must propagate");
        assert_eq!((A.get(), B.get()), (Some(1), None));
        assert_eq!(Context::current().len(), 1);
        // As in Python, what ran before the panic stays in the context that ran it.
        assert_eq!(ctx.get(&A), Some(&2));
        // And the context can be entered again.
        assert_eq!(ctx.run(|| A.get()), Some(2));
    });
}

// B19 (CPython test_context_run_4): nested runs of different contexts see only their own.
#[test]
fn nested_runs_see_only_their_own_context() {
    let mut ctx1 = Context::new();
    let mut ctx2 = Context::new();
    ctx1.run(|| {
        assert_eq!(A.get(), None);
        drop(A.set(1));
        let inner = ctx2.run(|| {
            assert_eq!(
                A.get(),
                None,
                "a nested run of an empty context hides outer values"
            );
            drop(A.set(2));
            A.get()
        });
        assert_eq!(inner, Some(2));
        assert_eq!(A.get(), Some(1), "the nested run leaked into the outer one");
    });
    assert_eq!(ctx1.get(&A), Some(&1));
    assert_eq!(ctx2.get(&A), Some(&2));
    assert_eq!(ctx2.run(|| ctx1.run(|| A.get())), Some(1));
}

// B2 + B20: two variables with the same name are two keys.
#[test]
fn variables_with_the_same_name_are_distinct() {
    Context::new().run(|| {
        assert_eq!(DUP_FIRST.name(), DUP_SECOND.name());
        let _first = DUP_FIRST.set(1);
        assert_eq!(DUP_SECOND.get(), None);
        let ctx = Context::current();
        assert!(ctx.contains(&DUP_FIRST));
        assert!(!ctx.contains(&DUP_SECOND));
        let _second = DUP_SECOND.set(2);
        assert_eq!((DUP_FIRST.get(), DUP_SECOND.get()), (Some(1), Some(2)));
        let ctx = Context::current();
        assert_eq!(ctx.len(), 2);
        let names: Vec<_> = ctx.iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["dup", "dup"]);
    });
}

// B20: the mapping view shows bindings only, never defaults.
#[test]
fn mapping_view_ignores_defaults() {
    Context::new().run(|| {
        assert_eq!(RETRIES.get(), 3);
        let ctx = Context::current();
        assert_eq!(ctx.get(&RETRIES), None);
        assert!(!ctx.contains(&RETRIES));
        assert!(ctx.is_empty());
        assert_eq!(format!("{ctx:?}"), "Context {}");

        let token = RETRIES.set(3); // the same value as the default, now a binding
        let ctx = Context::current();
        assert_eq!(ctx.get(&RETRIES), Some(&3));
        assert!(ctx.contains(&RETRIES));
        assert_eq!(ctx.len(), 1);
        RETRIES.reset(token).unwrap();
        assert!(Context::current().is_empty());
    });
}

// B20: `len`, `is_empty`, `iter`, `contains`, `get` and `Debug` agree with each other.
#[test]
fn mapping_view_lists_every_binding() {
    let ctx = Context::new()
        .with_value(&A, 7)
        .with_value(&B, "bee".to_string())
        .with_value(&RETRIES, 5)
        .with_value(&OPAQUE, Opaque);
    assert_eq!(ctx.len(), 4);
    assert!(!ctx.is_empty());
    assert!(ctx.contains(&A) && ctx.contains(&B) && ctx.contains(&OPAQUE));
    assert!(!ctx.contains(&DUP_FIRST));
    assert_eq!(ctx.get(&B).map(String::as_str), Some("bee"));

    let listed: BTreeMap<&str, String> = ctx
        .iter()
        .map(|(name, value)| (name, format!("{value:?}")))
        .collect();
    let opaque_type = std::any::type_name::<Opaque>();
    let expected: BTreeMap<&str, String> = [
        ("A", "7".to_string()),
        ("B", "\"bee\"".to_string()),
        ("RETRIES", "5".to_string()),
        ("OPAQUE", opaque_type.to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(listed, expected);

    let (_, value) = ctx.iter().find(|(name, _)| *name == "A").unwrap();
    assert_eq!(value.downcast_ref::<u32>(), Some(&7));
    assert_eq!(value.downcast_ref::<String>(), None);

    let debug = format!("{ctx:?}");
    for needle in ["\"A\": 7", "\"B\": \"bee\"", "\"RETRIES\": 5", opaque_type] {
        assert!(debug.contains(needle), "{needle} missing from {debug}");
    }
    assert!(!debug.contains("DUP"), "{debug}");
}

// B21: `wrap` runs the closure in a copy of the context, on any thread, and keeps its sets
// away from the caller and from the wrapped context.
#[test]
fn wrap_carries_a_copy_into_a_std_thread() {
    Context::new().run(|| {
        let _a = A.set(1);
        let source = Context::current();
        let job = source.wrap(|| {
            let seen = A.get();
            drop(A.set(2));
            drop(B.set("job".to_string()));
            (seen, A.get(), B.get())
        });
        let _later = A.set(5);
        let seen = std::thread::spawn(job).join().unwrap();
        assert_eq!(seen, (Some(1), Some(2), Some("job".to_string())));
        assert_eq!((A.get(), B.get()), (Some(5), None));
        assert_eq!(
            source.get(&A),
            Some(&1),
            "the job's sets reached the wrapped context"
        );
        assert!(!source.contains(&B));

        // The copy is taken when `wrap` is called: later changes to the source are not seen.
        let mut source = Context::new().with_value(&A, 1);
        let job = source.wrap(|| A.get());
        source.run(|| drop(A.set(2)));
        assert_eq!(std::thread::spawn(job).join().unwrap(), Some(1));
    });
}

// B21: `wrap_mut` gives every call a fresh copy, so calls do not see each other's sets.
#[test]
fn wrap_mut_gives_each_call_a_fresh_copy() {
    let source = Context::new().with_value(&A, 1);
    let mut handler = source.wrap_mut(|| {
        let seen = A.get();
        drop(A.set(seen.unwrap() + 1));
        seen
    });
    let seen = std::thread::spawn(move || [handler(), handler(), handler()])
        .join()
        .unwrap();
    assert_eq!(seen, [Some(1); 3]);
    assert_eq!(source.get(&A), Some(&1));
}

// B22: a context with overrides in one expression, leaving the caller and the source alone.
#[test]
fn with_value_builds_a_context_in_one_expression() {
    Context::new().run(|| {
        let _a = A.set(1);
        let seen = Context::current()
            .with_value(&B, "override".to_string())
            .with_value(&RETRIES, 10)
            .run(|| (A.get(), B.get(), RETRIES.get()));
        assert_eq!(seen, (Some(1), Some("override".to_string()), 10));
        assert_eq!((A.get(), B.get(), RETRIES.get()), (Some(1), None, 3));

        let base = Context::new().with_value(&A, 1);
        let derived = base.clone().with_value(&A, 2);
        assert_eq!((base.get(&A), derived.get(&A)), (Some(&1), Some(&2)));
    });
}

// B17 (CPython test_context_getset_1): a snapshot taken after a set and a reset reflects each.
#[test]
fn snapshots_follow_set_and_reset() {
    Context::new().run(|| {
        let before = Context::current();
        let token = A.set(1);
        let during = Context::current();
        A.reset(token).unwrap();
        let after = Context::current();
        assert_eq!(
            (before.get(&A), during.get(&A), after.get(&A)),
            (None, Some(&1), None)
        );
    });
}

/// `#[preserve_context]`: its future captures the context current at the call.
#[contextvars::preserve_context]
async fn read_a_preserved() -> Option<u32> {
    A.get()
}

// `run` runs its closure, not the future the closure returns: an `async` block built in `run`
// runs where it is awaited, in the context current there, and its sets never reach the
// context `run` entered. `with_context` runs a future in a context; what the closure starts
// (a spawn, a `#[preserve_context]` call) takes the entered context along.
#[test]
fn run_does_not_run_the_future_its_closure_returns() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut ctx = Context::new().with_value(&A, 1);
        let built_in_ctx = ctx.run(|| async {
            let seen = A.get();
            let _ = A.set(2);
            seen
        });
        assert_eq!(built_in_ctx.await, None);
        assert_eq!(ctx.get(&A), Some(&1));
        assert_eq!(A.get(), Some(2)); // the set landed where the future was polled

        assert_eq!(async { A.get() }.with_context(ctx.clone()).await, Some(1));
        assert_eq!(ctx.run(read_a_preserved).await, Some(1));
        let spawned = ctx.run(|| contextvars::spawn(async { A.get() }));
        assert_eq!(spawned.await.unwrap(), Some(1));
    });
}

#[test]
fn two_contexts_with_the_same_variables_list_them_in_the_same_order() {
    // Whatever the order of the `set`s, in `with_value` or inside the context.
    let forward = Context::new()
        .with_value(&A, 1)
        .with_value(&B, "b".to_string())
        .with_value(&RETRIES, 4)
        .with_value(&DUP_FIRST, 5);
    let backward = Context::new()
        .with_value(&DUP_FIRST, 5)
        .with_value(&RETRIES, 4)
        .with_value(&B, "b".to_string())
        .with_value(&A, 1);
    let mut set_inside = Context::new().with_value(&RETRIES, 4);
    set_inside.run(|| {
        drop(DUP_FIRST.set(5));
        drop(B.set("b".to_string()));
        drop(A.set(1));
    });
    let listing = |ctx: &Context| {
        ctx.iter()
            .map(|(name, value)| format!("{name}={value:?}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(listing(&forward).len(), 4);
    assert_eq!(listing(&forward), listing(&backward));
    assert_eq!(listing(&forward), listing(&set_inside));
    assert_eq!(format!("{forward:?}"), format!("{backward:?}"));
}
