//! Golden-byte and property tests of the CARP codec (`carp_user::wire`).
//!
//! `tests/data/ucarp-adverts.pcap` is a copy of the shared capture: eight real
//! advertisements between two ucarp 1.5.2 nodes (VHID 1, password `secret`,
//! VIP 10.77.0.1, advbase 1; 10.77.0.11 with advskew 0 until killed, then
//! 10.77.0.12 with advskew 100) and three gratuitous ARPs.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use carp_user::replay::{Tracker, Verdict};
use carp_user::wire::carp::{self, Packet, Repr, HEADER_LEN};
use carp_user::wire::frame::{self, parse_ipv4_advert, virtual_mac};
use pcap_file::pcap::PcapReader;
use proptest::prelude::*;

const PASSWORD: &[u8] = b"secret";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const NODE_11: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
const NODE_12: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 12);
/// ucarp sends from 00:00:5e:00:00:VHID, not the BSD 00:00:5e:00:01:VHID.
const UCARP_SRC_MAC: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x00, 0x01];

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Every frame of the capture with its timestamp.
fn capture() -> Vec<(Duration, Vec<u8>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ucarp-adverts.pcap");
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    let mut reader = PcapReader::new(file).expect("pcap header");
    let mut out = Vec::new();
    while let Some(pkt) = reader.next_packet() {
        let pkt = pkt.expect("pcap record");
        out.push((pkt.timestamp, pkt.data.into_owned()));
    }
    out
}

fn adverts() -> Vec<(Duration, Vec<u8>)> {
    capture()
        .into_iter()
        .filter(|(_, f)| f.get(12..14) == Some(&[0x08, 0x00][..]))
        .collect()
}

fn arps() -> Vec<Vec<u8>> {
    capture()
        .into_iter()
        .filter(|(_, f)| f.get(12..14) == Some(&[0x08, 0x06][..]))
        .map(|(_, f)| f)
        .collect()
}

#[test]
fn capture_has_eight_adverts_and_three_arps() {
    assert_eq!(capture().len(), 11);
    assert_eq!(adverts().len(), 8);
    assert_eq!(arps().len(), 3);
}

#[test]
fn every_captured_advert_parses_and_authenticates() {
    for (i, (_, f)) in adverts().iter().enumerate() {
        let adv = parse_ipv4_advert(f).unwrap_or_else(|e| panic!("advert {i}: {e}"));
        let payload = &f[34..70];
        let view = Packet::new_checked(payload).expect("36 bytes");
        assert!(view.verify_checksum(), "advert {i}: checksum");
        assert_eq!(view.version(), 2);
        assert_eq!(view.authlen(), 7);

        let r = adv.carp;
        assert_eq!(r.vhid, 1, "advert {i}");
        assert_eq!(r.advbase, 1, "advert {i}");
        assert_eq!(r.demote, 0, "advert {i}");
        let want_skew = if adv.src_ip == NODE_11 { 0 } else { 100 };
        assert!(adv.src_ip == NODE_11 || adv.src_ip == NODE_12, "advert {i}");
        assert_eq!(r.advskew, want_skew, "advert {i}");
        assert_eq!(adv.src_mac, UCARP_SRC_MAC);
        assert_eq!(adv.dst_mac, frame::CARP_GROUP_MAC_V4);
        assert_eq!(adv.dst_ip, frame::CARP_GROUP_V4);
        assert_eq!(adv.ttl, 255);

        assert!(r.verify(PASSWORD, &[VIP], &[]), "advert {i}: digest");
        assert!(
            carp::verify_digest(PASSWORD, 1, &[VIP], &[], r.counter, &r.digest),
            "advert {i}: verify_digest"
        );
        assert_eq!(carp::digest(PASSWORD, 1, &[VIP], &[], r.counter), r.digest);
        assert!(
            !r.verify(b"Secret", &[VIP], &[]),
            "advert {i}: wrong password"
        );
        assert!(!r.verify(b"", &[VIP], &[]), "advert {i}: empty password");
        assert!(
            !r.verify(PASSWORD, &[Ipv4Addr::new(10, 77, 0, 2)], &[]),
            "advert {i}: wrong VIP"
        );
        assert!(!r.verify(PASSWORD, &[], &[]), "advert {i}: no VIP");

        // Re-emitting gives the captured 36 bytes.
        assert_eq!(&r.to_bytes()[..], payload, "advert {i}: re-emit");
        // So does building the advert from scratch with the captured counter.
        let fresh = Repr::new_advert(1, 1, want_skew, r.counter, PASSWORD, &[VIP], &[]);
        assert_eq!(fresh, r, "advert {i}: new_advert");
    }
}

