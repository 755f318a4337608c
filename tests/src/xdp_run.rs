//! `BPF_PROG_TEST_RUN` harness for the XDP program (tier 2), frame builders
//! shared by the tests and the benchmark, and the per-class benchmark.
//!
//! The kernel runs the program on a copy of the given frame, with no interface
//! attached, and returns the verdict, the frame as the program left it, and
//! the mean run time (`net/bpf/test_run.c`, `bpf_prog_test_run_xdp`). aya 0.14
//! exposes this as `aya::programs::TestRun`; it needs root (CAP_BPF +
//! CAP_NET_ADMIN) and a frame of at least 14 bytes (`ETH_HLEN`, else EINVAL).
//!
//! Caveat for `repeat > 1`: the kernel runs the program `repeat` times on the
//! *same* buffer without restoring it, so a program that rewrites the frame
//! (ARP reply, vMAC rewrite) sees its own output from the second run on. The
//! benchmark therefore repeats only frames that come out unchanged and times
//! the others with single runs (see [`Method`]).
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{ensure, Context as _};
use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp};
use carp_common::{Reason, Verdict, VhidEntry, VhidState, CARP_GROUP_V4, CARP_TTL, IPPROTO_CARP};
use carp_user::xdp::{decode_record, ktime_now_ns, XdpInstance};

/// XDP verdicts (`enum xdp_action`, include/uapi/linux/bpf.h).
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = Verdict::Drop as u32;
pub const XDP_PASS: u32 = Verdict::Pass as u32;
pub const XDP_TX: u32 = Verdict::Tx as u32;
pub const XDP_REDIRECT: u32 = 4;

/// One `BPF_PROG_TEST_RUN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// The program's return value (an `XDP_*` verdict).
    pub verdict: u32,
    /// The frame after the (last) run.
    pub output: Vec<u8>,
    /// Mean nanoseconds per run as the kernel measured it (includes the
    /// kernel's loop and timer overhead; compare with `carp_xdp_empty`).
    pub duration_ns: u32,
}

/// `TC_ACT_OK`, what `carp_tc_egress` always returns.
pub const TC_ACT_OK: u32 = 0;

/// Runs `prog` on `packet` `repeat` times (0 counts as 1) in the kernel.
pub fn run(prog: &Xdp, packet: &[u8], repeat: u32) -> Result<RunResult, ProgramError> {
    run_any(prog, packet, repeat)
}

/// [`run`] for a TC classifier (`bpf_prog_test_run_skb`: the frame becomes
/// an skb starting at its Ethernet header; `verdict` is a `TC_ACT_*`).
pub fn run_tc(
    prog: &SchedClassifier,
    packet: &[u8],
    repeat: u32,
) -> Result<RunResult, ProgramError> {
    run_any(prog, packet, repeat)
}

fn run_any<P>(prog: &P, packet: &[u8], repeat: u32) -> Result<RunResult, ProgramError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    // The kernel fails with ENOSPC if the output does not fit; our program
    // never grows a frame, but leave room in case a future one does.
    let mut out = vec![0u8; packet.len() + 256];
    let result = prog.test_run(TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        repeat,
        ..TestRunOptions::default()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok(RunResult {
        verdict: result.return_value,
        output: out,
        duration_ns: u32::try_from(result.duration.as_nanos()).unwrap_or(u32::MAX),
    })
}

/// Frame builders: plain bytes, written out field by field so that a test's
/// expectation does not share code with the program under test.
pub mod frames {
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_ARP: u16 = 0x0806;
    pub const ETH_P_IPV6: u16 = 0x86dd;
    pub const BROADCAST: [u8; 6] = [0xff; 6];

    pub use crate::util::inet_checksum;
    /// `00:00:5e:00:01:vhid` (RFC 5798 §7.3, carp(4)).
    pub use carp_common::virtual_mac as vmac;

