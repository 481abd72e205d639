//! Schema files (being written).
