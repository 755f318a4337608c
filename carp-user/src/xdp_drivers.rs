//! Which attach mode `xdp_mode = "auto"` picks for an interface, and the one
//! list of drivers it trusts with native `XDP_TX` (docs/design.md, "Attach
//! mode").
//!
//! The program answers ARP with `XDP_TX`. In native (driver) mode that frame
//! leaves through the driver's own XDP transmit path; a driver without one,
//! or one that only supports `XDP_PASS`/`XDP_DROP` natively, loses the reply
//! silently or refuses the attach. Generic mode works on every interface at
//! the cost of an skb per packet. So `auto` is native only where the driver
//! is known to do `XDP_TX` in native mode, and generic everywhere else;
//! `xdp_mode = "native"` forces native for a driver not on the list (and
//! falls back to generic if the attach fails).

/// Drivers known to implement `XDP_TX` in native mode, with why they are on
/// the list (the kernel release that brought it; the test kernel here is
/// 6.18). Matched against the name in `/sys/class/net/<if>/device/driver`.
pub const NATIVE_XDP_TX: &[(&str, &str)] = &[
    (
        "mlx5_core",
        "Mellanox ConnectX-4 and later: XDP_TX since 4.9",
    ),
    ("mlx4_en", "Mellanox ConnectX-3: XDP_TX since 4.8"),
    ("i40e", "Intel XL710/X710: XDP_TX since 4.13"),
    ("ice", "Intel E800: XDP_TX since 5.5"),
    ("ixgbe", "Intel 82599/X5xx: XDP_TX since 4.12"),
    ("ixgbevf", "Intel 82599 VF: XDP_TX since 4.17"),
    ("igb", "Intel I210/I350: XDP_TX since 5.10"),
    ("igc", "Intel I225/I226: XDP_TX since 5.13"),
    ("bnxt_en", "Broadcom NetXtreme-C/E: XDP_TX since 4.11"),
    ("nfp", "Netronome Agilio: XDP_TX since 4.10"),
    ("qede", "QLogic FastLinQ: XDP_TX since 4.10"),
    ("sfc", "AMD/Solarflare SFC9xxx/X2: XDP_TX since 5.5"),
    ("ena", "AWS ENA: XDP_TX since 5.6"),
    (
        "virtio_net",
        "virtio-net (KVM guests): XDP_TX since 4.10, best with as many queue pairs as vCPUs",
    ),
];

/// The attach mode `auto` resolves to, from the interface's link kind
/// (`IFLA_INFO_KIND`: veth, bridge, vlan, macvlan, bond, ... for virtual
/// devices; `None` for a NIC) and its driver (`None` if unknown).
pub fn auto_native(kind: Option<&str>, driver: Option<&str>) -> bool {
    // Virtual devices: native XDP_TX on veth is lost unless the peer runs XDP
    // too, and bridges, VLANs, bonds have no XDP transmit path of their own.
    if kind.is_some() {
        return false;
    }
    driver.is_some_and(|d| NATIVE_XDP_TX.iter().any(|(name, _)| *name == d))
}

/// The driver of interface `ifname` in this network namespace, from sysfs
/// (`None` for devices without one, e.g. virtual ones, or without sysfs).
pub fn driver_of(ifname: &str) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/class/net/{ifname}/device/driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_native_only_for_listed_drivers_of_physical_nics() {
        assert!(auto_native(None, Some("mlx5_core")));
        assert!(auto_native(None, Some("virtio_net")));
        assert!(!auto_native(None, Some("e1000e")), "not on the list");
        assert!(!auto_native(None, None), "driver unknown");
        assert!(
            !auto_native(Some("veth"), Some("virtio_net")),
            "virtual device"
        );
        assert!(!auto_native(Some("bond"), None));
    }

    #[test]
    fn the_list_has_no_duplicates_and_every_entry_a_reason() {
        let mut names: Vec<&str> = NATIVE_XDP_TX.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), NATIVE_XDP_TX.len());
        assert!(NATIVE_XDP_TX.iter().all(|(_, why)| why.contains("XDP_TX")));
    }
}
