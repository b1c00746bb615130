//! What the CNI plugin's operations cost, kept between its runs for the metrics endpoint.
//!
//! The plugin lives for one operation, so it cannot serve its own metrics: after each
//! operation it adds that operation's latency, outcome and compare-and-swap conflicts to a
//! small node-local file, and `ipamctl serve --plugin-stats` renders the totals as a
//! Prometheus histogram and counter. This module is the file's content as plain data, with
//! the rules a value read back must keep; reading and writing the file are the front ends'.

use serde::{Deserialize, Serialize};

/// The histogram's upper bounds in seconds (a last, unbounded bucket follows). A plugin ADD
/// on the embedded store takes about a millisecond, one through the Kubernetes API about a
/// hundred; the CNI runtime's own timeouts are in minutes.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// The operations the plugin records.
pub const OPERATIONS: [&str; 2] = ["add", "del"];

/// The largest file a reader accepts: far above what [`OPERATIONS`] times two outcomes can
/// produce, so anything larger was not written by the plugin.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// The totals of every operation recorded so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginStats {
    /// One entry per operation and outcome that has happened.
    pub operations: Vec<OperationTotals>,
}

/// The totals of one operation with one outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationTotals {
    /// `add` or `del`.
    pub operation: String,
    /// Whether the operation succeeded.
    pub outcome: Outcome,
    /// How many operations ended so.
    pub count: u64,
    /// Their latencies, added up, in seconds.
    pub seconds_sum: f64,
    /// How many fell in each latency bucket (not cumulative): one per bound of
    /// [`LATENCY_BOUNDS`], then one for longer ones.
    pub buckets: Vec<u64>,
    /// Compare-and-swap conflicts these operations met and retried.
    pub conflicts: u64,
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It answered with a result.
    Ok,
    /// It answered with an error.
    Error,
}

impl Outcome {
    /// The label value: `ok` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        }
    }
}

/// One finished operation, as the plugin records it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    /// One of [`OPERATIONS`].
    pub operation: &'a str,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took, in seconds.
    pub seconds: f64,
    /// The conflicts it met ([`Ipam::conflicts`](crate::Ipam::conflicts)).
    pub conflicts: u64,
}

