use std::sync::MutexGuard;

use contextvars::context_var;

// A guard is `Sync` but must stay on the thread that locked: not `Send`.
#[context_var]
static LOCKED: MutexGuard<u8>;

fn main() {}
