//! host-local mode: host-local's IPAM keys, mapped onto pools and reservations.
//!
//! A config whose `ipam` has `ranges` or `subnet` is a host-local config. Each range becomes
//! a `Manual` pool over its `subnet` (created on first use by [`Ipam::ensure_pools`]) and one
//! reservation per pool holding what host-local never hands out: the network address, the
//! IPv4 broadcast address, the gateway, and everything outside `rangeStart..=rangeEnd`. The
//! allocator's own rules then do the rest; there is no second allocator here.
//!
//! Canonicalization follows host-local's `range.go`: the subnet must have no host bits and
//! leave at least two addresses; the gateway defaults to the subnet's first address after
//! the network address, `rangeStart` to the same, `rangeEnd` to the last address (IPv4: the
//! one before broadcast); both ends must lie in the subnet. Ranges (across all sets) must
//! not overlap, and the ranges of one set share a family.
//!
//! [`Ipam::ensure_pools`]: ipam_core::Ipam::ensure_pools

use std::net::IpAddr;
use std::path::PathBuf;

use ipam_core::WantedPool;
use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};
use rscni_plugin::types::{Dns, IpConfig, Route};
use serde::Deserialize;

use super::error::CniError;

/// The file of the embedded store inside host-local's `dataDir`.
pub const DATA_DIR_DB: &str = "ipam-cni.db";

/// The host-local part of a config.
#[derive(Clone, Debug, PartialEq)]
pub struct HostLocal {
    /// The range sets: one address is assigned from each, in this order.
    pub range_sets: Vec<Vec<Range>>,
    /// Routes returned as they are configured.
    pub routes: Vec<Route>,
    /// What `resolvConf` names, read when the config is.
    pub dns: Option<Dns>,
    /// host-local's state directory: here the directory of the embedded database.
    pub data_dir: Option<PathBuf>,
}

/// One canonical range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    /// The subnet; results carry its prefix length.
    pub subnet: IpNet,
    /// The first address handed out.
    pub start: IpAddr,
    /// The last address handed out.
    pub end: IpAddr,
    /// The gateway, returned and never handed out.
    pub gateway: IpAddr,
}

/// The keys as host-local spells them.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Section {
    #[serde(default)]
    ranges: Vec<Vec<RawRange>>,
    #[serde(flatten)]
    legacy: RawRange,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    resolv_conf: Option<PathBuf>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    #[serde(default)]
    subnet: Option<IpNet>,
    #[serde(default)]
    range_start: Option<IpAddr>,
    #[serde(default)]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
}

impl HostLocal {
    /// Reads the host-local keys of `ipam`; `None` when it has neither `ranges` nor `subnet`.
    pub fn from_ipam(
        ipam: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<Self>, CniError> {
        if !ipam.contains_key("ranges") && !ipam.contains_key("subnet") {
            return Ok(None);
        }
        let section: Section = serde_json::from_value(serde_json::Value::Object(ipam.clone()))
            .map_err(|source| CniError::Decode {
                what: "host-local ipam keys",
                source,
            })?;
        let mut raw_sets = Vec::new();
        // host-local puts the old single-range form first.
        if section.legacy.subnet.is_some() {
            raw_sets.push(vec![section.legacy]);
        }
        raw_sets.extend(section.ranges);
        let mut range_sets = Vec::with_capacity(raw_sets.len());
        for (i, set) in raw_sets.iter().enumerate() {
            range_sets.push(range_set(i, set)?);
        }
        no_overlaps(&range_sets)?;
        let dns = section
            .resolv_conf
            .as_deref()
            .map(read_resolv_conf)
            .transpose()?;
        Ok(Some(HostLocal {
            range_sets,
            routes: section.routes,
            dns,
            data_dir: section.data_dir.filter(|d| !d.as_os_str().is_empty()),
        }))
    }

    /// The pools (and their reservations) the ranges need.
    pub fn wanted_pools(&self) -> Vec<WantedPool> {
        self.ranges()
            .map(|r| WantedPool::Cidr {
                cidr: r.subnet,
                manual: true,
                reserved: r.reserved(),
            })
            .collect()
    }

    /// Every range, in config order.
    pub fn ranges(&self) -> impl Iterator<Item = &Range> {
        self.range_sets.iter().flatten()
    }

    /// The range holding `ip`, if any.
    pub fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges().find(|r| r.subnet.contains(&ip))
    }

