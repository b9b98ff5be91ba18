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
}

impl ProbeOutcome {
    pub fn succeeded(&self) -> bool {
        matches!(self.result, Ok(code) if (200..400).contains(&code))
    }
    pub fn describe(&self) -> String {
        let outcome = match &self.result {
            Ok(code) => format!("HTTP {code}"),
            Err(error) => error.clone(),
        };
        format!(
            "{}/{} → {}/{} ({}): {outcome}",
            self.from_node, self.from_pod, self.to_node, self.to_pod, self.url
        )
    }
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
            let pair = format!(
                "{}/{} → {}/{} ({})",
                o.from_node, o.from_pod, o.to_node, o.to_pod, o.url
            );
            let observed = match &o.result {
                Ok(code) => format!("HTTP {code}"),
                Err(error) => error.clone(),
            };
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
}
