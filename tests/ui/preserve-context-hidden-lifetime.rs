use std::cell::Ref;

use contextvars::preserve_context;

// The future holds the borrow of `cell`; edition 2021 needs its lifetime named, and no
// macro can see a lifetime hidden in a path, so the argument must write it: `Ref<'_, u32>`.
#[preserve_context]
async fn read(cell: Ref<u32>) -> u32 {
    *cell
}

fn main() {}
