//! Allocates addresses for a few nodes on the in-memory store and prints each block's use.
//!
//! `cargo run -p ipam-core --example allocate`

use ipam_core::{AutoAssignArgs, HandleId, IpPool, Ipam, MemoryStore, NodeName};

fn main() -> Result<(), ipam_core::Error> {
    pollster::block_on(async {
        let ipam = Ipam::new(MemoryStore::new(), ipam_core::SystemClock);
        let mut pool = IpPool::new("10.244.0.0/16".parse().expect("a valid CIDR literal"));
        pool.block_size = 26;
        ipam.create_pool("default-ipv4-ippool", pool).await?;
        for (node, pods) in [("node-a", 3), ("node-b", 70), ("node-c", 1)] {
            for pod in 0..pods {
                let handle = HandleId::new(format!("k8s-pod-network.{node}-pod-{pod}"))?;
                let args = AutoAssignArgs::new(NodeName::new(node)?, 1, 0).with_handle(handle);
                let got = ipam.auto_assign(&args).await?;
                if pod == 0 {
                    println!("{node}: first pod got {}", got.ipv4[0]);
                }
            }
        }
        println!(
            "\n{:<18} {:<14} {:>6} {:>6} {:>9}",
            "BLOCK", "AFFINITY", "SIZE", "IN USE", "AVAILABLE"
        );
        for pool in ipam.utilization(&[]).await? {
            for b in &pool.blocks {
                let affinity = b.affinity.as_deref().unwrap_or("-");
                let u = b.usage;
                println!(
                    "{:<18} {:<14} {:>6} {:>6} {:>9}",
                    b.cidr, affinity, u.capacity, u.in_use, u.available
                );
            }
            let u = pool.usage;
            println!(
                "\npool {} ({}): {} of {} in use, {} available",
                pool.name, pool.cidr, u.in_use, u.capacity, u.available
            );
        }
        Ok(())
    })
}
