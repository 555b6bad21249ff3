//! The API: context variables (`var`), the tokens and scope guards that undo a `set`
//! (`token`, `guard`), contexts (`context`) and the errors users handle (`error`). Built on
//! the engine only.

pub(crate) mod context;
pub(crate) mod error;
pub(crate) mod guard;
pub(crate) mod token;
pub(crate) mod var;
