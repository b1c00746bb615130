//! The operations of the model test: each applied to the allocator and to the model.

use super::*;

impl<D: Datastore + 'static> Harness<D> {
    pub(super) async fn auto_assign(&mut self, n: u8, h: u8, v4: u8, v6: u8) -> Step {
        let (v4, v6) = (u32::from(v4), u32::from(v6));
        let mut args = AutoAssignArgs::new(node(n), v4, v6).with_handle(handle(h));
        args.attrs.insert("node".into(), format!("n{n}"));
        let enough =
            v4 as usize <= self.family_count(false) && v6 as usize <= self.family_count(true);
        let own_enough = self.own_free(n, false).await? >= v4 as usize
            && self.own_free(n, true).await? >= v6 as usize;
        let got = self.ipam.auto_assign(&args).await;
        match got {
            Ok(got) => {
                ensure!(enough, "handed out more than the model has free: {got:?}");
                ensure!(
                    got.ipv4.len() == v4 as usize && got.ipv6.len() == v6 as usize,
                    "asked for {v4}+{v6}, got {got:?}"
                );
                for net in got.all() {
                    let a = net.addr();
                    let prefix = self.universe.iter().find(|u| u.0 == a).map(|u| u.1);
                    ensure!(
                        prefix == Some(net.prefix_len()),
                        "{net} is no pool address with its block prefix"
                    );
                    ensure!(
                        self.model.available(a),
                        "{a} handed out but not free in the model"
                    );
                    self.model.held.insert(a, format!("h{h}"));
                }
                if self.model.strict {
                    for net in got.all() {
                        let b = self.block(block_of(net.addr(), net.prefix_len())).await?;
                        let host = b.as_ref().and_then(|b| b.host().map(str::to_owned));
                        ensure!(
                            host == Some(format!("n{n}")),
                            "strict affinity: {net} is in a block of {host:?}"
                        );
                    }
                }
                Ok(())
            }
            Err(Error::PoolExhausted { .. } | Error::BlockLimit { .. }) if self.model.strict => {
                ensure!(
                    !own_enough,
                    "strict: refused although the node's blocks have room: {got:?}"
                );
                Ok(())
            }
            Err(Error::PoolExhausted { .. }) => {
                ensure!(!enough, "refused although the model has enough free");
                Ok(())
            }
            Err(e) => Err(format!("unexpected error: {e}")),
        }
    }

    /// Addresses of `family` the model deems free in blocks the node owns.
    async fn own_free(&self, n: u8, v6: bool) -> Result<usize, String> {
        let mine = self
            .ipam
            .store()
            .list::<IpamBlock>(Scope::Node(&format!("n{n}")))
            .await;
        let mut free = 0;
        for b in mine.map_err(str)? {
            let c = b.value.block_cidr().map_err(str)?;
            free += (0..c.size())
                .map(|o| c.addr(o))
                .filter(|a| a.is_ipv6() == v6 && self.model.available(*a))
                .count();
        }
        Ok(free)
    }

    pub(super) async fn assign_ip(&mut self, n: u8, h: u8, pick: u16) -> Step {
        let (a, prefix) = self.addr(pick);
        let block = self.block(block_of(a, prefix)).await?;
        let other_owner = block
            .as_ref()
            .and_then(|b| b.host())
            .is_some_and(|o| o != format!("n{n}"));
        let got = self
            .ipam
            .assign_ip(a, Some(&handle(h)), BTreeMap::new(), &node(n))
            .await;
        let m = &self.model;
        match got {
            Err(Error::Reserved { .. }) => {
                ensure!(m.reserved.contains(&a), "{a} refused as reserved")
            }
            Err(Error::AlreadyAssigned { .. }) => {
                ensure!(
                    m.held.contains_key(&a) || m.cooling_now(a),
                    "{a} refused as taken"
                )
            }
            Err(Error::StrictAffinity { .. }) => {
                ensure!(m.strict && other_owner, "{a} refused for strict affinity")
            }
            Err(e) => return Err(format!("unexpected error: {e}")),
            Ok(net) => {
                ensure!(m.available(a), "{a} assigned but not free in the model");
                ensure!(
                    !(m.strict && other_owner),
                    "{a} assigned in another node's block under strict affinity"
                );
                ensure!(
                    net == IpNet::new(a, prefix).map_err(str)?,
                    "{net} is not {a}/{prefix}"
                );
                self.model.held.insert(a, format!("h{h}"));
            }
        }
        Ok(())
    }

    pub(super) async fn release(&mut self, held: bool, pick: u16, guard: Guard) -> Step {
        let a = match self
            .model
            .held
            .keys()
            .nth(usize::from(pick) % self.model.held.len().max(1))
        {
            Some(a) if held => *a,
            _ => self.addr(pick).0,
        };
        let current = self.ipam.get_assignment_attributes(a).await.map_err(str)?;
        let seq = current.as_ref().and_then(|c| c.sequence);
        let mut req = ReleaseRequest::new(a);
        req.sequence = match guard {
            Guard::None => None,
            Guard::Right => seq,
            Guard::Wrong => Some(seq.map_or(1, |s| s ^ 0x5555)),
        };
        let out = self.ipam.release_ips(&[req]).await.map_err(str)?;
        ensure!(
            out.len() == 1 && out[0].0 == a,
            "one outcome for {a} expected: {out:?}"
        );
        let outcome = &out[0].1;
        let expected = match (self.model.held.contains_key(&a), guard) {
            (false, _) => ReleaseOutcome::NotAllocated,
            (true, Guard::Wrong) => ReleaseOutcome::BadSequenceNumber { current: seq },
            (true, _) if self.model.cooldown > 0 => ReleaseOutcome::CoolingDown,
            (true, _) => ReleaseOutcome::Released,
        };
        ensure!(
            *outcome == expected,
            "released {a} with {outcome:?}, expected {expected:?}"
        );
        if matches!(
            outcome,
            ReleaseOutcome::Released | ReleaseOutcome::CoolingDown
        ) {
            self.model.release(a);
        }
        Ok(())
    }

    pub(super) async fn release_by_handle(&mut self, h: u8) -> Step {
        let expected = self.model.of_handle(&format!("h{h}"));
        match self.ipam.release_by_handle(&handle(h)).await {
            Err(Error::HandleNotFound { .. }) => {
                ensure!(
                    expected.is_empty(),
                    "handle not found but the model holds {expected:?}"
                )
            }
            Err(e) => return Err(format!("unexpected error: {e}")),
            Ok(got) => {
                let got: BTreeSet<IpAddr> = got.iter().map(IpNet::addr).collect();
                ensure!(
                    got == expected,
                    "released {got:?}, the model holds {expected:?}"
                );
                for a in got {
                    self.model.release(a);
                }
            }
        }
        Ok(())
    }

    pub(super) async fn release_affinity(&mut self, n: u8, pick: u8, must_be_empty: bool) -> Step {
        let affs = self
            .ipam
            .store()
            .list::<BlockAffinity>(Scope::Node(&format!("n{n}")))
            .await;
        let affs = affs.map_err(str)?;
        let cidr = match affs.get(usize::from(pick) % affs.len().max(1)) {
            Some(aff) => BlockCidr::new(aff.value.cidr).map_err(str)?,
            None => {
                let (a, prefix) = self.addr(u16::from(pick));
                block_of(a, prefix)
            }
        };
        let non_empty = self.block(cidr).await?.is_some_and(|b| !b.is_empty());
        let owned = !affs.is_empty();
        match self
            .ipam
            .release_affinity(cidr, &node(n), must_be_empty)
            .await
        {
            Ok(()) => ensure!(
                !(owned && must_be_empty && non_empty),
                "released a non-empty block"
            ),
            Err(Error::BlockNotEmpty { .. }) => {
                ensure!(owned && must_be_empty && non_empty, "refused as not empty")
            }
            Err(e) => return Err(format!("unexpected error: {e}")),
        }
        Ok(())
    }

    /// Claims the block of a pool address for a node: granted when the block is missing,
    /// already the node's, or empty without an owner; refused when another node owns it,
    /// it holds addresses without an owner, or every address of it is reserved.
    pub(super) async fn claim_affinity(&mut self, n: u8, pick: u16) -> Step {
        let (a, prefix) = self.addr(pick);
        let cidr = block_of(a, prefix);
        let before = self.block(cidr).await?;
        let all_reserved = (0..cidr.size()).all(|o| self.model.reserved.contains(&cidr.addr(o)));
        let claimable = !all_reserved
            && before.as_ref().is_none_or(|b| match b.host() {
                Some(owner) => owner == format!("n{n}"),
                None => b.affinity.is_none() && b.is_empty(),
            });
        let (claimed, refused) = self
            .ipam
            .claim_affinity(cidr.net(), &node(n))
            .await
            .map_err(str)?;
        ensure!(
            claimed == [cidr] && refused.is_empty() || !claimable,
            "{cidr} is claimable but claimed {claimed:?}, refused {refused:?}"
        );
        ensure!(
            refused == [cidr] && claimed.is_empty() || claimable,
            "{cidr} is another's but claimed {claimed:?}, refused {refused:?}"
        );
        if claimable {
            let after = self.block(cidr).await?;
            let host = after.as_ref().and_then(|b| b.host().map(str::to_owned));
            ensure!(
                host == Some(format!("n{n}")),
                "{cidr} claimed but owned by {host:?}"
            );
        }
        Ok(())
    }

    pub(super) async fn gc(&mut self, pick: u16) -> Step {
        let (a, prefix) = self.addr(pick);
        let cidr = block_of(a, prefix);
        let freed = self.ipam.release_cooled_down(cidr).await.map_err(str)?;
        for f in freed {
            ensure!(
                self.model.cooling.contains_key(&f) && !self.model.cooling_now(f),
                "gc freed {f}, which the model does not have past its cooldown"
            );
        }
        Ok(())
    }

    async fn block(&self, cidr: BlockCidr) -> Result<Option<IpamBlock>, String> {
        match self.ipam.store().get::<IpamBlock>(&cidr.name()).await {
            Ok(b) => Ok(Some(b.value)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}
