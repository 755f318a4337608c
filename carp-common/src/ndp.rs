//! IPv6 neighbour discovery (RFC 4861) as far as a VIP needs it: the
//! constants the data path checks a Neighbor Solicitation against, and the
//! Neighbor Advertisement that speaks for a VIP.
//!
//! The advertisement is built here, once, for both senders: `carp_xdp`
//! answers a solicitation with it in place (`XDP_TX`), and the controller
//! announces a takeover with it (unsolicited, to all-nodes). Both then send
//! the same bytes for the same facts, and one golden-bytes test on the user
//! side pins them; the tier-2 tests build their expectation independently.

/// IPv6 next header of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 type of a Neighbor Solicitation.
pub const NS_TYPE: u8 = 135;
/// ICMPv6 type of a Neighbor Advertisement.
pub const NA_TYPE: u8 = 136;
/// Hop limit of every NDP message (RFC 4861 §7.1): a receiver discards
/// anything else, which was routed, not sent on the link.
pub const NDP_HOP_LIMIT: u8 = 255;
/// Shortest valid Neighbor Solicitation: type, code, checksum, reserved,
/// target (RFC 4861 §4.3, §7.1.1 "ICMP length ... is 24 or more octets").
pub const NS_MIN_LEN: usize = 24;
/// Length of the advertisement [`neighbor_advert`] builds: the fixed 24
/// bytes and one Target Link-Layer Address option (8 bytes).
pub const NA_LEN: usize = 32;

/// Router flag of a Neighbor Advertisement (first byte after the checksum):
/// a VIP is a router's address (the default gateway of its segment), and a
/// host that sees R=0 from its router drops it from its router list
/// (RFC 4861 §7.2.5).
pub const NA_ROUTER: u8 = 0x80;
/// Solicited flag: this answers a solicitation sent to us. Never set on an
/// answer to duplicate address detection or on an unsolicited one.
pub const NA_SOLICITED: u8 = 0x40;
/// Override flag: replace the link-layer address the receiver has cached
/// (what makes a takeover's announcement move the neighbours to the new
/// MASTER's virtual MAC, which is the same MAC anyway).
pub const NA_OVERRIDE: u8 = 0x20;

/// `ff02::1`, the link-local all-nodes group: where an answer to duplicate
/// address detection and an unsolicited advertisement go.
pub const ALL_NODES: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// The Ethernet address of [`ALL_NODES`] (`33:33` and the group's last 32
/// bits, RFC 2464 §7).
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// The ICMPv6 Neighbor Advertisement (RFC 4861 §4.4) from `src` to `dst`
/// for `target`, with `flags` ([`NA_ROUTER`], [`NA_SOLICITED`],
/// [`NA_OVERRIDE`]) and a Target Link-Layer Address option carrying `tlla`,
/// checksum included (RFC 4443 §2.3: over the IPv6 pseudo-header). The
/// IPv6 header around it has next header [`IPPROTO_ICMPV6`], payload length
/// [`NA_LEN`] and hop limit [`NDP_HOP_LIMIT`].
///
/// Straight-line code over fixed sizes, so the verifier sees no loop.
#[inline(always)]
pub fn neighbor_advert(
    src: &[u8; 16],
    dst: &[u8; 16],
    target: &[u8; 16],
    tlla: [u8; 6],
    flags: u8,
) -> [u8; NA_LEN] {
    let mut m = [0u8; NA_LEN];
    m[0] = NA_TYPE;
    m[4] = flags;
    let mut i = 0;
    while i < 16 {
        m[8 + i] = target[i];
        i += 1;
    }
    // Option type 2 (Target Link-Layer Address), length 1 (in 8-byte units).
    m[24] = 2;
    m[25] = 1;
    let mut i = 0;
    while i < 6 {
        m[26 + i] = tlla[i];
        i += 1;
    }
    // Pseudo-header: source, destination, upper-layer length (32-bit),
    // three zero bytes and the next header; then the message (checksum 0).
    let mut sum = sum16(src) + sum16(dst) + NA_LEN as u32 + IPPROTO_ICMPV6 as u32;
    let mut i = 0;
    while i < NA_LEN {
        sum += u32::from(u16::from_be_bytes([m[i], m[i + 1]]));
        i += 2;
    }
    // At most 8 + 8 + 16 words of 0xffff plus 90: fits in 22 bits, so two
    // folds are enough.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let check = !(sum as u16);
    m[2..4].copy_from_slice(&check.to_be_bytes());
    m
}

/// Sum of the eight big-endian 16-bit words of an IPv6 address.
#[inline(always)]
fn sum16(a: &[u8; 16]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 16 {
        sum += u32::from(u16::from_be_bytes([a[i], a[i + 1]]));
        i += 2;
    }
    sum
}

/// Whether `addr` is the unspecified address `::`, the source of a
/// solicitation sent for duplicate address detection (RFC 4862 §5.4.2).
#[inline(always)]
pub fn is_unspecified(addr: &[u8; 16]) -> bool {
    u128::from_ne_bytes(*addr) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 sum over a byte string (even length), for checking.
    fn fold(bytes: &[u8]) -> u16 {
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn advert_checksum_verifies_over_the_pseudo_header() {
        let src = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64];
        let dst = [0xff; 16];
        let na = neighbor_advert(&src, &dst, &src, [0, 0, 0x5e, 0, 1, 7], NA_OVERRIDE);
        let mut pseudo = [0u8; 40 + NA_LEN];
        pseudo[..16].copy_from_slice(&src);
        pseudo[16..32].copy_from_slice(&dst);
        pseudo[32..36].copy_from_slice(&(NA_LEN as u32).to_be_bytes());
        pseudo[39] = IPPROTO_ICMPV6;
        pseudo[40..].copy_from_slice(&na);
        assert_eq!(fold(&pseudo), 0xffff);
        assert_eq!(&na[..2], &[136, 0]);
        assert_eq!(&na[4..8], &[0x20, 0, 0, 0]);
        assert_eq!(&na[24..], &[2, 1, 0, 0, 0x5e, 0, 1, 7]);
        assert!(is_unspecified(&[0; 16]) && !is_unspecified(&src));
    }
}
