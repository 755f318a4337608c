//! Tier-1 tests of the ctnetlink codec (no kernel needed).
//!
//! * `tests/data/ctnetlink/dump_*.bin`, `event_*.bin`: messages captured from
//!   kernel 6.18 (`conntrack_kernel.rs::capture_golden`, entries made with the
//!   `conntrack -I` CLI, labels/helper ones through our installer) — one
//!   netlink message per file, `nlmsghdr` included.
//! * `tests/data/ctnetlink/req_*.bin`: our request builders' output, checked
//!   byte for byte (the kernel accepts these requests: see the root tests).
//!   Regenerate with `CT_BLESS=1`.
use std::net::IpAddr;
use std::path::PathBuf;

use carp_user::conntrack::netlink::{
    create_request, delete_request, dump_request, parse_entry, parse_message, status_to_send,
    update_request, CtFamily, CtMsgKind, CTA_PROTOINFO, CTA_TIMEOUT, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use carp_user::conntrack::{status, CtEntry, TcpInfo, Tuple, L4};
use proptest::prelude::*;

fn data(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/ctnetlink")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn t(src: &str, dst: &str, proto: u8, l4: L4) -> Tuple {
    Tuple {
        src: ip(src),
        dst: ip(dst),
        proto,
        l4,
    }
}

fn p(src: u16, dst: u16) -> L4 {
    L4::Ports { src, dst }
}

const CONFIRMED: u32 = status::CONFIRMED;
/// What the CLI's `--state ESTABLISHED` entries carry (flags 0x0a).
const CLI_TCP: TcpInfo = TcpInfo {
    state: 3,
    wscale_orig: 0,
    wscale_reply: 0,
    flags_orig: 0x0a,
    flags_reply: 0x0a,
};

fn entry(orig: Tuple, reply: Tuple, status: u32, timeout: u32) -> CtEntry {
    CtEntry {
        reply,
        status,
        ..CtEntry::new(orig, timeout)
    }
}

/// The expected parse of every captured dump message.
fn golden_dumps() -> Vec<(&'static str, CtEntry)> {
    let snat_orig = t("10.0.0.1", "192.0.2.1", 6, p(40000, 80));
    let snat_reply = t("192.0.2.1", "198.51.100.1", 6, p(80, 1025));
    let udp = t("10.0.0.1", "192.0.2.53", 17, p(5353, 53));
    let icmp = t(
        "10.0.0.1",
        "192.0.2.1",
        1,
        L4::Icmp {
            id: 1234,
            kind: 8,
            code: 0,
        },
    );
    let icmp6 = t(
        "2001:db8::1",
        "2001:db8::2",
        58,
        L4::Icmp {
            id: 77,
            kind: 128,
            code: 0,
        },
    );
    let tcp6 = t("2001:db8::1", "2001:db8::2", 6, p(40000, 443));
    let mark = t("10.0.0.3", "192.0.2.9", 17, p(1000, 2000));
    let zone = t("10.0.0.4", "192.0.2.9", 17, p(1000, 2000));
    let dnat = t("10.0.0.6", "192.0.2.80", 6, p(40000, 80));
    let ours_tcp = TcpInfo {
        state: 3,
        wscale_orig: 7,
        wscale_reply: 8,
        flags_orig: 0x0b,
        flags_reply: 0x0b,
    };
    let est = status::SEEN_REPLY | status::ASSURED | CONFIRMED;
    vec![
        (
            "dump_tcp_snat.bin",
            CtEntry {
                tcp: Some(CLI_TCP),
                ..entry(
                    snat_orig,
                    snat_reply,
                    est | status::SRC_NAT | status::SRC_NAT_DONE | status::DST_NAT_DONE,
                    299,
                )
            },
        ),
        (
            "dump_tcp_dnat.bin",
            CtEntry {
                tcp: Some(CLI_TCP),
                ..entry(
                    dnat,
                    t("10.1.1.1", "10.0.0.6", 6, p(8080, 40000)),
                    CONFIRMED | status::DST_NAT | status::SRC_NAT_DONE | status::DST_NAT_DONE,
                    299,
                )
            },
        ),
        ("dump_udp.bin", entry(udp, udp.inverse(), CONFIRMED, 29)),
        (
            "dump_icmp.bin",
            entry(
                icmp,
                t(
                    "192.0.2.1",
                    "10.0.0.1",
                    1,
                    L4::Icmp {
                        id: 1234,
                        kind: 0,
                        code: 0,
                    },
                ),
                CONFIRMED,
                29,
            ),
        ),
        (
            "dump_icmp6.bin",
            entry(
                icmp6,
                t(
                    "2001:db8::2",
                    "2001:db8::1",
                    58,
                    L4::Icmp {
                        id: 77,
                        kind: 129,
                        code: 0,
                    },
                ),
                CONFIRMED,
                29,
            ),
        ),
        (
            "dump_tcp6.bin",
            CtEntry {
                tcp: Some(CLI_TCP),
                ..entry(tcp6, tcp6.inverse(), CONFIRMED, 299)
            },
        ),
        (
            "dump_mark.bin",
            CtEntry {
                mark: 42,
                ..entry(mark, mark.inverse(), CONFIRMED, 59)
            },
        ),
        (
            "dump_zone.bin",
            CtEntry {
                zone: 7,
                ..entry(zone, zone.inverse(), CONFIRMED, 59)
            },
        ),
        (
            "dump_labels.bin",
            CtEntry {
                tcp: Some(ours_tcp),
                labels: Some([0x21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]),
                ..entry(
                    t("10.0.0.7", "192.0.2.7", 6, p(40007, 22)),
                    t("192.0.2.7", "10.0.0.7", 6, p(22, 40007)),
                    est,
                    399,
                )
            },
        ),
        (
            "dump_helper.bin",
            CtEntry {
                tcp: Some(ours_tcp),
                helper: Some("ftp".into()),
                ..entry(
                    t("10.0.0.8", "192.0.2.21", 6, p(40021, 21)),
                    t("192.0.2.21", "10.0.0.8", 6, p(21, 40021)),
                    est | status::HELPER,
                    399,
                )
            },
        ),
    ]
}

#[test]
fn conntrack_golden_dumps_parse() {
    for (file, want) in golden_dumps() {
        let raw = data(file);
        let m = parse_message(&raw).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(m.kind, CtMsgKind::New, "{file}");
        assert_eq!(
            m.flags & NLM_F_CREATE,
            0,
            "{file}: dump replies are not creates"
        );
        assert_eq!(m.entry, want, "{file}");
        // parse_entry on the payload gives the same.
        assert_eq!(parse_entry(&raw[16..]).unwrap(), want, "{file}");
        let v6 = want.orig.src.is_ipv6();
        assert_eq!(m.family, if v6 { 10 } else { 2 }, "{file}");
    }
}

#[test]
fn conntrack_golden_events_parse() {
    let (_, snat) = golden_dumps().remove(0);
    let new = parse_message(&data("event_new_tcp_snat.bin")).unwrap();
    assert_eq!(new.kind, CtMsgKind::New);
    assert_eq!(new.flags, NLM_F_CREATE | NLM_F_EXCL, "a NEW event");
    assert_ne!(new.portid, 0, "caused by the CLI's socket");
    assert_eq!(
        new.entry,
        CtEntry {
            timeout: 300,
            ..snat.clone()
        }
    );

    let upd = parse_message(&data("event_update_mark.bin")).unwrap();
    assert_eq!(upd.kind, CtMsgKind::New);
    assert_eq!(upd.flags & NLM_F_CREATE, 0, "an UPDATE event");
    assert_eq!(upd.entry.mark, 43);
    assert_eq!(
        upd.entry.orig,
        t("10.0.0.3", "192.0.2.9", 17, p(1000, 2000))
    );

    let del = parse_message(&data("event_destroy_tcp_snat.bin")).unwrap();
    assert_eq!(del.kind, CtMsgKind::Delete);
    assert_eq!(del.entry.orig, snat.orig);
    assert_eq!(del.entry.reply, snat.reply);
    assert!(del.entry.status & status::DYING != 0);
    assert!(del.has(CTA_PROTOINFO) && del.has(CTA_TIMEOUT));
}

fn bless() -> bool {
    std::env::var("CT_BLESS").as_deref() == Ok("1")
}

fn check_golden(name: &str, got: &[u8]) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/ctnetlink")
        .join(name);
    if bless() {
        std::fs::write(&p, got).unwrap();
        return;
    }
    let want =
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (CT_BLESS=1 to create)", p.display()));
    assert_eq!(got, &want[..], "{name} differs (CT_BLESS=1 to regenerate)");
}

