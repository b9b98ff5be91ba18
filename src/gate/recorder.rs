//! The record of one node's run: each check's result as it comes, the timing of every
//! step, and the notes the report carries; the checks a run promised and did not
//! record become errors at the end.

use super::*;

/// Collects results and step timings; shared by the steps of one node's run.
pub(super) struct Recorder<'a> {
    node: String,
    /// The checks this run reports, in order; any not recorded at the end is an error.
    expected: Vec<CheckName>,
    results: Mutex<Vec<CheckResult>>,
    steps: Mutex<Vec<StepTiming>>,
    notes: Mutex<Vec<String>>,
    last_verdict: Mutex<Option<Instant>>,
    identity: Mutex<RunIdentity>,
    /// When the node's run began: steps are placed on its timeline from here.
    began: Instant,
    began_at: Timestamp,
    /// The reboot was sent, or may have been, as far as the run knows so far.
    reboot_sent: std::sync::atomic::AtomicBool,
    progress: &'a dyn Progress,
}

impl<'a> Recorder<'a> {
    /// The results and step timings so far, for a front end that reports them itself.
    pub(super) fn into_parts(self) -> (Vec<CheckResult>, Vec<StepTiming>) {
        (
            self.results.into_inner().expect("recorder lock"),
            self.steps.into_inner().expect("recorder lock"),
        )
    }

    pub(super) fn new(node: &str, progress: &'a dyn Progress, expected: &[CheckName]) -> Self {
        Recorder {
            node: node.into(),
            expected: expected.to_vec(),
            results: Mutex::default(),
            steps: Mutex::default(),
            notes: Mutex::default(),
            last_verdict: Mutex::default(),
            identity: Mutex::default(),
            began: Instant::now(),
            began_at: Timestamp::now(),
            reboot_sent: Default::default(),
            progress,
        }
    }

    /// Whether the reboot was sent (or may have been), for the report so far.
    pub(super) fn set_reboot_sent(&self, sent: bool) {
        self.reboot_sent
            .store(sent, std::sync::atomic::Ordering::Relaxed);
        self.publish();
    }

    /// The report as it stands, for a front end that may have to write it before the
    /// run ends (a second Ctrl-C): every check not recorded yet is an error saying the
    /// run was interrupted before it, and the report is marked interrupted.
    fn report_so_far(&self) -> NodeReport {
        let mut results = self.results.lock().expect("recorder lock").clone();
        for name in &self.expected {
            if !results.iter().any(|r| r.name == *name) {
                results.push(CheckResult::error(
                    *name,
                    &self.node,
                    ErrorKind::Interrupted,
                    "the run was interrupted before this check had a verdict",
                    Duration::ZERO,
                ));
            }
        }
        results.sort_by_key(|r| r.name);
        NodeReport {
            node: self.node.clone(),
            rebooted: self.reboot_sent.load(std::sync::atomic::Ordering::Relaxed),
            started_at: self.began_at.to_string(),
            results,
            steps: self.steps.lock().expect("recorder lock").clone(),
            ready_to_verdict: None,
            interrupted: true,
            notes: self.notes.lock().expect("recorder lock").clone(),
            run: self.identity.lock().expect("recorder lock").clone(),
            elapsed: self.began.elapsed(),
        }
    }

    /// Hands the report so far to the front end, if it keeps one.
    fn publish(&self) {
        if self.progress.keeps_reports_so_far() {
            self.progress.report_so_far(&self.report_so_far());
        }
    }

    /// Every check recorded so far passed, or had nothing to judge.
    pub(super) fn all_passed(&self) -> bool {
        self.results
            .lock()
            .expect("recorder lock")
            .iter()
            .all(CheckResult::passed)
    }

    pub(super) fn record(&self, result: CheckResult) {
        let result = result.bounded();
        self.progress.check_finished(&result);
        *self.last_verdict.lock().expect("recorder lock") = Some(Instant::now());
        self.results.lock().expect("recorder lock").push(result);
        self.publish();
    }

    /// Adds what is learnt of the run's identity (its ID, the API server, the lock
    /// holder) as the run learns it.
    pub(super) fn identify(&self, learn: impl FnOnce(&mut RunIdentity)) {
        learn(&mut self.identity.lock().expect("recorder lock"));
        self.publish();
    }

    pub(super) fn note(&self, note: String) {
        self.notes.lock().expect("recorder lock").push(note);
        self.publish();
    }

