//! Everything the controller asks of rtnetlink: interface facts (index, MAC,
//! own IPv4 address, driver kind, carrier), the VIP holder device and its
//! addresses, the NIC unicast filter (`bridge fdb add MAC dev IF self`), and a
//! stream of link state changes.
//!
//! Only this module speaks netlink; the rest of the controller sees plain
//! values (`LinkFacts`, `LinkEvent`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use futures::{channel::mpsc::UnboundedReceiver, StreamExt, TryStreamExt};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlag, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkFlag, LinkInfo, LinkMessage, State as OperState},
    neighbour::{NeighbourFlag, NeighbourState},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{AsyncSocket, SocketAddr};
use rtnetlink::{constants::RTMGRP_LINK, new_connection, Handle};

/// Errors of netlink requests, each naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("interface {0} not found")]
    NoSuchInterface(String),
    #[error("interface {0} has no IPv4 address of its own: the IPv4 advertisements of its VHIDs with IPv4 addresses or IPv4 peers need one as their source (docs/protocol.md §1; a VHID with only IPv6 addresses needs none)")]
    NoOwnAddress(String),
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("cannot create the VIP holder device {0}: neither a dummy nor a bridge could be created ({1})")]
    Holder(String, #[source] Box<rtnetlink::Error>),
}

/// What the controller needs to know about one CARP interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    /// `IFLA_INFO_KIND` ("veth", "bridge", "vlan", ...); `None` for a physical NIC.
    pub kind: Option<String>,
    /// Administratively up, carrier present and operstate up (or unknown but running).
    pub up: bool,
}

/// A notification from the RTMGRP_LINK multicast group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// RTM_NEWLINK: link `index` exists, named `name`, usable (`up`) or not.
    Changed {
        index: u32,
        name: Option<String>,
        up: bool,
    },
    /// RTM_DELLINK: link `index` is gone.
    Deleted { index: u32 },
    /// Notifications were lost (the socket's buffer overran, ENOBUFS): the
    /// link state must be read again (`crate::linkwatch`).
    Overrun,
}

/// Which holder device the controller uses for the VIPs, and whether it made it.
#[derive(Clone, Debug)]
pub struct Holder {
    pub name: String,
    pub index: u32,
    /// True when this controller created the device (and so deletes it on stop).
    pub created: bool,
}

/// Alias (`ip link set DEV alias ...`) of a holder device this controller created.
pub const HOLDER_ALIAS: &str = "carp: VIP holder (created by carp run)";

#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request {
        what,
        source: Box::new(source),
    }
}

/// errno of a kernel NACK, if the error is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

