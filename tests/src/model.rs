//! The model-based property test of the allocator, generic over the datastore.
//!
//! Random sequences of operations from several nodes run against [`Ipam`] and against a
//! reference model that is trivially correct: a map from address to handle, a map of
//! addresses cooling down, the reserved set and the config. After every step the store is
//! read back whole and compared with the model, and the invariants are checked: no address
//! held twice, blocks and handles agree, sequence numbers only rise, only confirmed
//! affinities own blocks, reserved addresses are never handed out.
//!
//! Pools are tiny (/27 with /30 and /29 blocks, a /122 with /125 blocks) so that a few
//! dozen operations exhaust them, borrow across nodes and recycle blocks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipam_core::cidr::{ip_to_u128, u128_to_ip};
use ipam_core::{
    AffinityState, AutoAssignArgs, BlockAffinity, BlockCidr, Datastore, Error, HandleId, IpPool,
    IpReservation, Ipam, IpamBlock, IpamConfig, ManualClock, NodeName, ReleaseOutcome,
    ReleaseRequest, Revision, Scope, Stored,
};
use ipnet::IpNet;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

const NODES: u8 = 3;
const HANDLES: u8 = 6;
const POOLS: [(&str, &str, u8); 3] = [
    ("v4-a", "10.0.0.0/27", 30),
    ("v4-b", "10.1.0.0/27", 29),
    ("v6", "fd00::/122", 125),
];
/// Two reservations; together they cover block 10.0.0.16/30 whole, neither does alone.
const RESERVED: [(&str, &[&str]); 2] = [
    ("r1", &["10.0.0.5", "10.0.0.16/31", "fd00::9"]),
    ("r2", &["10.0.0.18/31", "10.1.0.3"]),
];
const COOLDOWN: u32 = 30;

/// One operation of the random sequence. Small integers pick nodes, handles and addresses.
#[derive(Clone, Debug)]
enum Op {
    AutoAssign {
        node: u8,
        handle: u8,
        v4: u8,
        v6: u8,
    },
    AssignIp {
        node: u8,
        handle: u8,
        addr: u16,
    },
    Release {
        held: bool,
        pick: u16,
        guard: Guard,
    },
    ReleaseByHandle {
        handle: u8,
    },
    ReleaseAffinity {
        node: u8,
        pick: u8,
        must_be_empty: bool,
    },
    ReleaseHost {
        node: u8,
    },
    SetConfig {
        strict: bool,
        cooldown: bool,
        max_blocks: u8,
    },
    Advance {
        secs: u8,
    },
    Gc {
        addr: u16,
    },
    ClaimAffinity {
        node: u8,
        pick: u16,
    },
}

/// How a release names the allocation's sequence number.
#[derive(Clone, Copy, Debug)]
enum Guard {
    None,
    Right,
    Wrong,
}

/// The reference model.
#[derive(Default)]
struct Model {
    held: BTreeMap<IpAddr, String>,
    /// Address -> second it was released at, for releases under a cooldown.
    cooling: BTreeMap<IpAddr, i64>,
    now: i64,
    strict: bool,
    cooldown: u32,
    reserved: BTreeSet<IpAddr>,
}

/// The allocator under test, the model, and what the checks remember between steps.
struct Harness<D> {
    ipam: Ipam<D>,
    clock: Arc<ManualClock>,
    model: Model,
    /// Every pool address with its block prefix.
    universe: Vec<(IpAddr, u8)>,
    blocks_seen: HashMap<String, (Revision, u64)>,
    max_seq: HashMap<String, u64>,
}

type Step = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Runs the model test for `cases` random sequences (or `PROPTEST_CASES`, if larger) on
/// fresh stores from `make_store`, and panics with the shrunk failing sequence if any step
/// disagrees with the model or breaks an invariant.
pub fn run_model_test<D: Datastore + 'static>(make_store: impl Fn() -> D, cases: u32) {
    run_model_test_async(|| std::future::ready(make_store()), cases);
}

