//! Tier 3: unicast peers (docs/protocol.md §1 "Unicast peers"). Both routers
//! list each other as `peers` on both VHIDs (`NodeParams::vhid_peers`) and
//! both switches drop every frame to 224.0.0.18 between their ports, as a
//! network without multicast would: the pair elects one master, fails over
//! and hands over only because its adverts go unicast. What goes on the wire
//! is read on the switch ports (`carp_tests::watch::Capture`).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use carp_tests::lab::{
    vmac, LabOptions, NodeParams, Router, Switch, CLIENT_IP, LAN_VHID, LAN_VIP, WAN_VHID,
};
use carp_tests::netns::require_root;
use carp_tests::pair::{in_netns, metric_value, serial, Pair};
use carp_tests::util::poll_until;
use carp_tests::watch::{arp_census, link_mac, Capture, Frame};
use carp_user::packet::FrameSender;
use carp_user::wire::{carp, frame};

const T_ELECT: Duration = Duration::from_secs(10);
const ARP_REQUESTS: usize = 5;
/// fw2's master-down interval: 3 × advbase + 100/256 s.
const MASTER_DOWN: Duration = Duration::from_millis(3391);

/// Drops IPv4 to 224.0.0.18 forwarded between the ports of both switches
/// (an nftables `bridge` table in each switch namespace); unicast passes.
fn block_the_group(pair: &Pair) {
    for sw in [Switch::Lan, Switch::Wan] {
        let script = "table bridge carp_no_group {\n\
                        chain forward {\n\
                          type filter hook forward priority 0; policy accept;\n\
                          ether type ip ip daddr 224.0.0.18 counter drop\n\
                        }\n\
                      }\n";
        let path = pair.dir.join(format!("no-group-{sw:?}.nft"));
        std::fs::write(&path, script).expect("writing the nft script");
        Pair::sh(pair.lab.switch(sw), &["nft", "-f", &path.to_string_lossy()]);
    }
}

/// fw1 (advskew 0) and fw2 (advskew 100) with unicast peers, the group
/// blocked before either starts; returns once fw1 is MASTER of both VHIDs
/// and fw2 has stayed BACKUP for longer than its master-down interval
/// (3.4 s): it hears fw1. (Checked failing with the peers left out: fw2
/// takes over.)
fn unicast_pair() -> Pair {
    let params = |advskew| NodeParams {
        vhid_peers: true,
        ..NodeParams::with_advskew(advskew)
    };
    let mut pair =
        Pair::new(LabOptions::default(), [params(0), params(100)]).expect("building the lab");
    block_the_group(&pair);
    pair.start_standard();
    std::thread::sleep(MASTER_DOWN + Duration::from_millis(500));
    pair.wait_roles(Router::Fw1, Duration::from_secs(1));
    pair
}

/// One CARP advert a router sent into a switch, as the switch port saw it.
#[derive(Debug)]
struct Advert {
    switch: Switch,
    router: Router,
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    ip_src: Ipv4Addr,
    ip_dst: Ipv4Addr,
    bow_out: bool,
}

fn adverts(frames: &[Frame]) -> Vec<Advert> {
    frames
        .iter()
        .filter(|f| f.kind().starts_with("advert"))
        .filter_map(|f| {
            let b = &f.bytes;
            let ip = |at: usize| {
                Some(Ipv4Addr::from(
                    <[u8; 4]>::try_from(b.get(at..at + 4)?).ok()?,
                ))
            };
            Some(Advert {
                switch: f.switch,
                router: f.router,
                eth_src: b.get(6..12)?.try_into().ok()?,
                eth_dst: b.get(0..6)?.try_into().ok()?,
                ip_src: ip(26)?,
                ip_dst: ip(30)?,
                bow_out: f.is_bow_out(),
            })
        })
        .collect()
}

/// The router's own address and MAC on the switch's link.
fn on_link(pair: &Pair, r: Router, sw: Switch) -> (Ipv4Addr, [u8; 6]) {
    let (ip, dev) = match sw {
        Switch::Lan => (r.lan_ip(), "lan0"),
        Switch::Wan => (r.wan_ip(), "wan0"),
    };
    let mac = link_mac(pair.lab.router(r).name(), dev).expect("router MAC");
    (ip, mac)
}

