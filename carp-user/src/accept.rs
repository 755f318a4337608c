//! Advert acceptance: the user-space half of docs/protocol.md §1 "Receiving",
//! as one pure function. The kernel already checked TTL, length, version, type,
//! checksum, that the VHID is configured, and the sender's budget; here, in
//! this order:
//!
//! | check | verdict when it fails |
//! |---|---|
//! | IP source is not our own address on the interface (IPv6: any of ours, the link-local included) | [`Rejection::Own`] |
//! | IP source is on one of the interface's IPv4 subnets; IPv6: link-local, or on one of the interface's IPv6 prefixes | [`Rejection::OffSubnet`] |
//! | with unicast peers (`crate::peers`): IP source is one of them | [`Rejection::NotPeer`] |
//! | HMAC-SHA1 digest with this VHID's password and VIPs | [`Rejection::BadDigest`] |
//! | advbase 0 only in fast mode, a whole-second advbase only outside it (a bow-out, 255/255, in both) | [`Rejection::FastModeMismatch`], [`Rejection::SecondsInFastMode`] |
//! | counter (replay::Tracker: our own counters, the other family's copy of an advert, counters seen from any source, per-sender order) | [`Rejection::OwnCounter`], [`Rejection::Duplicate`], [`Rejection::Replay`] |
//! | source MAC is the BSD or ucarp virtual MAC (adverts to the group only) | accepted anyway, flagged |
//!
//! IPv6 adverts (to `ff02::12`, docs/protocol.md §1 "Over IPv6") come from
//! the sender's link-local address (ours, VRRPv3's) or, from a FreeBSD node,
//! its first IPv6 address on the interface (`carp_best_ifa`). FreeBSD's
//! `carp6_input` checks only the hop limit (255, done in XDP) and the digest;
//! the source check here is the IPv6 form of the subnet check: link-local
//! (`fe80::/10`, which no router forwards) or on one of the interface's own
//! IPv6 prefixes, so that a flood from elsewhere still costs no HMAC. A VHID
//! with unicast peers takes adverts of either family from its listed peers
//! of that family only (FreeBSD's `peer` and `peer6`), anyone else is
//! `not_peer`.
//!
//! The subnet and peer checks run before the digest so that a flood from
//! elsewhere costs no HMAC. The IP destination is never checked, as in the
//! BSDs: a VHID with peers also takes a listed peer's adverts to 224.0.0.18,
//! and one without peers takes unicast adverts, so that the nodes of a VHID
//! can move between multicast and unicast one at a time (docs/protocol.md §1
//! "Unicast peers"). Used by the controller (`controller/`) and by the election simulation
//! (`tests/election_sim.rs`), so both run the same policy.
//!
//! [`WarnLimiter`] keeps the warnings of rejected adverts to a few per second
//! per VHID and reason, counting what it suppressed.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::election::PeerAdvert;
use crate::metrics::AdvertResult;
use crate::replay::{self, Tracker};
use crate::wire::{carp, frame};

/// An IPv4 subnet of a CARP interface (its own address and prefix length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Subnet {
    pub const fn new(addr: Ipv4Addr, prefix_len: u8) -> Self {
        Self { addr, prefix_len }
    }

    /// Whether `a` is on this subnet (a /32 holds only the address itself).
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        let len = u32::from(self.prefix_len.min(32));
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        u32::from(a) & mask == u32::from(self.addr) & mask
    }
}

/// An IPv6 prefix of a CARP interface (one of its own global or unique-local
/// addresses with its prefix length; VIPs and link-locals excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet6 {
    pub addr: Ipv6Addr,
    pub prefix_len: u8,
}

impl Subnet6 {
    pub const fn new(addr: Ipv6Addr, prefix_len: u8) -> Self {
        Self { addr, prefix_len }
    }

    /// Whether `a` is on this prefix.
    pub fn contains(&self, a: Ipv6Addr) -> bool {
        let len = u32::from(self.prefix_len.min(128));
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        };
        u128::from(a) & mask == u128::from(self.addr) & mask
    }
}

