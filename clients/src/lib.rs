//! Outpost client (being written).