/// ucarp's IPv4 header choices are OpenBSD's (TOS 0x10 = IPTOS_LOWDELAY, DF,
/// TTL 255), which is our default, so given the same source MAC/IP and IP id
/// we rebuild the whole frame byte for byte, IPv4 header checksum included.
#[test]
fn our_frame_builder_reproduces_ucarp_frames() {
    for (i, (_, f)) in adverts().iter().enumerate() {
        let adv = parse_ipv4_advert(f).expect("parse");
        let ip_id = u16::from_be_bytes([f[18], f[19]]);
        assert_eq!(f[15], frame::TOS_LOWDELAY, "advert {i}: ucarp TOS");
        assert_eq!(f[20] & 0x40, 0x40, "advert {i}: ucarp sets DF");
        let ours = frame::advert_ipv4(adv.src_mac, adv.src_ip, &adv.carp, ip_id);
        assert_eq!(&ours[..], &f[..], "advert {i}: whole frame");
    }
}

/// The counters in the capture: the lone master sends a fresh random counter
/// every time (it never heard anyone), the node that takes over adopted the
/// last counter it heard and adds 1 (docs/protocol.md §1). The tracker must accept
/// all of them and reject a replay once the +1 sequence runs.
#[test]
fn capture_counters_through_the_replay_tracker() {
    let forget = 3_000_000_000; // master-down interval of advbase 1
    let mut t = Tracker::new();
    let mut verdicts = Vec::new();
    let mut last = None;
    for (ts, f) in adverts() {
        let adv = parse_ipv4_advert(&f).expect("parse");
        let now = u64::try_from(ts.as_nanos()).expect("fits");
        verdicts.push(t.check(now, IpAddr::V4(adv.src_ip), adv.carp.counter, forget));
        last = Some((now, adv));
    }
    use Verdict::*;
    assert_eq!(
        verdicts,
        [First, Jump, Jump, Jump, First, Sequential, Sequential, Sequential]
    );
    // Node 11's last counter + 1 is node 12's first: it adopted what it heard.
    let counters: Vec<u64> = adverts()
        .iter()
        .map(|(_, f)| parse_ipv4_advert(f).expect("parse").carp.counter)
        .collect();
    assert_eq!(counters[3].wrapping_add(1), counters[4]);
    // Replaying node 12's previous advert while it advertises is rejected.
    let (now, adv) = last.expect("adverts");
    assert_eq!(
        t.check(
            now + 1,
            IpAddr::V4(adv.src_ip),
            adv.carp.counter - 1,
            forget
        ),
        Replay
    );
}

/// ucarp's gratuitous ARP has the layout the BSDs use (request, sender = target
/// = VIP), but from the interface MAC and with the target hardware address set
/// to it too; ours uses the virtual MAC and a zero target hardware address as
/// OpenBSD's `arprequest` and FreeBSD's `arp_announce_ifaddr` do.
#[test]
fn gratuitous_arp_matches_capture_layout() {
    for (i, f) in arps().iter().enumerate() {
        assert_eq!(f.len(), 42, "arp {i}");
        let mac: [u8; 6] = f[6..12].try_into().expect("6 bytes");
        let ours = frame::gratuitous_arp(mac, VIP);
        // Same everything but the target hardware address (bytes 32..38).
        assert_eq!(&ours[..32], &f[..32], "arp {i}: head");
        assert_eq!(&ours[38..], &f[38..], "arp {i}: target IP");
        assert_eq!(&f[32..38], &mac, "arp {i}: ucarp puts its MAC as target");
        assert_eq!(&ours[32..38], &[0; 6], "arp {i}: BSD zero target MAC");
    }
}