/// Every advert in `frames` came from `from`, unicast from its interface
/// MAC and own address to the other router's own address and MAC; none went
/// to the group; at least `min` per switch. Returns them.
fn assert_unicast_from(
    pair: &Pair,
    frames: &[Frame],
    from: Router,
    min: usize,
    what: &str,
) -> Vec<Advert> {
    let seen = adverts(frames);
    for sw in [Switch::Lan, Switch::Wan] {
        let (src_ip, src_mac) = on_link(pair, from, sw);
        let (dst_ip, dst_mac) = on_link(pair, from.other(), sw);
        let here: Vec<&Advert> = seen.iter().filter(|a| a.switch == sw).collect();
        assert!(
            here.len() >= min,
            "{what}: {} adverts on {sw:?}, expected at least {min}: {seen:#?}\n{}",
            here.len(),
            pair.logs()
        );
        for a in here {
            assert_eq!(
                a.router, from,
                "{what}: an advert from the wrong router: {a:?}"
            );
            assert_eq!(
                (a.ip_src, a.ip_dst, a.eth_src, a.eth_dst),
                (src_ip, dst_ip, src_mac, dst_mac),
                "{what}: not unicast from {}'s interface to {}'s on {sw:?}: {a:?}",
                from.name(),
                from.other().name()
            );
            assert!(a.eth_src != vmac(LAN_VHID) && a.eth_src != vmac(WAN_VHID));
        }
    }
    seen
}

fn assert_single_arp_answerer(pair: &Pair, master: Router, what: &str) {
    let census = arp_census(&pair.lab, LAN_VIP, ARP_REQUESTS, Duration::from_millis(50))
        .expect("ARP census on the LAN switch");
    if let Err(e) = census.check_single(master, vmac(LAN_VHID)) {
        panic!("{what}: {e}\n{}", pair.logs());
    }
}

fn capture_for(pair: &Pair, window: Duration) -> Vec<Frame> {
    let capture = Capture::start(&pair.lab).expect("capture on the switch ports");
    std::thread::sleep(window);
    capture.stop().expect("capture")
}

fn received(pair: &Pair, r: Router, result: &str) -> u64 {
    metric_value(
        &pair.metrics(r),
        &format!(
            "carp_adverts_received_total{{vhid=\"{LAN_VHID}\",interface=\"lan0\",result=\"{result}\"}}"
        ),
    )
}

/// `carp_transitions_total` summed over every series of both nodes.
fn transitions(pair: &Pair) -> u64 {
    Router::ALL
        .into_iter()
        .map(|r| pair.transitions(r).values().sum::<u64>())
        .sum()
}

/// With the group blocked: one master, adverts unicast on the wire, `kill -9`
/// of the master moves both VHIDs to the backup (whose adverts then go to the
/// dead node's address), the restarted node preempts back, and its SIGTERM
/// bow-out reaches the peer unicast (the peer takes over at once, not after
/// its master-down interval of 3.4 s).
#[test]
fn unicast_peers_elect_fail_over_and_bow_out_without_multicast() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = unicast_pair();
    assert_single_arp_answerer(&pair, Router::Fw1, "steady state");
    let frames = capture_for(&pair, Duration::from_millis(2500));
    assert_unicast_from(&pair, &frames, Router::Fw1, 2, "steady state");
    // A unicast advert is for a local address and protocol 112 has no
    // handler in the kernel: without a socket that takes it, each one would
    // be answered with ICMP protocol unreachable (`packet::UnicastSender`).
    let unreachable: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.kind() == "ip/1" && f.bytes.get(34..36) == Some(&[3, 2]))
        .collect();
    assert!(
        unreachable.is_empty(),
        "ICMP protocol unreachable sent for unicast adverts: {unreachable:?}"
    );
    for r in Router::ALL {
        assert_eq!(received(&pair, r, "not_peer"), 0, "{}", r.name());
        let m = pair.metrics(r);
        assert_eq!(
            metric_value(
                &m,
                &format!("carp_adverts_unexpected_source_mac_total{{vhid=\"{LAN_VHID}\",interface=\"lan0\"}}")
            ),
            0,
            "{}: a unicast advert from the interface MAC is not unexpected\n{m}",
            r.name()
        );
    }
    assert!(received(&pair, Router::Fw2, "ok") >= 2);

    // kill -9: fw2 hears nothing more and takes both VHIDs over.
    pair.node(Router::Fw1).kill9().unwrap();
    pair.node(Router::Fw1)
        .wait_exit(Duration::from_secs(2))
        .expect("fw1 exits on SIGKILL");
    for (vhid, within) in [(LAN_VHID, 6), (WAN_VHID, 2)] {
        assert!(
            pair.node(Router::Fw2)
                .wait_for_state(vhid, "MASTER", Duration::from_secs(within)),
            "fw2 never took VHID {vhid}\n{}",
            pair.logs()
        );
    }
    assert_single_arp_answerer(&pair, Router::Fw2, "after kill -9");
    let frames = capture_for(&pair, Duration::from_millis(2500));
    assert_unicast_from(&pair, &frames, Router::Fw2, 2, "after kill -9");

    // Back: fw1 restarts, hears fw2 unicast and preempts (it is better).
    pair.start(Router::Fw1);
    pair.wait_roles(Router::Fw1, T_ELECT);
    assert_single_arp_answerer(&pair, Router::Fw1, "after preempting back");

    // SIGTERM: three bow-out copies per VHID, unicast to fw2.
    let capture = Capture::start(&pair.lab).expect("capture on the switch ports");
    let t0 = Instant::now();
    pair.node(Router::Fw1).sigterm().unwrap();
    for vhid in pair.vhids() {
        assert!(
            pair.node(Router::Fw2)
                .wait_for_state(vhid, "MASTER", Duration::from_millis(1500)),
            "fw2 did not take VHID {vhid} on the bow-out within 1.5 s\n{}",
            pair.logs()
        );
    }
    eprintln!("bow-out handover after {:?}", t0.elapsed());
    let st = pair.node(Router::Fw1).wait_exit(Duration::from_secs(6));
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", pair.logs());
    let frames = capture.stop().expect("capture");
    let from_fw1: Vec<Advert> = adverts(&frames)
        .into_iter()
        .filter(|a| a.router == Router::Fw1)
        .collect();
    for sw in [Switch::Lan, Switch::Wan] {
        let (peer, _) = on_link(&pair, Router::Fw2, sw);
        let bows: Vec<&Advert> = from_fw1
            .iter()
            .filter(|a| a.switch == sw && a.bow_out)
            .collect();
        assert_eq!(
            bows.len(),
            3,
            "bow-out copies of fw1 on {sw:?}: {from_fw1:#?}"
        );
        assert!(bows.iter().all(|a| a.ip_dst == peer), "{bows:#?}");
    }
    assert!(
        adverts(&frames).iter().all(|a| !a.ip_dst.is_multicast()),
        "an advert to the group: {:#?}",
        adverts(&frames)
    );
}

