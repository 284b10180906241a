//! The generated seeds (`trackwire_fuzz::seeds`) are committed as
//! `corpus/TARGET/seed-NAME`, so a change to the messages shows up here.
//! `FUZZ_WRITE_SEEDS=1 cargo nextest run -p trackwire-fuzz` rewrites them.

use std::path::Path;

#[test]
fn generated_seeds_are_committed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    for s in trackwire_fuzz::seeds::all() {
        let path = root.join(s.target).join(format!("seed-{}", s.name));
        if write {
            if let Err(e) = std::fs::create_dir_all(root.join(s.target))
                .and_then(|()| std::fs::write(&path, &s.data))
            {
                panic!("{}: {e}", path.display());
            }
            continue;
        }
        match std::fs::read(&path) {
            Ok(d) => assert!(
                d == s.data,
                "{} differs from the generator (FUZZ_WRITE_SEEDS=1 rewrites it)",
                path.display()
            ),
            Err(e) => panic!(
                "{}: {e} (FUZZ_WRITE_SEEDS=1 writes the generated seeds)",
                path.display()
            ),
        }
    }
}
