//! Unicast peers (`peers = ["10.77.0.12"]` in a `[[vhid]]`), the pure rules:
//! what the config accepts, what is checked against the interface at start and
//! on reload, and how one advert fans out to several peers. Docs:
//! docs/protocol.md §1 "Unicast peers".
//!
//! A VHID with peers sends every advert (bow-out copies included) to each peer
//! instead of 224.0.0.18, and accepts adverts only from its peers
//! (`accept.rs`, `not_peer`). The socket is `packet::UnicastSender`; the
//! shell's part is `controller/unicast.rs`.
//!
//! Why peers must be on the VHID's link (unlike FreeBSD, whose unicast mode
//! skips the TTL check so that a peer may be routed): the XDP program drops
//! adverts whose TTL is not 255 and user space refuses sources off the
//! interface's subnets (`off_subnet`), for unicast and multicast alike. A
//! routed peer would be refused silently on the other side, so it is refused
//! here, loudly, at start and on reload.
use std::net::{IpAddr, Ipv6Addr};

use toml::Value;

use crate::accept::{is_link_local6, Subnet, Subnet6};
use crate::config::Problem;

/// At most this many peers per VHID: each advert costs one `sendto` per peer
/// on the election's thread (100 adverts a second in fast mode at 10 ms).
pub const MAX_PEERS: usize = 16;

/// `peers` of one `[[vhid]]` (`path` is `vhid[N].peers`): each parsed peer
/// with its path (`vhid[N].peers[j]`), and the problems. Absent: no peers
/// (multicast). The VHID is complete only without problems.
pub fn parse(path: &str, v: Option<&Value>) -> (Vec<(String, IpAddr)>, Vec<Problem>) {
    let mut peers = Vec::new();
    let mut problems = Vec::new();
    let mut error = |field: String, reason: String| problems.push(Problem { field, reason });
    let items = match v {
        None => return (peers, problems),
        Some(Value::Array(items)) => items,
        Some(other) => {
            error(
                path.to_string(),
                format!(
                    "expected an array of IP addresses, found {}",
                    crate::config::a_type(other)
                ),
            );
            return (peers, problems);
        }
    };
    if items.is_empty() {
        // An empty list would silently mean multicast; say which is meant.
        error(
            path.to_string(),
            "must name at least one peer (leave peers out to advertise to 224.0.0.18)".into(),
        );
    }
    if items.len() > MAX_PEERS {
        error(
            path.to_string(),
            format!("{} peers: at most {MAX_PEERS}", items.len()),
        );
    }
    for (j, item) in items.iter().enumerate() {
        let p = format!("{path}[{j}]");
        let s = match item {
            Value::String(s) => s,
            other => {
                error(
                    p,
                    format!("expected a string, found {}", crate::config::a_type(other)),
                );
                continue;
            }
        };
        match parse_peer(s) {
            Ok(a) if peers.iter().any(|(_, b)| *b == a) => {
                error(p, format!("{a} is listed twice"));
            }
            Ok(a) => peers.push((p, a)),
            Err(reason) => error(p, reason),
        }
    }
    (peers, problems)
}

/// One peer: an IPv4 or IPv6 unicast address. A link-local IPv6 peer is
/// taken without a zone: its scope is the VHID's `interface`, the only link
/// its adverts go out on (a `%zone` would only say it again, or contradict it).
fn parse_peer(s: &str) -> Result<IpAddr, String> {
    if s.contains('%') {
        return Err(format!(
            "\"{s}\": write a link-local peer without %zone (its scope is the VHID's interface)"
        ));
    }
    let a: IpAddr = s.parse().map_err(|_| {
        format!(
            "\"{s}\" is not an IP address (a peer is another node's own address, no prefix length)"
        )
    })?;
    let unicast = match a {
        IpAddr::V4(a) => {
            !(a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback())
        }
        IpAddr::V6(a) => {
            !(a.is_unspecified()
                || a.is_multicast()
                || a.is_loopback()
                || a.to_ipv4_mapped().is_some())
        }
    };
    if unicast {
        Ok(a)
    } else {
        Err(format!("{a} is not a unicast peer address"))
    }
}