    /// Ethernet II frame (no FCS, no padding).
    pub fn eth(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + payload.len());
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ether_type.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Ethernet/IPv4 ARP body (RFC 826), 28 bytes.
    pub fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
        let mut a = vec![0x00, 0x01, 0x08, 0x00, 6, 4];
        a.extend_from_slice(&op.to_be_bytes());
        a.extend_from_slice(&sha);
        a.extend_from_slice(&spa.octets());
        a.extend_from_slice(&tha);
        a.extend_from_slice(&tpa.octets());
        a
    }

    /// IPv6 packet with the 40-byte fixed header and no extension header.
    pub fn ipv6(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        next_header: u8,
        hop_limit: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let len = u16::try_from(payload.len()).expect("IPv6 payload too long");
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&len.to_be_bytes());
        p.extend_from_slice(&[next_header, hop_limit]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    /// IPv4 packet with a 20-byte header (valid header checksum).
    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
        ipv4_full(src, dst, proto, ttl, 0x4000, &[], payload)
    }

    /// IPv4 packet with the flags/fragment-offset field `frags` (as on the
    /// wire: 0x4000 is DF, 0x2000 MF, the low 13 bits the offset in 8-byte
    /// units) and `options` (a multiple of 4 bytes, at most 40) after the
    /// 20-byte header; valid header checksum.
    pub fn ipv4_full(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        ttl: u8,
        frags: u16,
        options: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        assert!(
            options.len().is_multiple_of(4) && options.len() <= 40,
            "bad IPv4 options"
        );
        let hlen = 20 + options.len();
        let tot_len = u16::try_from(hlen + payload.len()).expect("IPv4 packet over 64 KiB");
        let mut h = vec![0x40 | (hlen / 4) as u8, 0x00];
        h.extend_from_slice(&tot_len.to_be_bytes());
        h.extend_from_slice(&[0x12, 0x34]);
        h.extend_from_slice(&frags.to_be_bytes());
        h.extend_from_slice(&[ttl, proto, 0, 0]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h.extend_from_slice(options);
        let sum = inet_checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    /// A sync frame (IP protocol 240 payload) carrying `records`: version
    /// 0xC1, flags 0, length = 24 + records + 32 (big-endian), 20 more header
    /// bytes (a fixed pattern; the kernel does not read them), the records,
    /// and a 32-byte tag (a fixed pattern; authentication is user space's).
    pub fn sync_frame(records: &[u8]) -> Vec<u8> {
        let len = u16::try_from(24 + records.len() + 32).expect("sync frame over 64 KiB");
        let mut f = vec![0xc1, 0x00];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend((0..20).map(|i| 0x40 + i as u8));
        f.extend_from_slice(records);
        f.extend((0..32).map(|i| 0xe0 - i as u8));
        f
    }

    /// ICMP echo request (type 8) with a valid checksum.
    pub fn icmp_echo(id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
        let mut m = vec![8, 0, 0, 0];
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(data);
        let sum = inet_checksum(&m);
        m[2..4].copy_from_slice(&sum.to_be_bytes());
        m
    }

    /// A 20-byte TCP SYN (checksum left 0: nothing here checks it).
    pub fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&1u32.to_be_bytes()); // sequence
        t.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment
        t.extend_from_slice(&[0x50, 0x02]); // data offset 5, SYN
        t.extend_from_slice(&64240u16.to_be_bytes()); // window
        t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        t
    }

    /// IPv6 neighbour solicitation (RFC 4861 §4.3) for `target`, from `src`
    /// to the solicited-node group, with a source link-layer address option;
    /// the ICMPv6 checksum is left 0 (nothing here checks it).
    pub fn ipv6_ns(src: [u8; 16], target: [u8; 16], src_mac: [u8; 6]) -> Vec<u8> {
        let mut dst = [0u8; 16];
        dst[..2].copy_from_slice(&[0xff, 0x02]);
        dst[11..13].copy_from_slice(&[0x01, 0xff]);
        dst[13..].copy_from_slice(&target[13..]);
        let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&target);
        icmp.extend_from_slice(&[1, 1]);
        icmp.extend_from_slice(&src_mac);
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        p.extend_from_slice(&[58, 255]); // next header ICMPv6, hop limit 255
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&icmp);
        p
    }

    /// A small UDP datagram (checksum 0 = none), for "ordinary traffic".
    pub fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let len = u16::try_from(8 + data.len()).expect("UDP datagram too long");
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&len.to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(data);
        u
    }

    /// 36-byte CARP advertisement (carp(4) `struct carp_header`) with a valid
    /// checksum; the digest is a fixed pattern (the kernel does not check it).
    pub fn carp_advert(vhid: u8, advskew: u8, advbase: u8, counter: u64) -> [u8; 36] {
        let mut c = [0u8; 36];
        c[0] = 0x21;
        c[1] = vhid;
        c[2] = advskew;
        c[3] = 7;
        c[4] = 0;
        c[5] = advbase;
        c[8..16].copy_from_slice(&counter.to_be_bytes());
        for (i, b) in c[16..36].iter_mut().enumerate() {
            *b = 0xa0 + i as u8;
        }
        let sum = inet_checksum(&c);
        c[6..8].copy_from_slice(&sum.to_be_bytes());
        c
    }
}