#[test]
fn conntrack_golden_requests() {
    let dumps = golden_dumps();
    let get = |f: &str| dumps.iter().find(|(n, _)| *n == f).unwrap().1.clone();
    check_golden(
        "req_create_tcp_snat.bin",
        &create_request(&get("dump_tcp_snat.bin"), 1).unwrap(),
    );
    check_golden(
        "req_create_tcp_dnat.bin",
        &create_request(&get("dump_tcp_dnat.bin"), 2).unwrap(),
    );
    check_golden(
        "req_create_icmp6.bin",
        &create_request(&get("dump_icmp6.bin"), 3).unwrap(),
    );
    check_golden(
        "req_create_zone.bin",
        &create_request(&get("dump_zone.bin"), 4).unwrap(),
    );
    check_golden(
        "req_create_labels.bin",
        &create_request(&get("dump_labels.bin"), 5).unwrap(),
    );
    check_golden(
        "req_create_helper.bin",
        &create_request(&get("dump_helper.bin"), 6).unwrap(),
    );
    check_golden(
        "req_update_tcp_snat.bin",
        &update_request(&get("dump_tcp_snat.bin"), 7).unwrap(),
    );
    check_golden(
        "req_delete_zone.bin",
        &delete_request(&get("dump_zone.bin").key(), 8),
    );
    check_golden("req_dump_all.bin", &dump_request(CtFamily::All, 9));
}