/// Whether `a` is an IPv6 link-local unicast address (`fe80::/10`).
pub fn is_link_local6(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// What the policy needs to know about one VHID on one interface.
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    pub vhid: u8,
    pub password: &'a [u8],
    /// The VIPs in the digest.
    pub vips: &'a [Ipv4Addr],
    /// The IPv6 VIPs, which follow the IPv4 ones in the digest.
    pub vips6: &'a [std::net::Ipv6Addr],
    /// Our own IPv4 address on the interface (the source of our IPv4
    /// adverts); none on an interface without IPv4 (IPv6-only VHIDs).
    pub own_ip: Option<Ipv4Addr>,
    /// The interface's IPv4 subnets: adverts from elsewhere are refused.
    pub subnets: &'a [Subnet],
    /// Our own IPv6 addresses on the interface, the link-local (the source
    /// of our IPv6 adverts) included, VIPs not.
    pub own_ip6: &'a [Ipv6Addr],
    /// The interface's IPv6 prefixes: IPv6 adverts from a source that is
    /// neither link-local nor on one of them are refused.
    pub subnets6: &'a [Subnet6],
    /// The VHID's unicast peers, of either family; empty: any source on
    /// the subnets.
    pub peers: &'a [IpAddr],
    /// Our master-down interval: senders (and counters) silent for longer are forgotten.
    pub forget_after_ns: u64,
    /// The VHID runs fast mode (`advbase_ms`, advbase 0 on the wire;
    /// docs/protocol.md §2, "Fast mode (advbase 0)").
    pub fast_mode: bool,
}

/// One received advert as the ring record gives it.
#[derive(Clone, Copy, Debug)]
pub struct Received<'a> {
    pub repr: &'a carp::Repr,
    /// IPv4 or IPv6, as the ring record's family says.
    pub src: IpAddr,
    /// 224.0.0.18 or ff02::12, or our own address for a unicast advert.
    pub dst: IpAddr,
    pub src_mac: [u8; 6],
    /// Kernel arrival time (CLOCK_MONOTONIC ns).
    pub ktime_ns: u64,
}

/// Why an advert was not acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// From our own address: our advert looped back (carp(4) ignores them).
    Own,
    /// From an address on none of the interface's subnets.
    OffSubnet,
    /// The VHID has unicast peers and the source is none of them.
    NotPeer,
    BadDigest,
    /// advbase 0 (fast mode), not configured here.
    FastModeMismatch,
    /// A whole-second advbase (not a bow-out) while this VHID runs fast mode.
    SecondsInFastMode,
    /// A counter we advertised, from another address (replayed or looped back).
    OwnCounter,
    /// A counter already accepted (from another source, or out of order from this one).
    Replay,
    /// The second copy of an advert (the IPv4 and IPv6 copies carry one
    /// counter, `replay.rs`): the first one was acted on. Not an alarm.
    Duplicate,
}

impl Rejection {
    pub const ALL: [Rejection; 9] = [
        Self::Own,
        Self::OffSubnet,
        Self::NotPeer,
        Self::BadDigest,
        Self::FastModeMismatch,
        Self::SecondsInFastMode,
        Self::OwnCounter,
        Self::Replay,
        Self::Duplicate,
    ];

    /// The `result` label it is counted under (`OwnCounter` counts as `own`).
    pub const fn result(self) -> AdvertResult {
        match self {
            Self::Own | Self::OwnCounter => AdvertResult::Own,
            Self::OffSubnet => AdvertResult::OffSubnet,
            Self::NotPeer => AdvertResult::NotPeer,
            Self::BadDigest => AdvertResult::BadDigest,
            Self::FastModeMismatch | Self::SecondsInFastMode => AdvertResult::FastModeMismatch,
            Self::Replay => AdvertResult::Replay,
            Self::Duplicate => AdvertResult::Duplicate,
        }
    }

