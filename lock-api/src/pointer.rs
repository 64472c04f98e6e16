//! The session traits for `&T`, `Box<T>` and `Arc<T>`: a pointer to a session is a session.
//!
//! So a function generic over `L: DistributedLock` takes a `&MemoryLock`, an
//! `Arc<dyn Coordination>` or a `Box<dyn DistributedLock>` as they are. Each method hands the
//! pointee's future back as it is (no second box), so calling through an `Arc<dyn …>` costs
//! what calling the pointee does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{
    DistributedLock, DistributedRwLock, DistributedSemaphore, LeaderElection, LeaderInfo,
    LeaderWatch, Leadership, LockError, LockGuard,
};

/// What an `#[async_trait]` method returns.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T, LockError>> + Send + 'a>>;

/// Methods of `$trait` that call the pointee's, with the signatures `#[async_trait]` gives
/// them: `'life0` for `&self`, one lifetime per borrowed argument (as listed), `'async_trait`.
macro_rules! forward {
    ($trait:ident: $(fn $method:ident<$($life:lifetime),*>($($arg:ident: $ty:ty),*) -> $out:ty;)*) => {
        $(
            fn $method<'life0, $($life,)* 'async_trait>(
                &'life0 self,
                $($arg: $ty),*
            ) -> Boxed<'async_trait, $out>
            where
                'life0: 'async_trait,
                $($life: 'async_trait,)*
                Self: 'async_trait,
            {
                <T as $trait>::$method(&**self, $($arg),*)
            }
        )*
    };
}

/// The four session traits for one pointer type, over `T: ?Sized` (so `dyn` too).
macro_rules! session_pointer {
    ([$($generics:tt)*] $pointer:ty) => {
        impl<$($generics)*> DistributedLock for $pointer
        where
            T: DistributedLock + ?Sized,
        {
            forward!(DistributedLock:
                fn lock<'life1>(name: &'life1 str) -> LockGuard;
                fn try_lock<'life1>(name: &'life1 str) -> Option<LockGuard>;
                fn close<>() -> ();
            );
        }

        impl<$($generics)*> LeaderElection for $pointer
        where
            T: LeaderElection + ?Sized,
        {
            forward!(LeaderElection:
                fn campaign<'life1, 'life2>(name: &'life1 str, value: &'life2 [u8]) -> Leadership;
                fn leader<'life1>(name: &'life1 str) -> Option<LeaderInfo>;
                fn observe<'life1>(name: &'life1 str) -> LeaderWatch;
            );
        }

        impl<$($generics)*> DistributedRwLock for $pointer
        where
            T: DistributedRwLock + ?Sized,
        {
            forward!(DistributedRwLock:
                fn read<'life1>(name: &'life1 str) -> LockGuard;
                fn try_read<'life1>(name: &'life1 str) -> Option<LockGuard>;
                fn write<'life1>(name: &'life1 str) -> LockGuard;
                fn try_write<'life1>(name: &'life1 str) -> Option<LockGuard>;
            );
        }

        impl<$($generics)*> DistributedSemaphore for $pointer
        where
            T: DistributedSemaphore + ?Sized,
        {
            forward!(DistributedSemaphore:
                fn acquire<'life1>(name: &'life1 str, limit: u32) -> LockGuard;
                fn try_acquire<'life1>(name: &'life1 str, limit: u32) -> Option<LockGuard>;
            );
        }
    };
}

session_pointer!(['a, T] &'a T);
session_pointer!([T] Box<T>);
session_pointer!([T] Arc<T>);
