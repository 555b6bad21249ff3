use std::rc::Rc;

use contextvars::context_var;

#[context_var]
static USER: Rc<String>;

fn main() {}
