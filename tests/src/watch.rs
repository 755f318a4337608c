//! Checks that can see two answerers: captures on the switch ports.
//!
//! A request/response tool on the client cannot tell one answerer from two
//! (iputils `arping -c N` stops after N replies, whoever sent them), and a
//! bridge keeps one fdb entry per MAC (the last port it heard), so "the
//! virtual MAC is learned on at most one port" cannot fail. What can: every
//! frame a router puts on the wire passes its own switch port, so an
//! `AF_PACKET` socket bound to each router's port in the switch namespace
//! sees who sent what, and when.
//!
//! - [`Capture`]: records, with a receive timestamp, the frames entering the
//!   switches from the routers' ports (never what the bridge sends out of
//!   them) while the test runs a fault.
//! - [`arp_census`]: sends broadcast ARP requests for a VIP from the client
//!   (raw frames, so every request reaches both routers) and counts the
//!   replies per port and per source MAC.
//! - [`vmac_overlaps`]: from a capture, the time intervals during which each
//!   port carried frames sourced from a virtual MAC, and every pair of
//!   intervals of different ports that overlap (two masters).
//!
//! The analyses are pure functions over [`Frame`]s (unit-tested below with
//! synthetic two-answerer captures); `tests/tests/failover.rs` shows them
//! failing on a real two-master lab (`checkers_see_two_masters_...`).
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};

use crate::lab::{format_mac, vmac, Lab, Router, Switch, CLIENT_IP};
use crate::pair::in_netns;

/// Bytes of each frame kept (Ethernet + IPv4/ARP headers and a bit).
const SNAPLEN: usize = 96;

/// One frame a router sent into a switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// When the switch port received it: the kernel's receive timestamp
    /// (`SIOCGSTAMPNS`, so frames of different ports read in one wake-up keep
    /// their order), as an `Instant`; the read time if the kernel had none.
    pub at: Instant,
    pub switch: Switch,
    /// The switch port, i.e. the router that sent it.
    pub router: Router,
    /// The first [`SNAPLEN`] bytes.
    pub bytes: Vec<u8>,
}

impl Frame {
    pub fn src_mac(&self) -> Option<[u8; 6]> {
        self.bytes.get(6..12)?.try_into().ok()
    }

    /// The VHID whose virtual MAC (`00:00:5e:00:01:VHID`) is the source, if any.
    pub fn vmac_vhid(&self) -> Option<u8> {
        let mac = self.src_mac()?;
        (mac[..5] == vmac(0)[..5] && mac[5] != 0).then_some(mac[5])
    }

    /// What the frame is, for messages: `advert` (IP protocol 112),
    /// `arp-reply`, `arp-request`, `ip/<proto>`, or the EtherType.
    pub fn kind(&self) -> String {
        let b = &self.bytes;
        match b.get(12..14) {
            Some([0x08, 0x06]) => match b.get(20..22) {
                Some([0, 1]) => "arp-request".into(),
                Some([0, 2]) => "arp-reply".into(),
                _ => "arp".into(),
            },
            Some([0x08, 0x00]) => match b.get(23) {
                Some(112) if self.is_bow_out() => "advert (bow-out)".into(),
                Some(112) => "advert".into(),
                Some(p) => format!("ip/{p}"),
                None => "ip".into(),
            },
            Some([h, l]) => format!("ethertype {h:02x}{l:02x}"),
            _ => "runt".into(),
        }
    }

    /// A CARP bow-out (advbase 255 and advskew 255): the resignation of a
    /// stopping master, not master traffic.
    pub fn is_bow_out(&self) -> bool {
        let b = &self.bytes;
        if b.get(12..14) != Some(&[0x08, 0x00]) || b.get(23) != Some(&112) {
            return false;
        }
        let ihl = usize::from(b[14] & 0x0f) * 4;
        let carp = 14 + ihl;
        b.get(carp + 2) == Some(&255) && b.get(carp + 5) == Some(&255)
    }

