//! The logical replication client (being written).
