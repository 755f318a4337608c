//! Golden-byte, error-table and property tests of the state-sync frame codec
//! (`carp_user::wire::sync`).
//!
//! The golden tags were computed independently of this crate with Python:
//! `hmac.new(b"carp-sync-golden-key", frame_without_tag, hashlib.sha256)`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Instant;

use carp_user::conntrack::{status, CtEntry, CtKey, TcpInfo, Tuple, L4};
use carp_user::wire::sync::{
    action, peek_header, record_len, Ack, FrameBuilder, FrameRepr, Hello, HelloVhid, Message,
    NackRange, Packet, Refresh, SyncWireError, VhidState, DEFAULT_MAX_FRAME, HEADER_LEN,
    IPPROTO_SYNC, MAX_FRAME_LEN, MIN_FRAME_LEN, SUBHEADER_LEN, SYNC_VERSION, TAG_LEN,
};
use proptest::prelude::*;

const KEY: &[u8] = b"carp-sync-golden-key";
const NODE: u32 = 11;
/// 2023-11-14T22:13:20Z in ns.
const BOOT: u64 = 1_700_000_000_000_000_000;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect::<String>()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// 192.168.1.10:40000 -> 93.184.216.34:443, source-NATed to 203.0.113.5:61000.
fn snat_entry() -> CtEntry {
    CtEntry {
        orig: Tuple {
            src: ip("192.168.1.10"),
            dst: ip("93.184.216.34"),
            proto: 6,
            l4: L4::Ports {
                src: 40000,
                dst: 443,
            },
        },
        reply: Tuple {
            src: ip("93.184.216.34"),
            dst: ip("203.0.113.5"),
            proto: 6,
            l4: L4::Ports {
                src: 443,
                dst: 61000,
            },
        },
        zone: 0,
        mark: 0x10,
        status: status::SEEN_REPLY
            | status::ASSURED
            | status::CONFIRMED
            | status::SRC_NAT
            | status::SRC_NAT_DONE,
        timeout: 432_000,
        tcp: Some(TcpInfo {
            state: 3,
            wscale_orig: 7,
            wscale_reply: 7,
            flags_orig: 0x0b,
            flags_reply: 0x03,
        }),
        labels: None,
        helper: None,
    }
}

fn frame_a() -> FrameRepr {
    let e = snat_entry();
    FrameRepr {
        node_id: NODE,
        boot: BOOT,
        seq: 7,
        messages: vec![
            Message::Insert(vec![e.clone()]),
            Message::Delete(vec![e.key()]),
        ],
    }
}

const GOLDEN_A: &str = "
    c1 00 00f0                       # version 0xC1, flags 0, length 240
    0000000b                         # node id 11
    17979cfe362a0000                 # boot 1.7e18 ns
    0000000000000007                 # seq 7
    02 21 0001                       # INSERT, 33 words, 1 record
      04 06 01 00                    #   orig: IPv4, TCP, ports
      c0a8010a 000000000000000000000000 #   192.168.1.10
      5db8d822 000000000000000000000000 #   93.184.216.34
      9c40 01bb                      #   40000 -> 443
      04 06 01 00                    #   reply: IPv4, TCP, ports
      5db8d822 000000000000000000000000 #   93.184.216.34
      cb007105 000000000000000000000000 #   203.0.113.5
      01bb ee48                      #   443 -> 61000
      0000 01                        #   zone 0, presence: TCP
      03 07 07 0b 03                 #   ESTABLISHED, wscale 7/7, flags 0b/03
      00000010                       #   mark 0x10
      0000009e                       #   status SEEN_REPLY|ASSURED|CONFIRMED|SRC_NAT|SRC_NAT_DONE
      00069780                       #   timeout 432000 s
      00000000000000000000000000000000 # labels (absent)
      00000000000000000000000000000000 # helper (absent)
    05 0b 0001                       # DELETE, 11 words, 1 record
      04 06 01 00 c0a8010a 000000000000000000000000
      5db8d822 000000000000000000000000 9c40 01bb # orig tuple as above
      0000 0000                      #   zone 0, reserved
    3718741c2ea22431ebd53b57f783ae279d1a6231c1810924ed1278e03ab85fc2 # HMAC-SHA256
";

fn frame_b() -> FrameRepr {
    FrameRepr {
        node_id: NODE,
        boot: BOOT,
        seq: 0,
        messages: vec![
            Message::Ack(Ack {
                boot: BOOT,
                cumulative: 41,
            }),
            Message::Nack(vec![NackRange {
                boot: BOOT,
                first: 43,
                last: 45,
            }]),
            Message::Hello(Hello {
                name: "fw1".into(),
                bulk_in_progress: false,
                demoted: true,
                split_brain: false,
                last_seq_received: 41,
                vhids: vec![
                    HelloVhid {
                        vhid: 1,
                        state: VhidState::Master,
                        advbase: 1,
                        advskew: 0,
                    },
                    HelloVhid {
                        vhid: 2,
                        state: VhidState::Backup,
                        advbase: 1,
                        advskew: 100,
                    },
                ],
            }),
        ],
    }
}

