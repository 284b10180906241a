//! Every example config under deploy/examples parses and validates, and the
//! seed example is the HAProxy seed configuration one to one.

use std::path::Path;
use std::time::Duration;

use trackwire_core::config::Document;

fn examples() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("deploy/examples exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_is_valid() {
    let files = examples();
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        let doc = Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            !doc.pools.is_empty() && !doc.listeners.is_empty(),
            "{}",
            f.display()
        );
        for l in &doc.listeners {
            assert!(
                doc.pools.iter().any(|p| p.name == l.pool),
                "{}: listener {} names a missing pool",
                f.display(),
                l.name
            );
        }
    }
}

#[test]
fn seed_example_matches_the_haproxy_seed() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/seed.toml");
    let doc = Document::parse(&std::fs::read_to_string(path).expect("read")).expect("valid");
    let pool = &doc.pools[0];
    assert_eq!(pool.name, "myApp");
    let names: Vec<_> = pool
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.address.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("server-1", "backend-1.example.com:6443"),
            ("server-2", "backend-2.example.com:6443"),
            ("server-3", "backend-3.example.com:6443"),
        ]
    );
    let check = pool.check.as_ref().expect("check");
    assert_eq!(
        (check.method.as_str(), check.path.as_str()),
        ("GET", "/readyz")
    );
    assert!(check.expect_status.contains(200) && !check.expect_status.contains(201));
    // HAProxy defaults: inter 2s, rise 2, fall 3, timeout = inter.
    assert_eq!(
        (check.interval, check.rise, check.fall, check.timeout),
        (Duration::from_secs(2), 2, 3, Duration::from_secs(2))
    );
    let l = &doc.listeners[0];
    assert_eq!(
        (l.name.as_str(), l.pool.as_str(), l.bind.port()),
        ("myApp", "myApp", 6443)
    );
}
