//! Sync frame parser, past the tag: the input is re-signed with a fixed key
//! (version, flags and length fixed up too) so the fuzzer explores the
//! subheader and record parser. The raw input is parsed as well, for the
//! header checks. Whatever parses must re-emit to bytes that parse to the
//! same frame, no longer than the input.
#![no_main]

use carp_user::wire::sync::{
    peek_header, FrameRepr, Packet, MAX_FRAME_LEN, MIN_FRAME_LEN, SYNC_VERSION,
};
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"fuzz-key";

fuzz_target!(|data: &[u8]| {
    let _ = peek_header(data);
    let _ = FrameRepr::parse(data, KEY);

    if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&data.len()) {
        return;
    }
    let mut f = data.to_vec();
    resign(&mut f);
    if let Ok(repr) = FrameRepr::parse(&f, KEY) {
        let again = repr.to_bytes(KEY).expect("a parsed frame re-emits");
        assert!(again.len() <= f.len());
        assert_eq!(FrameRepr::parse(&again, KEY).as_ref(), Ok(&repr));
    }
});

fn resign(f: &mut [u8]) {
    let len = u16::try_from(f.len()).unwrap_or(u16::MAX);
    if let Ok(mut p) = Packet::new_checked(f) {
        p.set_version(SYNC_VERSION);
        p.set_flags(0);
        p.set_length(len);
        p.fill_tag(KEY);
    }
}