/// [`run_model_test`] with a store made asynchronously, on the test's runtime (a network
/// store's connection lives on the runtime that made it).
pub fn run_model_test_async<D, F, Fut>(make_store: F, cases: u32)
where
    D: Datastore + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = D>,
{
    let from_env = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok());
    let config = Config {
        cases: cases.max(from_env.unwrap_or(0)),
        failure_persistence: None,
        ..Config::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(op(), 1..48), |ops| {
        rt.block_on(async { run_case(make_store().await, &ops).await })
            .map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, ops)) => {
            panic!("model test failed: {why}\nminimal sequence: {ops:#?}")
        }
        Err(e) => panic!("model test aborted: {e}"),
    }
}

fn op() -> impl Strategy<Value = Op> {
    let node = 0..NODES;
    let handle = 0..HANDLES;
    let guard = prop_oneof![Just(Guard::None), Just(Guard::Right), Just(Guard::Wrong)];
    prop_oneof![
        6 => (node.clone(), handle.clone(), 0u8..=3, 0u8..=2)
            .prop_map(|(node, handle, v4, v6)| Op::AutoAssign { node, handle, v4, v6 }),
        2 => (node.clone(), handle.clone(), any::<u16>())
            .prop_map(|(node, handle, addr)| Op::AssignIp { node, handle, addr }),
        4 => (any::<bool>(), any::<u16>(), guard)
            .prop_map(|(held, pick, guard)| Op::Release { held, pick, guard }),
        2 => handle.prop_map(|handle| Op::ReleaseByHandle { handle }),
        1 => (node.clone(), any::<u8>(), any::<bool>()).prop_map(|(node, pick, must_be_empty)| {
            Op::ReleaseAffinity { node, pick, must_be_empty }
        }),
        1 => node.clone().prop_map(|node| Op::ReleaseHost { node }),
        1 => (any::<bool>(), any::<bool>(), 0u8..3).prop_map(|(strict, cooldown, max_blocks)| {
            Op::SetConfig { strict, cooldown, max_blocks }
        }),
        2 => (1u8..=40).prop_map(|secs| Op::Advance { secs }),
        1 => any::<u16>().prop_map(|addr| Op::Gc { addr }),
        1 => (node, any::<u16>()).prop_map(|(node, pick)| Op::ClaimAffinity { node, pick }),
    ]
}

async fn run_case<D: Datastore + 'static>(store: D, ops: &[Op]) -> Step {
    let mut h = Harness::new(store).await?;
    h.check().await.map_err(|e| format!("after setup: {e}"))?;
    for (i, op) in ops.iter().enumerate() {
        h.apply(op)
            .await
            .map_err(|e| format!("step {i} {op:?}: {e}"))?;
        h.check()
            .await
            .map_err(|e| format!("after step {i} {op:?}: {e}"))?;
    }
    Ok(())
}

fn node(i: u8) -> NodeName {
    NodeName::new(format!("n{i}")).expect("a valid node name")
}

fn handle(i: u8) -> HandleId {
    HandleId::new(format!("h{i}")).expect("a valid handle")
}

fn block_of(addr: IpAddr, prefix: u8) -> BlockCidr {
    BlockCidr::containing(addr, prefix).expect("pool addresses lie in valid blocks")
}

impl Model {
    /// Whether `addr` may be handed out now.
    fn available(&self, addr: IpAddr) -> bool {
        !self.held.contains_key(&addr) && !self.reserved.contains(&addr) && !self.cooling_now(addr)
    }

    /// Whether `addr` is released but its cooldown has not passed.
    fn cooling_now(&self, addr: IpAddr) -> bool {
        self.cooling
            .get(&addr)
            .is_some_and(|&at| at + i64::from(self.cooldown) > self.now)
    }

    fn release(&mut self, addr: IpAddr) {
        self.held.remove(&addr);
        if self.cooldown > 0 {
            self.cooling.insert(addr, self.now);
        }
    }

    fn of_handle(&self, h: &str) -> BTreeSet<IpAddr> {
        self.held
            .iter()
            .filter(|(_, v)| *v == h)
            .map(|(a, _)| *a)
            .collect()
    }
}

