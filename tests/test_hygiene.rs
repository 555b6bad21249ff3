//! The expansions name nothing from the caller's scope: they compile next to dummy `core`,
//! `std` and `contextvars` modules, in modules without the prelude, through a renamed
//! crate (`crate = path`), and their hidden bindings never meet the user's.

extern crate contextvars as cv;

/// Under its default path, `::contextvars::__private`, beside a local `contextvars` module
/// and items named like those the expansions use.
#[no_implicit_prelude]
mod default_path {
    #![allow(dead_code, reason = "the dummies only shadow names")]

    mod core {}
    mod std {}
    mod contextvars {}
    struct Context;
    struct ContextVar;
    struct PhantomData;
    trait Future {}
    trait FutureExt {}
    trait Key {}
    trait Captures {}
    fn unreachable() {}

    #[::cv::context_var]
    pub(crate) static REQUEST: u32;

    #[::cv::context_var(name = "user")]
    pub(crate) static USER: &'static str = "guest";

    #[::cv::context_var(baggage = "hygiene.tenant")]
    pub(crate) static TENANT: ::std::string::String;

    #[::cv::preserve_context]
    pub(crate) async fn read(extra: &str) -> (::core::option::Option<u32>, &'static str, usize) {
        (REQUEST.get(), USER.get(), extra.len())
    }
}

/// Through a renamed crate, given with `crate = path`, with `contextvars` shadowed.
#[no_implicit_prelude]
mod renamed {
    #![allow(dead_code, reason = "the dummies only shadow names")]

    mod core {}
    mod contextvars {}

    #[::cv::context_var(crate = ::cv)]
    pub(crate) static TENANT: u64 = 7;

    pub(crate) struct Service {
        pub(crate) name: &'static str,
    }

    impl Service {
        #[::cv::preserve_context(crate = ::cv)]
        pub(crate) async fn tenant(&self, (a, b): (u64, u64), __arg1: u64) -> u64 {
            // The user's `__self`, `__ret` and `__context` are not the expansion's.
            let __self = a;
            let __ret = b;
            let __context = __arg1;
            let _ = self.name;
            TENANT.get() + __self + __ret + __context
        }
    }
}

/// The string form of `crate`, as serde and tokio accept it.
mod string_path {
    #[cv::context_var(crate = "cv")]
    pub(crate) static DEPTH: u8 = 1;

    #[cv::preserve_context(crate = "cv")]
    pub(crate) async fn depth() -> u8 {
        DEPTH.get()
    }
}

fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(fut)
}

#[test]
fn default_path_expands_beside_dummy_modules() {
    let _token = default_path::REQUEST.set(3);
    assert_eq!(block_on(default_path::read("ab")), (Some(3), "guest", 2));
    assert_eq!(default_path::USER.name(), "user");
}

#[test]
fn renamed_crate_path_expands_beside_dummy_modules() {
    let service = renamed::Service { name: "svc" };
    assert_eq!(block_on(service.tenant((1, 2), 4)), 7 + 1 + 2 + 4);
}

#[test]
fn string_crate_path() {
    assert_eq!(block_on(string_path::depth()), 1);
}
