//! Sync frames (IP protocol 240): to be written.
