//! Writes the seed inputs of every target to `fuzz/seeds/<target>/`, replacing the old ones.
//! Run with `cargo +nightly run --manifest-path fuzz/Cargo.toml --example write_seeds`.

use std::path::Path;

use ingress_tunnel_fuzz::seeds;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for (target, inputs) in seeds::all() {
        let dir = root.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in &inputs {
            std::fs::write(dir.join(name), bytes)?;
        }
        println!("{}: {} seeds", dir.display(), inputs.len());
    }
    Ok(())
}