/// How a [`BenchRow`] was timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `BPF_PROG_TEST_RUN` with this `repeat` on a frame the program leaves
    /// unchanged, so every run takes the same path. The kernel's per-run time
    /// is then the program plus a few ns of its test loop (`bpf_test_run`:
    /// bh disable/enable, loop check); the two timer reads are spread over
    /// the repeats. The kernel reports whole ns (`time_spent / repeat`,
    /// rounded down); averaging samples dithers that a little.
    Repeat(u32),
    /// One run per call (`repeat` = 1), for frames the program rewrites: with
    /// `repeat` > 1 the kernel reruns on the rewritten buffer, i.e. on another
    /// path. Each time includes the kernel's per-call overhead (two
    /// `ktime_get_ns`, about 90 ns here), identical for both programs, so the
    /// program's cost is the difference, within the noise of a trimmed mean.
    Single,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Repeat(n) => write!(f, "repeat {n}"),
            Self::Single => f.write_str("single"),
        }
    }
}

/// One row of [`bench_classes`].
#[derive(Clone, Debug, PartialEq)]
pub struct BenchRow {
    pub class: &'static str,
    pub method: Method,
    /// `carp_xdp` on this class of frame, ns per packet as the kernel timed it.
    pub ns_per_packet: f64,
    /// `carp_xdp_empty` on the same frame with the same method, interleaved.
    pub empty_ns_per_packet: f64,
}

impl BenchRow {
    /// What `carp_xdp` costs over the empty program: the number the issue's
    /// "≤ 20 ns more than an empty XDP_PASS program" target is about.
    pub fn overhead_ns(&self) -> f64 {
        self.ns_per_packet - self.empty_ns_per_packet
    }
}

/// Sample sizes of [`bench_classes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    /// Interleaved rounds (every row once per round); the result is the median
    /// over rounds, which spreads slow drifts (frequency, other load) evenly.
    pub rounds: usize,
    /// `repeat` of [`Method::Repeat`] rows.
    pub repeat: u32,
    /// Calls per round and program for [`Method::Repeat`] rows.
    pub repeat_samples: usize,
    /// Calls per round and program for [`Method::Single`] rows.
    pub single_samples: usize,
}

impl BenchOptions {
    /// Enough to check that every row measures its path; numbers are rough.
    pub const SMOKE: Self = Self {
        rounds: 3,
        repeat: 1000,
        repeat_samples: 2,
        single_samples: 20,
    };
    /// A measurement, about 15 s of wall time. Few long repeat calls rather
    /// than many short ones: a call with `repeat` > 1 also swaps the program
    /// into the kernel's XDP dispatcher and out again (`bpf_prog_change_xdp`
    /// in `bpf_prog_test_run_xdp`), which takes milliseconds of wall time,
    /// outside the timed loop.
    pub const PRECISE: Self = Self {
        rounds: 9,
        repeat: 100_000,
        repeat_samples: 4,
        single_samples: 2000,
    };
}