const GOLDEN_B: &str = "
    c1 00 00a4 0000000b 17979cfe362a0000 0000000000000000 # length 164, seq 0 (unsequenced)
    09 04 0001                       # ACK, 4 words, 1 record
      17979cfe362a0000               #   boot
      0000000000000029               #   cumulative seq 41
    0a 06 0001                       # NACK, 6 words, 1 range
      17979cfe362a0000               #   boot
      000000000000002b               #   first 43
      000000000000002d               #   last 45
    0b 0b 0001                       # HELLO, 11 words, 1 record
      667731 0000000000000000000000000000000000000000000000000000000000 # \"fw1\", NUL-padded to 32
      02 000000                      #   flags: demoted; reserved
      0000000000000029               #   last seq received 41
    0c 01 0002                       # HELLO_VHID, 1 word, 2 records
      01 02 01 00                    #   VHID 1 MASTER advbase 1 advskew 0
      02 01 01 64                    #   VHID 2 BACKUP advbase 1 advskew 100
    5a26e75eb105ccb889929e30cf09851a0c0d14a5f1628f51c1aa1c5d9f99ef5b # HMAC-SHA256
";

fn frame_c() -> FrameRepr {
    let v6 = Tuple {
        src: ip("2001:db8::1"),
        dst: ip("2001:db8::2"),
        proto: 17,
        l4: L4::Ports { src: 5353, dst: 69 },
    };
    let mut labels = [0u8; 16];
    labels[0] = 0x80;
    labels[15] = 0x01;
    let icmp = CtKey {
        orig: Tuple {
            src: ip("10.0.0.1"),
            dst: ip("10.0.0.2"),
            proto: 1,
            l4: L4::Icmp {
                id: 0x1234,
                kind: 8,
                code: 0,
            },
        },
        zone: 0,
    };
    FrameRepr {
        node_id: NODE,
        boot: BOOT,
        seq: 8,
        messages: vec![
            Message::Clear,
            Message::Update(vec![CtEntry {
                orig: v6,
                reply: v6.inverse(),
                zone: 5,
                mark: 0xdead_beef,
                status: status::CONFIRMED | status::HELPER,
                timeout: 30,
                tcp: None,
                labels: Some(labels),
                helper: Some("tftp".into()),
            }]),
            Message::Refresh(vec![Refresh {
                key: snat_entry().key(),
                status: snat_entry().status,
                timeout: 7440,
                tcp_state: Some(4),
            }]),
            Message::Delete(vec![icmp]),
        ],
    }
}

const GOLDEN_C: &str = "
    c1 00 012c 0000000b 17979cfe362a0000 0000000000000008 # length 300, seq 8
    01 00 0000                       # CLEAR, no records
    03 21 0001                       # UPDATE, 33 words, 1 record
      06 11 01 00                    #   orig: IPv6, UDP, ports
      20010db8000000000000000000000001 20010db8000000000000000000000002
      14e9 0045                      #   5353 -> 69
      06 11 01 00                    #   reply
      20010db8000000000000000000000002 20010db8000000000000000000000001
      0045 14e9
      0005 06                        #   zone 5, presence: labels, helper
      00 00 00 00 00                 #   no TCP info
      deadbeef 00002008 0000001e     #   mark, status CONFIRMED|HELPER, timeout 30
      80000000000000000000000000000001 # labels
      74667470 000000000000000000000000 # helper \"tftp\"
    04 0d 0001                       # REFRESH, 13 words, 1 record
      04 06 01 00 c0a8010a 000000000000000000000000
      5db8d822 000000000000000000000000 9c40 01bb 0000 # key (orig tuple, zone 0)
      01 04                          #   presence: TCP state; FIN_WAIT
      0000009e 00001d10              #   status, timeout 7440
    05 0b 0001                       # DELETE, 11 words, 1 record
      04 01 02 00                    #   IPv4, ICMP, icmp
      0a000001 000000000000000000000000 0a000002 000000000000000000000000
      1234 08 00                     #   id 0x1234, echo request, code 0
      0000 0000                      #   zone 0, reserved
    df646d57f27973248ace35bde983392ba0ea9e9e602c131bf209e6cf99193f15 # HMAC-SHA256
";

#[test]
fn constants() {
    assert_eq!(IPPROTO_SYNC, 240);
    assert_eq!(SYNC_VERSION, 0xC1);
    assert_ne!(SYNC_VERSION, 5);
    assert_ne!(SYNC_VERSION, 6);
    assert_eq!(HEADER_LEN, 24);
    assert_eq!(TAG_LEN, 32);
    assert_eq!(MIN_FRAME_LEN, 56);
    assert_eq!(DEFAULT_MAX_FRAME, 1480);
    for len in [
        record_len::ENTRY,
        record_len::REFRESH,
        record_len::DELETE,
        record_len::BULK_REQUEST,
        record_len::BULK_START,
        record_len::BULK_END,
        record_len::ACK,
        record_len::NACK,
        record_len::HELLO,
        record_len::HELLO_VHID,
    ] {
        assert_eq!(len % 4, 0);
        assert!(len / 4 <= 255);
    }
}

