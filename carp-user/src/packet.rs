//! Sockets the controller sends with and the multicast membership it holds.
//!
//! Advertisements and gratuitous ARP leave through an `AF_PACKET` socket as
//! whole Ethernet frames, so their source is the virtual MAC and switches learn
//! where the VIP lives (docs/protocol.md §3). The socket uses protocol 0, so the kernel
//! never queues received frames on it: receiving is XDP's job (ring buffer).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

/// 224.0.0.18, defined once in carp-common.
pub use carp_common::CARP_GROUP_V4;

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

/// Membership of 224.0.0.18 on one interface, held by an otherwise idle
/// socket: it makes the NIC's multicast filter pass CARP frames to XDP and
/// shows in `ip maddr`. Dropping it leaves the group.
pub struct GroupMembership {
    _socket: Socket,
}

impl GroupMembership {
    pub fn join(ifindex: u32) -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.join_multicast_v4_n(&CARP_GROUP_V4, &InterfaceIndexOrAddress::Index(ifindex))?;
        Ok(Self { _socket: socket })
    }
}