    /// An ARP reply (Ethernet/IPv4): (sender MAC, sender IP).
    pub fn arp_reply(&self) -> Option<([u8; 6], Ipv4Addr)> {
        let b = &self.bytes;
        if b.len() < 14 + 28 || b[12..14] != [0x08, 0x06] || b[20..22] != [0, 2] {
            return None;
        }
        let sha: [u8; 6] = b[22..28].try_into().ok()?;
        let spa: [u8; 4] = b[28..32].try_into().ok()?;
        Some((sha, Ipv4Addr::from(spa)))
    }
}

/// Captures on the routers' ports of the LAN (and WAN, if built) switch
/// until [`Capture::stop`].
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<Vec<Frame>>>>,
    started: Instant,
}

impl Capture {
    /// Starts capturing on every router port of every switch of `lab`.
    pub fn start(lab: &Lab) -> anyhow::Result<Capture> {
        let mut switches = vec![Switch::Lan];
        if lab.with_wan() {
            switches.push(Switch::Wan);
        }
        Capture::start_on(lab, &switches)
    }

    /// Starts capturing on the router ports of `switches`. The sockets are
    /// bound before this returns: every frame after it is seen.
    pub fn start_on(lab: &Lab, switches: &[Switch]) -> anyhow::Result<Capture> {
        let mut socks = Vec::new();
        for &sw in switches {
            for r in Router::ALL {
                let port = lab.switch_port(sw, r);
                let fd = port_socket(lab.switch(sw).name(), port)
                    .with_context(|| format!("capture socket on {port} of {sw:?}"))?;
                socks.push((sw, r, fd));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let clock = Clock::now();
        let thread = std::thread::spawn(move || read_loop(&socks, &flag, clock));
        Ok(Capture {
            stop,
            thread: Some(thread),
            started: Instant::now(),
        })
    }

    /// When the sockets were bound.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops and returns what was seen, in order of reading.
    pub fn stop(mut self) -> anyhow::Result<Vec<Frame>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("capture thread panicked"))?,
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `SIOCGSTAMPNS` (`SIOCGSTAMPNS_OLD`, the 64-bit `timespec` one on 64-bit
/// targets; not in the libc crate): the receive time of the last frame read.
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;

/// Maps the kernel's CLOCK_REALTIME receive stamps onto `Instant`s.
#[derive(Clone, Copy)]
struct Clock {
    instant: Instant,
    real: std::time::SystemTime,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            real: std::time::SystemTime::now(),
        }
    }

    /// The receive time of the last frame read from `fd`, if the kernel has one.
    fn stamp(&self, fd: &OwnedFd) -> Option<Instant> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: SIOCGSTAMPNS writes one timespec to the pointer given.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSTAMPNS as _, &mut ts) };
        if rc != 0 || ts.tv_sec <= 0 {
            return None;
        }
        let real = std::time::UNIX_EPOCH
            + Duration::new(ts.tv_sec as u64, u32::try_from(ts.tv_nsec).ok()?);
        Some(match real.duration_since(self.real) {
            Ok(d) => self.instant + d,
            Err(e) => self.instant.checked_sub(e.duration())?,
        })
    }
}

fn read_loop(
    socks: &[(Switch, Router, OwnedFd)],
    stop: &AtomicBool,
    clock: Clock,
) -> anyhow::Result<Vec<Frame>> {
    let mut frames = Vec::new();
    let mut buf = [0u8; 2048];
    let mut pfds: Vec<libc::pollfd> = socks
        .iter()
        .map(|(_, _, fd)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // One last sweep after the stop flag: what was queued before it counts.
    let mut last = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            last = true;
        }
        // SAFETY: pfds is a valid array of its length.
        let n = unsafe {
            libc::poll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                if last { 0 } else { 20 },
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("poll: {e}");
        }
        let mut got = false;
        for (i, (sw, r, fd)) in socks.iter().enumerate() {
            if pfds[i].revents & libc::POLLIN == 0 {
                continue;
            }
            // Drain the socket.
            loop {
                // SAFETY: sll and len are valid out-parameters; buf has its length.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                        (&mut sll as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    break;
                }
                got = true;
                // What the bridge sends out of the port is not the router's.
                if sll.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                let n = n as usize;
                frames.push(Frame {
                    at: clock.stamp(fd).unwrap_or_else(Instant::now),
                    switch: *sw,
                    router: *r,
                    bytes: buf[..n.min(SNAPLEN)].to_vec(),
                });
            }
        }
        if last && !got {
            return Ok(frames);
        }
    }
}

