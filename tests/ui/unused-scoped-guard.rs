#![deny(unused_must_use)]

use contextvars::context_var;

#[context_var]
static USER: &'static str = "guest";

fn main() {
    // The guard is dropped at once, so the value is reset before the next line.
    USER.scoped("ann");
    assert_eq!(USER.get(), "ann");
}
