//! Does nothing: it exists so that the `[build-dependencies]` in
//! `Cargo.toml`, which unify the features of RocksDB's build-time
//! dependencies across the workspace, take part in the build.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