#[test]
fn golden_frames_emit_and_parse() {
    for (name, repr, golden) in [
        ("A", frame_a(), GOLDEN_A),
        ("B", frame_b(), GOLDEN_B),
        ("C", frame_c(), GOLDEN_C),
    ] {
        let want = hex(golden);
        let got = repr.to_bytes(KEY).unwrap();
        assert_eq!(got, want, "frame {name}: emit");
        assert_eq!(repr.buffer_len(), want.len(), "frame {name}: buffer_len");
        assert_eq!(
            FrameRepr::parse(&want, KEY),
            Ok(repr.clone()),
            "frame {name}: parse"
        );
        assert_eq!(
            peek_header(&want),
            Some((repr.node_id, repr.boot, repr.seq))
        );
        let p = Packet::new_checked(&want[..]).unwrap();
        assert_eq!(p.version(), SYNC_VERSION);
        assert_eq!(p.flags(), 0);
        assert_eq!(usize::from(p.length()), want.len());
        assert_eq!((p.node_id(), p.boot(), p.seq()), (NODE, BOOT, repr.seq));
        assert_eq!(p.payload().len(), want.len() - MIN_FRAME_LEN);
        assert_eq!(p.tag()[..], want[want.len() - TAG_LEN..]);
        assert!(p.verify_tag(KEY));
        assert!(!p.verify_tag(b"carp-sync-golden-kez"));
        assert_eq!(p.check_header(), Ok(()));
    }
}

#[test]
fn golden_frame_a_from_builder() {
    let e = snat_entry();
    let mut b = FrameBuilder::new(DEFAULT_MAX_FRAME, NODE, BOOT, 7);
    assert!(b.push_insert(&e));
    assert!(b.push_delete(&e.key()));
    assert_eq!(b.finish(KEY), hex(GOLDEN_A));
}

#[test]
fn golden_frame_b_from_builder() {
    let mut b = FrameBuilder::new(DEFAULT_MAX_FRAME, NODE, BOOT, 0);
    for m in frame_b().messages {
        assert!(b.push_control(&m));
    }
    assert_eq!(b.finish(KEY), hex(GOLDEN_B));
}

#[test]
fn empty_frame() {
    let b = FrameBuilder::new(DEFAULT_MAX_FRAME, 1, 2, 0);
    assert!(b.is_empty());
    let f = b.finish(KEY);
    assert_eq!(f.len(), MIN_FRAME_LEN);
    let r = FrameRepr::parse(&f, KEY).unwrap();
    assert_eq!((r.node_id, r.boot, r.seq), (1, 2, 0));
    assert!(r.messages.is_empty());
}

#[test]
fn emit_appends_to_existing_bytes() {
    let mut out = vec![0xee; 20];
    frame_a().emit(KEY, &mut out).unwrap();
    assert_eq!(out[..20], [0xee; 20]);
    assert_eq!(out[20..], hex(GOLDEN_A)[..]);
}

#[test]
fn peek_header_is_cheap_and_unauthenticated() {
    let mut f = hex(GOLDEN_A);
    assert_eq!(peek_header(&f[..HEADER_LEN]), Some((NODE, BOOT, 7)));
    assert_eq!(peek_header(&f[..HEADER_LEN - 1]), None);
    f[0] = 6; // pfsync
    assert_eq!(peek_header(&f), None);
}

// ---------------------------------------------------------------------------
// Errors

/// Header + payload + tag, with a right length field and tag.
fn signed(payload: &[u8]) -> Vec<u8> {
    let mut f = hex("c1 00 0000 0000000b 17979cfe362a0000 0000000000000001");
    f.extend_from_slice(payload);
    f.extend_from_slice(&[0; TAG_LEN]);
    resign(&mut f);
    f
}

/// Fix version, flags and length and recompute the tag.
fn resign(f: &mut [u8]) {
    let len = u16::try_from(f.len()).unwrap();
    let mut p = Packet::new_checked(f).unwrap();
    p.set_version(SYNC_VERSION);
    p.set_flags(0);
    p.set_length(len);
    p.fill_tag(KEY);
}

fn parse(f: &[u8]) -> Result<FrameRepr, SyncWireError> {
    FrameRepr::parse(f, KEY)
}

/// Frame A's insert record bytes (132), for building bad records.
fn insert_record() -> Vec<u8> {
    let a = hex(GOLDEN_A);
    a[HEADER_LEN + 4..HEADER_LEN + 4 + record_len::ENTRY].to_vec()
}

fn sub(act: u8, words: u8, count: u16) -> Vec<u8> {
    let c = count.to_be_bytes();
    vec![act, words, c[0], c[1]]
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn hello_record(name: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; record_len::HELLO];
    r[..name.len()].copy_from_slice(name);
    r
}

