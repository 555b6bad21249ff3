//! `#[context_var]` (B1-B4): every visibility, attributes kept, the name and its override,
//! identity by static not by name, defaults evaluated lazily and once, and `Debug` of
//! values with and without `Debug`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use contextvars::{Context, context_var};

// ---------------------------------------------------------------------------------------
// B1: visibility forms, reachable as the visibility says; attributes kept.

mod outer {
    use contextvars::context_var;

    /// Public.
    #[context_var]
    pub static PUBLIC: u8 = 1;

    #[context_var]
    pub(crate) static CRATE: u8 = 2;

    pub(crate) mod inner {
        use contextvars::context_var;

        #[context_var]
        pub(super) static SUPER: u8 = 3;

        #[context_var]
        pub(in crate::outer) static IN_PATH: u8 = 4;

        #[context_var]
        static PRIVATE: u8 = 5;

        pub(crate) fn private() -> u8 {
            PRIVATE.get()
        }
    }

    pub(crate) fn restricted() -> (u8, u8) {
        (inner::SUPER.get(), inner::IN_PATH.get())
    }
}

#[test]
fn every_visibility_form_is_reachable_where_it_says() {
    assert_eq!(outer::PUBLIC.get(), 1);
    assert_eq!(outer::CRATE.get(), 2);
    assert_eq!(outer::restricted(), (3, 4));
    assert_eq!(outer::inner::private(), 5);
    // The variable's type is reachable where the static is: tokens name it.
    let token: contextvars::Token<outer::PUBLIC> = outer::PUBLIC.set(9);
    assert_eq!(outer::PUBLIC.get(), 9);
    outer::PUBLIC.reset(token).unwrap();
    assert_eq!(outer::PUBLIC.get(), 1);
}

/// A value type that names something that does not exist: `GONE` must vanish entirely.
#[context_var]
#[cfg(any())]
static GONE: DoesNotExist;

#[context_var]
#[cfg(not(any()))]
#[allow(clippy::doc_markdown)]
/// Attributes after the macro's are kept on the static.
static KEPT: u8 = 6;

#[test]
fn attributes_are_kept_and_cfg_removes_the_whole_variable() {
    // `GONE` compiled away with its type and impl (else `DoesNotExist` would not resolve).
    assert_eq!(KEPT.get(), 6);
}

// ---------------------------------------------------------------------------------------
// B2: the name, and identity by static.

#[context_var]
static REQUEST_ID: String;

#[context_var(name = "tenant.id")]
static TENANT: u64;

#[context_var]
#[allow(non_upper_case_globals)]
static r#type: &'static str = "plain";

#[context_var(name = "dup")]
static FIRST: u32;

#[context_var(name = "dup")]
static SECOND: u32;

#[test]
fn name_is_the_identifier_unless_overridden() {
    assert_eq!(REQUEST_ID.name(), "REQUEST_ID");
    assert_eq!(TENANT.name(), "tenant.id");
    assert_eq!(r#type.name(), "type");
    let err = TENANT.try_get().unwrap_err();
    assert_eq!(err.var(), "tenant.id");
    assert!(err.to_string().contains("`tenant.id`"), "{err}");
    let dump = format!("{:?}", Context::new().with_value(&TENANT, 7));
    assert_eq!(dump, r#"Context {"tenant.id": 7}"#);
}

#[test]
fn identity_is_the_static_not_the_name() {
    let _first = FIRST.scoped(1);
    assert_eq!((FIRST.get(), SECOND.get()), (Some(1), None));
    let _second = SECOND.scoped(2);
    assert_eq!((FIRST.get(), SECOND.get()), (Some(1), Some(2)));
    let ctx = Context::current();
    assert_eq!((ctx.get(&FIRST), ctx.get(&SECOND)), (Some(&1), Some(&2)));
    let names: Vec<_> = ctx
        .iter()
        .map(|(name, _)| name)
        .filter(|n| *n == "dup")
        .collect();
    assert_eq!(names, ["dup", "dup"]);
}

// ---------------------------------------------------------------------------------------
// B3: a default is evaluated at most once, on first need, and is not a binding.

static LAZY_INITS: AtomicUsize = AtomicUsize::new(0);

#[context_var]
static LAZY: String = {
    LAZY_INITS.fetch_add(1, Ordering::SeqCst);
    String::from("computed")
};

#[test]
fn default_is_lazy_and_evaluated_once_across_threads() {
    // Declaring, setting, reading a set value and looking at contexts need no default.
    assert_eq!(LAZY_INITS.load(Ordering::SeqCst), 0);
    let token = LAZY.set("set".into());
    assert_eq!(LAZY.get(), "set");
    assert!(Context::current().contains(&LAZY));
    LAZY.reset(token).unwrap();
    assert!(!Context::current().contains(&LAZY));
    assert_eq!(LAZY_INITS.load(Ordering::SeqCst), 0);

    // First need from many threads at once: one evaluation.
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                LAZY.get()
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), "computed");
    }
    assert_eq!(LAZY.get(), "computed");
    assert_eq!(Context::new().run(|| LAZY.get()), "computed");
    assert_eq!(LAZY_INITS.load(Ordering::SeqCst), 1);
    // The default never shows in the mapping.
    assert_eq!(Context::current().get(&LAZY), None);
    assert!(Context::current().iter().all(|(name, _)| name != "LAZY"));
}

