//! The one compare-and-swap retry loop of the project.
//!
//! Every read-modify-write of a stored object is an attempt that either succeeds, fails, or
//! finds that someone else wrote first (a conflict). [`retry_conflicts`] runs an attempt
//! again only on a conflict, at most a bounded number of times; every other outcome is
//! returned at once. The allocator, and the API server's patch and delete, use it; nothing
//! else in the workspace loops on conflicts.

use std::future::Future;

/// How many conflicting attempts an operation tolerates before giving up (Calico's number).
pub const MAX_ATTEMPTS: u32 = 100;

/// An error that may be a compare-and-swap conflict, the one kind [`retry_conflicts`] retries.
pub trait Conflicting {
    /// Whether the attempt lost a race and may succeed on a fresh read.
    fn is_conflict(&self) -> bool;
}

/// Why [`retry_conflicts`] gave up.
#[derive(Debug, PartialEq, Eq)]
pub enum RetryError<E> {
    /// An attempt failed with something other than a conflict.
    Failed(E),
    /// Every attempt conflicted; the last conflict is kept.
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last conflict.
        last: E,
    },
}

/// Runs `attempt` until it returns anything but a conflict, at most `limit` times.
///
/// Each attempt takes `state` and hands it back with its result, so an attempt can carry
/// what it learnt (an object it read or wrote) to the next one. Attempts are closures that
/// return futures, not async closures, so that every operation's future stays `Send`.
///
/// ```
/// use ipam_core::retry::{Conflicting, RetryError, retry_conflicts};
/// #[derive(Debug, PartialEq)]
/// struct Lost;
/// impl Conflicting for Lost { fn is_conflict(&self) -> bool { true } }
/// # pollster::block_on(async {
/// // Two lost races, then a win: the third attempt's value is returned.
/// let won = retry_conflicts(5, 0, |n| async move { (n + 1, if n < 2 { Err(Lost) } else { Ok(n) }) });
/// assert_eq!(won.await, Ok(2));
/// // Always losing ends after the limit, with the last conflict.
/// let lost = retry_conflicts(3, (), |()| async { ((), Err::<(), _>(Lost)) });
/// assert_eq!(lost.await, Err(RetryError::Exhausted { attempts: 3, last: Lost }));
/// # });
/// ```
pub async fn retry_conflicts<S, T, E, Fut>(
    limit: u32,
    state: S,
    attempt: impl FnMut(S) -> Fut,
) -> Result<T, RetryError<E>>
where
    E: Conflicting,
    Fut: Future<Output = (S, Result<T, E>)>,
{
    retry_counting_conflicts(limit, state, attempt, || {}).await
}

/// [`retry_conflicts`], calling `on_conflict` for every attempt that conflicted (for a
/// count in the metrics). The count is taken here rather than by wrapping `attempt`,
/// because every wrapping future adds a frame to polls that are already deep.
pub async fn retry_counting_conflicts<S, T, E, Fut>(
    limit: u32,
    mut state: S,
    mut attempt: impl FnMut(S) -> Fut,
    mut on_conflict: impl FnMut(),
) -> Result<T, RetryError<E>>
where
    E: Conflicting,
    Fut: Future<Output = (S, Result<T, E>)>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (back, result) = attempt(state).await;
        state = back;
        match result {
            Ok(v) => return Ok(v),
            Err(e) if e.is_conflict() => {
                on_conflict();
                if attempts >= limit {
                    return Err(RetryError::Exhausted { attempts, last: e });
                }
            }
            Err(e) => return Err(RetryError::Failed(e)),
        }
    }
}

impl Conflicting for crate::StoreError {
    fn is_conflict(&self) -> bool {
        matches!(self, crate::StoreError::Conflict { .. })
    }
}

impl Conflicting for crate::Error {
    fn is_conflict(&self) -> bool {
        matches!(self, crate::Error::Store(e) if e.is_conflict())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Kind, StoreError};

    fn conflict() -> StoreError {
        StoreError::Conflict {
            kind: Kind::IpamBlock,
            name: "b".into(),
        }
    }

    #[test]
    fn other_errors_are_returned_at_once() {
        let mut calls = 0;
        let r = pollster::block_on(retry_conflicts(10, &mut calls, |calls| async move {
            *calls += 1;
            let e = StoreError::not_found::<crate::IpamBlock>("b");
            (calls, Err::<(), _>(e))
        }));
        assert!(matches!(
            r,
            Err(RetryError::Failed(StoreError::NotFound { .. }))
        ));
        assert_eq!(calls, 1);
    }

    #[test]
    fn conflicts_are_retried_up_to_the_limit() {
        let mut calls = 0;
        let r = pollster::block_on(retry_conflicts(7, &mut calls, |calls| async move {
            *calls += 1;
            (calls, Err::<(), _>(conflict()))
        }));
        assert!(matches!(r, Err(RetryError::Exhausted { attempts: 7, .. })));
        assert_eq!(calls, 7);
    }
}
