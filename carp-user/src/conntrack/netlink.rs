//! ctnetlink: dump, watch, install and delete conntrack entries (to be written).
