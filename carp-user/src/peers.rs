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
use std::net::Ipv4Addr;

use toml::Value;

use crate::accept::Subnet;
use crate::config::Problem;

/// At most this many peers per VHID: each advert costs one `sendto` per peer
/// on the election's thread (100 adverts a second in fast mode at 10 ms).
pub const MAX_PEERS: usize = 16;

/// `peers` of one `[[vhid]]` (`path` is `vhid[N].peers`): each parsed peer
/// with its path (`vhid[N].peers[j]`), and the problems. Absent: no peers
/// (multicast). The VHID is complete only without problems.
pub fn parse(path: &str, v: Option<&Value>) -> (Vec<(String, Ipv4Addr)>, Vec<Problem>) {
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
                    "expected an array of IPv4 addresses, found {}",
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
        match s.parse::<Ipv4Addr>() {
            Ok(a) if a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback() => {
                error(p, format!("{a} is not a unicast peer address"));
            }
            Ok(a) if peers.iter().any(|(_, b)| *b == a) => {
                error(p, format!("{a} is listed twice"));
            }
            Ok(a) => peers.push((p, a)),
            Err(_) => error(
                p,
                format!("\"{s}\" is not an IPv4 address (a peer is another node's own address, no prefix length)"),
            ),
        }
    }
    (peers, problems)
}

/// Peers that are virtual addresses (`vip_of` names the VHID field holding
/// one): a peer is another node's own address, the source of its adverts,
/// and a VIP is never an advert source.
pub fn vip_problems<'a>(
    peers: &[(String, Ipv4Addr)],
    vip_of: impl Fn(Ipv4Addr) -> Option<&'a str>,
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

/// What only the running system can tell (start and reload): every peer of
/// VHID `vhid_path` on `interface` must be on one of the interface's IPv4
/// subnets (its own addresses, VIPs excluded) and none of those addresses.
pub fn link_problems(
    vhid_path: &str,
    interface: &str,
    peers: &[Ipv4Addr],
    subnets: &[Subnet],
) -> Vec<Problem> {
    let shown = || {
        subnets
            .iter()
            .map(|s| format!("{}/{}", s.addr, s.prefix_len))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = Vec::new();
    for (j, a) in peers.iter().enumerate() {
        let reason = if subnets.iter().any(|s| s.addr == *a) {
            format!("{a} is this node's own address on {interface}")
        } else if !subnets.iter().any(|s| s.contains(*a)) {
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
    pub peer: Ipv4Addr,
    #[source]
    pub source: std::io::Error,
}

/// Sends one advert to each peer with `send`, every peer tried even after a
/// failure (those that can be reached must still hear the master). It counts
/// as sent only if it reached all of them: the dead-man deadline moves only
/// with adverts that were sent (`deadman.rs`), and a peer that did not hear
/// this one may take over; the master must then stop answering in time.
pub fn send_to_each(
    peers: &[Ipv4Addr],
    mut send: impl FnMut(Ipv4Addr) -> std::io::Result<()>,
) -> Result<(), FanOutError> {
    let mut first = None;
    let mut sent = 0;
    for &p in peers {
        match send(p) {
            Ok(()) => sent += 1,
            Err(e) => {
                first.get_or_insert((p, e));
            }
        }
    }
    match first {
        None => Ok(()),
        Some((peer, source)) => Err(FanOutError {
            sent,
            of: peers.len(),
            peer,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "vhid[0].peers";

    fn parsed(text: &str) -> (Vec<(String, Ipv4Addr)>, Vec<String>) {
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
                ("vhid[0].peers[0]".to_string(), Ipv4Addr::new(10, 77, 0, 12)),
                ("vhid[0].peers[1]".to_string(), Ipv4Addr::new(10, 77, 0, 13)),
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
                "vhid[0].peers[6]: \"10.77.0.0/24\" is not an IPv4 address (a peer is another node's own address, no prefix length)",
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
            ["vhid[0].peers: expected an array of IPv4 addresses, found a string"]
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
            ("vhid[1].peers[0]".to_string(), Ipv4Addr::new(10, 77, 0, 1)),
            ("vhid[1].peers[1]".to_string(), Ipv4Addr::new(10, 77, 0, 12)),
        ];
        let problems = vip_problems(&peers, |a| {
            (a == Ipv4Addr::new(10, 77, 0, 1)).then_some("vhid[0].addresses[0]")
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
        let peers = [
            Ipv4Addr::new(10, 77, 0, 12),
            Ipv4Addr::new(192, 168, 5, 2),
            Ipv4Addr::new(10, 77, 0, 11),
            Ipv4Addr::new(10, 88, 0, 12),
        ];
        let problems: Vec<String> = link_problems("vhid[2]", "lan0", &peers, &subnets)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            problems,
            [
                "vhid[2].peers[2]: 10.77.0.11 is this node's own address on lan0",
                "vhid[2].peers[3]: 10.88.0.12 is on none of lan0's subnets (10.77.0.11/24, 192.168.5.1/30): peers must be on the link (adverts carry TTL 255 and are refused from off-subnet sources)",
            ]
        );
    }

    /// Every peer is tried; the advert counts as sent only if all got it.
    #[test]
    fn fan_out_tries_every_peer_and_needs_all() {
        let peers = [
            Ipv4Addr::new(10, 77, 0, 12),
            Ipv4Addr::new(10, 77, 0, 13),
            Ipv4Addr::new(10, 77, 0, 14),
        ];
        let mut tried = Vec::new();
        assert!(send_to_each(&peers, |p| {
            tried.push(p);
            Ok(())
        })
        .is_ok());
        assert_eq!(tried, peers);

        let mut tried = Vec::new();
        let e = send_to_each(&peers, |p| {
            tried.push(p);
            if p == peers[1] {
                Err(std::io::Error::from_raw_os_error(libc::EPERM))
            } else {
                Ok(())
            }
        })
        .expect_err("one peer failed");
        assert_eq!(tried, peers, "the peers after the failure are still tried");
        assert_eq!((e.sent, e.of, e.peer), (2, 3, peers[1]));
        assert!(
            e.to_string()
                .starts_with("sent to 2 of 3 peers; 10.77.0.13: "),
            "{e}"
        );
    }
}
