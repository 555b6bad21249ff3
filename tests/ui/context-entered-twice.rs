use contextvars::Context;

fn main() {
    let mut ctx = Context::new();
    ctx.run(|| ctx.run(|| ()));
}