/// Every error variant, each from a minimal frame.
#[test]
fn every_error_is_reachable() {
    use SyncWireError as E;
    let good = hex(GOLDEN_A);
    let mut seen = HashSet::new();
    let mut check = |name: &str, f: &[u8], want: E| {
        assert_eq!(parse(f), Err(want), "case {name}");
        seen.insert(want.label());
    };

    // Header checks, in order.
    for len in 0..MIN_FRAME_LEN {
        check("short", &good[..len.min(good.len())], E::Truncated { len });
    }
    let mut f = good.clone();
    f[0] = 5;
    f[1] = 1; // also bad flags: version is reported first
    check("pfsync v5", &f, E::BadVersion(5));
    let mut f = good.clone();
    f[1] = 0x80;
    f[2] = 0; // also bad length: flags first
    check("flags", &f, E::BadFlags(0x80));
    let mut f = good.clone();
    f.push(0);
    check(
        "length",
        &f,
        E::BadLength {
            field: 240,
            actual: 241,
        },
    );
    let mut f = good.clone();
    f[100] ^= 1;
    check("tag", &f, E::BadTag);
    let mut f = good.clone();
    f[239] ^= 0x80;
    check("tag itself", &f, E::BadTag);
    assert_eq!(FrameRepr::parse(&good, b"other key"), Err(E::BadTag));

    // Subheaders and records (re-signed, so past the tag).
    check(
        "truncated subheader",
        &signed(&[1, 0, 0]),
        E::TruncatedSubheader { offset: 24 },
    );
    check(
        "truncated subheader after a clear",
        &signed(&[1, 0, 0, 0, 9]),
        E::TruncatedSubheader { offset: 28 },
    );
    let rec = insert_record();
    check(
        "records past end",
        &signed(&cat(&[&sub(action::INSERT, 33, 2), &rec])),
        E::RecordsPastEnd {
            action: action::INSERT,
            offset: 24,
        },
    );
    check(
        "unknown action past end",
        &signed(&sub(99, 1, 1)),
        E::RecordsPastEnd {
            action: 99,
            offset: 24,
        },
    );
    check(
        "record too short",
        &signed(&cat(&[&sub(action::INSERT, 32, 1), &rec[..128]])),
        E::RecordTooShort {
            action: action::INSERT,
            record_len: 128,
            need: 132,
        },
    );
    check(
        "ack too short",
        &signed(&cat(&[&sub(action::ACK, 3, 1), &[0; 12]])),
        E::RecordTooShort {
            action: action::ACK,
            record_len: 12,
            need: 16,
        },
    );
    check(
        "clear with a record",
        &signed(&sub(action::CLEAR, 0, 1)),
        E::BadCount {
            action: action::CLEAR,
            count: 1,
        },
    );
    check(
        "two bulk requests",
        &signed(&cat(&[&sub(action::BULK_REQUEST, 1, 2), &[0; 8]])),
        E::BadCount {
            action: action::BULK_REQUEST,
            count: 2,
        },
    );
    check(
        "ack without record",
        &signed(&sub(action::ACK, 4, 0)),
        E::BadCount {
            action: action::ACK,
            count: 0,
        },
    );
    check(
        "two hellos in one subheader",
        &signed(&cat(&[&sub(action::HELLO, 11, 2), &[0; 88]])),
        E::BadCount {
            action: action::HELLO,
            count: 2,
        },
    );
    let mut r = rec.clone();
    r[40] = 5; // reply family
    check(
        "family",
        &signed(&cat(&[&sub(action::INSERT, 33, 1), &r])),
        E::UnknownFamily(5),
    );
    let mut r = rec.clone();
    r[2] = 3; // orig L4 kind
    check(
        "l4 kind",
        &signed(&cat(&[&sub(action::UPDATE, 33, 1), &r])),
        E::UnknownL4Kind(3),
    );
    let mut r = rec.clone();
    r[82] |= 4; // helper present
    r[116..132].copy_from_slice(b"0123456789abcdef"); // 16 bytes, no NUL
    check(
        "helper without NUL",
        &signed(&cat(&[&sub(action::INSERT, 33, 1), &r])),
        E::BadHelperName,
    );
    r[116..132].copy_from_slice(&[0xff, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    check(
        "helper not UTF-8",
        &signed(&cat(&[&sub(action::INSERT, 33, 1), &r])),
        E::BadHelperName,
    );
    check(
        "node name not UTF-8",
        &signed(&cat(&[
            &sub(action::HELLO, 11, 1),
            &hello_record(b"fw\xff"),
        ])),
        E::BadNodeName,
    );
    let nack = |first: u64, last: u64| {
        cat(&[
            &sub(action::NACK, 6, 1),
            &BOOT.to_be_bytes(),
            &first.to_be_bytes(),
            &last.to_be_bytes(),
        ])
    };
    check(
        "nack first > last",
        &signed(&nack(5, 4)),
        E::BadNackRange { first: 5, last: 4 },
    );
    check(
        "nack of seq 0",
        &signed(&nack(0, 4)),
        E::BadNackRange { first: 0, last: 4 },
    );
    let hello = cat(&[&sub(action::HELLO, 11, 1), &hello_record(b"fw1")]);
    check(
        "vhid 0",
        &signed(&cat(&[
            &hello,
            &sub(action::HELLO_VHID, 1, 1),
            &[0, 1, 1, 0],
        ])),
        E::ZeroVhid,
    );
    check(
        "vhid state 3",
        &signed(&cat(&[
            &hello,
            &sub(action::HELLO_VHID, 1, 1),
            &[1, 3, 1, 0],
        ])),
        E::BadVhidState(3),
    );
    check(
        "hello_vhid first",
        &signed(&cat(&[&sub(action::HELLO_VHID, 1, 1), &[1, 1, 1, 0]])),
        E::OrphanHelloVhid,
    );
    check(
        "hello_vhid after an unknown action",
        &signed(&cat(&[
            &hello,
            &sub(77, 0, 0),
            &sub(action::HELLO_VHID, 1, 1),
            &[1, 1, 1, 0],
        ])),
        E::OrphanHelloVhid,
    );

    // Emit: over the 16-bit length field.
    let big = FrameRepr {
        node_id: 1,
        boot: 1,
        seq: 1,
        messages: vec![Message::Insert(vec![snat_entry(); 500])],
    };
    let want = E::TooLong {
        len: MIN_FRAME_LEN + 4 + 500 * 132,
    };
    let mut out = Vec::new();
    assert_eq!(big.emit(KEY, &mut out), Err(want));
    assert!(out.is_empty(), "nothing written on error");
    seen.insert(want.label());

    assert_eq!(seen.len(), 18, "every variant: {seen:?}");
}

#[test]
fn unknown_actions_are_skipped_and_reported() {
    let ack = cat(&[&sub(action::ACK, 4, 1), &[0; 8], &41u64.to_be_bytes()]);
    let f = signed(&cat(&[
        &sub(0, 3, 2),
        &[0xaa; 24],
        &ack,
        &sub(200, 0, 65535),
        &sub(13, 255, 1),
        &[0x55; 1020],
    ]));
    let r = parse(&f).unwrap();
    assert_eq!(
        r.messages,
        vec![
            Message::Unknown {
                action: 0,
                count: 2
            },
            Message::Ack(Ack {
                boot: 0,
                cumulative: 41
            }),
            Message::Unknown {
                action: 200,
                count: 65535
            },
            Message::Unknown {
                action: 13,
                count: 1
            },
        ]
    );
}

#[test]
fn longer_records_are_read_and_extra_bytes_ignored() {
    let a = hex(GOLDEN_A);
    let insert = &a[HEADER_LEN + 4..HEADER_LEN + 4 + 132];
    let delete = &a[HEADER_LEN + 4 + 132 + 4..a.len() - TAG_LEN];
    let f = signed(&cat(&[
        &sub(action::INSERT, 35, 2),
        insert,
        &[0xff; 8],
        insert,
        &[0xee; 8],
        &sub(action::DELETE, 12, 1),
        delete,
        &[0xdd; 4],
        &sub(action::BULK_START, 4, 1),
        &7u32.to_be_bytes(),
        &9u64.to_be_bytes(),
        &[0xcc; 4],
    ]));
    let e = snat_entry();
    assert_eq!(
        parse(&f).unwrap().messages,
        vec![
            Message::Insert(vec![e.clone(), e.clone()]),
            Message::Delete(vec![e.key()]),
            Message::BulkStart {
                request_id: 7,
                estimate: 9
            },
        ]
    );
}

#[test]
fn zero_count_lists_and_reserved_bytes() {
    // Empty lists with any record length; a bulk request without id.
    let f = signed(&cat(&[
        &sub(action::INSERT, 0, 0),
        &sub(action::NACK, 1, 0),
        &sub(action::BULK_REQUEST, 0, 0),
    ]));
    assert_eq!(
        parse(&f).unwrap().messages,
        vec![
            Message::Insert(vec![]),
            Message::Nack(vec![]),
            Message::BulkRequest { request_id: None },
        ]
    );
    // Reserved bytes and absent parts are ignored: fill them in frame A.
    let mut a = hex(GOLDEN_A);
    let rec = HEADER_LEN + 4;
    for at in [3..4, 8..20, 24..36].into_iter().flatten() {
        a[rec + at] = 0xa5; // orig reserved, IPv4 address padding
    }
    a[rec + 82] |= 0xf8; // unknown presence bits
    for at in 100..132 {
        a[rec + at] = 0x5a; // labels, helper absent
    }
    let del = rec + 132 + 4;
    a[del + 42] = 1; // reserved
    a[del + 43] = 2;
    resign(&mut a);
    assert_eq!(parse(&a), Ok(frame_a()));
}

#[test]
fn names_are_cut_to_their_fields_on_emit() {
    let mut e = snat_entry();
    e.helper = Some("ééééééééé".into()); // 18 bytes: cut to 14 (7 chars)
    let h = Hello {
        name: "ü".repeat(20), // 40 bytes: cut to 32
        bulk_in_progress: true,
        demoted: false,
        split_brain: false,
        last_seq_received: 0,
        vhids: vec![],
    };
    let r = FrameRepr {
        node_id: 1,
        boot: 1,
        seq: 0,
        messages: vec![Message::Insert(vec![e]), Message::Hello(h)],
    };
    let back = parse(&r.to_bytes(KEY).unwrap()).unwrap();
    let Message::Insert(v) = &back.messages[0] else {
        panic!("{back:?}")
    };
    assert_eq!(v[0].helper.as_deref(), Some("ééééééé"));
    let Message::Hello(h) = &back.messages[1] else {
        panic!("{back:?}")
    };
    assert_eq!(h.name, "ü".repeat(16));
    assert!(h.bulk_in_progress && !h.demoted && h.vhids.is_empty());
}

#[test]
fn several_hello_vhid_subheaders_add_up() {
    let hello = cat(&[&sub(action::HELLO, 11, 1), &hello_record(b"fw2")]);
    let f = signed(&cat(&[
        &hello,
        &sub(action::HELLO_VHID, 1, 1),
        &[1, 0, 1, 0],
        &sub(action::HELLO_VHID, 2, 1),
        &[2, 2, 3, 4, 0xff, 0xff, 0xff, 0xff],
        &sub(action::HELLO_VHID, 1, 0),
    ]));
    let Message::Hello(h) = &parse(&f).unwrap().messages[0] else {
        panic!()
    };
    assert_eq!(h.name, "fw2");
    assert_eq!(
        h.vhids,
        vec![
            HelloVhid {
                vhid: 1,
                state: VhidState::Init,
                advbase: 1,
                advskew: 0
            },
            HelloVhid {
                vhid: 2,
                state: VhidState::Master,
                advbase: 3,
                advskew: 4
            },
        ]
    );
}

// ---------------------------------------------------------------------------
// Builder

#[test]
fn builder_packs_as_many_records_as_fit() {
    let e = snat_entry();
    let refresh = Refresh {
        key: e.key(),
        status: 0,
        timeout: 1,
        tcp_state: None,
    };
    // (1480 - 24 - 32 - 4) / len
    type Push = fn(&mut FrameBuilder, &CtEntry, &Refresh) -> bool;
    let cases: [(&str, Push, usize); 4] = [
        ("insert", |b, e, _| b.push_insert(e), 10),
        ("update", |b, e, _| b.push_update(e), 10),
        ("refresh", |b, _, r| b.push_refresh(r), 27),
        ("delete", |b, e, _| b.push_delete(&e.key()), 32),
    ];
    for (name, push, want) in cases {
        let mut b = FrameBuilder::new(DEFAULT_MAX_FRAME, 1, 2, 3);
        let mut n = 0;
        while push(&mut b, &e, &refresh) {
            n += 1;
        }
        assert_eq!(n, want, "{name}");
        assert!(!push(&mut b, &e, &refresh), "{name}: still full");
        let f = b.finish(KEY);
        assert!(f.len() <= DEFAULT_MAX_FRAME);
        let r = parse(&f).unwrap();
        assert_eq!(r.messages.len(), 1, "{name}: one subheader");
    }
    // A smaller control message still fits where a record did not.
    let mut b = FrameBuilder::new(DEFAULT_MAX_FRAME, 1, 2, 3);
    while b.push_insert(&e) {}
    assert!(b.remaining() >= 20 && b.remaining() < 132);
    assert!(b.push_control(&Message::Ack(Ack {
        boot: 1,
        cumulative: 2
    })));
    assert!(parse(&b.finish(KEY)).is_ok());
}

#[test]
fn builder_clamps_max_len() {
    let e = snat_entry();
    let mut b = FrameBuilder::new(0, 1, 2, 3);
    assert_eq!(b.max_frame_len(), MIN_FRAME_LEN);
    assert!(!b.push_insert(&e));
    assert!(!b.push_control(&Message::Clear));
    assert_eq!(b.finish(KEY).len(), MIN_FRAME_LEN);
    let mut b = FrameBuilder::new(usize::MAX, 1, 2, 3);
    assert_eq!(b.max_frame_len(), MAX_FRAME_LEN);
    let mut n = 0;
    while b.push_delete(&e.key()) {
        n += 1;
    }
    assert_eq!(n, (MAX_FRAME_LEN - MIN_FRAME_LEN - 4) / 44);
    let f = b.finish(KEY);
    assert!(f.len() <= MAX_FRAME_LEN);
    assert!(parse(&f).is_ok());
}

/// A million-entry bulk must encode in well under a second (release build:
/// `cargo test --release -p carp-user --test sync_wire -- --ignored bulk`).
#[test]
#[cfg_attr(debug_assertions, ignore = "timing: run in release")]
fn bulk_of_a_million_entries_encodes_fast() {
    let base = snat_entry();
    let entries: Vec<CtEntry> = (0..1_000_000u32)
        .map(|i| {
            let mut e = base.clone();
            e.orig.l4 = L4::Ports {
                src: (i % 60000) as u16,
                dst: 443,
            };
            e.mark = i;
            e
        })
        .collect();
    let start = Instant::now();
    let mut frames = 0u64;
    let mut bytes = 0usize;
    let mut seq = 1;
    let mut b = FrameBuilder::new(DEFAULT_MAX_FRAME, 1, BOOT, seq);
    for e in &entries {
        if !b.push_insert(e) {
            seq += 1;
            let full =
                std::mem::replace(&mut b, FrameBuilder::new(DEFAULT_MAX_FRAME, 1, BOOT, seq));
            let f = full.finish(KEY);
            frames += 1;
            bytes += f.len();
            assert!(b.push_insert(e));
        }
    }
    bytes += b.finish(KEY).len();
    frames += 1;
    let took = start.elapsed();
    eprintln!("1e6 entries: {frames} frames, {bytes} bytes in {took:?}");
    assert_eq!(frames, 100_000);
    assert!(took.as_secs_f64() < 1.0, "{took:?}");
}

// ---------------------------------------------------------------------------
// Properties

fn arb_ips() -> impl Strategy<Value = (IpAddr, IpAddr)> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(a, b)| (IpAddr::from(a), IpAddr::from(b))),
        (any::<[u8; 16]>(), any::<[u8; 16]>())
            .prop_map(|(a, b)| (IpAddr::from(a), IpAddr::from(b))),
    ]
}

