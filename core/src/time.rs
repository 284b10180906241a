//! Wall-clock time as the store and the wire carry it: unix milliseconds.
//! The one `now_ms`; sans-IO cores take time as an argument instead.

/// Milliseconds since the unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
