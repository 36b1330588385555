//! Load profiles: the request rate the generator offers at each moment, whatever the
//! responses do (open loop). A closed loop (N users, each waiting for its answer before
//! the next request) slows down with the server and so hides exactly the latency a sale
//! spike produces; here arrivals are fixed in advance and latency is measured from the
//! moment a request was due, not from when it could be sent.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "profile", rename_all = "snake_case")]
pub enum Profile {
    /// `rate` requests/s for `duration` seconds.
    Steady { rate: f64, duration: f64 },
    /// From `from` to `to` requests/s, linearly, over `duration` seconds.
    Ramp { from: f64, to: f64, duration: f64 },
    /// `rate` for `before` s, `rate × factor` for `during` s, `rate` again for `after` s.
    Spike {
        rate: f64,
        factor: f64,
        before: f64,
        during: f64,
        after: f64,
    },
    /// Like steady, for hours: the report's time series shows drift (memory, latency).
    Soak { rate: f64, duration: f64 },
}

/// A named stretch of the run, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub start: f64,
    pub end: f64,
}

impl Profile {
    pub fn duration(&self) -> f64 {
        match *self {
            Profile::Steady { duration, .. }
            | Profile::Ramp { duration, .. }
            | Profile::Soak { duration, .. } => duration,
            Profile::Spike {
                before,
                during,
                after,
                ..
            } => before + during + after,
        }
    }

    pub fn rate_at(&self, t: f64) -> f64 {
        match *self {
            Profile::Steady { rate, .. } | Profile::Soak { rate, .. } => rate,
            Profile::Ramp { from, to, duration } => {
                from + (to - from) * (t / duration.max(f64::EPSILON)).clamp(0.0, 1.0)
            }
            Profile::Spike {
                rate,
                factor,
                before,
                during,
                ..
            } => {
                if (before..before + during).contains(&t) {
                    rate * factor
                } else {
                    rate
                }
            }
        }
    }

    pub fn phases(&self) -> Vec<Phase> {
        match *self {
            Profile::Spike {
                before,
                during,
                after,
                ..
            } => vec![
                Phase {
                    name: "before",
                    start: 0.0,
                    end: before,
                },
                Phase {
                    name: "spike",
                    start: before,
                    end: before + during,
                },
                Phase {
                    name: "after",
                    start: before + during,
                    end: before + during + after,
                },
            ],
            _ => vec![Phase {
                name: "run",
                start: 0.0,
                end: self.duration(),
            }],
        }
    }

    /// The moments (seconds from the start) at which `units` arrive, given that each
    /// arrival stands for `per_arrival` requests (a journey of several requests is one
    /// arrival): evenly spaced at the current rate, so a second of 10,000 req/s gets
    /// exactly its 10,000 and a spike starts on the second it should.
    pub fn arrivals(&self, per_arrival: f64) -> Arrivals<'_> {
        Arrivals {
            profile: self,
            per_arrival: per_arrival.max(f64::EPSILON),
            next: 0.0,
            credit: 0.0,
        }
    }
}

pub struct Arrivals<'a> {
    profile: &'a Profile,
    per_arrival: f64,
    next: f64,
    credit: f64,
}

impl Iterator for Arrivals<'_> {
    type Item = f64;

    fn next(&mut self) -> Option<f64> {
        const STEP: f64 = 0.01;
        let end = self.profile.duration();
        loop {
            let t = self.next;
            if t >= end {
                return None;
            }
            let rate = self.profile.rate_at(t) / self.per_arrival;
            if rate * STEP >= 1.0 {
                // Fast: the rate hardly changes between two arrivals.
                self.next += 1.0 / rate;
                return Some(t);
            }
            // Slow (the start of a ramp from 0): integrate in small steps, or the first
            // gap, taken at a near-zero rate, would skip the whole beginning.
            self.credit += rate * STEP;
            self.next += STEP;
            if self.credit >= 1.0 {
                self.credit -= 1.0;
                return Some(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_offers_exactly_its_rate() {
        let p = Profile::Steady {
            rate: 1000.0,
            duration: 3.0,
        };
        let n = p.arrivals(1.0).count();
        assert!((2999..=3001).contains(&n), "{n}");
        // Journeys of 4 requests: a quarter as many arrivals, the same request rate.
        let n = p.arrivals(4.0).count();
        assert!((749..=751).contains(&n), "{n}");
    }

    #[test]
    fn spike_multiplies_the_rate_only_during_the_spike() {
        let p = Profile::Spike {
            rate: 100.0,
            factor: 5.0,
            before: 2.0,
            during: 1.0,
            after: 2.0,
        };
        let times: Vec<f64> = p.arrivals(1.0).collect();
        let in_window = |a: f64, b: f64| times.iter().filter(|t| (a..b).contains(*t)).count();
        assert!((199..=201).contains(&in_window(0.0, 2.0)));
        assert!((499..=501).contains(&in_window(2.0, 3.0)));
        assert!((199..=201).contains(&in_window(3.0, 5.0)));
        assert_eq!(p.phases().len(), 3);
    }

    #[test]
    fn ramp_from_zero_grows_linearly() {
        let p = Profile::Ramp {
            from: 0.0,
            to: 200.0,
            duration: 10.0,
        };
        let times: Vec<f64> = p.arrivals(1.0).collect();
        // ∫ 20·t dt over 10 s = 1000 requests; the first half gets a quarter of them.
        assert!((990..=1010).contains(&times.len()), "{}", times.len());
        let first_half = times.iter().filter(|t| **t < 5.0).count();
        assert!((240..=260).contains(&first_half), "{first_half}");
    }
}
