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
}

fn str(e: impl std::fmt::Display) -> String {
    e.to_string()
}

// What each operation does to the store and the model, and the read-back check after it;
// declared after `ensure!` so that both see it.
mod check;
mod ops;
