//! The CARP controller: protocol logic (sans-IO) and the shell that drives the kernel.
//!
//! Protocol modules have no I/O: `wire` (byte formats), `replay` (advert counter
//! tracking), `election` (per-VHID state machine, time passed in), `config`.
//! The shell: `xdp` (the eBPF object and its maps), `netlink` (links, addresses,
//! sysctls, NIC filters), `packet` (raw sockets that send adverts and ARP),
//! `controller` (the election's runtime tying it together; `controller/reload.rs`
//! applies what `reload` plans), `api` (control socket),
//! `metrics`, `status`.
pub mod accept;
pub mod advert_plan;
pub mod api;
pub mod config;
pub mod conntrack;
pub mod controller;
pub mod deadman;
pub mod demotion;
pub mod election;
pub mod hooks;
pub mod linkwatch;
pub mod metrics;
pub mod netlink;
pub mod operator;
pub mod packet;
pub mod peers;
pub mod pins;
pub mod privileges;
pub mod reload;
pub mod replay;
pub mod services;
pub mod splitbrain;
pub mod statefile;
pub mod status;
pub mod sync;
pub mod timer;
pub mod wire;
pub mod xdp;
pub mod xdp_drivers;
