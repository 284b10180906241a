//! `haproxy_import`: `trackwire import haproxy FILE` reads a configuration
//! written by someone else.

/// Imports `data` as a HAProxy configuration. An imported document is valid
/// and round-trips through TOML like any other.
pub fn haproxy_import(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(imported) = trackwire_cli::import::haproxy(text) else {
        return;
    };
    crate::config::check_round_trip(&imported.document);
}