const BENCH_IF_MAC: [u8; 6] = [0x02, 0xca, 0x40, 0x00, 0x00, 0x01];
const BENCH_PEER_MAC: [u8; 6] = [0x02, 0xca, 0x40, 0x00, 0x00, 0x02];
/// The ring holds 585 adverts (64 KiB / (104 + 8)); a batch must fit, and so
/// must the sender's advert budget (`carp_common::ADVERT_BUDGET_BURST`, reset
/// before every sample), or the batch would measure `carp_over_budget` drops.
const ADVERT_BATCH: u32 = carp_common::ADVERT_BUDGET_BURST as u32;

/// One benchmark row before it is measured.
struct BenchCase {
    class: &'static str,
    method: Method,
    /// Index into the benchmark's instances.
    instance: usize,
    frame: Vec<u8>,
    verdict: u32,
    reason: Reason,
}

/// A loaded instance with VHID 1 MASTER (for an hour), VHID 2 BACKUP, and
/// the VIPs `vips` and `vips6` on them.
fn bench_instance(
    if_mac: [u8; 6],
    vips: &[(Ipv4Addr, u8)],
    vips6: &[(Ipv6Addr, u8)],
) -> anyhow::Result<XdpInstance> {
    let mut inst = XdpInstance::load(if_mac).context("loading the XDP object")?;
    let far = ktime_now_ns() + 3_600_000_000_000;
    inst.set_vhid(1, VhidEntry::new(VhidState::Master, far))?;
    inst.set_vhid(2, VhidEntry::new(VhidState::Backup, 0))?;
    for &(vip, vhid) in vips {
        inst.add_vip(vip, vhid)?;
    }
    for &(vip, vhid) in vips6 {
        inst.add_vip6(vip, vhid)?;
    }
    Ok(inst)
}

