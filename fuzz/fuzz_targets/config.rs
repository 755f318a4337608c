//! Config checker (`carp_user::config::parse`) on arbitrary UTF-8: it must
//! return `Ok` or a non-empty list of problems, each naming a field and a
//! reason, and never panic. What it accepts must be self-consistent.
//!
//! `parse` reads `sync.key_file` from the filesystem. Inputs that could name
//! a special file (a path through /dev, /proc or /sys, or a TOML `\u`
//! escape that could spell one) are skipped: reading /proc/kcore or a FIFO
//! would hang the fuzzer without saying anything about the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["dev", "proc", "sys", "\\u", "\\U"]
        .iter()
        .any(|s| text.contains(s))
    {
        return;
    }
    match carp_user::config::parse(text) {
        Ok(checked) => {
            let c = &checked.config;
            assert!(!c.vhids.is_empty(), "accepted a config without VHIDs");
            for v in &c.vhids {
                assert_ne!(v.id, 0);
                assert!(!v.addresses.is_empty());
            }
        }
        Err(problems) => {
            assert!(!problems.0.is_empty(), "an error without a problem");
            for p in &problems.0 {
                assert!(!p.reason.is_empty(), "a problem without a reason: {p:?}");
            }
            let _ = problems.to_string();
        }
    }
});
