//! Sockets the controller sends with and the multicast membership it holds.
//!
//! Advertisements and gratuitous ARP leave through an `AF_PACKET` socket as
//! whole Ethernet frames, so their source is the virtual MAC and switches learn
//! where the VIP lives (docs/protocol.md §3). The socket uses protocol 0, so the kernel
//! never queues received frames on it: receiving is XDP's job (ring buffer).
//! Adverts of a VHID with unicast peers leave through [`UnicastSender`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

/// 224.0.0.18 and ff02::12, defined once in carp-common.
pub use carp_common::{CARP_GROUP_V4, CARP_GROUP_V6};

/// An `AF_PACKET`/`SOCK_RAW` socket bound to one interface, send-only.
pub struct FrameSender {
    fd: OwnedFd,
    ifindex: u32,
}

impl FrameSender {
    pub fn open(ifindex: u32) -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = 0;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, ifindex })
    }

    /// Sends one complete Ethernet frame (destination MAC first).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex as i32;
        sll.sll_halen = 6;
        let n = frame.len().min(6);
        sll.sll_addr[..n].copy_from_slice(&frame[..n]);
        // SAFETY: the buffer and address are valid for the lengths passed.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A raw protocol-112 socket of `domain` bound to `ifname`, for sending
/// only: `configure` sets what the family needs.
fn raw_send_socket(
    domain: Domain,
    ifname: &str,
    configure: impl FnOnce(&Socket) -> io::Result<()>,
) -> io::Result<Socket> {
    let socket = Socket::new(
        domain,
        Type::RAW,
        Some(Protocol::from(i32::from(carp_common::IPPROTO_CARP))),
    )?;
    // The filter first, so that hardly anything is queued before it: a
    // classic BPF program of one instruction, "return 0" (keep no byte).
    socket.attach_filter(&[libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }])?;
    configure(&socket)?;
    socket.bind_device(Some(ifname.as_bytes()))?;
    // Never block the election's thread (the packet socket uses MSG_DONTWAIT).
    socket.set_nonblocking(true)?;
    // What came in before the filter (on any interface) is dropped here.
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
    while socket.recv(&mut buf).is_ok() {}
    Ok(socket)
}

/// Sends advertisements to unicast peers (docs/protocol.md §1 "Unicast
/// peers"): a raw IPv4 socket of protocol 112, bound to one interface, that
/// takes whole IPv4 packets (`IP_HDRINCL`: the header is ours, as in the
/// multicast frame, but for the destination).
///
/// Why a raw IP socket and not the packet socket with a resolved MAC: the
/// kernel resolves the peer's MAC (ARP, retries, a changed peer) and puts the
/// interface MAC as Ethernet source. That is what FreeBSD's unicast CARP does
/// too (`carp_output` sets the virtual MAC only for a multicast
/// `sc_carpaddr`), and what a cloud network lets through (its anti-spoofing
/// drops frames from a MAC that is not the vNIC's). The cost: the packets pass
/// the host firewall's output hook, and switches learn the virtual MAC from
/// gratuitous ARP, ARP replies and VIP traffic only, not from adverts.
///
/// Receiving is XDP's job, but the socket still matters for received unicast
/// adverts: the kernel answers a packet for a local address whose protocol no
/// socket takes with ICMP "protocol unreachable", once per advert. A raw
/// socket of protocol 112 on the interface takes them; a socket filter that
/// accepts nothing keeps its queue empty.
pub struct UnicastSender {
    socket: Socket,
}

impl UnicastSender {
    pub fn open(ifname: &str) -> io::Result<Self> {
        let socket = raw_send_socket(Domain::IPV4, ifname, |s| s.set_header_included_v4(true))?;
        Ok(Self { socket })
    }

    /// Sends one IPv4 packet (header included) to `peer`.
    pub fn send(&self, packet: &[u8], peer: std::net::Ipv4Addr) -> io::Result<()> {
        let to = std::net::SocketAddrV4::new(peer, 0);
        self.socket.send_to(packet, &to.into()).map(|_| ())
    }
}