#[test]
fn conntrack_request_headers() {
    let (_, e) = golden_dumps().remove(0);
    let c = parse_message(&create_request(&e, 11).unwrap()).unwrap();
    assert_eq!(
        c.flags,
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK
    );
    assert_eq!(c.seq, 11);
    // Updates and deletes carry no reply tuple, so check the header bytes.
    let flags = |m: &[u8]| u16::from_ne_bytes([m[6], m[7]]);
    let kind = |m: &[u8]| u16::from_ne_bytes([m[4], m[5]]);
    let u = update_request(&e, 12).unwrap();
    assert_eq!((kind(&u), flags(&u)), (0x0100, NLM_F_REQUEST | NLM_F_ACK));
    let d = delete_request(&e.key(), 13);
    assert_eq!((kind(&d), flags(&d)), (0x0102, NLM_F_REQUEST | NLM_F_ACK));
    let dump = dump_request(CtFamily::V6, 14);
    assert_eq!(dump.len(), 20);
    assert_eq!(
        u16::from_ne_bytes([dump[6], dump[7]]),
        NLM_F_REQUEST | NLM_F_DUMP
    );
    assert_eq!(dump[16], 10);
}

/// A dump entry, turned into a create request, parses back to itself apart
/// from what the installer deliberately changes (status bits the kernel owns,
/// TCP flags, nothing else).
#[test]
fn conntrack_golden_dump_to_create_roundtrip() {
    for (file, e) in golden_dumps() {
        let back = parse_entry(&create_request(&e, 1).unwrap()[16..]).unwrap();
        assert_eq!(back.orig, e.orig, "{file}");
        assert_eq!(back.reply, e.reply, "{file}");
        assert_eq!(
            (back.zone, back.mark, back.timeout),
            (e.zone, e.mark, e.timeout),
            "{file}"
        );
        assert_eq!(
            (&back.labels, &back.helper),
            (&e.labels, &e.helper),
            "{file}"
        );
        assert_eq!(back.status, status_to_send(e.status), "{file}");
        assert_eq!(
            back.status & (status::SRC_NAT_DONE | status::DST_NAT_DONE | status::EXPECTED),
            0
        );
        assert_eq!(back.tcp.map(|t| t.state), e.tcp.map(|t| t.state), "{file}");
    }
}

