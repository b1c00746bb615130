//! The `IPAMHandle` index: counts of addresses per block for each owner.
//!
//! The handle is written before the block on assignment, so that a crash between the two
//! leaves a count too high (found by `check`) and never an address no handle can release.

use crate::error::Result;
use crate::model::IpamHandle;
use crate::store::{Datastore, Revision, StoreError, Stored};

use super::Ipam;

impl<D: Datastore> Ipam<D> {
    /// Adds `n` addresses in `block` to `handle`. `known` carries what this operation last
    /// wrote, so that a second increment in the same call costs one write, not three. One
    /// attempt: a lost race refreshes `known` and is returned as a conflict to the caller's
    /// retry, which re-reads the block too.
    pub(crate) async fn increment_handle_once(
        &self,
        handle: &str,
        block: &str,
        n: u32,
        known: &mut Option<Stored<IpamHandle>>,
    ) -> Result<()> {
        let (value, revision) = counting(handle, block, n, known.take());
        let written = match &revision {
            Some(rev) => self.store.update(handle, value.clone(), rev).await,
            None => self.store.create(handle, value.clone()).await,
        };
        match written {
            Ok(rev) => {
                *known = Some(Stored {
                    name: handle.to_owned(),
                    revision: rev,
                    value,
                });
                Ok(())
            }
            Err(e) if e.is_lost_race() => {
                *known = self.handle_if_present(handle).await?;
                Err(e.into_conflict().into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes `n` addresses in `block` from `handle`, deleting the handle when it holds
    /// nothing. A missing handle is not an error: there is nothing left to count.
    pub(crate) async fn decrement_handle(&self, handle: &str, block: &str, n: u32) -> Result<()> {
        self.retry("updating a handle", move || async move {
            let Some(mut s) = self.handle_if_present(handle).await? else {
                return Ok(());
            };
            let count = s.value.block.entry(block.to_owned()).or_default();
            *count = count.saturating_sub(n);
            if *count == 0 {
                s.value.block.remove(block);
            }
            if s.value.block.is_empty() {
                self.delete_handle(s).await
            } else {
                self.store.update(handle, s.value, &s.revision).await?;
                Ok(())
            }
        })
        .await
    }

    /// Soft-deletes then deletes a handle read at `s.revision`.
    pub(crate) async fn delete_handle(&self, mut s: Stored<IpamHandle>) -> Result<()> {
        s.value.deleted = true;
        let rev = self.store.update(&s.name, s.value, &s.revision).await?;
        match self.store.delete::<IpamHandle>(&s.name, &rev).await {
            // Someone replaced the soft-deleted handle (a new assignment): theirs stands.
            Ok(()) | Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn handle_if_present(
        &self,
        handle: &str,
    ) -> Result<Option<Stored<IpamHandle>>> {
        match self.store.get::<IpamHandle>(handle).await {
            Ok(s) => Ok(Some(s)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// `handle` as it stands in `known` (a new one when `None`) counting `n` more addresses in
/// `block`, and the revision to write it at (`None`: create it).
pub(crate) fn counting(
    handle: &str,
    block: &str,
    n: u32,
    known: Option<Stored<IpamHandle>>,
) -> (IpamHandle, Option<Revision>) {
    let (mut value, revision) = match known {
        Some(s) => (s.value, Some(s.revision)),
        None => (IpamHandle::new(handle), None),
    };
    *value.block.entry(block.to_owned()).or_default() += n;
    (value, revision)
}
