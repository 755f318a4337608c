//! Everything the controller asks of rtnetlink: interface facts (index, MAC,
//! own IPv4 address, driver kind, carrier), the VIP holder device and its
//! addresses, the NIC unicast filter (`bridge fdb add MAC dev IF self`), and a
//! stream of link state changes.
//!
//! Only this module speaks netlink; the rest of the controller sees plain
//! values (`LinkFacts`, `LinkEvent`).

use std::net::{IpAddr, Ipv4Addr};

use futures::{channel::mpsc::UnboundedReceiver, StreamExt, TryStreamExt};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
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
    #[error("interface {0} has no IPv4 address of its own: CARP advertisements need one as their source (docs/protocol.md §1)")]
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

/// A change of a link's usable state, from the RTMGRP_LINK multicast group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkEvent {
    pub index: u32,
    pub up: bool,
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
    /// interesting; duplicates are possible and harmless).
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
                if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) =
                    msg.payload
                {
                    let ev = LinkEvent {
                        index: link.header.index,
                        up: link_is_up(&link),
                    };
                    if tx.unbounded_send(ev).is_err() {
                        break;
                    }
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
        let mut out = Vec::new();
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = addrs.try_next().await.map_err(req("listing addresses"))? {
            if msg.header.family != AddressFamily::Inet || msg.header.index != index {
                continue;
            }
            for attr in &msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(a)) = attr {
                    out.push((*a, msg.header.prefix_len));
                }
            }
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

/// Per-interface IPv4 sysctls the controller sets (`arp_ignore=1`,
/// `arp_announce=2`, so the kernel never answers ARP for a VIP: XDP is the only
/// answerer) and restores on stop.
pub struct SysctlGuard {
    saved: Vec<(String, String)>,
}

impl SysctlGuard {
    pub fn new() -> Self {
        Self { saved: Vec::new() }
    }

    /// Sets `net.ipv4.conf.IF.KEY = value`, remembering the old value once.
    pub fn set_ipv4_conf(&mut self, ifname: &str, key: &str, value: &str) -> std::io::Result<()> {
        let path = format!("/proc/sys/net/ipv4/conf/{ifname}/{key}");
        let old = std::fs::read_to_string(&path)?.trim().to_string();
        std::fs::write(&path, value)?;
        if !self.saved.iter().any(|(p, _)| p == &path) {
            self.saved.push((path, old));
        }
        Ok(())
    }

    /// Puts every value back (best effort: an interface may have gone).
    pub fn restore(&mut self) {
        for (path, old) in self.saved.drain(..).rev() {
            if let Err(e) = std::fs::write(&path, &old) {
                tracing::warn!(%path, error = %e, "could not restore sysctl");
            }
        }
    }
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
