//! CARP advertisement decoder (`wire::carp`): any byte string either fails
//! to parse with an error or parses to a `Repr`; whatever parses re-emits to
//! the same 36 header bytes (the checksum may only move between its two
//! ones'-complement zeros, 0x0000 and 0xffff, both of which verify) and
//! parses back to the same `Repr`. The raw input is also re-checksummed so
//! the fuzzer gets past the checksum to the field checks.
#![no_main]

use carp_user::wire::carp::{Packet, Repr, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= HEADER_LEN {
        let mut fixed = data.to_vec();
        if let Ok(mut p) = Packet::new_checked(&mut fixed[..]) {
            p.fill_checksum();
        }
        check(&fixed);
    }
});

fn check(data: &[u8]) {
    let Ok(packet) = Packet::new_checked(data) else {
        assert!(data.len() < HEADER_LEN);
        assert!(Repr::parse_bytes(data).is_err());
        return;
    };
    // Every accessor is total on a checked packet.
    let _ = (
        packet.version(),
        packet.msg_type(),
        packet.vhid(),
        packet.advskew(),
        packet.authlen(),
        packet.demote(),
        packet.advbase(),
        packet.checksum(),
        packet.counter(),
        packet.digest(),
    );
    let Ok(repr) = Repr::parse(&packet) else {
        return;
    };
    assert_eq!(Repr::parse_bytes(data), Ok(repr));
    assert_ne!(repr.vhid, 0);
    let again = repr.to_bytes();
    assert_eq!(again.len(), repr.buffer_len());
    let original = packet.as_bytes();
    assert_eq!(again[..6], original[..6]);
    assert_eq!(again[8..], original[8..]);
    let (a, b) = (packet.checksum(), u16::from_be_bytes([again[6], again[7]]));
    assert!(
        a == b || (a | b == 0xffff && a & b == 0),
        "checksum {a:#06x} re-emitted as {b:#06x}"
    );
    assert_eq!(Repr::parse_bytes(&again), Ok(repr));
    // Emitting into a longer buffer leaves the bytes past the header alone.
    let mut long = vec![0xa5u8; HEADER_LEN + 4];
    let mut p = Packet::new_checked(&mut long[..]).expect("long enough");
    repr.emit(&mut p);
    assert_eq!(long[..HEADER_LEN], again);
    assert_eq!(long[HEADER_LEN..], [0xa5; 4]);
}