impl<D: Datastore + 'static> Harness<D> {
    async fn new(store: D) -> Result<Self, String> {
        let start = time::OffsetDateTime::from_unix_timestamp(1_750_000_000).map_err(str)?;
        let clock = Arc::new(ManualClock::new(start));
        let ipam = Ipam::new(store, clock.clone());
        let mut universe = Vec::new();
        for (name, cidr, size) in POOLS {
            let net: IpNet = cidr.parse().map_err(str)?;
            let mut pool = IpPool::new(net);
            pool.block_size = size;
            ipam.create_pool(name, pool).await.map_err(str)?;
            let (lo, hi) = (ip_to_u128(net.network()), ip_to_u128(net.broadcast()));
            universe.extend((lo..=hi).map(|n| (u128_to_ip(n, &net), size)));
        }
        let mut model = Model::default();
        for (name, cidrs) in RESERVED {
            let r = IpReservation {
                reserved_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            };
            ipam.create_reservation(name, r).await.map_err(str)?;
            for c in cidrs {
                let net = ipam_core::cidr::parse_cidr_or_ip(c).map_err(str)?;
                model
                    .reserved
                    .extend(universe.iter().map(|u| u.0).filter(|a| net.contains(a)));
            }
        }
        Ok(Harness {
            ipam,
            clock,
            model,
            universe,
            blocks_seen: HashMap::new(),
            max_seq: HashMap::new(),
        })
    }

    fn addr(&self, pick: u16) -> (IpAddr, u8) {
        self.universe[usize::from(pick) % self.universe.len()]
    }

    fn family_count(&self, v6: bool) -> usize {
        self.universe
            .iter()
            .filter(|(a, _)| a.is_ipv6() == v6 && self.model.available(*a))
            .count()
    }

    async fn apply(&mut self, op: &Op) -> Step {
        match *op {
            Op::AutoAssign {
                node: n,
                handle: h,
                v4,
                v6,
            } => self.auto_assign(n, h, v4, v6).await,
            Op::AssignIp {
                node: n,
                handle: h,
                addr,
            } => self.assign_ip(n, h, addr).await,
            Op::Release { held, pick, guard } => self.release(held, pick, guard).await,
            Op::ReleaseByHandle { handle: h } => self.release_by_handle(h).await,
            Op::ReleaseAffinity {
                node: n,
                pick,
                must_be_empty,
            } => self.release_affinity(n, pick, must_be_empty).await,
            Op::ReleaseHost { node: n } => {
                let out = self.ipam.release_host_affinities(&node(n), false).await;
                let out = out.map_err(str)?;
                ensure!(
                    out.not_empty.is_empty(),
                    "kept blocks without must_be_empty: {out:?}"
                );
                Ok(())
            }
            Op::SetConfig {
                strict,
                cooldown,
                max_blocks,
            } => {
                let config = IpamConfig {
                    strict_affinity: strict,
                    max_blocks_per_host: if strict { u32::from(max_blocks) } else { 0 },
                    ip_cooldown_seconds: if cooldown { COOLDOWN } else { 0 },
                    ..IpamConfig::default()
                };
                self.ipam.set_config(config.clone()).await.map_err(str)?;
                self.model.strict = strict;
                self.model.cooldown = config.ip_cooldown_seconds;
                Ok(())
            }
            Op::Advance { secs } => {
                self.clock.advance(time::Duration::seconds(i64::from(secs)));
                self.model.now += i64::from(secs);
                Ok(())
            }
            Op::Gc { addr } => self.gc(addr).await,
            Op::ClaimAffinity { node: n, pick } => self.claim_affinity(n, pick).await,
        }
    }

    async fn auto_assign(&mut self, n: u8, h: u8, v4: u8, v6: u8) -> Step {
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

    async fn assign_ip(&mut self, n: u8, h: u8, pick: u16) -> Step {
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

    async fn release(&mut self, held: bool, pick: u16, guard: Guard) -> Step {
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

    async fn release_by_handle(&mut self, h: u8) -> Step {
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

    async fn release_affinity(&mut self, n: u8, pick: u8, must_be_empty: bool) -> Step {
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
    async fn claim_affinity(&mut self, n: u8, pick: u16) -> Step {
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

    async fn gc(&mut self, pick: u16) -> Step {
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

    /// Reads the whole store back and compares it with the model and the invariants.
    async fn check(&mut self) -> Step {
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

fn str(e: impl std::fmt::Display) -> String {
    e.to_string()
}
