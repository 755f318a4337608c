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
//! benchmark therefore takes single runs (see [`bench_classes`]).
use std::net::Ipv4Addr;

use anyhow::{bail, ensure, Context as _};
use aya::programs::{ProgramError, TestRun as _, TestRunOptions, Xdp};
use carp_common::{Reason, VhidEntry, VhidState};
use carp_user::xdp::{decode_record, ktime_now_ns, XdpInstance};

/// XDP verdicts (`enum xdp_action`, include/uapi/linux/bpf.h).
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
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

/// Runs `prog` on `packet` `repeat` times (0 counts as 1) in the kernel.
pub fn run(prog: &Xdp, packet: &[u8], repeat: u32) -> Result<RunResult, ProgramError> {
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
    use std::net::Ipv4Addr;

    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_ARP: u16 = 0x0806;
    pub const ETH_P_IPV6: u16 = 0x86dd;
    pub const BROADCAST: [u8; 6] = [0xff; 6];

    /// `00:00:5e:00:01:vhid` (RFC 5798 §7.3, carp(4)).
    pub const fn vmac(vhid: u8) -> [u8; 6] {
        [0x00, 0x00, 0x5e, 0x00, 0x01, vhid]
    }

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

    /// RFC 1071 Internet checksum of `data` (odd length padded with a zero).
    pub fn inet_checksum(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for chunk in data.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// IPv4 packet with a 20-byte header (valid header checksum).
    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
        let tot_len = u16::try_from(20 + payload.len()).expect("IPv4 packet over 64 KiB");
        let mut h = vec![0x45, 0x00];
        h.extend_from_slice(&tot_len.to_be_bytes());
        h.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, ttl, proto, 0, 0]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        let sum = inet_checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(payload);
        h
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

/// One row of [`bench_classes`].
#[derive(Clone, Debug, PartialEq)]
pub struct BenchRow {
    pub class: &'static str,
    /// `carp_xdp` on this class of frame, ns per packet as the kernel timed it.
    pub ns_per_packet: f64,
    /// `carp_xdp_empty` on the same frame, measured interleaved in the same run.
    pub empty_ns_per_packet: f64,
}

const BENCH_IF_MAC: [u8; 6] = [0x02, 0xca, 0x40, 0x00, 0x00, 0x01];
const BENCH_PEER_MAC: [u8; 6] = [0x02, 0xca, 0x40, 0x00, 0x00, 0x02];
const BENCH_ROUNDS: usize = 5;

/// Times `carp_xdp` against `carp_xdp_empty` for the frame classes that matter
/// for throughput: unrelated traffic, forwarded traffic to the vMAC and VIP
/// traffic as MASTER, the BACKUP drop, the ARP reply and a CARP advert.
///
/// Method: `samples` single runs (`repeat` = 1, because repeated runs would
/// see the frame as the previous run rewrote it) of each class, alternating
/// with the empty program on the same frame, split over 5 interleaved rounds
/// (class A, B, … then again) to spread slow drifts (frequency, other load)
/// over all classes. Each round is summarised by the mean of its middle
/// 50 % of samples (interrupts and preemption only ever add time), and the
/// result is the median over rounds. Both numbers include the kernel's
/// per-run overhead (timer reads, bh disable), so the program's own cost is
/// the difference. Afterwards the per-reason counters are checked, so a
/// benchmark that measured the wrong path fails instead of lying.
/// Needs root.
pub fn bench_classes(samples: u32) -> anyhow::Result<Vec<BenchRow>> {
    use frames::*;

    let per_round = (samples as usize).div_ceil(BENCH_ROUNDS).max(4);
    let mut inst = XdpInstance::load(BENCH_IF_MAC).context("loading the XDP object")?;
    let far = ktime_now_ns() + 3_600_000_000_000;
    inst.set_vhid(1, VhidEntry::new(VhidState::Master, far))?;
    inst.set_vhid(2, VhidEntry::new(VhidState::Backup, 0))?;
    let vip_master = Ipv4Addr::new(10, 66, 0, 100);
    let vip_backup = Ipv4Addr::new(10, 66, 0, 200);
    inst.add_vip(vip_master, 1)?;
    inst.add_vip(vip_backup, 2)?;
    let mut ring = inst.take_adverts().context("ring buffer already taken")??;

    let client = Ipv4Addr::new(10, 66, 0, 7);
    let remote = Ipv4Addr::new(198, 51, 100, 9);
    let data = [0x55u8; 18];
    let datagram = |dst| ipv4(client, dst, 17, 64, &udp(40000, 5001, &data));
    let classes: [(&'static str, Vec<u8>, Reason); 6] = [
        (
            "unrelated IPv4 to the interface MAC",
            eth(
                BENCH_IF_MAC,
                BENCH_PEER_MAC,
                ETH_P_IP,
                &datagram(Ipv4Addr::new(10, 66, 0, 1)),
            ),
            Reason::PassUnrelated,
        ),
        (
            "forwarded to the vMAC, MASTER",
            eth(vmac(1), BENCH_PEER_MAC, ETH_P_IP, &datagram(remote)),
            Reason::VmacRewritten,
        ),
        (
            "VIP traffic, MASTER",
            eth(
                BENCH_IF_MAC,
                BENCH_PEER_MAC,
                ETH_P_IP,
                &datagram(vip_master),
            ),
            Reason::VipPassed,
        ),
        (
            "vMAC traffic, BACKUP drop",
            eth(vmac(2), BENCH_PEER_MAC, ETH_P_IP, &datagram(remote)),
            Reason::VmacDroppedNotMaster,
        ),
        (
            "ARP request for a VIP, MASTER reply",
            eth(
                BROADCAST,
                BENCH_PEER_MAC,
                ETH_P_ARP,
                &arp(1, BENCH_PEER_MAC, client, [0; 6], vip_master),
            ),
            Reason::ArpReplied,
        ),
        (
            "CARP advertisement",
            eth(
                vmac(1),
                BENCH_PEER_MAC,
                ETH_P_IP,
                &ipv4(
                    client,
                    Ipv4Addr::new(224, 0, 0, 18),
                    112,
                    255,
                    &carp_advert(1, 0, 1, 1),
                ),
            ),
            Reason::CarpAdvert,
        ),
    ];

    let before = inst.counters()?;
    let mut rounds: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); classes.len()];
    let mut class_ns = Vec::with_capacity(per_round);
    let mut empty_ns = Vec::with_capacity(per_round);
    for _ in 0..BENCH_ROUNDS {
        for (i, (name, frame, _)) in classes.iter().enumerate() {
            class_ns.clear();
            empty_ns.clear();
            for _ in 0..per_round {
                let e = run(inst.empty_program()?, frame, 1)
                    .with_context(|| format!("test run of the empty program ({name})"))?;
                empty_ns.push(e.duration_ns);
                let r =
                    run(inst.program()?, frame, 1).with_context(|| format!("test run ({name})"))?;
                class_ns.push(r.duration_ns);
                // Keep the ring empty so every advert takes the same path.
                while ring.next().is_some() {}
            }
            rounds[i].0.push(middle_mean(&mut class_ns));
            rounds[i].1.push(middle_mean(&mut empty_ns));
        }
    }

    let after = inst.counters()?;
    let runs = (per_round * BENCH_ROUNDS) as u64;
    for (name, _, reason) in &classes {
        let got = after[*reason as usize] - before[*reason as usize];
        ensure!(
            got == runs,
            "class {name:?}: {reason:?} counted {got} times, expected {runs}"
        );
    }
    let total: u64 = after.iter().sum::<u64>() - before.iter().sum::<u64>();
    if total != runs * classes.len() as u64 {
        bail!("the benchmark hit other paths: counters {after:?}");
    }

    Ok(classes
        .iter()
        .zip(rounds)
        .map(|((class, _, _), (mut c, mut e))| BenchRow {
            class,
            ns_per_packet: median(&mut c),
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
    fn checksum_of_a_checksummed_buffer_is_zero() {
        let c = carp_advert(7, 100, 1, 0x0102_0304_0506_0708);
        assert_eq!(inet_checksum(&c), 0);
        let ip = ipv4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(224, 0, 0, 18),
            112,
            255,
            &c,
        );
        assert_eq!(inet_checksum(&ip[..20]), 0);
        // RFC 1071 §3 example words 0001 f203 f4f5 f6f7 sum to ddf2 (complement 220d).
        assert_eq!(
            inet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }

    #[test]
    fn statistics() {
        assert_eq!(middle_mean(&mut [100, 1, 2, 3, 4, 5, 6, 1000]), 4.5);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