/// Peers of a family the VHID has no addresses of (`has_v4`, `has_v6`: it
/// has VIPs of that family): a family's advert copy is sent only for
/// addresses of that family (`advert_plan`, as the BSDs), so such a peer
/// would never hear one.
pub fn family_problems(peers: &[(String, IpAddr)], has_v4: bool, has_v6: bool) -> Vec<Problem> {
    peers
        .iter()
        .filter_map(|(path, a)| {
            let (family, has) = match a {
                IpAddr::V4(_) => ("IPv4", has_v4),
                IpAddr::V6(_) => ("IPv6", has_v6),
            };
            (!has).then(|| Problem {
                field: path.clone(),
                reason: format!(
                    "{a} is an {family} peer of a VHID without {family} addresses: {family} adverts are sent only for {family} addresses"
                ),
            })
        })
        .collect()
}

/// Peers that are virtual addresses (`vip_of` names the VHID field holding
/// one): a peer is another node's own address, the source of its adverts,
/// and a VIP is never an advert source.
pub fn vip_problems<'a>(
    peers: &[(String, IpAddr)],
    vip_of: impl Fn(IpAddr) -> Option<&'a str>,
) -> Vec<Problem> {
    peers
        .iter()
        .filter_map(|(path, a)| {
            vip_of(*a).map(|field| Problem {
                field: path.clone(),
                reason: format!(
                    "{a} is a virtual address ({field}); a peer is another node's own address"
                ),
            })
        })
        .collect()
}

/// The interface's own addresses, VIPs excluded, as read at start (IPv6:
/// re-read when the link comes up).
#[derive(Debug, Clone, Copy)]
pub struct Link<'a> {
    pub subnets: &'a [Subnet],
    /// Every own IPv6 address, the link-local included.
    pub own6: &'a [Ipv6Addr],
    /// The prefixes of the non-link-local ones.
    pub subnets6: &'a [Subnet6],
}

/// What only the running system can tell (start and reload): every peer of
/// VHID `vhid_path` on `interface` must be on the link and not one of the
/// interface's own addresses. On the link: IPv4, on one of its subnets;
/// IPv6, link-local (its scope is the interface) or on one of its prefixes,
/// the rule the receiver's `off_subnet` check applies.
pub fn link_problems(
    vhid_path: &str,
    interface: &str,
    peers: &[IpAddr],
    link: &Link,
) -> Vec<Problem> {
    let shown = || {
        let v4 = link
            .subnets
            .iter()
            .map(|s| format!("{}/{}", s.addr, s.prefix_len));
        let v6 = link
            .subnets6
            .iter()
            .map(|s| format!("{}/{}", s.addr, s.prefix_len));
        v4.chain(v6).collect::<Vec<_>>().join(", ")
    };
    let mut out = Vec::new();
    for (j, a) in peers.iter().enumerate() {
        let (own, on_link) = match *a {
            IpAddr::V4(a) => (
                link.subnets.iter().any(|s| s.addr == a),
                link.subnets.iter().any(|s| s.contains(a)),
            ),
            IpAddr::V6(a) => (
                link.own6.contains(&a),
                is_link_local6(a) || link.subnets6.iter().any(|s| s.contains(a)),
            ),
        };
        let reason = if own {
            format!("{a} is this node's own address on {interface}")
        } else if !on_link {
            format!(
                "{a} is on none of {interface}'s subnets ({}): peers must be on the link (adverts carry TTL 255 and are refused from off-subnet sources)",
                shown()
            )
        } else {
            continue;
        };
        out.push(Problem {
            field: format!("{vhid_path}.peers[{j}]"),
            reason,
        });
    }
    out
}

/// An advert that did not reach every peer.
#[derive(Debug, thiserror::Error)]
#[error("sent to {sent} of {of} peers; {peer}: {source}")]
pub struct FanOutError {
    pub sent: usize,
    pub of: usize,
    /// The first peer that failed.
    pub peer: IpAddr,
    #[source]
    pub source: std::io::Error,
}

