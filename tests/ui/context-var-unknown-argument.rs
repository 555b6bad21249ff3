use contextvars::context_var;

#[context_var(default = 3)]
static RETRIES: u32;

fn main() {
    let _ = RETRIES.get();
}