    /// The result entry for an assigned address: the range's prefix length and gateway.
    pub fn ip_config(&self, addr: &IpNet) -> IpConfig {
        let ip = addr.addr();
        match self.range_of(ip) {
            Some(r) => IpConfig {
                interface: None,
                // The prefix length of a range's subnet is valid for any address in it.
                address: IpNet::new(ip, r.subnet.prefix_len()).unwrap_or(*addr),
                gateway: Some(r.gateway),
            },
            None => IpConfig {
                interface: None,
                address: *addr,
                gateway: None,
            },
        }
    }
}

impl Range {
    /// What host-local never hands out in this range's subnet, as CIDRs.
    pub fn reserved(&self) -> Vec<IpNet> {
        let net = self.subnet.network();
        let last = self.subnet.broadcast();
        let mut out: Vec<IpNet> = vec![IpNet::from(net), IpNet::from(self.gateway)];
        if matches!(self.subnet, IpNet::V4(_)) {
            out.push(IpNet::from(last));
        }
        if let Some(before) = step(self.start, false).filter(|_| self.start != net) {
            out.extend(span(net, before));
        }
        if let Some(after) = step(self.end, true).filter(|_| self.end != last) {
            out.extend(span(after, last));
        }
        out.sort();
        out.dedup();
        out
    }
}

fn range_set(index: usize, set: &[RawRange]) -> Result<Vec<Range>, CniError> {
    if set.is_empty() {
        return Err(CniError::config(format!("ipam.ranges[{index}] is empty")));
    }
    let ranges = set.iter().map(canonical).collect::<Result<Vec<_>, _>>()?;
    if ranges
        .iter()
        .any(|r| matches!(r.subnet, IpNet::V4(_)) != matches!(ranges[0].subnet, IpNet::V4(_)))
    {
        return Err(CniError::config(format!(
            "ipam.ranges[{index}] mixes IPv4 and IPv6 ranges"
        )));
    }
    Ok(ranges)
}

fn canonical(raw: &RawRange) -> Result<Range, CniError> {
    let subnet = raw
        .subnet
        .ok_or_else(|| CniError::config("a range has no \"subnet\""))?;
    if subnet.trunc() != subnet {
        return Err(CniError::config(format!(
            "subnet {subnet} has host bits set; its network is {}",
            subnet.trunc()
        )));
    }
    if subnet.prefix_len() > subnet.max_prefix_len() - 2 {
        return Err(CniError::config(format!(
            "subnet {subnet} is too small to allocate from"
        )));
    }
    let first = step(subnet.network(), true);
    let last = if matches!(subnet, IpNet::V4(_)) {
        step(subnet.broadcast(), false)
    } else {
        Some(subnet.broadcast())
    };
    let (Some(first), Some(last)) = (first, last) else {
        return Err(CniError::config(format!(
            "subnet {subnet} has no usable address"
        )));
    };
    let inside = |key: &str, ip: Option<IpAddr>, default: IpAddr| match ip {
        None => Ok(default),
        Some(ip) if subnet.contains(&ip) => Ok(ip),
        Some(ip) => Err(CniError::config(format!(
            "{key} {ip} is not in subnet {subnet}"
        ))),
    };
    let start = inside("rangeStart", raw.range_start, first)?;
    let end = inside("rangeEnd", raw.range_end, last)?;
    if start > end {
        return Err(CniError::config(format!(
            "rangeStart {start} is after rangeEnd {end}"
        )));
    }
    let gateway = inside("gateway", raw.gateway, first)?;
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

fn no_overlaps(sets: &[Vec<Range>]) -> Result<(), CniError> {
    let all: Vec<&Range> = sets.iter().flatten().collect();
    for (i, a) in all.iter().enumerate() {
        if let Some(b) = all[i + 1..]
            .iter()
            .find(|b| a.subnet.contains(&b.subnet) || b.subnet.contains(&a.subnet))
        {
            return Err(CniError::config(format!(
                "ranges {} and {} overlap",
                a.subnet, b.subnet
            )));
        }
    }
    Ok(())
}

/// The next (`up`) or previous address, `None` past either end.
fn step(ip: IpAddr, up: bool) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v) => {
            let n = u32::from(v);
            let n = if up {
                n.checked_add(1)
            } else {
                n.checked_sub(1)
            }?;
            Some(IpAddr::V4(n.into()))
        }
        IpAddr::V6(v) => {
            let n = u128::from(v);
            let n = if up {
                n.checked_add(1)
            } else {
                n.checked_sub(1)
            }?;
            Some(IpAddr::V6(n.into()))
        }
    }
}

