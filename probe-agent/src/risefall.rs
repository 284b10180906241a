//! HAProxy's rise/fall flap protection as a sans-IO state machine.
//!
//! HAProxy keeps a health counter in `0..=rise+fall-1`: a server that is UP
//! goes DOWN after `fall` consecutive failed checks, a DOWN server goes UP
//! after `rise` consecutive successes, and a result that breaks a streak
//! resets it. An agent starts with no opinion (it does not know the
//! backend's state): `rise` successes make it UP, `fall` failures DOWN.
//! Time is passed in, so the machine is tested without a clock.

use trackwire_core::HealthState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub to: HealthState,
    pub at_ms: u64,
}

/// Which of the check intervals applies now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cadence {
    /// UP and steady: `interval`.
    Normal,
    /// Never decided, or a streak is under way toward a transition: `fast_interval`.
    Fast,
    /// DOWN and steady: `down_interval`.
    Down,
}

#[derive(Debug, Clone)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    state: Option<HealthState>,
    ok_streak: u32,
    fail_streak: u32,
}

impl RiseFall {
    pub fn new(rise: u32, fall: u32) -> Self {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            state: None,
            ok_streak: 0,
            fail_streak: 0,
        }
    }

    pub fn state(&self) -> Option<HealthState> {
        self.state
    }

    /// Feeds one check result; returns the transition it causes, if any.
    pub fn observe(&mut self, ok: bool, now_ms: u64) -> Option<Transition> {
        if ok {
            self.fail_streak = 0;
            self.ok_streak = self.ok_streak.saturating_add(1);
            if self.state != Some(HealthState::Up) && self.ok_streak >= self.rise {
                self.state = Some(HealthState::Up);
                return Some(Transition {
                    to: HealthState::Up,
                    at_ms: now_ms,
                });
            }
        } else {
            self.ok_streak = 0;
            self.fail_streak = self.fail_streak.saturating_add(1);
            if self.state != Some(HealthState::Down) && self.fail_streak >= self.fall {
                self.state = Some(HealthState::Down);
                return Some(Transition {
                    to: HealthState::Down,
                    at_ms: now_ms,
                });
            }
        }
        None
    }

    pub fn cadence(&self) -> Cadence {
        match self.state {
            None => Cadence::Fast,
            Some(HealthState::Up) if self.fail_streak > 0 => Cadence::Fast,
            Some(HealthState::Up) => Cadence::Normal,
            Some(HealthState::Down) if self.ok_streak > 0 => Cadence::Fast,
            Some(HealthState::Down) => Cadence::Down,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::{Down, Up};
    use proptest::prelude::*;

    fn run(rise: u32, fall: u32, results: &str) -> Vec<Option<HealthState>> {
        let mut m = RiseFall::new(rise, fall);
        results
            .chars()
            .enumerate()
            .map(|(i, c)| m.observe(c == '+', i as u64).map(|t| t.to))
            .collect()
    }

    #[test]
    fn table() {
        // (rise, fall, results, expected transitions at each step)
        let cases: &[(u32, u32, &str, &[Option<HealthState>])] = &[
            (2, 3, "++", &[None, Some(Up)]),
            (2, 3, "+-+", &[None, None, None]),
            (2, 3, "---", &[None, None, Some(Down)]),
            (2, 3, "++---", &[None, Some(Up), None, None, Some(Down)]),
            (
                2,
                3,
                "++--+--",
                &[None, Some(Up), None, None, None, None, None],
            ),
            (
                2,
                3,
                "++---++",
                &[None, Some(Up), None, None, Some(Down), None, Some(Up)],
            ),
            (1, 1, "+-+-", &[Some(Up), Some(Down), Some(Up), Some(Down)]),
            (3, 2, "++-+++", &[None, None, None, None, None, Some(Up)]),
        ];
        for (rise, fall, results, expected) in cases {
            assert_eq!(
                &run(*rise, *fall, results),
                expected,
                "rise {rise} fall {fall} {results}"
            );
        }
    }

    #[test]
    fn cadence_follows_haproxy_intervals() {
        let mut m = RiseFall::new(2, 3);
        assert_eq!(
            m.cadence(),
            Cadence::Fast,
            "undecided checks run at fastinter"
        );
        m.observe(true, 0);
        m.observe(true, 1);
        assert_eq!(m.cadence(), Cadence::Normal);
        m.observe(false, 2);
        assert_eq!(m.cadence(), Cadence::Fast, "transitioning toward DOWN");
        m.observe(false, 3);
        m.observe(false, 4);
        assert_eq!(m.cadence(), Cadence::Down);
        m.observe(true, 5);
        assert_eq!(m.cadence(), Cadence::Fast, "transitioning toward UP");
    }

    proptest! {
        /// A transition to UP happens exactly when the last `rise` results
        /// succeeded and the machine was not UP; likewise DOWN with `fall`.
        #[test]
        fn transitions_need_full_streaks(rise in 1u32..5, fall in 1u32..5, results in proptest::collection::vec(any::<bool>(), 0..60)) {
            let mut m = RiseFall::new(rise, fall);
            for (i, ok) in results.iter().enumerate() {
                let before = m.state();
                let t = m.observe(*ok, i as u64);
                let tail_ok = i + 1 >= rise as usize && results[i + 1 - rise as usize..=i].iter().all(|r| *r);
                let tail_fail = i + 1 >= fall as usize && results[i + 1 - fall as usize..=i].iter().all(|r| !*r);
                match t {
                    Some(Transition { to: Up, at_ms }) => {
                        prop_assert!(tail_ok && before != Some(Up));
                        prop_assert_eq!(at_ms, i as u64);
                    }
                    Some(Transition { to: Down, .. }) => prop_assert!(tail_fail && before != Some(Down)),
                    None => {
                        prop_assert!(!(tail_ok && before != Some(Up)));
                        prop_assert!(!(tail_fail && before != Some(Down)));
                    }
                }
            }
        }
    }
}
