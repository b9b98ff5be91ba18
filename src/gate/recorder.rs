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
            progress,
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
    }

    /// Adds what is learnt of the run's identity (its ID, the API server, the lock
    /// holder) as the run learns it.
    pub(super) fn identify(&self, learn: impl FnOnce(&mut RunIdentity)) {
        learn(&mut self.identity.lock().expect("recorder lock"));
    }

    pub(super) fn note(&self, note: String) {
        self.notes.lock().expect("recorder lock").push(note);
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