    pub(super) async fn timed<T>(
        &self,
        step: &str,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        self.progress.step_started(&self.node, step);
        let started = Instant::now();
        let started_after = started.saturating_duration_since(self.began);
        let value = work.await;
        let took = started.elapsed();
        self.progress.step_finished(&self.node, step, took);
        self.steps.lock().expect("recorder lock").push(StepTiming {
            step: step.into(),
            started_after,
            duration: took,
        });
        self.publish();
        value
    }

    pub(super) fn into_report(
        self,
        rebooted: bool,
        started_at: Timestamp,
        ready_at: Option<Instant>,
    ) -> NodeReport {
        let mut results = self.results.into_inner().expect("recorder lock");
        results.sort_by_key(|r| r.name);
        let last_verdict = self.last_verdict.into_inner().expect("recorder lock");
        NodeReport {
            node: self.node,
            rebooted,
            started_at: started_at.to_string(),
            results,
            steps: self.steps.into_inner().expect("recorder lock"),
            ready_to_verdict: ready_at
                .zip(last_verdict)
                .map(|(ready, verdict)| verdict.saturating_duration_since(ready)),
            interrupted: false,
            notes: self.notes.into_inner().expect("recorder lock"),
            run: self.identity.into_inner().expect("recorder lock"),
            elapsed: self.began.elapsed(),
        }
    }

    /// Every expected check not recorded yet becomes an error saying why it did not run.
    pub(super) fn error_remaining(&self, kind: ErrorKind, why: &str) {
        let missing: Vec<CheckName> = {
            let results = self.results.lock().expect("recorder lock");
            self.expected
                .iter()
                .copied()
                .filter(|name| !results.iter().any(|r| r.name == *name))
                .collect()
        };
        for name in missing {
            self.record(CheckResult::error(
                name,
                &self.node,
                kind,
                why.to_string(),
                Duration::ZERO,
            ));
        }
    }
}

pub(super) fn check_result(
    name: CheckName,
    node: &str,
    (verdict, evidence): Judgement,
    started: Instant,
) -> CheckResult {
    CheckResult::new(name, node, verdict, evidence, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a second Ctrl-C writes: the checks so far, the rest as errors saying the run
    /// was interrupted, the report marked interrupted, and the file on disk.
    #[tokio::test]
    async fn the_report_so_far_is_kept_for_a_second_signal_to_write() {
        let kept = std::sync::Arc::new(crate::report::ReportsSoFar::default());
        let progress = KeepingReports::new(&Quiet, kept.clone());
        let recorder = Recorder::new(
            "k8s-worker-03",
            &progress,
            &[CheckName::NodeReadyAfterReboot, CheckName::CalicoNodeReady],
        );
        recorder.identify(|run| run.run_id = "0badc0de".into());
        recorder.timed("take the reboot lock", async {}).await;
        recorder.set_reboot_sent(true);
        recorder.record(CheckResult::new(
            CheckName::NodeReadyAfterReboot,
            "k8s-worker-03",
            Verdict::Passed,
            Vec::new(),
            Duration::from_secs(1),
        ));
        let reports = kept.reports();
        assert_eq!(reports.len(), 1);
        let report = &reports[0];
        assert!(report.interrupted && report.rebooted);
        assert_eq!(report.run.run_id, "0badc0de");
        assert_eq!(report.steps[0].step, "take the reboot lock");
        assert_eq!(report.results[0].verdict, Verdict::Passed);
        assert!(matches!(
            &report.results[1].verdict,
            Verdict::Error(m) if m.contains("interrupted before this check")
        ));
        let dir = tempfile::tempdir().unwrap();
        let files = crate::report::ReportFiles {
            junit: Some(dir.path().join("junit.xml")),
            json: Some(dir.path().join("report.json")),
            ..Default::default()
        };
        let written = kept.write(&files, "postflight verify").unwrap();
        assert_eq!(written.len(), 2, "{written:?}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
                .unwrap();
        assert_eq!(json["nodes"][0]["interrupted"], true);
        assert_eq!(json["exit_code"], 130);
        assert!(std::fs::read_to_string(dir.path().join("junit.xml"))
            .unwrap()
            .contains("interrupted"));
    }

    #[test]
    fn a_front_end_that_keeps_nothing_costs_no_copy() {
        assert!(!Quiet.keeps_reports_so_far());
    }
}
