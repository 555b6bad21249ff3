use contextvars::context_var;

#[context_var]
static mut COUNTER: u32 = 0;

fn main() {
    let _token = COUNTER.set(1);
}
