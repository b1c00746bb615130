//! The read-back after every step: the whole store against the model and the invariants.

use super::*;

impl<D: Datastore + 'static> Harness<D> {
    /// Reads the whole store back and compares it with the model and the invariants.
    pub(super) async fn check(&mut self) -> Step {
        let store = self.ipam.store();
        let problems = ipam_core::testing::check_invariants(store)
            .await
            .map_err(str)?;
        ensure!(problems.is_empty(), "invariants: {problems:?}");
        let blocks = store.list::<IpamBlock>(Scope::All).await.map_err(str)?;
        let affinities = store.list::<BlockAffinity>(Scope::All).await.map_err(str)?;
        let mut held = Held::default();
        for b in &blocks {
            self.check_block(&b.value, &mut held)?;
            self.check_sequence(&b.name, &b.revision, b.value.sequence_number)?;
        }
        check_affinities(&blocks, &affinities)?;
        ensure!(
            held.live == self.model.held,
            "store holds {:?}\nmodel holds {:?}",
            held.live,
            self.model.held
        );
        self.check_cooling(&held.stamped)?;
        self.check_handles().await
    }

    /// One block against the reservations; collects what it holds into `held`.
    fn check_block(&self, b: &IpamBlock, held: &mut Held) -> Step {
        let c = b.block_cidr().map_err(str)?;
        for o in 0..c.size() {
            let Some(attr) = b.attribute_of(o) else {
                continue;
            };
            let a = c.addr(o);
            ensure!(
                !self.model.reserved.contains(&a),
                "reserved {a} is allocated"
            );
            if attr.released_at.is_some() {
                held.stamped.insert(a);
            } else {
                held.live
                    .insert(a, attr.handle_id.clone().unwrap_or_default());
            }
        }
        let all_reserved = (0..c.size()).all(|o| self.model.reserved.contains(&c.addr(o)));
        ensure!(!all_reserved, "block {c} is fully reserved yet was claimed");
        Ok(())
    }

    /// Cooling-down addresses against the model's releases; forgets those folded back.
    fn check_cooling(&mut self, stamped: &BTreeSet<IpAddr>) -> Step {
        for a in stamped {
            ensure!(
                self.model.cooling.contains_key(a),
                "{a} is cooling down but was never released so"
            );
        }
        let m = &self.model;
        let early: Vec<_> = m
            .cooling
            .keys()
            .filter(|a| m.cooling_now(**a) && !stamped.contains(a))
            .collect();
        ensure!(
            early.is_empty(),
            "returned before their cooldown passed: {early:?}"
        );
        // Entries the store has folded back into the free queue are ordinary free addresses.
        self.model.cooling.retain(|a, _| stamped.contains(a));
        Ok(())
    }

    /// A block's sequence number rises with every write and never repeats an earlier
    /// block's of the same name.
    fn check_sequence(&mut self, name: &str, revision: &Revision, seq: u64) -> Step {
        let max = self.max_seq.entry(name.to_owned()).or_insert(0);
        match self.blocks_seen.get(name) {
            Some((rev, old)) if rev == revision => {
                ensure!(
                    *old == seq,
                    "block {name} changed its sequence number without a write"
                )
            }
            _ => ensure!(
                seq > *max || *max == 0,
                "block {name} was written with sequence number {seq}, not above {max}"
            ),
        }
        *max = (*max).max(seq);
        self.blocks_seen
            .insert(name.to_owned(), (revision.clone(), seq));
        Ok(())
    }

    async fn check_handles(&self) -> Step {
        for h in 0..HANDLES {
            let expected = self.model.of_handle(&format!("h{h}"));
            match self.ipam.ips_by_handle(&handle(h)).await {
                Ok(got) => {
                    let got: BTreeSet<IpAddr> = got.iter().map(IpNet::addr).collect();
                    ensure!(
                        got == expected,
                        "ips_by_handle(h{h}) = {got:?}, model {expected:?}"
                    );
                }
                Err(Error::HandleNotFound { .. }) => {
                    ensure!(expected.is_empty(), "h{h} not found but holds {expected:?}")
                }
                Err(e) => return Err(format!("ips_by_handle: {e}")),
            }
        }
        Ok(())
    }
}

/// What the store's blocks hold: live addresses with their handles, and cooling-down ones.
#[derive(Default)]
struct Held {
    live: BTreeMap<IpAddr, String>,
    stamped: BTreeSet<IpAddr>,
}

/// Between model operations no claim is left half done: every host block, empty or not,
/// has its confirmed affinity, and every affinity is confirmed and named by its block
/// (the allocator's invariants allow more, after a crash).
fn check_affinities(blocks: &[Stored<IpamBlock>], affinities: &[Stored<BlockAffinity>]) -> Step {
    for b in blocks {
        let Some(host) = b.value.host() else {
            continue;
        };
        let confirmed = affinities.iter().any(|a| {
            a.value.cidr == b.value.cidr
                && a.value.node == host
                && a.value.state == AffinityState::Confirmed
        });
        let c = b.value.cidr;
        ensure!(
            confirmed,
            "block {c} names {host} without a confirmed affinity"
        );
    }
    for a in affinities {
        ensure!(
            a.value.state == AffinityState::Confirmed,
            "affinity {} is left {:?}",
            a.name,
            a.value.state
        );
        let owner = blocks
            .iter()
            .find(|b| b.value.cidr == a.value.cidr)
            .and_then(|b| b.value.host());
        ensure!(
            owner == Some(a.value.node.as_str()),
            "affinity {} but the block names {owner:?}",
            a.name
        );
    }
    Ok(())
}