/// Sends one advert to each peer with `send`, every peer tried even after a
/// failure (those that can be reached must still hear the master). It counts
/// as sent only if it reached all of them: the dead-man deadline moves only
/// with adverts that were sent (`deadman.rs`), and a peer that did not hear
/// this one may take over; the master must then stop answering in time.
pub fn send_to_each<T: Copy>(
    copies: &[T],
    peer_of: impl Fn(T) -> IpAddr,
    mut send: impl FnMut(T) -> std::io::Result<()>,
) -> Result<(), FanOutError> {
    let mut first = None;
    let mut sent = 0;
    for &c in copies {
        match send(c) {
            Ok(()) => sent += 1,
            Err(e) => {
                first.get_or_insert((peer_of(c), e));
            }
        }
    }
    match first {
        None => Ok(()),
        Some((peer, source)) => Err(FanOutError {
            sent,
            of: copies.len(),
            peer,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const PATH: &str = "vhid[0].peers";

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn parsed(text: &str) -> (Vec<(String, IpAddr)>, Vec<String>) {
        let t: toml::Table = format!("peers = {text}").parse().expect("toml");
        let (peers, problems) = parse(PATH, t.get("peers"));
        (peers, problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn peers_parse_and_refuse_field_by_field() {
        let (peers, problems) = parsed(r#"["10.77.0.12", "10.77.0.13"]"#);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            peers,
            [
                ("vhid[0].peers[0]".to_string(), v4(10, 77, 0, 12)),
                ("vhid[0].peers[1]".to_string(), v4(10, 77, 0, 13)),
            ]
        );
        let (_, problems) = parsed(
            r#"["10.77.0.12", "10.77.0.12", "224.0.0.18", "0.0.0.0", "127.0.0.1", "255.255.255.255", "10.77.0.0/24", 7]"#,
        );
        assert_eq!(
            problems,
            [
                "vhid[0].peers[1]: 10.77.0.12 is listed twice",
                "vhid[0].peers[2]: 224.0.0.18 is not a unicast peer address",
                "vhid[0].peers[3]: 0.0.0.0 is not a unicast peer address",
                "vhid[0].peers[4]: 127.0.0.1 is not a unicast peer address",
                "vhid[0].peers[5]: 255.255.255.255 is not a unicast peer address",
                "vhid[0].peers[6]: \"10.77.0.0/24\" is not an IP address (a peer is another node's own address, no prefix length)",
                "vhid[0].peers[7]: expected a string, found an integer",
            ]
        );
        let (_, problems) = parsed("[]");
        assert_eq!(
            problems,
            ["vhid[0].peers: must name at least one peer (leave peers out to advertise to 224.0.0.18)"]
        );
        let (_, problems) = parsed(r#""10.77.0.12""#);
        assert_eq!(
            problems,
            ["vhid[0].peers: expected an array of IP addresses, found a string"]
        );
        let many: Vec<String> = (1..=17).map(|i| format!("\"10.77.1.{i}\"")).collect();
        let (_, problems) = parsed(&format!("[{}]", many.join(", ")));
        assert_eq!(problems, ["vhid[0].peers: 17 peers: at most 16"]);
        // Absent: multicast, no problem.
        assert_eq!(parse(PATH, None).0, []);
    }

    #[test]
    fn a_peer_may_not_be_a_vip() {
        let peers = [
            ("vhid[1].peers[0]".to_string(), v4(10, 77, 0, 1)),
            ("vhid[1].peers[1]".to_string(), v4(10, 77, 0, 12)),
        ];
        let problems = vip_problems(&peers, |a| {
            (a == v4(10, 77, 0, 1)).then_some("vhid[0].addresses[0]")
        });
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].to_string(),
            "vhid[1].peers[0]: 10.77.0.1 is a virtual address (vhid[0].addresses[0]); a peer is another node's own address"
        );
    }

    #[test]
    fn peers_must_be_on_the_link_and_not_ours() {
        let subnets = [
            Subnet::new(Ipv4Addr::new(10, 77, 0, 11), 24),
            Subnet::new(Ipv4Addr::new(192, 168, 5, 1), 30),
        ];
        let own6 = [v6("fe80::11"), v6("2001:db8:77::11")];
        let subnets6 = [Subnet6::new(v6("2001:db8:77::11"), 64)];
        let link = Link {
            subnets: &subnets,
            own6: &own6,
            subnets6: &subnets6,
        };
        let peers = [
            v4(10, 77, 0, 12),
            v4(192, 168, 5, 2),
            v4(10, 77, 0, 11),
            v4(10, 88, 0, 12),
            IpAddr::V6(v6("fe80::12")),
            IpAddr::V6(v6("2001:db8:77::12")),
            IpAddr::V6(v6("fe80::11")),
            IpAddr::V6(v6("2001:db8:88::12")),
        ];
        let problems: Vec<String> = link_problems("vhid[2]", "lan0", &peers, &link)
            .iter()
            .map(ToString::to_string)
            .collect();
        let shown = "10.77.0.11/24, 192.168.5.1/30, 2001:db8:77::11/64";
        assert_eq!(
            problems,
            [
                "vhid[2].peers[2]: 10.77.0.11 is this node's own address on lan0".to_string(),
                format!("vhid[2].peers[3]: 10.88.0.12 is on none of lan0's subnets ({shown}): peers must be on the link (adverts carry TTL 255 and are refused from off-subnet sources)"),
                "vhid[2].peers[6]: fe80::11 is this node's own address on lan0".to_string(),
                format!("vhid[2].peers[7]: 2001:db8:88::12 is on none of lan0's subnets ({shown}): peers must be on the link (adverts carry TTL 255 and are refused from off-subnet sources)"),
            ]
        );
    }

    #[test]
    fn ipv6_peers_parse_link_local_without_zone() {
        let (peers, problems) = parsed(r#"["10.77.0.12", "fe80::12", "2001:db8:77::12"]"#);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            peers.iter().map(|(_, a)| *a).collect::<Vec<_>>(),
            [
                v4(10, 77, 0, 12),
                IpAddr::V6(v6("fe80::12")),
                IpAddr::V6(v6("2001:db8:77::12"))
            ]
        );
        let (_, problems) = parsed(
            r#"["fe80::12%lan0", "ff02::12", "::", "::1", "::ffff:10.0.0.1", "fe80::12", "fe80::12"]"#,
        );
        assert_eq!(
            problems,
            [
                "vhid[0].peers[0]: \"fe80::12%lan0\": write a link-local peer without %zone (its scope is the VHID's interface)",
                "vhid[0].peers[1]: ff02::12 is not a unicast peer address",
                "vhid[0].peers[2]: :: is not a unicast peer address",
                "vhid[0].peers[3]: ::1 is not a unicast peer address",
                "vhid[0].peers[4]: ::ffff:10.0.0.1 is not a unicast peer address",
                "vhid[0].peers[6]: fe80::12 is listed twice",
            ]
        );
    }

    #[test]
    fn a_peer_needs_addresses_of_its_family() {
        let peers = [
            ("vhid[0].peers[0]".to_string(), v4(10, 77, 0, 12)),
            ("vhid[0].peers[1]".to_string(), IpAddr::V6(v6("fe80::12"))),
        ];
        assert!(family_problems(&peers, true, true).is_empty());
        let problems: Vec<String> = family_problems(&peers, false, true)
            .iter()
            .chain(&family_problems(&peers, true, false))
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            problems,
            [
                "vhid[0].peers[0]: 10.77.0.12 is an IPv4 peer of a VHID without IPv4 addresses: IPv4 adverts are sent only for IPv4 addresses",
                "vhid[0].peers[1]: fe80::12 is an IPv6 peer of a VHID without IPv6 addresses: IPv6 adverts are sent only for IPv6 addresses",
            ]
        );
    }

    /// Every peer is tried; the advert counts as sent only if all got it.
    #[test]
    fn fan_out_tries_every_peer_and_needs_all() {
        let peers = [
            v4(10, 77, 0, 12),
            IpAddr::V6(v6("fe80::13")),
            v4(10, 77, 0, 14),
        ];
        let mut tried = Vec::new();
        assert!(send_to_each(
            &peers,
            |p| p,
            |p| {
                tried.push(p);
                Ok(())
            }
        )
        .is_ok());
        assert_eq!(tried, peers);

        let mut tried = Vec::new();
        let e = send_to_each(
            &peers,
            |p| p,
            |p| {
                tried.push(p);
                if p == peers[1] {
                    Err(std::io::Error::from_raw_os_error(libc::EPERM))
                } else {
                    Ok(())
                }
            },
        )
        .expect_err("one peer failed");
        assert_eq!(tried, peers, "the peers after the failure are still tried");
        assert_eq!((e.sent, e.of, e.peer), (2, 3, peers[1]));
        assert!(
            e.to_string()
                .starts_with("sent to 2 of 3 peers; fe80::13: "),
            "{e}"
        );
    }
}
