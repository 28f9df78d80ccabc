//! Writes each target's seed inputs under `seeds/<target>/`:
//! `cargo run --example seeds` from `tests/fuzz` (see `scripts/fuzz.sh`).

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for target in phalanx_fuzz::TARGETS {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, s) in phalanx_fuzz::seeds(target).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), s)?;
        }
    }
    Ok(())
}