impl Netlink {
    /// Opens a request connection (its driver task runs on the current tokio runtime).
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Opens a second connection subscribed to link notifications and returns a
    /// receiver of `LinkEvent`s (only for changes of `up`, per index, are
    /// interesting; duplicates are possible and harmless). Lost notifications
    /// come as [`LinkEvent::Overrun`]; the receiver ends when the socket fails.
    pub fn link_events() -> Result<UnboundedReceiver<LinkEvent>, NetlinkError> {
        let (mut conn, _handle, mut messages) = new_connection().map_err(NetlinkError::Socket)?;
        conn.socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, RTMGRP_LINK))
            .map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        let (tx, rx) = futures::channel::mpsc::unbounded();
        tokio::spawn(async move {
            while let Some((msg, _)) = messages.next().await {
                let msg: NetlinkMessage<RouteNetlinkMessage> = msg;
                let ev = match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                        LinkEvent::Changed {
                            index: link.header.index,
                            name: link_name(&link),
                            up: link_is_up(&link),
                        }
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                        LinkEvent::Deleted {
                            index: link.header.index,
                        }
                    }
                    // netlink-proto turns ENOBUFS into an Overrun message.
                    NetlinkPayload::Overrun(_) => LinkEvent::Overrun,
                    _ => continue,
                };
                if tx.unbounded_send(ev).is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(req(format!("looking up interface {name}"))(e)),
        }
    }

    /// Name and usable state of link `index`, or `None` if there is none.
    pub async fn link_state(&self, index: u32) -> Result<Option<(String, bool)>, NetlinkError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(Some((
                link_name(&link).unwrap_or_default(),
                link_is_up(&link),
            ))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(req(format!("looking up interface {index}"))(e)),
        }
    }

    /// Index and usable state of the link named `name`, or `None`.
    pub async fn link_index(&self, name: &str) -> Result<Option<(u32, bool)>, NetlinkError> {
        Ok(self
            .link_by_name(name)
            .await?
            .map(|l| (l.header.index, link_is_up(&l))))
    }

    /// Facts about `name`, or `NoSuchInterface`.
    pub async fn link(&self, name: &str) -> Result<LinkFacts, NetlinkError> {
        let link = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchInterface(name.to_string()))?;
        let mut mac = [0u8; 6];
        let mut kind = None;
        for attr in &link.attributes {
            match attr {
                LinkAttribute::Address(a) if a.len() == 6 => mac.copy_from_slice(a),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            kind = Some(kind_name(k));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(LinkFacts {
            name: name.to_string(),
            index: link.header.index,
            mac,
            kind,
            up: link_is_up(&link),
        })
    }

    /// IPv4 addresses (with prefix length) configured on interface `index`.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        // IFA_LOCAL: on a point-to-point link IFA_ADDRESS is the far end.
        self.addresses(index, AddressFamily::Inet, |attr| match attr {
            AddressAttribute::Local(IpAddr::V4(a)) => Some(*a),
            _ => None,
        })
        .await
    }

    /// IPv6 addresses (with prefix length) configured on interface `index`,
    /// the link-local one included (tentative ones too: an advert's source
    /// needs no finished DAD).
    pub async fn ipv6_addresses(&self, index: u32) -> Result<Vec<(Ipv6Addr, u8)>, NetlinkError> {
        self.addresses(index, AddressFamily::Inet6, |attr| match attr {
            AddressAttribute::Address(IpAddr::V6(a)) => Some(*a),
            _ => None,
        })
        .await
    }

    /// The addresses of `family` on interface `index`, as `pick` finds them
    /// among each message's attributes, with their prefix lengths.
    async fn addresses<A>(
        &self,
        index: u32,
        family: AddressFamily,
        pick: impl Fn(&AddressAttribute) -> Option<A>,
    ) -> Result<Vec<(A, u8)>, NetlinkError> {
        let mut out = Vec::new();
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = addrs.try_next().await.map_err(req("listing addresses"))? {
            if msg.header.family != family || msg.header.index != index {
                continue;
            }
            out.extend(
                msg.attributes
                    .iter()
                    .filter_map(&pick)
                    .map(|a| (a, msg.header.prefix_len)),
            );
        }
        Ok(out)
    }

    /// The holder device for VIPs: an existing device of that name is used as is
    /// (`lo`, or one the operator made); otherwise a dummy is created, or, where
    /// the kernel has no dummy driver, a bridge with no ports (docs/design.md,
    /// "VIP holder device and sysctls").
    pub async fn ensure_holder(&self, name: &str) -> Result<Holder, NetlinkError> {
        if let Some(link) = self.link_by_name(name).await? {
            self.set_up(link.header.index, name).await?;
            // Ours from an earlier run that was killed before it could clean up:
            // the alias we set at creation says so, and this run deletes it on stop.
            let created = link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfAlias(s) if s == HOLDER_ALIAS));
            return Ok(Holder {
                name: name.to_string(),
                index: link.header.index,
                created,
            });
        }
        let dummy = self
            .handle
            .link()
            .add()
            .dummy(name.to_string())
            .execute()
            .await;
        if let Err(e) = dummy {
            tracing::debug!(error = %e, "no dummy driver, using a port-less bridge as VIP holder");
            self.handle
                .link()
                .add()
                .bridge(name.to_string())
                .execute()
                .await
                .map_err(|e| NetlinkError::Holder(name.to_string(), Box::new(e)))?;
        }
        let link = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchInterface(name.to_string()))?;
        let mut set = self.handle.link().set(link.header.index);
        set.message_mut()
            .attributes
            .push(LinkAttribute::IfAlias(HOLDER_ALIAS.to_string()));
        set.execute()
            .await
            .map_err(req(format!("marking {name} as the VIP holder")))?;
        self.set_up(link.header.index, name).await?;
        Ok(Holder {
            name: name.to_string(),
            index: link.header.index,
            created: true,
        })
    }

    async fn set_up(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(index)
            .up()
            .execute()
            .await
            .map_err(req(format!("setting {name} up")))
    }

    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        let mut link = self.handle.link();
        link.del(index)
            .execute()
            .await
            .map_err(req(format!("deleting link {index}")))
    }

    /// Adds `addr/prefix` to `index`; an address already there is adopted (a
    /// controller restarted after a crash finds its VIPs still present).
    pub async fn add_address(
        &self,
        index: u32,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(addr), prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(req(format!("adding {addr}/{prefix}"))(e)),
        }
    }

    /// Removes `addr/prefix` from `index`; an address already gone is fine.
    pub async fn remove_address(
        &self,
        index: u32,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL) | Some(libc::ENODEV)) => Ok(()),
            Err(e) => Err(req(format!("removing {addr}/{prefix}"))(e)),
        }
    }

    /// Adds the IPv6 VIP `addr` to `index` as a `/128` without duplicate
    /// address detection (`IFA_F_NODAD`): on the holder device, which has no
    /// wire, DAD could only delay the address (tentative addresses are not
    /// local), and the VIP is meant to exist on every node at once. An
    /// address already there is adopted, as in [`Self::add_address`].
    pub async fn add_address6(&self, index: u32, addr: Ipv6Addr) -> Result<(), NetlinkError> {
        let mut request = self.handle.address().add(index, IpAddr::V6(addr), 128);
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Flags(vec![AddressFlag::Nodad]));
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(req(format!("adding {addr}/128"))(e)),
        }
    }

    /// Removes the `/128` IPv6 VIP `addr` from `index`; an address already
    /// gone is fine.
    pub async fn remove_address6(&self, index: u32, addr: Ipv6Addr) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet6;
        msg.header.prefix_len = 128;
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V6(addr)));
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL) | Some(libc::ENODEV)) => Ok(()),
            Err(e) => Err(req(format!("removing {addr}/128"))(e)),
        }
    }

    /// `bridge fdb add MAC dev IF self permanent`: puts the virtual MAC in the
    /// NIC's unicast filter, so real NICs hand its frames to XDP (veth accepts
    /// everything anyway, which is why tests look at `bridge fdb show`).
    pub async fn add_unicast_filter(&self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let r = self
            .handle
            .neighbours()
            .add_bridge(index, &mac)
            .flags(vec![NeighbourFlag::Own])
            .state(NeighbourState::Permanent)
            .execute()
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(req(format!(
                "adding {} to the unicast filter of link {index}",
                fmt_mac(&mac)
            ))(e)),
        }
    }

    pub async fn remove_unicast_filter(
        &self,
        index: u32,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        let mut msg = netlink_packet_route::neighbour::NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.flags = vec![NeighbourFlag::Own];
        msg.header.state = NeighbourState::Permanent;
        msg.attributes.push(
            netlink_packet_route::neighbour::NeighbourAttribute::LinkLocalAddress(mac.to_vec()),
        );
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(()),
            Err(e) => Err(req(format!(
                "removing {} from the unicast filter",
                fmt_mac(&mac)
            ))(e)),
        }
    }
}

