//! State replication (to be written).