/// Times `carp_xdp` against `carp_xdp_empty`, per frame class, with the most
/// precise method each class allows (see [`Method`]).
///
/// Classes whose frame the program leaves as it found it (unrelated traffic,
/// VIP traffic as MASTER, the BACKUP drop, ARP for another host) use
/// [`Method::Repeat`]. The vMAC rewrite is made repeatable honestly: a second
/// instance is loaded with `IF_MAC` = the vMAC itself, so the program does
/// exactly the same work (lookup, clock, 6-byte store) but stores the bytes
/// that are already there. The ARP reply cannot be (the request becomes a
/// reply), so it is timed with [`Method::Single`], as is a CARP advert with
/// the ring drained before each run, so that every advert sends the reader
/// its wake-up notification (irq_work) as at one advert per second; a second
/// advert row takes batches of 500 into the drained ring, where only the
/// first notifies, to show what the program itself costs. Two single-run
/// rows on repeatable paths calibrate the single-run method against the
/// repeat one (single runs read the cold-ish first run after a syscall, so
/// they come out a few ns higher).
///
/// Every round runs every row once, alternating the empty and the real
/// program call by call on the same frame. Each (row, round) is summarised by
/// the mean of its middle 50 % of samples (interrupts only ever add time),
/// the row by the median over rounds. Around every block the per-reason
/// counters are checked (exactly `runs` packets, all with the row's reason),
/// and every run's verdict and, for repeat rows, output frame, so a row that
/// measured another path fails instead of lying. Needs root.
pub fn bench_classes(opts: BenchOptions) -> anyhow::Result<Vec<BenchRow>> {
    use frames::*;

    ensure!(
        opts.rounds > 0 && opts.repeat > 0 && opts.repeat_samples > 0 && opts.single_samples > 0,
        "empty benchmark options {opts:?}"
    );
    let vip_master = Ipv4Addr::new(10, 66, 0, 100);
    let vip_backup = Ipv4Addr::new(10, 66, 0, 200);
    // Another address of `a`'s prefilter slot (`carp_common::vip_slot`):
    // flipping bit 14 + j flips bit j of the fold, so flipping both keeps it.
    let same_slot = |a: Ipv4Addr, k: u32| Ipv4Addr::from_bits(a.to_bits() ^ (k << 14) ^ k);
    // Two VIPs sharing a slot: the prefilter sends them to the hash.
    let vip_shared = Ipv4Addr::new(10, 66, 0, 50);
    let vips = [
        (vip_master, 1),
        (vip_backup, 2),
        (vip_shared, 1),
        (same_slot(vip_shared, 1), 1),
    ];
    // IPv6 VIPs in one /64, as a site would number them, and two that
    // share a prefilter slot: the slot folds the XOR of the address's four
    // 32-bit words, which flipping the same bit in two words keeps.
    let vip6_master = Ipv6Addr::new(0x2001, 0xdb8, 0x66, 0, 0, 0, 0, 0x100);
    let vip6_shared = Ipv6Addr::new(0x2001, 0xdb8, 0x66, 0, 0, 0, 0, 0x50);
    let vip6_shared_b = Ipv6Addr::from_bits(vip6_shared.to_bits() ^ (1 << 32) ^ 1);
    let vips6 = [
        (vip6_master, 1),
        (Ipv6Addr::new(0x2001, 0xdb8, 0x66, 0, 0, 0, 0, 0x200), 2),
        (vip6_shared, 1),
        (vip6_shared_b, 1),
    ];
    let mut instances = [
        bench_instance(BENCH_IF_MAC, &vips, &vips6)?,
        bench_instance(vmac(1), &vips, &vips6)?,
    ];
    let mut ring = instances[0]
        .take_adverts()
        .context("ring buffer already taken")??;

    let client = Ipv4Addr::new(10, 66, 0, 7);
    let remote = Ipv4Addr::new(198, 51, 100, 9);
    let data = [0x55u8; 18];
    let datagram = |dst| ipv4(client, dst, 17, 64, &udp(40000, 5001, &data));
    let unrelated = eth(
        BENCH_IF_MAC,
        BENCH_PEER_MAC,
        ETH_P_IP,
        &datagram(Ipv4Addr::new(10, 66, 0, 1)),
    );
    let to_vmac1 = eth(vmac(1), BENCH_PEER_MAC, ETH_P_IP, &datagram(remote));
    let client6 = Ipv6Addr::new(0x2001, 0xdb8, 0x66, 0, 0, 0, 0, 7);
    let datagram6 = |dst| {
        eth(
            BENCH_IF_MAC,
            BENCH_PEER_MAC,
            ETH_P_IPV6,
            &ipv6(client6, dst, 17, 64, &udp(40000, 5001, &data)),
        )
    };
    let advert = eth(
        vmac(1),
        BENCH_PEER_MAC,
        ETH_P_IP,
        &ipv4(
            client,
            CARP_GROUP_V4,
            IPPROTO_CARP,
            CARP_TTL,
            &carp_advert(1, 0, 1, 1),
        ),
    );
    let repeat = Method::Repeat(opts.repeat);
    let case = |class, method, instance, frame, verdict, reason| BenchCase {
        class,
        method,
        instance,
        frame,
        verdict,
        reason,
    };
    let cases = [
        case(
            "unrelated IPv4 to the interface MAC",
            repeat,
            0,
            unrelated.clone(),
            XDP_PASS,
            Reason::PassUnrelated,
        ),
        case(
            "unrelated IPv4 in a VIP's prefilter slot",
            repeat,
            0,
            eth(
                BENCH_IF_MAC,
                BENCH_PEER_MAC,
                ETH_P_IP,
                &datagram(same_slot(vip_master, 1)),
            ),
            XDP_PASS,
            Reason::PassUnrelated,
        ),
        case(
            "ARP request for another host",
            repeat,
            0,
            eth(
                BROADCAST,
                BENCH_PEER_MAC,
                ETH_P_ARP,
                &arp(
                    1,
                    BENCH_PEER_MAC,
                    client,
                    [0; 6],
                    Ipv4Addr::new(10, 66, 0, 8),
                ),
            ),
            XDP_PASS,
            Reason::ArpPassed,
        ),
        case(
            "VIP traffic, MASTER",
            repeat,
            0,
            eth(
                BENCH_IF_MAC,
                BENCH_PEER_MAC,
                ETH_P_IP,
                &datagram(vip_master),
            ),
            XDP_PASS,
            Reason::VipPassed,
        ),
        case(
            "VIP traffic, MASTER, slot shared by two VIPs",
            repeat,
            0,
            eth(
                BENCH_IF_MAC,
                BENCH_PEER_MAC,
                ETH_P_IP,
                &datagram(vip_shared),
            ),
            XDP_PASS,
            Reason::VipPassed,
        ),
        case(
            "unrelated IPv6 to the interface MAC",
            repeat,
            0,
            datagram6(Ipv6Addr::new(0x2001, 0xdb8, 0x66, 0, 0, 0, 0, 1)),
            XDP_PASS,
            Reason::PassUnrelated,
        ),
        case(
            "IPv6 VIP traffic, MASTER",
            repeat,
            0,
            datagram6(vip6_master),
            XDP_PASS,
            Reason::VipPassed,
        ),
        case(
            "IPv6 VIP traffic, MASTER, slot shared by two VIPs",
            repeat,
            0,
            datagram6(vip6_shared),
            XDP_PASS,
            Reason::VipPassed,
        ),
        case(
            "vMAC traffic, BACKUP drop",
            repeat,
            0,
            eth(vmac(2), BENCH_PEER_MAC, ETH_P_IP, &datagram(remote)),
            XDP_DROP,
            Reason::VmacDroppedNotMaster,
        ),
        case(
            "forwarded to the vMAC, MASTER (IF_MAC = vMAC)",
            repeat,
            1,
            to_vmac1.clone(),
            XDP_PASS,
            Reason::VmacRewritten,
        ),
        case(
            "CARP advertisement, batch into drained ring",
            Method::Repeat(ADVERT_BATCH),
            0,
            advert.clone(),
            XDP_PASS,
            Reason::CarpAdvert,
        ),
        case(
            "unrelated IPv4 to the interface MAC",
            Method::Single,
            0,
            unrelated,
            XDP_PASS,
            Reason::PassUnrelated,
        ),
        case(
            "forwarded to the vMAC, MASTER (IF_MAC = vMAC)",
            Method::Single,
            1,
            to_vmac1.clone(),
            XDP_PASS,
            Reason::VmacRewritten,
        ),
        case(
            "forwarded to the vMAC, MASTER",
            Method::Single,
            0,
            to_vmac1,
            XDP_PASS,
            Reason::VmacRewritten,
        ),
        case(
            "ARP request for a VIP, MASTER reply",
            Method::Single,
            0,
            eth(
                BROADCAST,
                BENCH_PEER_MAC,
                ETH_P_ARP,
                &arp(1, BENCH_PEER_MAC, client, [0; 6], vip_master),
            ),
            XDP_TX,
            Reason::ArpReplied,
        ),
        case(
            "CARP advertisement, reader notified",
            Method::Single,
            0,
            advert,
            XDP_PASS,
            Reason::CarpAdvert,
        ),
    ];

    let mut rounds: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); cases.len()];
    let mut class_ns = Vec::new();
    let mut empty_ns = Vec::new();
    for _ in 0..opts.rounds {
        for (i, c) in cases.iter().enumerate() {
            let inst = &mut instances[c.instance];
            let (repeat, samples) = match c.method {
                Method::Repeat(n) => (n, opts.repeat_samples),
                Method::Single => (1, opts.single_samples),
            };
            class_ns.clear();
            empty_ns.clear();
            let before = inst.counters()?;
            for _ in 0..samples {
                let e = run(inst.empty_program()?, &c.frame, repeat)
                    .with_context(|| format!("test run of the empty program ({})", c.class))?;
                ensure!(
                    e.verdict == XDP_PASS,
                    "the empty program returned {}",
                    e.verdict
                );
                empty_ns.push(e.duration_ns);
                // Every sample starts with a full advert budget (the same path).
                if c.reason == Reason::CarpAdvert {
                    inst.reset_advert_budget()?;
                }
                let r = run(inst.program()?, &c.frame, repeat)
                    .with_context(|| format!("test run ({})", c.class))?;
                ensure!(
                    r.verdict == c.verdict,
                    "class {:?}: verdict {}, expected {}",
                    c.class,
                    r.verdict,
                    c.verdict
                );
                ensure!(
                    c.method == Method::Single || r.output == c.frame,
                    "class {:?} rewrote its frame, so repeated runs measured another path",
                    c.class
                );
                class_ns.push(r.duration_ns);
                // Keep the ring empty so every advert takes the same path.
                while ring.next().is_some() {}
            }
            let after = inst.counters()?;
            let runs = samples as u64 * u64::from(repeat);
            let got = after[c.reason as usize] - before[c.reason as usize];
            let total = after.iter().sum::<u64>() - before.iter().sum::<u64>();
            ensure!(
                got == runs && total == runs,
                "class {:?} ({}): {:?} counted {got} of {total} runs, expected {runs}; \
                 counters {after:?}",
                c.class,
                c.method,
                c.reason
            );
            rounds[i].0.push(middle_mean(&mut class_ns));
            rounds[i].1.push(middle_mean(&mut empty_ns));
        }
    }
    Ok(cases
        .iter()
        .zip(rounds)
        .map(|(c, (mut r, mut e))| BenchRow {
            class: c.class,
            method: c.method,
            ns_per_packet: median(&mut r),
            empty_ns_per_packet: median(&mut e),
        })
        .collect())
}