/// An `AF_PACKET` socket receiving every frame (ETH_P_ALL) on `dev` of
/// namespace `ns`, made on a thread that entered `ns` (a socket stays in the
/// namespace it was made in).
fn port_socket(ns: &str, dev: &str) -> anyhow::Result<OwnedFd> {
    let dev = dev.to_owned();
    in_netns(ns, move || -> anyhow::Result<OwnedFd> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain syscalls with valid arguments; the fd is owned at once.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            );
            ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let name = std::ffi::CString::new(dev.clone())?;
            let index = libc::if_nametoindex(name.as_ptr());
            ensure!(index != 0, "{dev}: {}", std::io::Error::last_os_error());
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            ensure!(rc == 0, "bind: {}", std::io::Error::last_os_error());
            // The first SIOCGSTAMPNS turns receive timestamps on for the
            // socket (and fails: nothing received yet).
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            libc::ioctl(fd.as_raw_fd(), SIOCGSTAMPNS as _, &mut ts);
            // Room for a few seconds of a 1 ms probe on every port.
            let size: libc::c_int = 4 << 20;
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            Ok(fd)
        }
    })
}

/// ARP replies for one VIP, as the switch saw them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpCensus {
    pub vip: Ipv4Addr,
    /// Broadcast requests sent.
    pub requests: usize,
    /// Replies for the VIP entering the switch, per router port.
    pub replies: Vec<(Router, usize)>,
    /// Distinct (Ethernet source, ARP sender MAC) pairs of those replies.
    pub sources: Vec<(String, String)>,
}

impl ArpCensus {
    pub fn total(&self) -> usize {
        self.replies.iter().map(|(_, n)| n).sum()
    }

    /// The ports that answered at least once.
    pub fn answerers(&self) -> Vec<Router> {
        self.replies
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, _)| *r)
            .collect()
    }

    /// `Ok` if exactly one reply per request came in, all from `master`'s
    /// port, all from `mac` (Ethernet source and ARP sender); otherwise what
    /// is wrong.
    pub fn check_single(&self, master: Router, mac: [u8; 6]) -> Result<(), String> {
        let want = format_mac(mac);
        let mut wrong = Vec::new();
        if self.total() != self.requests {
            wrong.push(format!(
                "{} replies for {} broadcast requests",
                self.total(),
                self.requests
            ));
        }
        let answerers = self.answerers();
        if answerers.len() > 1 {
            wrong.push(format!("two answerers: {answerers:?}"));
        } else if !answerers.is_empty() && answerers != [master] {
            wrong.push(format!("answered by {answerers:?}, expected {master:?}"));
        }
        if let Some(s) = self.sources.iter().find(|(e, a)| *e != want || *a != want) {
            wrong.push(format!("a reply not from {want}: {s:?}"));
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "ARP for {}: {} ({self:?})",
                self.vip,
                wrong.join("; ")
            ))
        }
    }
}

/// Counts the ARP replies for `vip` in `frames` (LAN switch), `requests` being
/// the number of requests sent.
pub fn count_arp_replies(frames: &[Frame], vip: Ipv4Addr, requests: usize) -> ArpCensus {
    let mut replies: Vec<(Router, usize)> = Router::ALL.iter().map(|r| (*r, 0)).collect();
    let mut sources = Vec::new();
    for f in frames.iter().filter(|f| f.switch == Switch::Lan) {
        let Some((sha, spa)) = f.arp_reply() else {
            continue;
        };
        if spa != vip {
            continue;
        }
        if let Some(e) = replies.iter_mut().find(|(r, _)| *r == f.router) {
            e.1 += 1;
        }
        let s = (format_mac(f.src_mac().unwrap_or_default()), format_mac(sha));
        if !sources.contains(&s) {
            sources.push(s);
        }
    }
    ArpCensus {
        vip,
        requests,
        replies,
        sources,
    }
}

