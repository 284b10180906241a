//! The AFL++ driver: `afl TARGET` runs the harness named TARGET (see
//! `trackwire_fuzz::TARGETS`) under AFL++'s persistent mode. Built only
//! with `cargo afl build --features afl` (`scripts/fuzz` does).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(harness) = trackwire_fuzz::target(&name) else {
        let names: Vec<&str> = trackwire_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: afl TARGET (one of {})", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        harness(data);
    });
}