    /// Whether the runtime logs it as a warning (our own looped-back adverts are normal).
    pub const fn warns(self) -> bool {
        !matches!(self, Self::Own | Self::Duplicate)
    }

    pub const fn describe(self) -> &'static str {
        match self {
            Self::Own => "own advert looped back",
            Self::OffSubnet => "advert from a source off the interface's subnets ignored",
            Self::NotPeer => "advert from a source that is not one of the VHID's peers ignored",
            Self::BadDigest => "advert with a wrong digest ignored (password or VIP list differs)",
            Self::FastModeMismatch => {
                "advert with advbase 0 (fast mode) ignored: advbase_ms is not configured here"
            }
            Self::SecondsInFastMode => {
                "advert with a whole-second advbase ignored: this VHID runs fast mode (advbase_ms)"
            }
            Self::OwnCounter => "advert carrying one of our own counters ignored (replayed)",
            Self::Replay => "replayed advert ignored",
            Self::Duplicate => "second copy (the other address family) of an advert ignored",
        }
    }
}

/// The outcome for one advert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept {
        /// What goes to the election.
        advert: PeerAdvert,
        /// The counter tracker's verdict (`Jump` is counted).
        counter: replay::Verdict,
        /// An advert to the group whose source MAC is neither
        /// `00:00:5e:00:01:VHID` nor ucarp's `00:00:5e:00:00:VHID`.
        unexpected_source_mac: bool,
    },
    Reject(Rejection),
}

/// Decides whether `adv` may reach the election, updating `tracker` (the VHID's
/// counter state) for accepted adverts only.
pub fn accept(policy: &Policy<'_>, tracker: &mut Tracker, adv: &Received<'_>) -> Verdict {
    if let Some(why) = source_problem(policy, adv.src) {
        return Verdict::Reject(why);
    }
    let r = adv.repr;
    if !carp::verify_digest(
        policy.password,
        policy.vhid,
        policy.vips,
        policy.vips6,
        r.counter,
        &r.digest,
    ) {
        return Verdict::Reject(Rejection::BadDigest);
    }
    // advbase 0 is this project's fast mode on the wire (docs/protocol.md §2,
    // "Fast mode (advbase 0)"). The two modes cannot be compared: OpenBSD and
    // ucarp read advbase 0 as an interval of advskew/256 s (so such a sender
    // would win every whole-second election), and a fast receiver reads it with
    // its own advbase_ms. So an advert in the other mode is counted and never
    // allowed to move anything. A bow-out (255/255) means "master gone" in
    // both modes.
    if policy.fast_mode {
        if r.advbase != 0 && !r.is_bow_out() {
            return Verdict::Reject(Rejection::SecondsInFastMode);
        }
    } else if r.advbase == 0 {
        return Verdict::Reject(Rejection::FastModeMismatch);
    }
    let counter = tracker.check(adv.ktime_ns, adv.src, r.counter, policy.forget_after_ns);
    match counter {
        replay::Verdict::Own => return Verdict::Reject(Rejection::OwnCounter),
        replay::Verdict::Replay => return Verdict::Reject(Rejection::Replay),
        replay::Verdict::Duplicate => return Verdict::Reject(Rejection::Duplicate),
        _ => {}
    }
    // BSD vMAC, or ucarp's 00:00:5e:00:00:VHID: anything else is counted,
    // never dropped (virtual switches may rewrite it). A unicast advert comes
    // from the sender's interface MAC (ours, and FreeBSD's: its carp_output
    // sets the vMAC only for the group), so only the group's are judged.
    let bsd = frame::virtual_mac(policy.vhid);
    let mut ucarp = bsd;
    ucarp[4] = 0;
    let to_group = adv.dst.is_multicast();
    Verdict::Accept {
        advert: PeerAdvert {
            advbase: r.advbase,
            advskew: r.advskew,
        },
        counter,
        unexpected_source_mac: to_group && adv.src_mac != bsd && adv.src_mac != ucarp,
    }
}

