use std::cell::Cell;

use contextvars::context_var;

#[context_var]
static HITS: Cell<u32> = Cell::new(0);

fn main() {}
