//! pfsync-style replication of the kernel's conntrack table between the
//! routers of a CARP group (docs/protocol.md §4; docs/design.md, "State sync
//! engine").
//!
//! - [`link`]: one peer's streams (coalescing, window, replay, ordering), sans-IO;
//! - [`engine`]: the protocol, sans-IO: events and frames in, frames and
//!   kernel operations out, time passed in;
//! - [`runtime`]: the engine's own OS thread with the sockets (raw IP
//!   protocol 240 on the sync interface, ctnetlink), so sync load never
//!   delays the CARP adverts of the controller's event loop;
//! - [`stats`]: the `carp_sync_*` metrics.
pub mod engine;
pub mod link;
pub mod runtime;
pub mod stats;
