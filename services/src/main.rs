//! The `outpost` binary (being assembled).
fn main() {}