/// The checks on the IP source (the first three rows of the module table).
fn source_problem(policy: &Policy<'_>, src: IpAddr) -> Option<Rejection> {
    match src {
        IpAddr::V4(src) => {
            if Some(src) == policy.own_ip {
                return Some(Rejection::Own);
            }
            if !policy.subnets.iter().any(|s| s.contains(src)) {
                return Some(Rejection::OffSubnet);
            }
            if !policy.peers.is_empty() && !policy.peers.contains(&IpAddr::V4(src)) {
                return Some(Rejection::NotPeer);
            }
        }
        IpAddr::V6(src) => {
            if policy.own_ip6.contains(&src) {
                return Some(Rejection::Own);
            }
            if !is_link_local6(src) && !policy.subnets6.iter().any(|s| s.contains(src)) {
                return Some(Rejection::OffSubnet);
            }
            // FreeBSD's `peer6`: with peers, only a listed IPv6 peer.
            if !policy.peers.is_empty() && !policy.peers.contains(&IpAddr::V6(src)) {
                return Some(Rejection::NotPeer);
            }
        }
    }
    None
}

/// At most [`WarnLimiter::PER_SECOND`] warnings per second per key (VHID and
/// reason); the rest are counted and reported with the next one let through.
#[derive(Debug, Default)]
pub struct WarnLimiter {
    /// key → (start of the current one-second window, warnings in it, suppressed since the last warning).
    slots: std::collections::HashMap<(u8, Rejection), (u64, u32, u64)>,
}

impl WarnLimiter {
    pub const PER_SECOND: u32 = 3;