/// Sends `requests` broadcast ARP requests for `vip` from the client's
/// `eth0`, `gap` apart, and counts the replies entering the LAN switch from
/// the routers' ports (waiting 300 ms after the last request).
pub fn arp_census(
    lab: &Lab,
    vip: Ipv4Addr,
    requests: usize,
    gap: Duration,
) -> anyhow::Result<ArpCensus> {
    let capture = Capture::start_on(lab, &[Switch::Lan])?;
    let client_mac = link_mac(lab.client().name(), "eth0")?;
    let frame = arp_request(client_mac, CLIENT_IP, vip);
    let ns = lab.client().name().to_owned();
    in_netns(&ns, move || -> anyhow::Result<()> {
        let idx = nix::net::if_::if_nametoindex("eth0").context("eth0 in the client")?;
        let tx = carp_user::packet::FrameSender::open(idx).context("packet socket")?;
        for i in 0..requests {
            if i > 0 {
                std::thread::sleep(gap);
            }
            tx.send(&frame).context("sending an ARP request")?;
        }
        Ok(())
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let frames = capture.stop()?;
    Ok(count_arp_replies(&frames, vip, requests))
}

/// A broadcast ARP request (who-has `target` tell `sender_ip`).
pub fn arp_request(sender_mac: [u8; 6], sender_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// The MAC address of `dev` in namespace `ns` (`ip -j link show`).
pub fn link_mac(ns: &str, dev: &str) -> anyhow::Result<[u8; 6]> {
    let out = crate::netns::run_checked(
        std::process::Command::new("ip").args(["-n", ns, "-j", "link", "show", "dev", dev]),
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j link")?;
    let s = v[0]["address"]
        .as_str()
        .with_context(|| format!("no address for {dev} in {ns}"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    ensure!(parts.len() == 6, "bad MAC {s}");
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC {s}"))?;
    }
    Ok(mac)
}

/// A time interval during which one port carried frames from one virtual MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenure {
    pub switch: Switch,
    pub vhid: u8,
    pub router: Router,
    pub first: Instant,
    pub last: Instant,
    pub frames: usize,
}

/// The [`Tenure`]s of every (switch, vMAC, port) in `frames`: consecutive
/// frames of one port and vMAC less than `gap` apart belong to one tenure
/// (a master advertises every advbase, so `gap` of 1.5 × advbase keeps a
/// master's tenure whole while it holds the VHID).
///
/// Bow-out adverts do not count: they are how a stopping master resigns
/// (it sends three, a few ms apart, and the backup takes over after the
/// first), not traffic of a master. [`late_bow_outs`] reports those that
/// came after the new master's first frame.
pub fn tenures(frames: &[Frame], gap: Duration) -> Vec<Tenure> {
    let mut sorted: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.vmac_vhid().is_some() && !f.is_bow_out())
        .collect();
    sorted.sort_by_key(|f| f.at);
    let mut open: Vec<Tenure> = Vec::new();
    let mut done: Vec<Tenure> = Vec::new();
    for f in sorted {
        let vhid = f.vmac_vhid().unwrap_or_default();
        let key = |t: &Tenure| t.switch == f.switch && t.vhid == vhid && t.router == f.router;
        match open.iter_mut().find(|t| key(t)) {
            Some(t) if f.at.duration_since(t.last) < gap => {
                t.last = f.at;
                t.frames += 1;
            }
            Some(t) => {
                let next = Tenure {
                    first: f.at,
                    last: f.at,
                    frames: 1,
                    ..t.clone()
                };
                done.push(std::mem::replace(t, next));
            }
            None => open.push(Tenure {
                switch: f.switch,
                vhid,
                router: f.router,
                first: f.at,
                last: f.at,
                frames: 1,
            }),
        }
    }
    done.extend(open);
    done.sort_by_key(|t| t.first);
    done
}

/// Bow-out adverts sent after another port had started a tenure of the same
/// vMAC: each re-points the switch's fdb entry at the resigning node until
/// the new master's next frame from that vMAC.
pub fn late_bow_outs(frames: &[Frame], gap: Duration) -> Vec<&Frame> {
    let ts = tenures(frames, gap);
    frames
        .iter()
        .filter(|f| f.is_bow_out())
        .filter(|f| {
            ts.iter().any(|t| {
                t.switch == f.switch
                    && Some(t.vhid) == f.vmac_vhid()
                    && t.router != f.router
                    && t.first <= f.at
            })
        })
        .collect()
}

/// Pairs of [`tenures`] of the same switch and vMAC on different ports where
/// the tenure that began first still went on more than `crossing` after the
/// other began: two masters sending from one virtual MAC at once. A capture
/// of a clean handover has none.
///
/// `crossing` allows for frames in flight at a preemption: the old master
/// may send its scheduled advert before it has received the new master's
/// (both ends of that race are on one host here, well under a millisecond
/// apart). It only forgives the old tenure's end: a frame of one port in the
/// middle of another's tenure (a zombie's stray reply) always counts.
pub fn vmac_overlaps(frames: &[Frame], gap: Duration, crossing: Duration) -> Vec<(Tenure, Tenure)> {
    let ts = tenures(frames, gap);
    let mut out = Vec::new();
    for (i, a) in ts.iter().enumerate() {
        for b in &ts[i + 1..] {
            if a.switch != b.switch || a.vhid != b.vhid || a.router == b.router {
                continue;
            }
            // ts is sorted by `first`: a began no later than b.
            if a.last > b.first + crossing {
                out.push((a.clone(), b.clone()));
            }
        }
    }
    out
}

/// Every vMAC-sourced frame from `from` to `to` (relative to `t0`), one line
/// each, for assertion messages about an overlap.
pub fn describe_frames(frames: &[Frame], t0: Instant, from: Duration, to: Duration) -> String {
    let mut v: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.vmac_vhid().is_some())
        .filter(|f| {
            let at = f.at.saturating_duration_since(t0);
            at >= from && at <= to
        })
        .collect();
    v.sort_by_key(|f| f.at);
    v.iter()
        .map(|f| {
            format!(
                "  {:>7.1} ms {:?} from {}: {} (vhid {})\n",
                f.at.saturating_duration_since(t0).as_secs_f64() * 1000.0,
                f.switch,
                f.router.name(),
                f.kind(),
                f.vmac_vhid().unwrap_or_default()
            )
        })
        .collect()
}

/// A readable line per tenure, relative to `t0`, for assertion messages.
pub fn describe_tenures(ts: &[Tenure], t0: Instant) -> String {
    let ms = |t: Instant| t.saturating_duration_since(t0).as_millis();
    ts.iter()
        .map(|t| {
            format!(
                "  {:?} vhid {} from {}: {} frames, {} ms .. {} ms\n",
                t.switch,
                t.vhid,
                t.router.name(),
                t.frames,
                ms(t.first),
                ms(t.last)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{LAN_VHID, LAN_VIP};

    fn arp_reply_frame(from: Router, src: [u8; 6], sha: [u8; 6], at: Instant) -> Frame {
        let mut b = vec![0u8; 42];
        b[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        b[6..12].copy_from_slice(&src);
        b[12..14].copy_from_slice(&[0x08, 0x06]);
        b[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        b[22..28].copy_from_slice(&sha);
        b[28..32].copy_from_slice(&LAN_VIP.octets());
        Frame {
            at,
            switch: Switch::Lan,
            router: from,
            bytes: b,
        }
    }

    fn advert(from: Router, at: Instant) -> Frame {
        let mut b = vec![0u8; 70];
        b[6..12].copy_from_slice(&vmac(LAN_VHID));
        b[12..14].copy_from_slice(&[0x08, 0x00]);
        Frame {
            at,
            switch: Switch::Lan,
            router: from,
            bytes: b,
        }
    }

    #[test]
    fn arp_census_passes_one_answerer_and_fails_two() {
        let t = Instant::now();
        let v = vmac(LAN_VHID);
        let one: Vec<Frame> = (0..3)
            .map(|_| arp_reply_frame(Router::Fw1, v, v, t))
            .collect();
        let c = count_arp_replies(&one, LAN_VIP, 3);
        assert_eq!(c.check_single(Router::Fw1, v), Ok(()));
        // The wrong port answering alone.
        assert!(c.check_single(Router::Fw2, v).is_err());

        let mut two = one.clone();
        two.extend((0..3).map(|_| arp_reply_frame(Router::Fw2, v, v, t)));
        let c = count_arp_replies(&two, LAN_VIP, 3);
        assert_eq!(c.answerers(), vec![Router::Fw1, Router::Fw2]);
        let e = c.check_single(Router::Fw1, v).unwrap_err();
        assert!(
            e.contains("6 replies for 3") && e.contains("two answerers"),
            "{e}"
        );

        // One port, but the kernel's own MAC in the reply.
        let mut own = one;
        own[1] = arp_reply_frame(Router::Fw1, [2, 1, 1, 1, 1, 1], [2, 1, 1, 1, 1, 1], t);
        let e = count_arp_replies(&own, LAN_VIP, 3)
            .check_single(Router::Fw1, v)
            .unwrap_err();
        assert!(e.contains("not from 00:00:5e:00:01:01"), "{e}");
    }

    #[test]
    fn bow_outs_end_a_tenure_and_late_ones_are_reported() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let gap = Duration::from_millis(1500);
        let bow_out = |at| {
            let mut f = advert(Router::Fw1, at);
            f.bytes[14] = 0x45;
            f.bytes[23] = 112;
            f.bytes[34 + 2] = 255;
            f.bytes[34 + 5] = 255;
            f
        };
        let mut frames = vec![advert(Router::Fw1, s(0)), bow_out(s(300))];
        frames.push(advert(Router::Fw2, s(301)));
        frames.push(bow_out(s(304)));
        frames.push(advert(Router::Fw2, s(305)));
        assert!(frames[1].is_bow_out() && !frames[0].is_bow_out());
        assert_eq!(frames[1].kind(), "advert (bow-out)");
        assert!(vmac_overlaps(&frames, gap, Duration::ZERO).is_empty());
        let late = late_bow_outs(&frames, gap);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].at, s(304));
    }

    #[test]
    fn handover_has_no_overlap_and_two_masters_do() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let gap = Duration::from_millis(1500);
        let slack = Duration::from_millis(0);
        // fw1 every second until 3 s, fw2 from 6.4 s (a kill -9 takeover), then
        // fw1 again from 10 s and fw2's last advert 10 ms before (preempt).
        let mut clean: Vec<Frame> = (0..=3).map(|i| advert(Router::Fw1, s(i * 1000))).collect();
        clean.extend((0..4).map(|i| advert(Router::Fw2, s(6400 + i * 1000))));
        clean.push(advert(Router::Fw2, s(9990)));
        clean.extend((0..3).map(|i| advert(Router::Fw1, s(10_000 + i * 1000))));
        assert_eq!(tenures(&clean, gap).len(), 3, "{:?}", tenures(&clean, gap));
        assert!(vmac_overlaps(&clean, gap, slack).is_empty());

        // Both advertising every second, half a second apart.
        let mut two: Vec<Frame> = (0..5).map(|i| advert(Router::Fw1, s(i * 1000))).collect();
        two.extend((0..5).map(|i| advert(Router::Fw2, s(500 + i * 1000))));
        let o = vmac_overlaps(&two, gap, slack);
        assert_eq!(o.len(), 1, "{o:?}");
        assert_ne!(o[0].0.router, o[0].1.router);

        // A single stray frame from the other port inside a tenure is a
        // two-master moment too, whatever crossing is allowed.
        let mut stray = clean.clone();
        stray.push(advert(Router::Fw2, s(1500)));
        assert_eq!(vmac_overlaps(&stray, gap, slack).len(), 1);
        assert_eq!(
            vmac_overlaps(&stray, gap, Duration::from_millis(5)).len(),
            1
        );

        // A preemption race: the old master's scheduled advert 2 ms after the
        // new master's first frame. Allowed as a crossing of 5 ms, not of 1.
        let mut race = clean.clone();
        race.push(advert(Router::Fw2, s(10_002)));
        assert!(vmac_overlaps(&race, gap, Duration::from_millis(5)).is_empty());
        assert_eq!(vmac_overlaps(&race, gap, Duration::from_millis(1)).len(), 1);
    }
}
