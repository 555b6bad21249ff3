//! The API: context variables (`var`), the tokens and scope guards that undo a `set`
//! (`token`, `guard`), contexts (`context`), the errors users handle (`error`), and the
//! string-keyed metadata map, itself a variable (`metadata`). Built on the engine only.

pub(crate) mod carried;
pub(crate) mod context;
pub(crate) mod error;
pub(crate) mod guard;
pub mod metadata;
pub(crate) mod token;
pub(crate) mod var;
