//! Replays every committed input through its harness: `corpus/TARGET/`
//! (seeds and the minimized AFL++ queue) and `regressions/TARGET/` (inputs
//! that once crashed, kept after the fix). A missing or empty directory is
//! a failure, so the test cannot silently replay nothing.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no inputs", dir.display());
    files
}

fn replay(kind: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind);
    let mut total = 0;
    for (name, harness) in trackwire_fuzz::TARGETS {
        for file in inputs(&root.join(name)) {
            let data = match std::fs::read(&file) {
                Ok(d) => d,
                Err(e) => panic!("{}: {e}", file.display()),
            };
            if std::panic::catch_unwind(|| harness(&data)).is_err() {
                panic!("{name}: {} panics", file.display());
            }
            total += 1;
        }
    }
    eprintln!("replayed {total} {kind} inputs");
}

#[test]
fn corpus_replays_without_panics() {
    replay("corpus");
}

#[test]
fn regressions_stay_fixed() {
    replay("regressions");
}

#[test]
fn every_directory_belongs_to_a_target() {
    for kind in ["corpus", "regressions"] {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind);
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                trackwire_fuzz::target(&name).is_some(),
                "{kind}/{name} is not a target"
            );
        }
    }
}