fn arb_l4() -> impl Strategy<Value = L4> {
    prop_oneof![
        (any::<u16>(), any::<u16>()).prop_map(|(src, dst)| L4::Ports { src, dst }),
        (any::<u16>(), any::<u8>(), any::<u8>()).prop_map(|(id, kind, code)| L4::Icmp {
            id,
            kind,
            code
        }),
        Just(L4::None),
    ]
}

fn arb_tuple() -> impl Strategy<Value = Tuple> {
    (arb_ips(), any::<u8>(), arb_l4()).prop_map(|((src, dst), proto, l4)| Tuple {
        src,
        dst,
        proto,
        l4,
    })
}

fn arb_key() -> impl Strategy<Value = CtKey> {
    (arb_tuple(), any::<u16>()).prop_map(|(orig, zone)| CtKey { orig, zone })
}

fn arb_entry() -> impl Strategy<Value = CtEntry> {
    let tcp = proptest::option::of(any::<[u8; 5]>().prop_map(|b| TcpInfo {
        state: b[0],
        wscale_orig: b[1],
        wscale_reply: b[2],
        flags_orig: b[3],
        flags_reply: b[4],
    }));
    // At most 15 bytes, no NUL (\PC excludes control characters).
    let helper = proptest::option::of(prop_oneof!["[a-z0-9_-]{0,15}", "\\PC{0,3}"]);
    (
        arb_tuple(),
        arb_tuple(),
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        tcp,
        proptest::option::of(any::<[u8; 16]>()),
        helper,
    )
        .prop_map(
            |(orig, reply, zone, mark, status, timeout, tcp, labels, helper)| CtEntry {
                orig,
                reply,
                zone,
                mark,
                status,
                timeout,
                tcp,
                labels,
                helper,
            },
        )
}

