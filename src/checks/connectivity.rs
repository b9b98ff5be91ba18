//! Pod-to-pod connectivity: every probe between two probe pods answered.

use super::{Evidence, Judgement, Verdict};
use serde::Serialize;

/// One probe: a curl from one probe pod to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeOutcome {
    pub from_node: String,
    pub from_pod: String,
    pub to_node: String,
    pub to_pod: String,
    pub url: String,
    /// Ok(HTTP status) or Err(what the client said).
    pub result: Result<u16, String>,
    pub attempts: u32,
    /// What the client said on the attempts before the last, oldest first.
    pub earlier_failures: Vec<String>,
}

/// One probed pair as a report shows it: a cell of the heat map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairResult {
    pub from_node: String,
    pub from_pod: String,
    pub to_node: String,
    pub to_pod: String,
    pub passed: bool,
    /// `HTTP 200`, or the client's own error.
    pub observed: String,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earlier_failures: Vec<String>,
}

/// `node/pod → node/pod`, as every report names a pair.
fn pair_label(from_node: &str, from_pod: &str, to_node: &str, to_pod: &str) -> String {
    format!("{from_node}/{from_pod} → {to_node}/{to_pod}")
}

impl PairResult {
    pub fn label(&self) -> String {
        pair_label(&self.from_node, &self.from_pod, &self.to_node, &self.to_pod)
    }

    /// Passed, but only after at least one failed attempt.
    pub fn flaky(&self) -> bool {
        self.passed && !self.earlier_failures.is_empty()
    }
}

impl ProbeOutcome {
    /// `node/pod → node/pod (url)`: the pair and what was asked of it.
    pub fn label(&self) -> String {
        format!(
            "{} ({})",
            pair_label(&self.from_node, &self.from_pod, &self.to_node, &self.to_pod),
            self.url
        )
    }

    /// `HTTP 200`, or the client's own error.
    pub fn observed(&self) -> String {
        match &self.result {
            Ok(code) => format!("HTTP {code}"),
            Err(error) => error.clone(),
        }
    }

    pub fn pair_result(&self) -> PairResult {
        PairResult {
            from_node: self.from_node.clone(),
            from_pod: self.from_pod.clone(),
            to_node: self.to_node.clone(),
            to_pod: self.to_pod.clone(),
            passed: self.succeeded(),
            observed: self.observed(),
            attempts: self.attempts,
            earlier_failures: self.earlier_failures.clone(),
        }
    }

    pub fn succeeded(&self) -> bool {
        matches!(self.result, Ok(code) if (200..400).contains(&code))
    }
    pub fn describe(&self) -> String {
        format!("{}: {}", self.label(), self.observed())
    }
}

/// The pairs that passed only after a retry, each with what its failed attempts said.
pub fn flaky_pairs(outcomes: &[ProbeOutcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| o.succeeded() && !o.earlier_failures.is_empty())
        .map(|o| {
            format!(
                "{} passed on attempt {} after: {}",
                pair_label(&o.from_node, &o.from_pod, &o.to_node, &o.to_pod),
                o.attempts,
                o.earlier_failures.join("; ")
            )
        })
        .collect()
}

pub fn judge_connectivity(outcomes: &[ProbeOutcome], what: &str) -> Judgement {
    if outcomes.is_empty() {
        return (
            Verdict::Error(format!("no {what} probe could run")),
            Vec::new(),
        );
    }
    let failed: Vec<&ProbeOutcome> = outcomes.iter().filter(|o| !o.succeeded()).collect();
    let evidence = outcomes
        .iter()
        .map(|o| {
            let pair = o.label();
            let observed = o.observed();
            let tries = if o.attempts > 1 {
                format!(" after {} attempts", o.attempts)
            } else {
                String::new()
            };
            Evidence::new(pair, format!("{observed}{tries}"), "HTTP 2xx or 3xx")
        })
        .collect();
    if failed.is_empty() {
        (Verdict::Passed, evidence)
    } else {
        let lines: Vec<String> = failed.iter().map(|o| o.describe()).collect();
        (
            Verdict::Failed(format!(
                "{} of {} {what} probes failed: {}",
                failed.len(),
                outcomes.len(),
                lines.join("; ")
            )),
            evidence,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connectivity_failure_names_every_failed_pair_with_the_client_error() {
        let ok = ProbeOutcome {
            from_node: "w3".into(),
            from_pod: "p3".into(),
            to_node: "w2".into(),
            to_pod: "p2".into(),
            url: "http://198.19.0.2:8080/".into(),
            result: Ok(200),
            attempts: 1,
            earlier_failures: Vec::new(),
        };
        let bad = ProbeOutcome {
            to_node: "w1".into(),
            to_pod: "p1".into(),
            url: "http://198.19.0.1:8080/".into(),
            result: Err("curl: (28) timeout".into()),
            ..ok.clone()
        };
        let (verdict, _) = judge_connectivity(&[ok.clone(), bad], "cross-node");
        let Verdict::Failed(message) = verdict else {
            panic!("{verdict:?}")
        };
        assert!(
            message.contains("w3/p3 → w1/p1 (http://198.19.0.1:8080/): curl: (28) timeout"),
            "{message}"
        );
        assert!(!message.contains("w2/p2"));
        assert_eq!(judge_connectivity(&[ok], "cross-node").0, Verdict::Passed);
        assert!(matches!(
            judge_connectivity(&[], "cross-node").0,
            Verdict::Error(_)
        ));
    }

    #[test]
    fn a_pair_that_passed_only_after_a_retry_is_flaky_not_green() {
        let steady = ProbeOutcome {
            from_node: "w3".into(),
            from_pod: "p3".into(),
            to_node: "w2".into(),
            to_pod: "p2".into(),
            url: "http://198.19.0.2:8080/".into(),
            result: Ok(200),
            attempts: 1,
            earlier_failures: Vec::new(),
        };
        let retried = ProbeOutcome {
            attempts: 2,
            earlier_failures: vec!["curl: (7) Failed to connect".into()],
            ..steady.clone()
        };
        let flaky = flaky_pairs(&[steady.clone(), retried.clone()]);
        assert_eq!(flaky.len(), 1, "{flaky:?}");
        assert!(
            flaky[0].contains("passed on attempt 2 after: curl: (7)"),
            "{flaky:?}"
        );
        assert!(retried.pair_result().flaky());
        assert!(!steady.pair_result().flaky());
        let failed_twice = ProbeOutcome {
            result: Err("curl: (28) timeout".into()),
            ..retried
        };
        assert!(
            flaky_pairs(std::slice::from_ref(&failed_twice)).is_empty(),
            "a failure is not flaky"
        );
        assert!(!failed_twice.pair_result().flaky());
    }
}
