//! Values whose drop runs no code that could see a context.
//!
//! Every value a context holds is dropped inside that context, so that a value's `Drop` may
//! read and set variables. That costs a context's end an enter, and a drop of each value on
//! its own. For a `String`, a `Vec<u8>` or an `Arc<str>`, dropping frees memory and nothing
//! else: no code of anyone's runs that could look at the current context, so dropping it
//! outside cannot be told apart from dropping it inside. A context whose values are all such
//! is let go of at once ([`Map::holds_no_drop`](crate::map::Map::holds_no_drop)), as one whose
//! values are all held in place already is.
//!
//! Only this crate says which types these are ([`QuietDrop`] is sealed): a type qualifies
//! where its drop glue, all the way down, is the standard library's and frees memory only.
//! `#[context_var]` hands the map the proof ([`QuietDropProof`]) for every value type that
//! qualifies; any other type is dropped inside its context, as before.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;

pub(crate) mod sealed {
    /// Keeps [`QuietDrop`](super::QuietDrop) for this crate to implement.
    pub trait Sealed {}
}

/// A type whose drop runs no code but the standard library's freeing of memory: no `Drop` of
/// anyone's, and so nothing that could read or set a context variable. Sealed: this crate
/// implements it for the standard library's owned strings, the primitive types, and boxes,
/// vectors, options and tuples of such types.
#[doc(hidden)]
pub trait QuietDrop: sealed::Sealed {}

macro_rules! quiet {
    ($($ty:ty),* $(,)?) => {
        $(
            impl sealed::Sealed for $ty {}
            impl QuietDrop for $ty {}
        )*
    };
}

quiet!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    &'static str,
    String,
    Box<str>,
    Arc<str>,
    Cow<'static, str>,
    std::time::Duration,
    std::time::Instant,
    std::time::SystemTime,
    std::net::IpAddr,
    std::net::SocketAddr,
);

macro_rules! quiet_over {
    ($($ty:ident<$param:ident>),* $(,)?) => {
        $(
            impl<$param: QuietDrop> sealed::Sealed for $ty<$param> {}
            impl<$param: QuietDrop> QuietDrop for $ty<$param> {}
        )*
    };
}

quiet_over!(Box<T>, Vec<T>, Option<T>, Arc<T>);

impl<T: QuietDrop> sealed::Sealed for Box<[T]> {}
impl<T: QuietDrop> QuietDrop for Box<[T]> {}
impl<T: QuietDrop> sealed::Sealed for Arc<[T]> {}
impl<T: QuietDrop> QuietDrop for Arc<[T]> {}

macro_rules! quiet_tuples {
    ($(($($param:ident),+)),* $(,)?) => {
        $(
            impl<$($param: QuietDrop),+> sealed::Sealed for ($($param,)+) {}
            impl<$($param: QuietDrop),+> QuietDrop for ($($param,)+) {}
        )*
    };
}

quiet_tuples!((A), (A, B), (A, B, C), (A, B, C, D));

// No `Rc`, `Cell` or `RefCell`: a context's values are `Send + Sync`, which they are not.

/// Evidence that `T` is [`QuietDrop`], which only code that knows it can make
/// ([`QuietDropProof::new`]). A variable's [`Key`](crate::Key) hands it to the map so that a
/// context whose values all drop quietly is let go of without being entered;
/// `#[context_var]` writes it wherever the value type qualifies.
#[doc(hidden)]
pub struct QuietDropProof<T>(PhantomData<fn() -> T>);

impl<T: QuietDrop> QuietDropProof<T> {
    /// The proof, for a type that drops quietly.
    #[must_use]
    pub const fn new() -> Self {
        QuietDropProof(PhantomData)
    }
}

impl<T: QuietDrop> Default for QuietDropProof<T> {
    fn default() -> Self {
        QuietDropProof::new()
    }
}

impl<T> Clone for QuietDropProof<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for QuietDropProof<T> {}

/// Declares that `$ty`, a type of this crate, drops quietly: every field is a type that does,
/// and it has no `Drop` of its own. Its `Key` then gives the proof.
macro_rules! drops_quietly {
    ($ty:ty) => {
        impl $crate::quiet::sealed::Sealed for $ty {}
        impl $crate::quiet::QuietDrop for $ty {}
    };
}
pub(crate) use drops_quietly;