fn arb_refresh() -> impl Strategy<Value = Refresh> {
    (
        arb_key(),
        any::<u32>(),
        any::<u32>(),
        proptest::option::of(any::<u8>()),
    )
        .prop_map(|(key, status, timeout, tcp_state)| Refresh {
            key,
            status,
            timeout,
            tcp_state,
        })
}

fn arb_nack() -> impl Strategy<Value = NackRange> {
    (any::<u64>(), 1..=u64::MAX, 1..=u64::MAX).prop_map(|(boot, a, b)| NackRange {
        boot,
        first: a.min(b),
        last: a.max(b),
    })
}

fn arb_hello() -> impl Strategy<Value = Hello> {
    let vhid = (
        1..=255u8,
        prop_oneof![
            Just(VhidState::Init),
            Just(VhidState::Backup),
            Just(VhidState::Master)
        ],
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(|(vhid, state, advbase, advskew)| HelloVhid {
            vhid,
            state,
            advbase,
            advskew,
        });
    (
        prop_oneof!["[a-z0-9.-]{0,32}", "\\PC{0,8}"],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
        proptest::collection::vec(vhid, 0..6),
    )
        .prop_map(
            |(name, bulk_in_progress, demoted, split_brain, last_seq_received, vhids)| Hello {
                name,
                bulk_in_progress,
                demoted,
                split_brain,
                last_seq_received,
                vhids,
            },
        )
}

fn arb_control() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::Clear),
        proptest::option::of(any::<u32>())
            .prop_map(|request_id| Message::BulkRequest { request_id }),
        (any::<u32>(), any::<u64>()).prop_map(|(request_id, estimate)| Message::BulkStart {
            request_id,
            estimate
        }),
        (any::<u32>(), any::<u64>())
            .prop_map(|(request_id, sent)| Message::BulkEnd { request_id, sent }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(boot, cumulative)| Message::Ack(Ack { boot, cumulative })),
        proptest::collection::vec(arb_nack(), 0..4).prop_map(Message::Nack),
        arb_hello().prop_map(Message::Hello),
        (prop_oneof![Just(0u8), 13..=255u8], any::<u16>())
            .prop_map(|(action, count)| Message::Unknown { action, count }),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    let list = |n| proptest::collection::vec(arb_entry(), 0..n);
    prop_oneof![
        list(4).prop_map(Message::Insert),
        list(4).prop_map(Message::Update),
        proptest::collection::vec(arb_refresh(), 0..4).prop_map(Message::Refresh),
        proptest::collection::vec(arb_key(), 0..4).prop_map(Message::Delete),
        arb_control(),
    ]
}