    /// `Some(suppressed since the last warning)` if a warning may be logged now.
    pub fn allow(&mut self, now_ns: u64, vhid: u8, why: Rejection) -> Option<u64> {
        let slot = self.slots.entry((vhid, why)).or_insert((now_ns, 0, 0));
        if now_ns.saturating_sub(slot.0) >= 1_000_000_000 {
            slot.0 = now_ns;
            slot.1 = 0;
        }
        if slot.1 < Self::PER_SECOND {
            slot.1 += 1;
            Some(std::mem::take(&mut slot.2))
        } else {
            slot.2 += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const OWN: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
    const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 12);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const SUBNETS: [Subnet; 1] = [Subnet::new(OWN, 24)];
    const OWN6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x11);
    const PEER6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x12);
    const OWN6_GLOBAL: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11);
    const SUBNETS6: [Subnet6; 1] = [Subnet6::new(OWN6_GLOBAL, 64)];
    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

    fn policy() -> Policy<'static> {
        Policy {
            vhid: 1,
            password: b"secret",
            vips: &[VIP],
            vips6: &[],
            own_ip: Some(OWN),
            subnets: &SUBNETS,
            own_ip6: &[OWN6, OWN6_GLOBAL],
            subnets6: &SUBNETS6,
            peers: &[],
            forget_after_ns: 3 * SEC,
            fast_mode: false,
        }
    }

    fn advert(counter: u64, advskew: u8) -> carp::Repr {
        carp::Repr::new_advert(1, 1, advskew, counter, b"secret", &[VIP], &[])
    }

    fn rx<'a>(repr: &'a carp::Repr, src: Ipv4Addr, at: u64) -> Received<'a> {
        Received {
            repr,
            src: src.into(),
            dst: frame::CARP_GROUP_V4.into(),
            src_mac: frame::virtual_mac(1),
            ktime_ns: at,
        }
    }

    fn verdict(t: &mut Tracker, repr: &carp::Repr, src: Ipv4Addr, at: u64) -> Verdict {
        accept(&policy(), t, &rx(repr, src, at))
    }

    fn rejected(v: Verdict) -> Option<Rejection> {
        match v {
            Verdict::Reject(r) => Some(r),
            Verdict::Accept { .. } => None,
        }
    }

    #[test]
    fn subnet_membership() {
        let s = Subnet::new(OWN, 24);
        assert!(s.contains(Ipv4Addr::new(10, 77, 0, 200)));
        assert!(!s.contains(Ipv4Addr::new(10, 77, 1, 12)));
        assert!(Subnet::new(OWN, 0).contains(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(!Subnet::new(OWN, 32).contains(PEER));
        assert!(Subnet::new(OWN, 32).contains(OWN));
    }

    #[test]
    fn checks_in_order() {
        let mut t = Tracker::new();
        let a = advert(100, 50);
        assert_eq!(rejected(verdict(&mut t, &a, OWN, 0)), Some(Rejection::Own));
        let off = Ipv4Addr::new(192, 0, 2, 9);
        assert_eq!(
            rejected(verdict(&mut t, &a, off, 0)),
            Some(Rejection::OffSubnet)
        );
        let mut bad = a;
        bad.digest[0] ^= 1;
        assert_eq!(
            rejected(verdict(&mut t, &bad, PEER, 0)),
            Some(Rejection::BadDigest)
        );
        let fast = carp::Repr::new_advert(1, 0, 50, 100, b"secret", &[VIP], &[]);
        assert_eq!(
            rejected(verdict(&mut t, &fast, PEER, 0)),
            Some(Rejection::FastModeMismatch)
        );
        match verdict(&mut t, &a, PEER, 0) {
            Verdict::Accept {
                advert,
                counter,
                unexpected_source_mac,
            } => {
                assert_eq!((advert.advbase, advert.advskew), (1, 50));
                assert_eq!(counter, replay::Verdict::First);
                assert!(!unexpected_source_mac);
            }
            v => panic!("{v:?}"),
        }
        let mut other_mac = rx(&a, PEER, SEC);
        other_mac.src_mac = [2, 0, 0, 0, 0, 1];
        let b = advert(101, 50);
        other_mac.repr = &b;
        assert!(matches!(
            accept(&policy(), &mut t, &other_mac),
            Verdict::Accept {
                unexpected_source_mac: true,
                ..
            }
        ));
    }

    /// Fast mode (docs/protocol.md §2): advbase 0 is accepted only by a VHID
    /// that runs it, a whole-second advbase only by one that does not, a
    /// bow-out by both; a mismatch is counted as `fast_mode_mismatch` and
    /// leaves the counter state alone (the next advert of that sender is still
    /// its first).
    #[test]
    fn fast_mode_accepts_advbase_zero_only() {
        let fast_policy = Policy {
            fast_mode: true,
            ..policy()
        };
        let fast = |counter| carp::Repr::new_advert(1, 0, 50, counter, b"secret", &[VIP], &[]);
        let mut t = Tracker::new();
        match accept(&fast_policy, &mut t, &rx(&fast(100), PEER, 0)) {
            Verdict::Accept {
                advert, counter, ..
            } => {
                assert_eq!((advert.advbase, advert.advskew), (0, 50));
                assert_eq!(counter, replay::Verdict::First);
            }
            v => panic!("{v:?}"),
        }
        // A whole-second advert in fast mode: refused before the counter check.
        let mut t = Tracker::new();
        let seconds = advert(200, 0);
        let v = accept(&fast_policy, &mut t, &rx(&seconds, PEER, 0));
        assert_eq!(rejected(v), Some(Rejection::SecondsInFastMode));
        assert_eq!(
            Rejection::SecondsInFastMode.result(),
            AdvertResult::FastModeMismatch
        );
        // Had the tracker taken 200, 201 would be `Sequential`.
        assert!(matches!(
            accept(&fast_policy, &mut t, &rx(&fast(201), PEER, SEC)),
            Verdict::Accept {
                counter: replay::Verdict::First,
                ..
            }
        ));
        // A bow-out is understood in fast mode too.
        let mut bow = fast(202);
        bow.advbase = 255;
        bow.advskew = 255;
        assert!(matches!(
            accept(&fast_policy, &mut t, &rx(&bow, PEER, SEC + 1)),
            Verdict::Accept { .. }
        ));
        // Without fast mode, advbase 0 is refused and a bow-out accepted.
        let mut t = Tracker::new();
        assert_eq!(
            rejected(verdict(&mut t, &fast(300), PEER, 0)),
            Some(Rejection::FastModeMismatch)
        );
        let mut bow = advert(301, 0);
        bow.advbase = 255;
        bow.advskew = 255;
        assert!(matches!(
            verdict(&mut t, &bow, PEER, 1),
            Verdict::Accept {
                counter: replay::Verdict::First,
                ..
            }
        ));
    }

    /// The attack: the master's advert captured and re-sent from new
    /// addresses with advskew rewritten (0: "I am better"; 255/255: a bow-out).
    /// The digest does not cover advskew/advbase, so it still verifies. Before
    /// the fix (per-source tracking only) every copy was accepted as a first
    /// sight; checked once by running this against the old `on_record` logic.
    #[test]
    fn rewritten_replay_from_new_addresses_is_refused() {
        // At the backup: the master (PEER) advertises 500, 501, 502.
        let mut backup = Tracker::new();
        for (i, c) in (500..503u64).enumerate() {
            let a = advert(c, 0);
            assert!(matches!(
                verdict(&mut backup, &a, PEER, i as u64 * SEC),
                Verdict::Accept { .. }
            ));
        }
        let mut bow_out = advert(501, 0);
        bow_out.advbase = 255;
        bow_out.advskew = 255;
        for k in 0..60u8 {
            let src = Ipv4Addr::new(10, 77, 0, 20 + k);
            let at = 2 * SEC + u64::from(k) * SEC / 10;
            assert_eq!(
                rejected(verdict(&mut backup, &bow_out, src, at)),
                Some(Rejection::Replay),
                "copy {k}"
            );
        }
        // At the master: its own advert 501, advskew 0, from another address.
        let mut master = Tracker::new();
        for (i, c) in (500..503u64).enumerate() {
            master.record_sent(i as u64 * SEC, c);
        }
        let mut better = advert(501, 0);
        better.advskew = 0;
        assert_eq!(
            rejected(verdict(
                &mut master,
                &better,
                Ipv4Addr::new(10, 77, 0, 99),
                3 * SEC
            )),
            Some(Rejection::OwnCounter)
        );
    }

    /// A VHID with peers takes adverts only from them, unicast or to the
    /// group alike (a node of the VHID may still be multicast, docs/protocol.md
    /// §1 "Unicast peers"); anyone else is `not_peer`, before the HMAC and
    /// without touching the counter state. A unicast advert comes from the
    /// sender's interface MAC: not flagged. Without peers, unicast adverts are
    /// accepted from anyone on the subnet, as before.
    #[test]
    fn peers_only_from_peers_whatever_the_destination() {
        let with_peers = Policy {
            peers: &[IpAddr::V4(PEER)],
            ..policy()
        };
        let stranger = Ipv4Addr::new(10, 77, 0, 100);
        let mut t = Tracker::new();
        let a = advert(100, 0);
        let mut unicast = rx(&a, stranger, 0);
        unicast.dst = OWN.into();
        unicast.src_mac = [2, 0, 0, 0, 0, 0x64];
        assert_eq!(
            rejected(accept(&with_peers, &mut t, &unicast)),
            Some(Rejection::NotPeer)
        );
        // Refused before the digest: a wrong password is still `not_peer`.
        let mut forged = advert(100, 0);
        forged.digest[0] ^= 1;
        assert_eq!(
            rejected(accept(&with_peers, &mut t, &rx(&forged, stranger, 0))),
            Some(Rejection::NotPeer)
        );
        // Off the subnet stays `off_subnet`.
        let off = Ipv4Addr::new(192, 0, 2, 9);
        assert_eq!(
            rejected(accept(&with_peers, &mut t, &rx(&a, off, 0))),
            Some(Rejection::OffSubnet)
        );
        // The peer, unicast from its interface MAC: accepted, not flagged, a
        // first sight (the refused ones left the tracker alone).
        let mut from_peer = rx(&a, PEER, SEC);
        from_peer.dst = OWN.into();
        from_peer.src_mac = [2, 0, 0, 0, 0, 0x0c];
        assert!(matches!(
            accept(&with_peers, &mut t, &from_peer),
            Verdict::Accept {
                counter: replay::Verdict::First,
                unexpected_source_mac: false,
                ..
            }
        ));
        // The peer, still multicast (a mixed setup): accepted too; to the
        // group, a foreign MAC is flagged as ever.
        let b = advert(101, 0);
        let mut to_group = rx(&b, PEER, 2 * SEC);
        to_group.src_mac = [2, 0, 0, 0, 0, 0x0c];
        assert!(matches!(
            accept(&with_peers, &mut t, &to_group),
            Verdict::Accept {
                counter: replay::Verdict::Sequential,
                unexpected_source_mac: true,
                ..
            }
        ));
        // No peers: a unicast advert from anyone on the subnet is taken.
        let mut t = Tracker::new();
        assert!(matches!(
            accept(&policy(), &mut t, &unicast),
            Verdict::Accept {
                unexpected_source_mac: false,
                ..
            }
        ));
        assert_eq!(Rejection::NotPeer.result().label(), "not_peer");
    }

    /// IPv6 adverts: the source checks in their IPv6 form, and the digest
    /// over IPv4 then IPv6 VIPs as for IPv4 adverts.
    #[test]
    fn ipv6_adverts_source_rules() {
        let p = Policy {
            vips6: &[VIP6],
            ..policy()
        };
        let a = carp::Repr::new_advert(1, 1, 0, 100, b"secret", &[VIP], &[VIP6]);
        let rx6 = |repr, src: Ipv6Addr, at| Received {
            repr,
            src: src.into(),
            dst: crate::wire::advert6::CARP_GROUP_V6.into(),
            src_mac: frame::virtual_mac(1),
            ktime_ns: at,
        };
        let mut t = Tracker::new();
        let cases = [
            (OWN6, Some(Rejection::Own)),
            (OWN6_GLOBAL, Some(Rejection::Own)),
            // Global, not on our prefixes: routed or forged.
            (
                "2001:db8:1::12".parse().unwrap(),
                Some(Rejection::OffSubnet),
            ),
            (
                "::ffff:10.77.0.12".parse().unwrap(),
                Some(Rejection::OffSubnet),
            ),
        ];
        for (src, want) in cases {
            assert_eq!(
                rejected(accept(&p, &mut t, &rx6(&a, src, 0))),
                want,
                "{src}"
            );
        }
        // A digest without the IPv6 VIP is wrong for this VHID.
        let v4_only = advert(100, 0);
        assert_eq!(
            rejected(accept(&p, &mut t, &rx6(&v4_only, PEER6, 0))),
            Some(Rejection::BadDigest)
        );
        // Link-local, and a global on our prefix (FreeBSD's source when its
        // first IPv6 address is a global one): accepted.
        assert!(matches!(
            accept(&p, &mut t, &rx6(&a, PEER6, 0)),
            Verdict::Accept {
                counter: replay::Verdict::First,
                unexpected_source_mac: false,
                ..
            }
        ));
        let b = carp::Repr::new_advert(1, 1, 0, 101, b"secret", &[VIP], &[VIP6]);
        let on_prefix: Ipv6Addr = "2001:db8::12".parse().unwrap();
        assert!(matches!(
            accept(&p, &mut t, &rx6(&b, on_prefix, SEC)),
            Verdict::Accept { .. }
        ));
        // With unicast peers, IPv6 adverts only from a listed IPv6 peer
        // (FreeBSD's peer6); an IPv4 peer does not vouch for any IPv6 source.
        let with_peers = Policy {
            peers: &[IpAddr::V4(PEER)],
            ..p
        };
        assert_eq!(
            rejected(accept(&with_peers, &mut Tracker::new(), &rx6(&a, PEER6, 0))),
            Some(Rejection::NotPeer)
        );
        let with_peer6 = Policy {
            peers: &[IpAddr::V4(PEER), IpAddr::V6(PEER6)],
            ..p
        };
        assert!(matches!(
            accept(&with_peer6, &mut Tracker::new(), &rx6(&a, PEER6, 0)),
            Verdict::Accept { .. }
        ));
        assert_eq!(
            rejected(accept(
                &with_peer6,
                &mut Tracker::new(),
                &rx6(&b, on_prefix, 0)
            )),
            Some(Rejection::NotPeer)
        );
        // ... and an IPv6 peer does not vouch for an IPv4 source.
        let only6 = Policy {
            peers: &[IpAddr::V6(PEER6)],
            ..p
        };
        assert_eq!(
            rejected(accept(&only6, &mut Tracker::new(), &rx(&a, PEER, 0))),
            Some(Rejection::NotPeer)
        );
        assert!(is_link_local6("fe80::1".parse().unwrap()));
        assert!(is_link_local6("febf::1".parse().unwrap()));
        assert!(!is_link_local6("fec0::1".parse().unwrap()));
        assert!(Subnet6::new(OWN6_GLOBAL, 0).contains(PEER6));
    }

    /// The two copies of one advert (IPv4 then IPv6, one counter): the
    /// election gets the first only; the second is `duplicate`, no warning.
    /// A bow-out sent over both families is thus acted on once.
    #[test]
    fn the_other_familys_copy_is_a_duplicate() {
        let p = Policy {
            vips6: &[VIP6],
            ..policy()
        };
        let mut bow = carp::Repr::new_advert(1, 255, 255, 100, b"secret", &[VIP], &[VIP6]);
        bow.advbase = 255;
        let mut t = Tracker::new();
        assert!(matches!(
            accept(&p, &mut t, &rx(&bow, PEER, 0)),
            Verdict::Accept { advert, .. } if advert.advskew == 255
        ));
        let copy = Received {
            src: PEER6.into(),
            dst: crate::wire::advert6::CARP_GROUP_V6.into(),
            ..rx(&bow, PEER, 1_000_000)
        };
        assert_eq!(
            rejected(accept(&p, &mut t, &copy)),
            Some(Rejection::Duplicate)
        );
        assert!(!Rejection::Duplicate.warns());
        assert_eq!(Rejection::Duplicate.result().label(), "duplicate");
    }

    #[test]
    fn every_rejection_has_a_result_label() {
        for r in Rejection::ALL {
            assert!(AdvertResult::ALL.contains(&r.result()));
            assert!(!r.describe().is_empty());
        }
        assert_eq!(Rejection::OffSubnet.result().label(), "off_subnet");
    }

    #[test]
    fn warnings_are_rate_limited_and_suppressed_ones_counted() {
        let mut l = WarnLimiter::default();
        let per = WarnLimiter::PER_SECOND as usize;
        let allowed = (0..100)
            .filter(|i| l.allow(i * 1_000_000, 1, Rejection::BadDigest).is_some())
            .count();
        assert_eq!(allowed, per);
        // Another VHID or reason has its own budget.
        assert_eq!(l.allow(0, 2, Rejection::BadDigest), Some(0));
        assert_eq!(l.allow(0, 1, Rejection::Replay), Some(0));
        // The next window reports what was suppressed.
        assert_eq!(
            l.allow(SEC, 1, Rejection::BadDigest),
            Some(100 - per as u64)
        );
        assert_eq!(l.allow(SEC + 1, 1, Rejection::BadDigest), Some(0));
    }
}
