//! Writes through `ipamctl serve` meet the allocator's rules: each reproduced bad write is
//! answered 4xx and leaves the store as it was.
#![allow(clippy::unwrap_used)]

mod support;

use ipam_core::{BlockCidr, IpPool, IpamBlock, IpamHandle};
use serde_json::json;
use support::Fixture;
use support::server::{Reply, Server, curl, write_mode};

const TOKEN: &str = "admission-test-token";

fn snapshot(fx: &Fixture) -> String {
    format!(
        "{:?}{:?}{:?}",
        fx.list::<IpPool>(),
        fx.list::<IpamBlock>(),
        fx.list::<IpamHandle>()
    )
}

fn writable(fx: &Fixture) -> Server {
    let token = fx.db.parent().unwrap().join("token");
    write_mode(&token, TOKEN, 0o600);
    let t = token.display().to_string();
    Server::start(
        fx,
        &[
            "--listen",
            "127.0.0.1:0",
            "--allow-writes",
            "--token-file",
            &t,
        ],
    )
}

fn send(method: &str, url: &str, body: &str, authed: bool) -> Reply {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let mut args = vec!["-X", method, "-H", "Content-Type: application/json"];
    if authed {
        args.extend(["-H", auth.as_str()]);
    }
    if !body.is_empty() {
        args.extend(["-d", body]);
    }
    curl(&args, url)
}

#[test]
fn bad_writes_are_refused_and_change_nothing() {
    let fx = Fixture::new();
    fx.pool("10.0.0.0/24", 26);
    fx.assign("node-1", 1, "c1", "pod-1");
    let server = writable(&fx);
    let api = format!("{}/apis/crd.projectcalico.org/v1", server.url);
    let before = snapshot(&fx);

    // A block overlapping the node's /26 (wherever the allocator put it), valid in itself.
    let taken = fx.list::<IpamBlock>()[0].value.cidr;
    let cidr: BlockCidr = BlockCidr::containing(taken.network(), 27).unwrap();
    let block = IpamBlock::new(cidr, None, 1, None);
    let body = json!({"metadata": {"name": cidr.name()}, "spec": block}).to_string();
    let r = send("POST", &format!("{api}/ipamblocks"), &body, true);
    assert_eq!(r.code, 422, "{}", r.body);
    assert!(
        r.json()["message"].as_str().unwrap().contains("overlaps"),
        "{}",
        r.body
    );

    // A block outside every pool.
    let out = BlockCidr::containing("192.168.0.0".parse().unwrap(), 26).unwrap();
    let body =
        json!({"metadata": {"name": out.name()}, "spec": IpamBlock::new(out, None, 1, None)});
    let r = send(
        "POST",
        &format!("{api}/ipamblocks"),
        &body.to_string(),
        true,
    );
    assert_eq!(r.code, 422, "{}", r.body);

    // A pool with blockSize 99.
    let body = json!({"metadata": {"name": "q"}, "spec": {"cidr": "10.1.0.0/24", "blockSize": 99}});
    let r = send("POST", &format!("{api}/ippools"), &body.to_string(), true);
    assert_eq!(r.code, 422, "{}", r.body);
    assert_eq!(r.json()["reason"], "Invalid");

    // A pool overlapping the existing one.
    let body = json!({"metadata": {"name": "q"}, "spec": {"cidr": "10.0.0.0/16"}});
    let r = send("POST", &format!("{api}/ippools"), &body.to_string(), true);
    assert_eq!(r.code, 422, "{}", r.body);

    // Deleting the pool while an address is in use.
    let r = send("DELETE", &format!("{api}/ippools/p"), "", true);
    assert_eq!(r.code, 422, "{}", r.body);
    assert!(
        r.json()["message"].as_str().unwrap().contains("in use"),
        "{}",
        r.body
    );

    // Deleting a handle without credentials.
    let r = send(
        "DELETE",
        &format!("{api}/ipamhandles/k8s-pod-network.c1"),
        "",
        false,
    );
    assert_eq!(r.code, 401, "{}", r.body);

    // A config the allocator would refuse.
    let body = json!({"metadata": {"name": "default"},
        "spec": {"strictAffinity": false, "autoAllocateBlocks": false}});
    let r = send(
        "POST",
        &format!("{api}/ipamconfigs"),
        &body.to_string(),
        true,
    );
    assert_eq!(r.code, 422, "{}", r.body);

    assert_eq!(snapshot(&fx), before, "a refused write changed the store");

    // A good write still goes through.
    let body = json!({"metadata": {"name": "q"}, "spec": {"cidr": "10.1.0.0/24"}});
    let r = send("POST", &format!("{api}/ippools"), &body.to_string(), true);
    assert_eq!(r.code, 201, "{}", r.body);
}