fn arb_frame() -> impl Strategy<Value = FrameRepr> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(arb_message(), 0..6),
    )
        .prop_map(|(node_id, boot, seq, messages)| FrameRepr {
            node_id,
            boot,
            seq,
            messages,
        })
}

#[derive(Debug, Clone)]
enum Op {
    Insert(CtEntry),
    Update(CtEntry),
    Refresh(Refresh),
    Delete(CtKey),
    Control(Message),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => arb_entry().prop_map(Op::Insert),
        2 => arb_entry().prop_map(Op::Update),
        2 => arb_refresh().prop_map(Op::Refresh),
        2 => arb_key().prop_map(Op::Delete),
        1 => arb_control().prop_map(Op::Control),
    ]
}

/// Pre-tag checks: the only errors a frame changed in flight can give.
fn is_header_or_tag_error(e: &SyncWireError) -> bool {
    matches!(
        e,
        SyncWireError::Truncated { .. }
            | SyncWireError::BadVersion(_)
            | SyncWireError::BadFlags(_)
            | SyncWireError::BadLength { .. }
            | SyncWireError::BadTag
    )
}

/// Whatever parses must re-emit to bytes that parse to the same thing.
fn assert_reparse(f: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(r) = parse(f) {
        let again = r.to_bytes(KEY).expect("a parsed frame re-emits");
        prop_assert!(again.len() <= f.len());
        prop_assert_eq!(parse(&again), Ok(r));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_emit_round_trips(repr in arb_frame()) {
        let bytes = repr.to_bytes(KEY).unwrap();
        prop_assert_eq!(bytes.len(), repr.buffer_len());
        prop_assert_eq!(peek_header(&bytes), Some((repr.node_id, repr.boot, repr.seq)));
        prop_assert_eq!(parse(&bytes), Ok(repr));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = peek_header(&bytes);
        let r = parse(&bytes);
        prop_assert!(r.is_err(), "random bytes passed the tag: {r:?}");
        if bytes.len() >= MIN_FRAME_LEN {
            let mut f = bytes.clone();
            resign(&mut f);
            assert_reparse(&f)?;
        }
    }

    #[test]
    fn mutated_frames_fail_before_the_payload_and_resigned_ones_do_not_panic(
        repr in arb_frame(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        extra in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let good = repr.to_bytes(KEY).unwrap();
        let mut f = good.clone();
        for (i, x) in &flips {
            let i = i.index(f.len());
            f[i] ^= x;
        }
        if let Some(c) = cut {
            f.truncate(c.index(f.len() + 1));
        }
        f.extend_from_slice(&extra);
        if f != good {
            let e = parse(&f).expect_err("a changed frame must not verify");
            prop_assert!(is_header_or_tag_error(&e), "{e:?}");
        }
        if f.len() >= MIN_FRAME_LEN {
            resign(&mut f);
            assert_reparse(&f)?;
        }
    }

    #[test]
    fn builder_never_exceeds_max_and_packs_what_fits(
        max in prop_oneof![Just(DEFAULT_MAX_FRAME), 0..3000usize],
        ops in proptest::collection::vec(arb_op(), 0..60),
    ) {
        let mut b = FrameBuilder::new(max, 5, 6, 7);
        let max = max.clamp(MIN_FRAME_LEN, MAX_FRAME_LEN);
        prop_assert_eq!(b.max_frame_len(), max);
        // Model: the expected messages and the action of the open subheader.
        let mut want: Vec<Message> = Vec::new();
        let mut open: Option<u8> = None;
        for op in ops {
            let before = b.frame_len();
            let (act, cost, pushed) = match &op {
                Op::Insert(e) => (Some(action::INSERT), record_len::ENTRY, b.push_insert(e)),
                Op::Update(e) => (Some(action::UPDATE), record_len::ENTRY, b.push_update(e)),
                Op::Refresh(r) => (Some(action::REFRESH), record_len::REFRESH, b.push_refresh(r)),
                Op::Delete(k) => (Some(action::DELETE), record_len::DELETE, b.push_delete(k)),
                Op::Control(m) => (None, m.buffer_len(), b.push_control(m)),
            };
            let cost = match act {
                Some(a) if open == Some(a) => cost,
                Some(_) => cost + SUBHEADER_LEN,
                None => cost,
            };
            prop_assert_eq!(pushed, before + cost <= max, "fits exactly when there is room");
            prop_assert!(b.frame_len() <= max);
            if !pushed {
                prop_assert_eq!(b.frame_len(), before);
                continue;
            }
            prop_assert_eq!(b.frame_len(), before + cost);
            let joins = act.is_some() && open == act;
            match (op, want.last_mut()) {
                (Op::Insert(e), Some(Message::Insert(v))) if joins => v.push(e),
                (Op::Update(e), Some(Message::Update(v))) if joins => v.push(e),
                (Op::Refresh(r), Some(Message::Refresh(v))) if joins => v.push(r),
                (Op::Delete(k), Some(Message::Delete(v))) if joins => v.push(k),
                (Op::Insert(e), _) => want.push(Message::Insert(vec![e])),
                (Op::Update(e), _) => want.push(Message::Update(vec![e])),
                (Op::Refresh(r), _) => want.push(Message::Refresh(vec![r])),
                (Op::Delete(k), _) => want.push(Message::Delete(vec![k])),
                (Op::Control(m), _) => want.push(m),
            }
            open = act;
        }
        prop_assert_eq!(b.is_empty(), want.is_empty());
        let len = b.frame_len();
        let f = b.finish(KEY);
        prop_assert_eq!(f.len(), len);
        prop_assert!(f.len() <= max);
        let r = parse(&f).unwrap();
        prop_assert_eq!((r.node_id, r.boot, r.seq), (5, 6, 7));
        prop_assert_eq!(r.messages, want);
    }
}

/// The hello's split-brain flag (`carp_user::splitbrain`) is bit 2 of the
/// flags byte: header 24 bytes, subheader 4, node name 32.
#[test]
fn hello_split_brain_is_flag_bit_2() {
    let frame = |split_brain| FrameRepr {
        node_id: 1,
        boot: 1,
        seq: 0,
        messages: vec![Message::Hello(Hello {
            name: "fw2".into(),
            bulk_in_progress: false,
            demoted: false,
            split_brain,
            last_seq_received: 0,
            vhids: vec![],
        })],
    };
    let off = frame(false).to_bytes(KEY).unwrap();
    let on = frame(true).to_bytes(KEY).unwrap();
    assert_eq!((off[60], on[60]), (0x00, 0x04));
    assert_eq!(off[..60], on[..60]);
    assert_eq!(parse(&on).unwrap(), frame(true));
    assert_eq!(parse(&off).unwrap(), frame(false));
}
