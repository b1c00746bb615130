//! Writing an assignment: the addresses taken from a block, and the block written with
//! its handle, in one commit where the store has one, else the handle first and put back
//! if the block write fails.

use ipnet::IpNet;

use super::Request;
use crate::error::Result;
use crate::ipam::Ipam;
use crate::model::{AllocationAttribute, IpamBlock, IpamHandle};
use crate::names::NodeName;
use crate::store::{BatchWrite, Datastore, StoreError, Stored, Write};

impl<D: Datastore> Ipam<D> {
    /// Takes up to `n` addresses from a block, re-reading it on conflict. With `owner`, the
    /// block is used only while it is still that node's.
    pub(super) async fn assign_from_block(
        &self,
        first: Stored<IpamBlock>,
        req: &mut Request<'_>,
        n: u32,
        owner: Option<&NodeName>,
    ) -> Result<Vec<IpNet>> {
        let name = &first.name.clone();
        let state = (Some(first), req);
        self.retry_with(
            "assigning from a block",
            state,
            move |(mut current, req)| async move {
                let result = async {
                    let mut block = match current.take() {
                        Some(b) => b,
                        None => match self.store.get::<IpamBlock>(name).await {
                            Ok(b) => b,
                            Err(StoreError::NotFound { .. }) => return Ok(Vec::new()),
                            Err(e) => return Err(e.into()),
                        },
                    };
                    // A corrupt block is skipped, never written; the others go on serving.
                    if owner.is_some_and(|o| block.value.host() != Some(o.as_str()))
                        || block.value.validate().is_err()
                    {
                        return Ok(Vec::new());
                    }
                    let cidr = block.value.block_cidr()?;
                    block
                        .value
                        .fold_cooldown(self.now(), req.config.ip_cooldown_seconds);
                    let reservations = &req.reservations;
                    let skip = |o: u32| {
                        !reservations.is_empty() && reservations.covering(cidr.addr(o)).is_some()
                    };
                    let ordinals = block.value.assign(n, &req.attr, skip);
                    if ordinals.is_empty() {
                        return Ok(Vec::new());
                    }
                    self.write_assignment(block, &req.attr, ordinals.len() as u32, &mut req.handle)
                        .await?;
                    Ok(ordinals.iter().map(|&o| cidr.addr_net(o)).collect())
                }
                .await;
                ((None, req), result)
            },
        )
        .await
    }

    /// Writes an assigned block: the handle first, then the block; the handle is put back
    /// if the block write fails.
    pub(super) async fn write_assignment(
        &self,
        block: Stored<IpamBlock>,
        attr: &AllocationAttribute,
        n: u32,
        known: &mut Option<Stored<IpamHandle>>,
    ) -> Result<()> {
        let cidr = block.value.cidr.to_string();
        match &attr.handle_id {
            Some(h) if self.store.supports_commit() => {
                self.commit_assignment(block, h, &cidr, n, known).await
            }
            Some(h) => {
                self.increment_handle_once(h, &cidr, n, known).await?;
                let written = self
                    .store
                    .update(&block.name, block.value, &block.revision)
                    .await;
                if let Err(e) = written {
                    *known = None;
                    // Undoing the increment is its own operation, retried to completion:
                    // leaving it half done would over-count the handle on the next attempt.
                    self.decrement_handle(h, &cidr, n).await?;
                    return Err(e.into());
                }
                Ok(())
            }
            None => {
                self.store
                    .update(&block.name, block.value, &block.revision)
                    .await?;
                Ok(())
            }
        }
    }

    /// The block and its handle in one transaction. Any failure is returned as a conflict
    /// after refreshing what is known of the handle, so the retry re-reads both.
    async fn commit_assignment(
        &self,
        block: Stored<IpamBlock>,
        handle: &str,
        cidr: &str,
        n: u32,
        known: &mut Option<Stored<IpamHandle>>,
    ) -> Result<()> {
        let (value, revision) = crate::ipam::handle::counting(handle, cidr, n, known.take());
        let name = handle.to_owned();
        let handle_write = match revision {
            Some(revision) => Write::Update {
                name: name.clone(),
                value: value.clone(),
                revision,
            },
            None => Write::Create {
                name: name.clone(),
                value: value.clone(),
            },
        };
        let block_write = Write::Update {
            name: block.name,
            value: block.value,
            revision: block.revision,
        };
        let batch = vec![
            BatchWrite::Handle(handle_write),
            BatchWrite::Block(block_write),
        ];
        match self.store.commit(batch).await {
            Ok(revisions) => {
                if let Some(Some(revision)) = revisions.into_iter().next() {
                    *known = Some(Stored {
                        name,
                        revision,
                        value,
                    });
                }
                Ok(())
            }
            // Someone else wrote the handle or the block first: re-read both and retry.
            Err(e) if e.is_lost_race() => {
                *known = self.handle_if_present(handle).await?;
                Err(e.into_conflict().into())
            }
            Err(e) => Err(e.into()),
        }
    }
}