/// Sends IPv6 advertisements to unicast peers (docs/protocol.md §1 "Unicast
/// peers"): a raw IPv6 socket of protocol 112 bound to one interface. IPv6
/// raw sockets take no header (there is no `IP_HDRINCL`), so the kernel
/// builds it: hop limit 255 through `IPV6_UNICAST_HOPS` (the receiver's XDP
/// drops anything else), the source address per packet through
/// `IPV6_PKTINFO` (the one the peer lists for us, `advert_plan`), the peer's
/// MAC through neighbour discovery. The CARP checksum covers the CARP header
/// only, so the kernel's raw-socket checksum (`IPV6_CHECKSUM`) stays off.
/// Like [`UnicastSender`], its socket also keeps the kernel from answering
/// received unicast adverts with ICMPv6 "unrecognized next header"; a socket
/// filter that accepts nothing keeps its queue empty.
pub struct UnicastSender6 {
    socket: Socket,
    ifindex: u32,
}

impl UnicastSender6 {
    pub fn open(ifname: &str, ifindex: u32) -> io::Result<Self> {
        let socket = raw_send_socket(Domain::IPV6, ifname, |s| s.set_unicast_hops_v6(255))?;
        Ok(Self { socket, ifindex })
    }

    /// Sends one CARP header (`payload`, no IP header) from `src` to `peer`.
    pub fn send(
        &self,
        payload: &[u8],
        src: std::net::Ipv6Addr,
        peer: std::net::Ipv6Addr,
    ) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_in6 / in6_pktinfo / cmsg buffer are valid
        // values of these plain C types.
        let mut to: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        to.sin6_family = libc::AF_INET6 as u16;
        to.sin6_addr.s6_addr = peer.octets();
        // A link-local peer is on this interface (peers.rs); a global one
        // ignores the scope.
        to.sin6_scope_id = self.ifindex;
        let mut info: libc::in6_pktinfo = unsafe { std::mem::zeroed() };
        info.ipi6_addr.s6_addr = src.octets();
        info.ipi6_ifindex = self.ifindex;
        const INFO_LEN: usize = std::mem::size_of::<libc::in6_pktinfo>();
        // Room for one control message holding an in6_pktinfo, aligned.
        let mut control = [0u64; 8];
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(INFO_LEN as u32) } as usize;
        assert!(space <= std::mem::size_of_val(&control));
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut to as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` bytes, enough for one
        // header and an in6_pktinfo (asserted), so the first header and its
        // data are in the buffer.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
            (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
            (*cmsg).cmsg_len = libc::CMSG_LEN(INFO_LEN as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>(), info);
        }
        // SAFETY: every pointer in msg is valid for the call.
        let r = unsafe { libc::sendmsg(self.socket.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Membership of 224.0.0.18 and ff02::12 on one interface, each held by an
/// otherwise idle socket: it makes the NIC's multicast filter pass CARP
/// frames to XDP and shows in `ip maddr`. Dropping it leaves the groups.
/// FreeBSD joins `ff02::12` on every CARP interface with IPv6 addresses
/// (`carp_multicast_setup`); here on every CARP interface, so that a peer's
/// IPv6 adverts reach XDP whatever this node's VIPs.
pub struct GroupMembership {
    _socket: Socket,
    /// The `ff02::12` membership, or why it could not be had (IPv6
    /// disabled on the interface): only IPv4 adverts are heard then.
    v6: Result<Socket, io::Error>,
}

impl GroupMembership {
    /// Joins 224.0.0.18 (an error is returned) and `ff02::12` (an error is
    /// kept, see [`GroupMembership::v6_error`]).
    pub fn join(ifindex: u32) -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.join_multicast_v4_n(&CARP_GROUP_V4, &InterfaceIndexOrAddress::Index(ifindex))?;
        let v6 = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).and_then(|s| {
            s.join_multicast_v6(&CARP_GROUP_V6, ifindex)?;
            Ok(s)
        });
        Ok(Self {
            _socket: socket,
            v6,
        })
    }

    /// Why `ff02::12` could not be joined, if it could not.
    pub fn v6_error(&self) -> Option<&io::Error> {
        self.v6.as_ref().err()
    }
}