/// Parsing 1,000,000 captured messages in memory (the parse share of a full
/// dump). Prints the time; no timing assert.
#[test]
fn conntrack_parse_speed() {
    let msgs: Vec<Vec<u8>> = golden_dumps().iter().map(|(f, _)| data(f)).collect();
    let t = std::time::Instant::now();
    let mut n = 0u64;
    for i in 0..1_000_000usize {
        let m = &msgs[i % msgs.len()];
        if parse_entry(&m[16..]).is_ok() {
            n += 1;
        }
    }
    println!("parsed {n} entries in {:?}", t.elapsed());
    assert_eq!(n, 1_000_000);
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

fn arb_addr(v6: bool) -> BoxedStrategy<IpAddr> {
    if v6 {
        any::<[u8; 16]>().prop_map(IpAddr::from).boxed()
    } else {
        any::<[u8; 4]>().prop_map(IpAddr::from).boxed()
    }
}

/// (proto, l4) pairs the kernel would produce.
fn arb_l4(v6: bool) -> BoxedStrategy<(u8, L4)> {
    let icmp = if v6 { 58u8 } else { 1 };
    prop_oneof![
        (
            prop::sample::select(vec![6u8, 17, 132, 136, 33]),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(pr, s, d)| (pr, L4::Ports { src: s, dst: d })),
        (any::<u16>(), any::<u8>(), any::<u8>())
            .prop_map(move |(id, kind, code)| (icmp, L4::Icmp { id, kind, code })),
        prop::sample::select(vec![2u8, 4, 41, 50, 51, 103, 255]).prop_map(|pr| (pr, L4::None)),
    ]
    .boxed()
}

fn arb_entry() -> impl Strategy<Value = CtEntry> {
    any::<bool>()
        .prop_flat_map(|v6| {
            (
                arb_addr(v6),
                arb_addr(v6),
                arb_l4(v6),
                prop::option::of(arb_addr(v6)),
                prop::option::of(arb_addr(v6)),
                any::<(u16, u16)>(),
                (any::<u16>(), any::<u32>(), any::<u32>(), any::<u32>()),
                prop::option::of(any::<(u8, u8, u8, u8, u8)>()),
                prop::option::of(any::<[u8; 16]>()),
                prop::option::of("[a-z0-9-]{1,15}"),
            )
        })
        .prop_map(
            |(
                src,
                dst,
                (proto, l4),
                snat,
                dnat,
                (sp, dp),
                (zone, mark, st, timeout),
                tcp,
                labels,
                helper,
            )| {
                let orig = Tuple {
                    src,
                    dst,
                    proto,
                    l4,
                };
                let mut reply = orig.inverse();
                let mut st = st & !(status::SRC_NAT | status::DST_NAT);
                if let Some(a) = snat {
                    st |= status::SRC_NAT;
                    reply.dst = a;
                    match reply.l4 {
                        L4::Ports { src, .. } => reply.l4 = L4::Ports { src, dst: sp },
                        L4::Icmp { kind, code, .. } => reply.l4 = L4::Icmp { id: sp, kind, code },
                        L4::None => {}
                    }
                }
                if let Some(a) = dnat {
                    st |= status::DST_NAT;
                    reply.src = a;
                    if let L4::Ports { dst, .. } = reply.l4 {
                        reply.l4 = L4::Ports { src: dp, dst };
                    }
                }
                CtEntry {
                    orig,
                    reply,
                    zone,
                    mark,
                    status: st,
                    timeout,
                    tcp: tcp.map(|(state, wo, wr, fo, fr)| TcpInfo {
                        state,
                        wscale_orig: wo,
                        wscale_reply: wr,
                        flags_orig: fo,
                        flags_reply: fr,
                    }),
                    labels: labels.filter(|l| *l != [0; 16]),
                    helper,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn conntrack_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_message(&bytes);
        let _ = parse_entry(&bytes);
    }

    /// Mutations of real kernel messages reach deeper than random bytes.
    #[test]
    fn conntrack_parse_mutated_golden_never_panics(
        which in 0usize..10,
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let (file, _) = &golden_dumps()[which];
        let mut raw = data(file);
        for (at, v) in flips {
            let i = at % raw.len();
            raw[i] = v;
        }
        let len = raw.len();
        raw.truncate(cut % (len + 1));
        let _ = parse_message(&raw);
        let _ = parse_entry(raw.get(16..).unwrap_or(&[]));
    }

    #[test]
    fn conntrack_create_request_roundtrips(e in arb_entry(), seq in any::<u32>()) {
        let req = create_request(&e, seq).unwrap();
        let m = parse_message(&req).unwrap();
        prop_assert_eq!(m.seq, seq);
        let b = m.entry;
        prop_assert_eq!(b.orig, e.orig);
        prop_assert_eq!(b.reply, e.reply);
        prop_assert_eq!(b.zone, e.zone);
        prop_assert_eq!(b.mark, e.mark);
        prop_assert_eq!(b.timeout, e.timeout);
        prop_assert_eq!(b.status, status_to_send(e.status));
        prop_assert_eq!(&b.labels, &e.labels);
        prop_assert_eq!(&b.helper, &e.helper);
        match (e.tcp, b.tcp) {
            (None, None) => {}
            (Some(w), Some(g)) => {
                prop_assert_eq!((g.state, g.wscale_orig, g.wscale_reply), (w.state, w.wscale_orig, w.wscale_reply));
                // BE_LIBERAL | SACK_PERM always, WINDOW_SCALE carried.
                prop_assert_eq!(g.flags_orig & 0x0b, 0x0a | (w.flags_orig & 1));
                prop_assert_eq!(g.flags_reply & 0x0b, 0x0a | (w.flags_reply & 1));
                prop_assert_eq!(g.flags_orig & 0x04 != 0, w.state >= 7);
            }
            other => prop_assert!(false, "tcp {:?}", other),
        }
        // Update and delete requests parse too and keep the key.
        let u = parse_message(&update_request(&e, seq).unwrap());
        prop_assert!(u.is_err(), "an update has no reply tuple, so it is not an entry");
        let d = delete_request(&e.key(), seq);
        prop_assert_eq!(u32::from_ne_bytes([d[0], d[1], d[2], d[3]]) as usize, d.len());
    }
}
