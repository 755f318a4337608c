//! Byte formats, with no I/O and no panics on any input.
//!
//! Two layers, as in smoltcp (`src/wire/igmp.rs`): a [`carp::Packet`] view over
//! the bytes whose accessors cannot go out of bounds once `new_checked` has
//! accepted the length, and a validated [`carp::Repr`] whose `parse`/`emit`
//! round-trip. [`frame`] wraps the 36-byte CARP payload in the Ethernet and IPv4
//! headers the sender puts on the wire (raw `AF_PACKET` socket) and builds the
//! gratuitous ARP sent on takeover; the Ethernet/IPv4/ARP headers themselves come
//! from `etherparse` rather than being written again here. [`ndp`] builds the
//! unsolicited neighbour advertisement for an IPv6 VIP. [`advert6`] wraps the
//! same CARP payload in IPv6 to `ff02::12`, for VHIDs with IPv6 VIPs.
pub mod advert6;
pub mod carp;
pub mod frame;
pub mod ndp;
pub mod sync;