/// Mean of the middle half of `v` (sorted in place); `v` must not be empty.
fn middle_mean(v: &mut [u32]) -> f64 {
    v.sort_unstable();
    let q = v.len() / 4;
    let mid = &v[q..v.len() - q];
    mid.iter().map(|&x| f64::from(x)).sum::<f64>() / mid.len() as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Decodes every pending ring record (tests use this after a run).
pub fn drain_records(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
) -> Vec<carp_common::AdvertRecord> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(decode_record(&item).expect("ring record shorter than AdvertRecord"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{frames::*, *};

    #[test]
    fn frames_carry_correct_checksums() {
        let c = carp_advert(7, 100, 1, 0x0102_0304_0506_0708);
        assert_eq!(inet_checksum(&c), 0);
        let ip = ipv4(
            Ipv4Addr::new(10, 0, 0, 1),
            CARP_GROUP_V4,
            IPPROTO_CARP,
            CARP_TTL,
            &c,
        );
        assert_eq!(inet_checksum(&ip[..20]), 0);
    }

    #[test]
    fn ipv4_full_matches_ipv4_and_sets_fields() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(
            ipv4_full(a, b, 240, 255, 0x4000, &[], b"xy"),
            ipv4(a, b, 240, 255, b"xy")
        );
        let p = ipv4_full(a, b, 240, 255, 0x2000, &[1, 1, 1, 0], b"xy");
        assert_eq!(p[0], 0x46);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 26);
        assert_eq!(&p[6..8], &[0x20, 0x00]);
        assert_eq!(inet_checksum(&p[..24]), 0);
        assert_eq!(&p[24..], b"xy");
    }

    #[test]
    fn sync_frame_layout() {
        let f = sync_frame(&[7; 10]);
        assert_eq!(f.len(), 66);
        assert_eq!(&f[..4], &[0xc1, 0, 0, 66]);
        assert_eq!(sync_frame(&[]).len(), 56);
        assert_eq!(inet_checksum(&icmp_echo(1, 2, b"abc")), 0);
        assert_eq!(tcp_syn(1, 2).len(), 20);
        assert_eq!(ipv6_ns([0; 16], [9; 16], [2; 6]).len(), 40 + 32);
    }

    #[test]
    fn statistics() {
        assert_eq!(middle_mean(&mut [100, 1, 2, 3, 4, 5, 6, 1000]), 4.5);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