/// Usable = admin up, lower layer up, and operstate up (veth/physical) or
/// unknown-but-running (drivers that do not report operstate).
fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn link_is_up(link: &LinkMessage) -> bool {
    let flags = &link.header.flags;
    let admin = flags.contains(&LinkFlag::Up);
    let lower = flags.contains(&LinkFlag::LowerUp) || flags.contains(&LinkFlag::Running);
    let oper = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::OperState(s) => Some(*s),
        _ => None,
    });
    let oper_ok = match oper {
        Some(OperState::Up) => true,
        Some(OperState::Unknown) | None => flags.contains(&LinkFlag::Running),
        Some(_) => false,
    };
    admin && lower && oper_ok
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Other(s) => s.clone(),
        other => format!("{other:?}").to_lowercase(),
    }
}

pub fn fmt_mac(mac: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// Where a controller whose control socket is `control_socket` keeps the
/// original values of the sysctls it changes: next to the socket (so one per
/// controller, as the sockets are), `<control_socket>.sysctl`, e.g.
/// `/run/carp/fw1.sock.sysctl`.
pub fn sysctl_state_path(control_socket: &std::path::Path) -> std::path::PathBuf {
    let mut name = control_socket.as_os_str().to_owned();
    name.push(".sysctl");
    std::path::PathBuf::from(name)
}

/// The IPv4 sysctls the controller changes, and their original values, put
/// back on stop (docs/design.md, "VIP holder device and sysctls"):
///
/// - on every CARP interface `arp_ignore=1` and `arp_announce=2`;
/// - node-wide, `net.ipv4.conf.all.arp_ignore` at least 1 and
///   `all.arp_announce` at least 2 ([`SysctlGuard::restrict_arp_everywhere`]).
///
/// With a state file ([`SysctlGuard::persistent`]) the originals survive a
/// `kill -9`: each one is written to the file (atomically, by rename) before
/// the value is changed, the file is removed after an orderly restore, and a
/// controller that finds a file at start takes its values as the originals
/// (they are what the system had before the killed run changed it; what it
/// reads now is that run's doing).
pub struct SysctlGuard {
    /// (path under `/proc/sys`, original value), in the order first changed.
    saved: Vec<(String, String)>,
    state_file: Option<PathBuf>,
}

/// First line of a state file (informational; lines starting with `#` are skipped).
const STATE_HEADER: &str =
    "# carp run: original sysctl values, restored and removed on an orderly stop\n";

impl SysctlGuard {
    /// A guard that keeps the originals in memory only.
    pub fn new() -> Self {
        Self {
            saved: Vec::new(),
            state_file: None,
        }
    }

    /// A guard whose originals are kept in `state_file` too (see the type's
    /// docs). A file left by an earlier run is adopted: its values are the
    /// originals. Lines that do not parse, or that name anything outside
    /// `/proc/sys/net/`, are ignored with a warning (the file is root's, but
    /// a root process must not write where a stray file tells it to).
    pub fn persistent(state_file: PathBuf) -> std::io::Result<Self> {
        Self::persistent_under(state_file, "/proc/sys/net/")
    }

    /// [`SysctlGuard::persistent`], accepting only entries under `root` (tests
    /// use a directory of their own).
    fn persistent_under(state_file: PathBuf, root: &str) -> std::io::Result<Self> {
        let saved = match std::fs::read_to_string(&state_file) {
            Ok(text) => parse_state(&text, &state_file, root),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        if !saved.is_empty() {
            tracing::warn!(file = %state_file.display(), entries = saved.len(),
                "an earlier run did not stop in order: its sysctls' original values are restored at stop");
        }
        Ok(Self {
            saved,
            state_file: Some(state_file),
        })
    }

    /// The originals as recorded (path, value), in the order first changed.
    pub fn saved(&self) -> &[(String, String)] {
        &self.saved
    }

    /// Sets `net.ipv4.conf.IF.KEY = value`, remembering the original once.
    pub fn set_ipv4_conf(&mut self, ifname: &str, key: &str, value: &str) -> std::io::Result<()> {
        self.change(conf_path(ifname, key), |_| Some(value.to_string()))
    }

    /// Raises `net.ipv4.conf.IF.KEY` to `min` if it is lower (a higher
    /// value, e.g. an operator's `arp_ignore=2`, is stricter and kept).
    pub fn raise_ipv4_conf(&mut self, ifname: &str, key: &str, min: u32) -> std::io::Result<()> {
        self.change(conf_path(ifname, key), |old| match old.parse::<u32>() {
            Ok(v) if v >= min => None,
            _ => Some(min.to_string()),
        })
    }

    /// `net.ipv4.conf.all.arp_ignore` ≥ 1 and `all.arp_announce` ≥ 2. The
    /// kernel applies the larger of `all` and the receiving interface's own
    /// value for both (ip-sysctl.rst), so this one pair covers every
    /// interface, those that appear or get an address later included: the
    /// kernel answers ARP only for addresses of the interface a request came
    /// in on, never for a VIP (a `/32` on the holder device) on the sync link
    /// or a management interface, and never uses a VIP as the sender of its
    /// own requests.
    pub fn restrict_arp_everywhere(&mut self) -> std::io::Result<()> {
        self.raise_ipv4_conf("all", "arp_ignore", 1)?;
        self.raise_ipv4_conf("all", "arp_announce", 2)
    }

    /// Writes `new(current)` to `path` unless it is `None`; the original is
    /// recorded (and persisted) before the first change of `path`.
    fn change(
        &mut self,
        path: String,
        new: impl FnOnce(&str) -> Option<String>,
    ) -> std::io::Result<()> {
        let old = std::fs::read_to_string(&path)?.trim().to_string();
        let Some(value) = new(&old) else {
            return Ok(());
        };
        if !self.saved.iter().any(|(p, _)| p == &path) {
            self.saved.push((path.clone(), old));
            if let Err(e) = self.persist() {
                self.saved.pop();
                return Err(e);
            }
        }
        std::fs::write(&path, value)
    }

    /// Writes the state file atomically: a temporary file in the same
    /// directory, synced, then renamed over the old one.
    fn persist(&self) -> std::io::Result<()> {
        let Some(file) = &self.state_file else {
            return Ok(());
        };
        let mut text = String::from(STATE_HEADER);
        for (path, value) in &self.saved {
            text.push_str(&format!("{path} {value}\n"));
        }
        crate::statefile::write_atomically(file, text.as_bytes())
    }

    /// Puts every value back (best effort: an interface may have gone), then
    /// removes the state file.
    pub fn restore(&mut self) {
        for (path, old) in self.saved.drain(..).rev() {
            if let Err(e) = std::fs::write(&path, &old) {
                tracing::warn!(%path, error = %e, "could not restore sysctl");
            }
        }
        if let Some(file) = &self.state_file {
            match std::fs::remove_file(file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "could not remove the sysctl state file")
                }
            }
        }
    }
}