/// A non-`const` default built from several calls.
#[context_var]
static LABELS: Vec<String> = ["a", "b"].iter().map(ToString::to_string).collect();

#[test]
fn non_const_defaults() {
    assert_eq!(LABELS.get(), ["a", "b"]);
    assert_eq!(r#type.get(), "plain");
}

// ---------------------------------------------------------------------------------------
// B4 and `Debug`: values are `Send + Sync + 'static` (the UI suite shows the errors);
// values need neither `Clone` nor `Debug` to be stored.

/// No `Debug`, no `Clone`.
struct Secret(#[allow(dead_code, reason = "only its type name is shown")] u32);

#[context_var]
static SECRET: Secret;

#[context_var]
static LOCKED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[test]
fn debug_of_values_with_and_without_debug() {
    let ctx = Context::new()
        .with_value(&REQUEST_ID, "r-1".to_string())
        .with_value(&SECRET, Secret(42));
    let dump = format!("{ctx:?}");
    assert!(dump.contains(r#""REQUEST_ID": "r-1""#), "{dump}");
    assert!(
        dump.contains(r#""SECRET": test_context_var::Secret"#),
        "{dump}"
    );
    assert!(!dump.contains("42"), "{dump}");
}

#[test]
fn values_without_clone_are_borrowed_with_with() {
    let _guard = SECRET.scoped(Secret(1));
    assert!(SECRET.with(|secret| secret.is_some()));
    LOCKED.with(|locked| locked.lock().unwrap().push(3));
    assert_eq!(LOCKED.with(|locked| locked.lock().unwrap().clone()), [3]);
}

// ---------------------------------------------------------------------------------------
// Elided lifetimes in a `static`'s type mean `'static`, with the attribute as without it.

#[context_var]
static ROLE: &str = "member";

#[context_var]
static TAGS: &'_ [&str] = &["a", "b"];

#[context_var]
static GREETING: std::borrow::Cow<str> = std::borrow::Cow::Borrowed("hello");

#[context_var]
static PARSER: Option<fn(&str) -> &str> = None;

type Namer = std::sync::Arc<dyn Fn(&str) -> &str + Send + Sync>;

#[context_var]
static NAMER: Option<Namer> = None;

fn first_word(s: &str) -> &str {
    s.split(' ').next().unwrap_or(s)
}

#[test]
fn elided_lifetimes_in_the_type_are_static() {
    let role: &'static str = ROLE.get();
    assert_eq!(role, "member");
    let tags: &'static [&'static str] = TAGS.get();
    assert_eq!(tags, ["a", "b"]);
    let greeting: std::borrow::Cow<'static, str> = GREETING.get();
    assert_eq!(greeting, "hello");
    // A value made at run time, leaked to `'static`, is accepted like a literal.
    let owned: &'static str = Box::leak(String::from("admin").into_boxed_str());
    ROLE.sync_scope(owned, || assert_eq!(ROLE.get(), "admin"));
    GREETING.sync_scope(std::borrow::Cow::Owned("hi".to_string()), || {
        assert_eq!(GREETING.get(), "hi");
    });
    // Lifetimes of function types inside the type stay the function's own.
    PARSER.sync_scope(Some(first_word), || {
        let local = String::from("two words");
        assert_eq!(PARSER.get().unwrap()(&local), "two");
    });
    NAMER.sync_scope(Some(std::sync::Arc::new(first_word)), || {
        let local = String::from("three little words");
        assert_eq!(NAMER.with(|n| n.as_ref().unwrap()(&local).len()), 5);
    });
}