impl PluginStats {
    /// The totals in a stats file's `text`, as the plugin and its readers take them: `None`
    /// when it is empty, and what is wrong when the plugin cannot have written it (larger
    /// than [`MAX_FILE_BYTES`], not this JSON, or with [`PluginStats::problems`]).
    pub fn parse(text: &[u8]) -> Result<Option<PluginStats>, String> {
        if text.is_empty() {
            return Ok(None);
        }
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
        }
        let stats: PluginStats = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        match stats.problems() {
            p if p.is_empty() => Ok(Some(stats)),
            p => Err(p.join("; ")),
        }
    }

    /// Adds one operation. Totals stop at their largest value instead of wrapping, so a
    /// total never goes backwards (a Prometheus counter that drops reads as a restart) and
    /// the buckets still add up to the count.
    pub fn record(&mut self, sample: Sample<'_>) {
        let at = match self
            .operations
            .iter()
            .position(|t| t.operation == sample.operation && t.outcome == sample.outcome)
        {
            Some(at) => at,
            None => {
                self.operations.push(OperationTotals {
                    operation: sample.operation.to_owned(),
                    outcome: sample.outcome,
                    count: 0,
                    seconds_sum: 0.0,
                    buckets: vec![0; LATENCY_BOUNDS.len() + 1],
                    conflicts: 0,
                });
                self.operations.len() - 1
            }
        };
        let totals = &mut self.operations[at];
        let seconds = if sample.seconds.is_finite() {
            sample.seconds.max(0.0)
        } else {
            0.0
        };
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BOUNDS.len());
        let Some(count) = totals.count.checked_add(1) else {
            return;
        };
        totals.count = count;
        totals.seconds_sum = (totals.seconds_sum + seconds).min(f64::MAX);
        totals.buckets[bucket] += 1;
        totals.conflicts = totals.conflicts.saturating_add(sample.conflicts);
    }

    /// Whether a value read back is one the plugin could have written; what is wrong
    /// otherwise. A reader renders nothing from a value that fails, rather than a histogram
    /// whose buckets do not add up.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (i, t) in self.operations.iter().enumerate() {
            let at = format!("operations[{i}] ({} {})", t.operation, t.outcome.as_str());
            if !OPERATIONS.contains(&t.operation.as_str()) {
                problems.push(format!("{at}: unknown operation"));
            }
            if self.operations[..i]
                .iter()
                .any(|o| o.operation == t.operation && o.outcome == t.outcome)
            {
                problems.push(format!("{at}: listed twice"));
            }
            if t.buckets.len() != LATENCY_BOUNDS.len() + 1 {
                problems.push(format!(
                    "{at}: {} buckets, not {}",
                    t.buckets.len(),
                    LATENCY_BOUNDS.len() + 1
                ));
            }
            let in_buckets = t.buckets.iter().try_fold(0u64, |a, b| a.checked_add(*b));
            if in_buckets != Some(t.count) {
                problems.push(format!("{at}: the buckets do not add up to the count"));
            }
            if !(t.seconds_sum.is_finite() && t.seconds_sum >= 0.0) {
                problems.push(format!("{at}: the latency sum is not a positive number"));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(operation: &str, outcome: Outcome, seconds: f64, conflicts: u64) -> Sample<'_> {
        Sample {
            operation,
            outcome,
            seconds,
            conflicts,
        }
    }

    #[test]
    fn records_into_the_bucket_of_the_latency() {
        let mut s = PluginStats::default();
        s.record(sample("add", Outcome::Ok, 0.0015, 2));
        s.record(sample("add", Outcome::Ok, 0.001, 0));
        s.record(sample("add", Outcome::Ok, 60.0, 0));
        s.record(sample("del", Outcome::Error, 0.03, 1));
        assert_eq!(s.operations.len(), 2);
        let add = &s.operations[0];
        assert_eq!((add.count, add.conflicts), (3, 2));
        // 0.001 is in the bucket bounded by 0.001 (Prometheus' `le`), 0.0015 in the next.
        assert_eq!(add.buckets[1], 1);
        assert_eq!(add.buckets[2], 1);
        assert_eq!(add.buckets[LATENCY_BOUNDS.len()], 1);
        assert!((add.seconds_sum - 60.0025).abs() < 1e-9);
        assert_eq!(s.operations[1].buckets[6], 1);
        assert!(s.problems().is_empty(), "{:?}", s.problems());
    }

    #[test]
    fn totals_at_their_largest_stay_consistent() {
        let mut s = PluginStats::default();
        s.record(sample("add", Outcome::Ok, 0.0001, 0));
        let t = &mut s.operations[0];
        (t.count, t.buckets[0], t.seconds_sum) = (u64::MAX, u64::MAX, f64::MAX);
        s.record(sample("add", Outcome::Ok, 0.004, u64::MAX));
        s.record(sample("add", Outcome::Ok, 1e308, 0));
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        assert_eq!(s.operations[0].count, u64::MAX);
    }

    #[test]
    fn a_nonsense_latency_counts_as_zero() {
        let mut s = PluginStats::default();
        s.record(sample("add", Outcome::Ok, f64::NAN, 0));
        s.record(sample("add", Outcome::Ok, -1.0, 0));
        assert_eq!(s.operations[0].buckets[0], 2);
        assert_eq!(s.operations[0].seconds_sum, 0.0);
    }

    #[test]
    fn values_the_plugin_cannot_write_are_named() {
        let mut s = PluginStats::default();
        s.record(sample("add", Outcome::Ok, 0.01, 0));
        s.operations[0].count = 5;
        s.operations.push(s.operations[0].clone());
        s.operations[1].buckets.pop();
        s.operations.push(OperationTotals {
            operation: "rm -rf".into(),
            ..s.operations[0].clone()
        });
        let problems = s.problems().join("\n");
        for want in [
            "do not add up",
            "listed twice",
            "14 buckets",
            "unknown operation",
        ] {
            assert!(problems.contains(want), "no {want:?} in {problems}");
        }
    }

    #[test]
    fn parse_takes_empty_and_padded_text_and_names_the_rest() {
        assert_eq!(PluginStats::parse(b""), Ok(None));
        let padded = br#"{"operations":[]}    "#;
        assert_eq!(PluginStats::parse(padded), Ok(Some(PluginStats::default())));
        let big = vec![b' '; MAX_FILE_BYTES as usize + 1];
        assert!(
            PluginStats::parse(&big)
                .unwrap_err()
                .contains("larger than")
        );
        let bad = br#"{"operations":[{"operation":"add","outcome":"ok","count":1,"seconds_sum":0,"buckets":[],"conflicts":0}]}"#;
        assert!(PluginStats::parse(bad).unwrap_err().contains("buckets"));
    }

    #[test]
    fn round_trips_through_json_and_refuses_unknown_keys() {
        let mut s = PluginStats::default();
        s.record(sample("del", Outcome::Ok, 0.2, 0));
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<PluginStats>(&text).unwrap(), s);
        assert!(serde_json::from_str::<PluginStats>(r#"{"operations":[],"x":1}"#).is_err());
    }
}
