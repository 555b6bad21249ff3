//! The engine: the persistent map that holds a context's bindings (`map`) and the thread's
//! current context with the rule of which task may see it (`current`). It knows nothing of
//! variables' types, tokens or futures; every layer above builds on it.

pub(crate) mod current;
pub(crate) mod map;
pub(crate) mod quiet;
