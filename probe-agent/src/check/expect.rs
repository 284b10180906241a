//! The sans-IO half of an HTTP check: what a response's status and the body
//! read so far decide, given the check's expectations (`expect_status`,
//! `expect_body`/`expect_body_regex`, `expect_negate`). `http.rs` feeds it
//! from the connection, one frame at a time; the fuzz harness feeds it
//! bytes directly.

use trackwire_core::limits::MAX_BODY_BYTES;

use super::{Matcher, Outcome, PreparedCheck};

/// A decision: the outcome and its reason (empty when the check passed).
pub type Judgement = (Outcome, String);

/// What the status decided.
pub enum Expect<'a> {
    /// The status alone decides (no body expectation, or a status not expected).
    Done(Judgement),
    /// The body decides: feed it to the scan.
    Body(BodyScan<'a>),
}

/// Judges a response's status. `expect_negate` inverts the status match
/// only when there is no body expectation.
pub fn status(check: &PreparedCheck, status: u16) -> Expect<'_> {
    let spec = &check.spec;
    let status_ok = spec.expect_status.contains(status);
    let Some(matcher) = &check.matcher else {
        return Expect::Done(if status_ok != spec.expect_negate {
            (Outcome::L7Ok, String::new())
        } else {
            (Outcome::L7Sts, status.to_string())
        });
    };
    if !status_ok {
        return Expect::Done((Outcome::L7Sts, status.to_string()));
    }
    Expect::Body(BodyScan {
        matcher,
        negate: spec.expect_negate,
        buf: Vec::new(),
    })
}

/// The body read so far (at most [`MAX_BODY_BYTES`]) against the expectation.
pub struct BodyScan<'a> {
    matcher: &'a Matcher,
    negate: bool,
    buf: Vec<u8>,
}

impl BodyScan<'_> {
    /// The judgement once the body read so far decides it: a match no
    /// further bytes can undo, or [`MAX_BODY_BYTES`] read without one (the
    /// rest is never buffered). A match of `ok$` at the end of a frame is
    /// not decided: the next frame may follow it.
    pub fn decided(&self) -> Option<Judgement> {
        if self.matcher.settled_match(&self.buf) {
            Some(self.judge(true))
        } else if self.buf.len() >= MAX_BODY_BYTES {
            Some(self.judge(false))
        } else {
            None
        }
    }

    /// Adds body data; whatever lies past [`MAX_BODY_BYTES`] is dropped.
    pub fn push(&mut self, data: &[u8]) {
        let room = MAX_BODY_BYTES.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
    }

    /// The judgement when the body ended before deciding.
    pub fn end(&self) -> Judgement {
        self.judge(self.matcher.is_match(&self.buf))
    }

    /// The body kept so far.
    pub fn body(&self) -> &[u8] {
        &self.buf
    }

    fn judge(&self, found: bool) -> Judgement {
        if found != self.negate {
            (Outcome::L7Ok, String::new())
        } else if self.negate {
            (
                Outcome::L7Rsp,
                format!("body matches {}", self.matcher.describe()),
            )
        } else {
            (
                Outcome::L7Rsp,
                format!("body does not match {}", self.matcher.describe()),
            )
        }
    }
}

/// The verdict on a whole response whose body arrives as `frames`, decided
/// exactly as the HTTP check decides it while reading (tests and the fuzz
/// harness use it to show framing does not change a verdict).
pub fn judge_frames(check: &PreparedCheck, status: u16, frames: &[&[u8]]) -> Judgement {
    let mut scan = match self::status(check, status) {
        Expect::Done(j) => return j,
        Expect::Body(scan) => scan,
    };
    for f in frames {
        if let Some(j) = scan.decided() {
            return j;
        }
        scan.push(f);
    }
    scan.decided().unwrap_or_else(|| scan.end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackwire_core::{BodyMatch, CheckSpec};

    fn judge(pattern: BodyMatch, status: u16, frames: &[&[u8]]) -> Judgement {
        let spec = CheckSpec {
            expect_body: Some(pattern),
            ..CheckSpec::http_default()
        };
        let check = PreparedCheck::new("127.0.0.1:1", spec).expect("valid check");
        judge_frames(&check, status, frames)
    }

    fn re(p: &str) -> BodyMatch {
        BodyMatch::Regex(p.into())
    }

    #[test]
    fn a_match_at_the_end_of_a_frame_waits_for_the_next_one() {
        // Found by the http_match fuzz target: `ok$` matched the end of the
        // first frame although the body went on.
        let (outcome, reason) = judge(re("^ok$"), 200, &[b"ok", b", not really"]);
        assert_eq!(outcome, Outcome::L7Rsp, "{reason}");
        assert_eq!(judge(re("^ok$"), 200, &[b"o", b"k"]).0, Outcome::L7Ok);
        assert_eq!(judge(re(r"ok\b"), 200, &[b"ok", b"ay"]).0, Outcome::L7Rsp);
        // Settled matches still decide early, before the rest is read.
        assert_eq!(
            judge(re("(?m)^ok$"), 200, &[b"ok\n", b"x"]).0,
            Outcome::L7Ok
        );
        assert_eq!(judge(re("ok"), 200, &[b"ok"]).0, Outcome::L7Ok);
    }

    #[test]
    fn substrings_and_statuses_decide_as_before() {
        let sub = || BodyMatch::Substring("ready".into());
        assert_eq!(judge(sub(), 200, &[b"is rea", b"dy"]).0, Outcome::L7Ok);
        assert_eq!(judge(sub(), 200, &[b"not yet"]).0, Outcome::L7Rsp);
        assert_eq!(judge(sub(), 503, &[b"ready"]).0, Outcome::L7Sts);
    }
}