/// Sends `frames` from the client's eth0, `rounds` times 100 ms apart.
fn inject_from_client(pair: &Pair, frames: Vec<Vec<u8>>, rounds: u32) {
    in_netns(pair.lab.client().name(), move || {
        let idx = nix::net::if_::if_nametoindex("eth0").expect("eth0 in the client");
        let tx = FrameSender::open(idx).expect("packet socket");
        for _ in 0..rounds {
            for f in &frames {
                tx.send(f).expect("send");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

/// An advert from the client, unicast to `to`'s LAN address and MAC.
fn from_client(pair: &Pair, to: Router, repr: &carp::Repr, id: u16) -> Vec<u8> {
    let (ip, mac) = on_link(pair, to, Switch::Lan);
    let client_mac = link_mac(pair.lab.client().name(), "eth0").expect("client MAC");
    let mut f = Vec::with_capacity(70);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&client_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&frame::advert_ipv4_packet(CLIENT_IP, ip, repr, id));
    f
}

/// A host on the LAN that is not a listed peer, knowing the password: its
/// unicast bow-out to the BACKUP (which would take over at once) and its
/// "better" advert to the MASTER (an equal interval: it would step back) are
/// refused as `not_peer` before the digest (a wrong password is `not_peer`
/// too, not `bad_digest`) and move nothing. Then a reload: a peer that is the
/// node's own address is refused; dropping the peers on the MASTER (back to
/// multicast, which the switches drop) is applied live, so the BACKUP stops
/// hearing it and takes over; giving them back is applied live too, and fw1
/// is heard again and wins.
#[test]
fn a_source_not_listed_is_refused_and_peers_reload_live() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = unicast_pair();
    let vips = [LAN_VIP];
    let bow_out = carp::Repr::bow_out(LAN_VHID, 42, b"secret", &vips, &[]);
    let better = carp::Repr::new_advert(LAN_VHID, 1, 0, 43, b"secret", &vips, &[]);
    let wrong = carp::Repr::new_advert(LAN_VHID, 1, 0, 44, b"wrong", &vips, &[]);
    let frames = vec![
        from_client(&pair, Router::Fw2, &bow_out, 1),
        from_client(&pair, Router::Fw1, &better, 2),
        from_client(&pair, Router::Fw1, &wrong, 3),
        from_client(&pair, Router::Fw2, &wrong, 4),
    ];
    let before = transitions(&pair);
    inject_from_client(&pair, frames, 20);
    std::thread::sleep(Duration::from_millis(300));
    pair.wait_roles(Router::Fw1, Duration::from_secs(1));
    assert_eq!(
        transitions(&pair),
        before,
        "adverts from a non-peer caused transitions\n{}",
        pair.logs()
    );
    for r in Router::ALL {
        let not_peer = received(&pair, r, "not_peer");
        assert!(
            not_peer >= 40,
            "{}: not_peer = {not_peer}\n{}",
            r.name(),
            pair.metrics(r)
        );
        assert_eq!(received(&pair, r, "bad_digest"), 0, "{}", r.name());
    }
    assert!(
        pair.node(Router::Fw2)
            .log()
            .contains("advert from a source that is not one of the VHID's peers ignored"),
        "{}",
        pair.logs()
    );
    assert_single_arp_answerer(&pair, Router::Fw1, "after the non-peer adverts");

    // A peer that is fw1's own address: refused, running config kept.
    let own = pair
        .lab
        .router_config(Router::Fw1, &pair.params[0])
        .replacen(
            &format!("peers = [\"{}\"]", Router::Fw2.lan_ip()),
            &format!("peers = [\"{}\"]", Router::Fw1.lan_ip()),
            1,
        );
    std::fs::write(pair.config_path(Router::Fw1), own).expect("writing the config");
    sighup_and_wait(&mut pair, Router::Fw1, "refused", 1);
    assert!(
        pair.node(Router::Fw1)
            .log()
            .contains("vhid[0].peers[0]: 10.77.0.11 is this node's own address on lan0"),
        "{}",
        pair.logs()
    );

    // Multicast again on fw1, live: its adverts now die on the switches.
    let multicast = NodeParams {
        vhid_peers: false,
        ..pair.params[0].clone()
    };
    pair.set_params(Router::Fw1, multicast).expect("config");
    sighup_and_wait(&mut pair, Router::Fw1, "applied", 1);
    assert!(
        pair.node(Router::Fw2)
            .wait_for_state(LAN_VHID, "MASTER", Duration::from_secs(6)),
        "fw2 still hears fw1 after fw1 went back to multicast\n{}",
        pair.logs()
    );
    // And unicast again: fw2 hears the better master and yields.
    let unicast = NodeParams {
        vhid_peers: true,
        ..pair.params[0].clone()
    };
    pair.set_params(Router::Fw1, unicast).expect("config");
    sighup_and_wait(&mut pair, Router::Fw1, "applied", 2);
    pair.wait_roles(Router::Fw1, T_ELECT);
    assert_single_arp_answerer(&pair, Router::Fw1, "after the peers came back");
}

/// Sends SIGHUP to `r` and waits until `carp_config_reloads_total{result}`
/// reaches `want`.
fn sighup_and_wait(pair: &mut Pair, r: Router, result: &str, want: u64) {
    pair.node(r)
        .sighup()
        .unwrap_or_else(|e| panic!("SIGHUP to {}: {e:#}", r.name()));
    let series = format!("carp_config_reloads_total{{result=\"{result}\"}}");
    let mut got = 0;
    let reached = poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
        got = metric_value(&pair.metrics(r), &series);
        got == want
    });
    assert!(
        reached,
        "{}: {series} is {got}, expected {want}\n{}",
        r.name(),
        pair.logs()
    );
}

/// A peer that `carp check` cannot judge (it needs the interface): one off
/// the VHID's link stops the start, before anything is attached, with the
/// field and the reason; nothing is left behind on the interface.
#[test]
fn a_peer_off_the_link_stops_the_start() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let params = NodeParams {
        vhid_peers: true,
        ..NodeParams::with_advskew(0)
    };
    let mut pair =
        Pair::new(LabOptions::default(), [params.clone(), params]).expect("building the lab");
    // The LAN VHID's peer set to fw2's WAN address: not on lan0's subnet.
    let text = pair
        .lab
        .router_config(Router::Fw1, &pair.params[0])
        .replacen(
            &format!("peers = [\"{}\"]", Router::Fw2.lan_ip()),
            &format!("peers = [\"{}\"]", Router::Fw2.wan_ip()),
            1,
        );
    std::fs::write(pair.config_path(Router::Fw1), text).expect("writing the config");
    pair.start(Router::Fw1);
    let st = pair.node(Router::Fw1).wait_exit(Duration::from_secs(10));
    assert!(st.is_some_and(|s| !s.success()), "{st:?}\n{}", pair.logs());
    let log = pair.node(Router::Fw1).log();
    assert!(
        log.contains("vhid[0].peers[0]: 10.88.0.12 is on none of lan0's subnets (10.77.0.11/24)"),
        "{log}"
    );
    let link = Pair::sh(
        pair.router_ns(Router::Fw1),
        &["ip", "link", "show", "dev", "lan0"],
    );
    assert!(
        !link.contains("xdp"),
        "XDP attached before the check:\n{link}"
    );
}
