//! Token validation (being written).
