//! The `outpost` binary: `serve`, `check` and `dev`.

fn main() {
    println!("outpost");
}
