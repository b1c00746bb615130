//! What each fuzz target does with its bytes, shared by the libFuzzer binaries in
//! `fuzz_targets/` and by the ordinary test `tests/tests/fuzz_replay.rs`, which replays
//! `fuzz/corpus/*` and `fuzz/regressions/*` through these same functions.
//!
//! Each function feeds the bytes to the parser the product uses at that edge and then
//! exercises what the parsed value is used for. None may panic; a panic is a crash. Each
//! returns whether the input was accepted, so the replay test can check that the seeds
//! stay valid inputs (a seed that is refused no longer reaches the deeper code).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use ipam_core::{
    BlockAffinity, Cooldown, IpPool, IpReservation, IpamBlock, IpamConfig, IpamHandle, Resource,
    Revision, Selector, Stored,
};
use serde_json::Value;
use time::OffsetDateTime;

/// The CNI plugin's names for itself (`ipam.type`), as the binary accepts them.
const OWN_NAME: &str = "calico-ipam";

/// Release times handed to the block operations: a valid stamp and a malformed one.
const RELEASE_STAMPS: [&str; 2] = ["2026-01-01T00:00:00Z", "not a time"];

/// At most this many ordinals are released per input, to keep each run short.
const MAX_RELEASES: usize = 8;

/// The network config as the plugin reads it from stdin (`rscni-plugin` decodes it into
/// `NetConf`), then the plugin's own keys (`PluginConfig::from_netconf`).
pub fn cni_config(data: &[u8]) -> bool {
    let Ok(conf) = serde_json::from_slice::<rscni_plugin::types::NetConf>(data) else {
        return false;
    };
    let Ok(config) = ipam_cni::cni::config::PluginConfig::from_netconf(&conf, OWN_NAME) else {
        return false;
    };
    // What the plugin derives from the config before it opens any store.
    let _ = ipam_cni::cni::config::PluginConfig::pool_names(&config.ipv4_pools);
    let _ = ipam_cni::cni::config::PluginConfig::pool_names(&config.ipv6_pools);
    let _ = ipam_cni::cni::node::handle_for(&config.network, "fuzz-container");
    if let Some(spec) = &config.datastore {
        let _ = spec.sibling(".lock");
        let _ = spec.local_path();
    }
    true
}

/// A pool's `nodeSelector`: parse it, then match it against a few label maps.
pub fn selector(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(selector) = Selector::parse(text) else {
        return false;
    };
    let empty = BTreeMap::new();
    let node: BTreeMap<String, String> = [
        ("zone", "a"),
        ("kubernetes.io/hostname", "node-1"),
        ("edge", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let _ = selector.matches(&empty);
    let _ = selector.matches(&node);
    true
}

/// A block as a store returns it: decode, `validate()`, and only then assign, release and
/// fold the cooldown. A block that passed `validate()` must still pass it afterwards.
pub fn block(data: &[u8]) -> bool {
    let Ok(mut block) = serde_json::from_slice::<IpamBlock>(data) else {
        return false;
    };
    let _ = block.problems();
    if block.validate().is_err() {
        return false;
    }
    exercise_block(&mut block, data.len());
    if let Err(e) = block.validate() {
        panic!("a valid block became invalid through its own operations: {e}");
    }
    true
}

/// Runs the block operations, with parameters drawn from `seed` so that different inputs
/// take different paths.
fn exercise_block(block: &mut IpamBlock, seed: usize) {
    let attr = ipam_core::AllocationAttribute {
        handle_id: Some("fuzz.handle".to_owned()),
        secondary: BTreeMap::new(),
        released_at: None,
        ..Default::default()
    };
    let n = (seed % 5) as u32;
    let skip_parity = seed % 2 == 0;
    let taken = block.assign(n, &attr, |o| (o % 2 == 0) == skip_parity);
    let _ = block.assign_ordinal((seed % 300) as u32, &attr);
    let _ = block.has_room();
    let _ = block.in_use();
    let live: Vec<u32> = (0..block.allocations.len() as u32)
        .filter(|&o| block.is_live(o))
        .take(MAX_RELEASES)
        .collect();
    for (i, &o) in live.iter().chain(&taken).enumerate() {
        let cooldown = match i % 3 {
            0 => Cooldown::None,
            k => Cooldown::Until(RELEASE_STAMPS[k - 1]),
        };
        let handle = block.attribute_of(o).and_then(|a| a.handle_id.clone());
        let sequence = block.sequence_number_for_allocation.get(&o).copied();
        let _ = block.release(o, sequence, handle.as_deref(), cooldown);
    }
    let _ = block.release_handle("fuzz.handle", Cooldown::Until(RELEASE_STAMPS[0]));
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    let _ = block.has_free_at(now, (seed % 600) as u32);
    let _ = block.fold_cooldown(now, (seed % 600) as u32);
    let _ = block.fold_cooldown(now, u32::MAX);
}

/// A body sent to `ipamctl serve`, parsed as every kind the server accepts.
pub fn serve_object(data: &[u8]) -> bool {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return false;
    };
    // Bitwise OR, not `||`: every kind must see the body.
    serve_as::<IpPool>(&body)
        | serve_as::<IpamBlock>(&body)
        | serve_as::<BlockAffinity>(&body)
        | serve_as::<IpamHandle>(&body)
        | serve_as::<IpamConfig>(&body)
        | serve_as::<IpReservation>(&body)
}

/// One kind: parse the object, then what the server does with an accepted spec (derive
/// its labels, render it back).
fn serve_as<R: Resource>(body: &Value) -> bool {
    let Ok(incoming) = ipam_apiserver::object::from_object::<R>(body) else {
        return false;
    };
    let _ = ipam_k8s::resource::labels_of(&incoming.spec);
    let stored = Stored {
        name: incoming.name.clone().unwrap_or_default(),
        revision: Revision("1".to_owned()),
        value: incoming.spec,
    };
    let _ = ipam_apiserver::object::to_object(&stored, &ipam_apiserver::object::Meta::default());
    true
}

/// The CNI plugin's stats file as `ipamctl serve` reads it for `/metrics`: parse and check,
/// render, then add one operation as the plugin would. A value that passed the check must
/// still pass it afterwards.
pub fn plugin_stats(data: &[u8]) -> bool {
    let Ok(Some(mut stats)) = ipam_core::stats::PluginStats::parse(data) else {
        return false;
    };
    let metrics = ipam_metrics::Metrics::new();
    metrics.observe_plugin(stats.clone());
    let _ = metrics.render();
    stats.record(ipam_core::stats::Sample {
        operation: "add",
        outcome: ipam_core::stats::Outcome::Ok,
        seconds: 0.004,
        conflicts: 1,
    });
    assert!(stats.problems().is_empty(), "{:?}", stats.problems());
    true
}
