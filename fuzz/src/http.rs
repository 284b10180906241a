//! `http_match`: an HTTP check's verdict from what the checked server sends
//! (status and body) against the check's expectations (from the pool spec).
//! The server is the stranger here: anything it answers must be judged,
//! never crash the agent.

use trackwire_core::limits::MAX_BODY_BYTES;
use trackwire_core::{BodyMatch, CheckSpec, FieldNames};
use trackwire_probe_agent::check::expect::{self, Judgement};
use trackwire_probe_agent::check::{Outcome, PreparedCheck};

/// Layout: a flags byte (bit 0 `expect_negate`; bits 1-2 the body
/// expectation: 1 substring, 2 regex, else none), the status (2 bytes, big
/// endian), then `expect_status` `\n` pattern `\n` body, the body split
/// into frames at each `0xff` byte. Invalid specs are skipped (validation
/// refuses them before an agent sees them). The verdict is one of the L7
/// outcomes, agrees with the status set and, for a substring, with a plain
/// search of the first [`MAX_BODY_BYTES`]; and it does not depend on how
/// the body is split into frames.
pub fn http_match(data: &[u8]) {
    let [flags, hi, lo, rest @ ..] = data else {
        return;
    };
    let status = u16::from_be_bytes([*hi, *lo]);
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let expect_status = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let pattern = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    let d = CheckSpec::http_default();
    let Ok(expect_status) = expect_status.parse() else {
        return;
    };
    let expect_body = match (flags >> 1) & 3 {
        1 => Some(BodyMatch::Substring(pattern.clone())),
        2 => Some(BodyMatch::Regex(pattern.clone())),
        _ => None,
    };
    let spec = CheckSpec {
        expect_status,
        expect_body,
        expect_negate: flags & 1 != 0,
        ..d
    };
    if spec.validate(FieldNames::Wire).is_err() {
        return;
    }
    let Ok(check) = PreparedCheck::new("127.0.0.1:8080", spec.clone()) else {
        return;
    };
    let frames: Vec<&[u8]> = body.split(|b| *b == 0xff).collect();
    let (outcome, reason) = judge(&check, status, &frames);
    assert!(
        matches!(outcome, Outcome::L7Ok | Outcome::L7Sts | Outcome::L7Rsp),
        "{outcome:?}"
    );
    assert_eq!(outcome == Outcome::L7Ok, reason.is_empty());
    let status_ok = spec.expect_status.contains(status);
    let whole: Vec<u8> = frames.concat();
    let kept = &whole[..whole.len().min(MAX_BODY_BYTES)];
    match &spec.expect_body {
        None => assert_eq!(outcome == Outcome::L7Ok, status_ok != spec.expect_negate),
        Some(m) => {
            if !status_ok {
                assert_eq!(outcome, Outcome::L7Sts);
            } else if let BodyMatch::Substring(s) = m {
                let n = s.as_bytes();
                let found = n.is_empty() || kept.windows(n.len()).any(|w| w == n);
                assert_eq!(outcome == Outcome::L7Ok, found != spec.expect_negate);
            }
        }
    }
    // One frame or many: the same verdict.
    let single = judge(&check, status, &[kept]);
    assert_eq!(
        (outcome, reason),
        single,
        "the verdict depends on how the body is framed"
    );
}

/// Runs the check's verdict as `http.rs` does, over `frames`.
fn judge(check: &PreparedCheck, status: u16, frames: &[&[u8]]) -> Judgement {
    expect::judge_frames(check, status, frames)
}