fn conf_path(ifname: &str, key: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{ifname}/{key}")
}

/// The entries of a state file: `PATH VALUE` per line, `#` lines skipped.
fn parse_state(text: &str, file: &std::path::Path, root: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = line.split_once(' ').filter(|(path, value)| {
            path.starts_with(root)
                && !path.contains("..")
                && !value.is_empty()
                && value
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'-' || b == b' ' || b == b'\t')
        });
        match entry {
            Some((path, value)) if !out.iter().any(|(p, _)| p == path) => {
                out.push((path.to_string(), value.to_string()))
            }
            Some(_) => {}
            None => {
                tracing::warn!(file = %file.display(), %line, "ignoring a line of the sysctl state file")
            }
        }
    }
    out
}

impl Default for SysctlGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SysctlGuard {
    /// A start that fails half-way still puts the sysctls back.
    fn drop(&mut self) {
        self.restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_path_is_next_to_the_control_socket() {
        assert_eq!(
            sysctl_state_path(std::path::Path::new("/run/carp/fw1.sock")),
            PathBuf::from("/run/carp/fw1.sock.sysctl")
        );
    }

    #[test]
    fn state_file_parses_what_persist_writes_and_refuses_the_rest() {
        let text = format!(
            "{STATE_HEADER}/proc/sys/net/ipv4/conf/lan0/arp_ignore 0\n\
             /proc/sys/net/ipv4/conf/all/arp_announce 1\n\
             /proc/sys/net/ipv4/conf/lan0/arp_ignore 1\n\
             /etc/passwd 0\n\
             /proc/sys/net/../kernel/x 1\n\
             /proc/sys/net/ipv4/conf/x/y evil\n\
             garbage\n"
        );
        let got = parse_state(&text, std::path::Path::new("f"), "/proc/sys/net/");
        assert_eq!(
            got,
            vec![
                (
                    "/proc/sys/net/ipv4/conf/lan0/arp_ignore".to_string(),
                    "0".to_string()
                ),
                (
                    "/proc/sys/net/ipv4/conf/all/arp_announce".to_string(),
                    "1".to_string()
                ),
            ]
        );
    }

    /// The guard's life on ordinary files standing in for /proc/sys: the
    /// original reaches the state file before the first change, the guard of
    /// a restarted controller adopts it, and an orderly restore puts it back
    /// and removes the file.
    #[test]
    fn originals_survive_a_guard_that_never_restores() {
        let dir = std::env::temp_dir().join(format!("carp-sysctl-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = format!("{}/", dir.display());
        let knob = dir.join("knob");
        let knob_s = knob.to_string_lossy().into_owned();
        let state = dir.join("s.sock.sysctl");
        let set1 = |_: &str| Some("1".to_string());
        std::fs::write(&knob, "0\n").unwrap();

        let mut g = SysctlGuard::persistent_under(state.clone(), &root).unwrap();
        g.change(knob_s.clone(), set1).unwrap();
        g.change(knob_s.clone(), set1).unwrap();
        assert_eq!(std::fs::read_to_string(&knob).unwrap(), "1");
        let text = std::fs::read_to_string(&state).unwrap();
        assert_eq!(text, format!("{STATE_HEADER}{knob_s} 0\n"));
        // kill -9: no restore, no Drop.
        std::mem::forget(g);

        // The restarted controller: the file's 0 is the original, not the 1 it reads.
        let mut g = SysctlGuard::persistent_under(state.clone(), &root).unwrap();
        assert_eq!(g.saved(), &[(knob_s.clone(), "0".to_string())]);
        g.change(knob_s.clone(), set1).unwrap();
        assert_eq!(g.saved(), &[(knob_s.clone(), "0".to_string())]);
        g.restore();
        assert_eq!(std::fs::read_to_string(&knob).unwrap(), "0");
        assert!(!state.exists());

        // A value that needs no change is neither recorded nor persisted.
        std::fs::write(&knob, "2\n").unwrap();
        let mut g = SysctlGuard::persistent_under(state.clone(), &root).unwrap();
        g.change(knob_s.clone(), |old| {
            (old.parse::<u32>().unwrap() < 1).then(|| "1".to_string())
        })
        .unwrap();
        assert!(g.saved().is_empty());
        assert!(!state.exists());
        drop(g);
        assert_eq!(std::fs::read_to_string(&knob).unwrap(), "2\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