/// The CIDRs covering `from..=to` exactly (same family by construction).
fn span(from: IpAddr, to: IpAddr) -> Vec<IpNet> {
    match (from, to) {
        (IpAddr::V4(a), IpAddr::V4(b)) => Ipv4Subnets::new(a, b, 0).map(IpNet::V4).collect(),
        (IpAddr::V6(a), IpAddr::V6(b)) => Ipv6Subnets::new(a, b, 0).map(IpNet::V6).collect(),
        _ => Vec::new(),
    }
}

/// host-local's `resolvConf`: `nameserver`, `domain`, `search` and `options` lines.
fn read_resolv_conf(path: &std::path::Path) -> Result<Dns, CniError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CniError::config(format!("cannot read resolvConf {}: {e}", path.display())))?;
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(key) = words.next() else { continue };
        let rest: Vec<String> = words.map(str::to_owned).collect();
        match key {
            "nameserver" => dns.nameservers.extend(rest.into_iter().take(1)),
            "domain" => dns.domain = rest.into_iter().next(),
            "search" => dns.search.get_or_insert_default().extend(rest),
            "options" => dns.options.get_or_insert_default().extend(rest),
            _ => {}
        }
    }
    Ok(dns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Option<HostLocal>, CniError> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        HostLocal::from_ipam(v.as_object().unwrap())
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn defaults_follow_host_local() {
        let hl =
            parse(r#"{"ranges":[[{"subnet":"10.88.0.0/16"}]],"routes":[{"dst":"0.0.0.0/0"}]}"#)
                .unwrap()
                .unwrap();
        let r = &hl.range_sets[0][0];
        assert_eq!(r.gateway.to_string(), "10.88.0.1");
        assert_eq!(r.start.to_string(), "10.88.0.1");
        assert_eq!(r.end.to_string(), "10.88.255.254");
        assert_eq!(
            r.reserved(),
            nets(&["10.88.0.0/32", "10.88.0.1/32", "10.88.255.255/32"])
        );
        assert_eq!(hl.routes.len(), 1);
        assert_eq!(
            hl.ip_config(&"10.88.0.2/26".parse().unwrap())
                .address
                .to_string(),
            "10.88.0.2/16"
        );
    }

    #[test]
    fn legacy_form_and_limits() {
        let hl = parse(
            r#"{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.20","gateway":"10.1.0.254",
            "ranges":[[{"subnet":"fd00:1::/120"}]]}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(hl.range_sets.len(), 2);
        let r = &hl.range_sets[0][0];
        let reserved = r.reserved();
        let covered = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            reserved.iter().any(|n| n.contains(&ip))
        };
        for out in [
            "10.1.0.0",
            "10.1.0.9",
            "10.1.0.21",
            "10.1.0.254",
            "10.1.0.255",
        ] {
            assert!(covered(out), "{out} should be reserved: {reserved:?}");
        }
        for inside in ["10.1.0.10", "10.1.0.15", "10.1.0.20"] {
            assert!(!covered(inside), "{inside} should be free: {reserved:?}");
        }
        let v6 = &hl.range_sets[1][0];
        assert_eq!(v6.end.to_string(), "fd00:1::ff");
    }

    #[test]
    fn not_host_local_without_its_keys() {
        assert_eq!(parse(r#"{"ipv4_pools":["p"]}"#).unwrap(), None);
    }

    #[test]
    fn refuses_bad_ranges() {
        for bad in [
            r#"{"subnet":"10.1.0.1/24"}"#,
            r#"{"subnet":"10.1.0.0/31"}"#,
            r#"{"subnet":"10.1.0.0/24","rangeStart":"10.2.0.1"}"#,
            r#"{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.9","rangeEnd":"10.1.0.8"}"#,
            r#"{"subnet":"10.1.0.0/24","gateway":"10.9.0.1"}"#,
            r#"{"ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"fd00::/120"}]]}"#,
            r#"{"ranges":[[{"subnet":"10.1.0.0/16"}],[{"subnet":"10.1.2.0/24"}]]}"#,
            r#"{"ranges":[[]]}"#,
            r#"{"ranges":[[{"rangeStart":"10.0.0.1"}]]}"#,
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(u32::from(&err.to_cni()), 7, "{bad}: {err}");
        }
    }
}