/// Hand-computed (independently, with Python's hmac module and an RFC 1071
/// checksum): VHID 5, advbase 1, advskew 100, counter 0x0123456789abcdef,
/// password "hunter2", VIPs 192.0.2.1 and 192.0.2.2 (passed in reverse order:
/// the digest sorts them), sent from 192.0.2.10 with IP id 0x1234.
#[test]
fn golden_bytes_of_our_own_advert() {
    let vips = [Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 1)];
    let r = Repr::new_advert(5, 1, 100, 0x0123_4567_89ab_cdef, b"hunter2", &vips, &[]);
    let want_carp = hex("21 05 64 07 00 01 60 ad  01 23 45 67 89 ab cd ef
         4e 79 19 7f 30 cb 5a 9c  3d 3e 90 d1 30 49 9b 92  c0 a7 2e 2c");
    assert_eq!(&r.to_bytes()[..], &want_carp[..]);
    assert_eq!(Repr::parse_bytes(&want_carp), Ok(r));

    let f = frame::advert_ipv4(virtual_mac(5), Ipv4Addr::new(192, 0, 2, 10), &r, 0x1234);
    let want_frame = hex("01 00 5e 00 00 12  00 00 5e 00 01 05  08 00
         45 10 00 38 12 34 40 00 ff 70 c6 f4 c0 00 02 0a e0 00 00 12");
    assert_eq!(&f[..34], &want_frame[..]);
    assert_eq!(&f[34..], &want_carp[..]);
    assert_eq!(r.interval_256ths(), 356);
}

#[test]
fn bow_out_golden_fields() {
    let r = Repr::bow_out(1, 42, PASSWORD, &[VIP], &[]);
    let b = r.to_bytes();
    assert_eq!(&b[..6], &[0x21, 1, 255, 7, 0, 255]);
    assert!(Packet::new_checked(&b[..]).expect("len").verify_checksum());
    assert!(Repr::parse_bytes(&b).expect("parse").is_bow_out());
}

fn arb_repr() -> impl Strategy<Value = Repr> {
    (
        1u8..=255,
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u64>(),
        any::<[u8; 20]>(),
    )
        .prop_map(|(vhid, advskew, advbase, demote, counter, digest)| Repr {
            vhid,
            advskew,
            advbase,
            demote,
            counter,
            digest,
        })
}

proptest! {
    #[test]
    fn repr_round_trips(r in arb_repr()) {
        let bytes = r.to_bytes();
        prop_assert_eq!(bytes.len(), HEADER_LEN);
        prop_assert_eq!(Repr::parse_bytes(&bytes), Ok(r));
        let mut buf = [0u8; HEADER_LEN];
        let mut p = Packet::new_checked(&mut buf[..]).expect("len");
        r.emit(&mut p);
        prop_assert!(p.verify_checksum());
        prop_assert_eq!(buf, bytes);
    }

    #[test]
    fn frame_round_trips(
        r in arb_repr(),
        mac in any::<[u8; 6]>(),
        ip in any::<u32>(),
        id in any::<u16>(),
        tos in any::<u8>(),
    ) {
        let src = Ipv4Addr::from(ip);
        let f = frame::advert_ipv4_with_tos(mac, src, &r, id, tos);
        prop_assert_eq!(f.len(), frame::ADVERT_IPV4_FRAME_LEN);
        prop_assert_eq!(f[15], tos);
        let back = parse_ipv4_advert(&f).expect("own frame parses");
        prop_assert_eq!(back.carp, r);
        prop_assert_eq!(back.src_ip, src);
        prop_assert_eq!(back.src_mac, mac);
    }

    #[test]
    fn view_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(p) = Packet::new_checked(&bytes[..]) {
            let _ = (p.version(), p.msg_type(), p.vhid(), p.advskew(), p.authlen());
            let _ = (p.demote(), p.advbase(), p.checksum(), p.counter(), p.digest());
            let _ = p.verify_checksum();
        } else {
            prop_assert!(bytes.len() < HEADER_LEN);
        }
    }

    #[test]
    fn repr_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(r) = Repr::parse_bytes(&bytes) {
            // Anything accepted re-emits to the same header bytes.
            prop_assert_eq!(&r.to_bytes()[..], &bytes[..HEADER_LEN]);
        }
    }

    #[test]
    fn frame_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = parse_ipv4_advert(&bytes);
    }

    /// Random bytes rarely get past the Ethernet header; corrupt real frames instead.
    #[test]
    fn corrupted_frames_never_panic(
        pick in 0usize..8,
        edits in proptest::collection::vec((0usize..80, any::<u8>()), 1..6),
        cut in 0usize..80,
    ) {
        let mut f = adverts()[pick].1.clone();
        for (at, v) in edits {
            if let Some(b) = f.get_mut(at) {
                *b = v;
            }
        }
        f.truncate(cut.max(1));
        let _ = parse_ipv4_advert(&f);
    }
}
