//! The gate's progress as a value, and what a run owes the cluster when it ends.
//!
//! A run moves through `Phase`s in order, and every step that changes the cluster pushes
//! what it made onto one list of `Owed` things as it makes it. When the run ends — every
//! check done, a step failed, or Ctrl-C — `cleanup_plan` decides from the phase, the list
//! and the outcome alone what is undone and what the report says, and the gate performs
//! that plan. Deciding apart from doing is what lets every combination be tested here.

/// How far a run got. Each phase implies every one before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Nothing done yet.
    #[default]
    Started,
    /// The reboot lock is held.
    Locked,
    /// The preflight found the cluster whole (or was forced past).
    Preflighted,
    /// The node is cordoned, by this run or by someone before it.
    Cordoned,
    /// Its pods are evicted.
    Drained,
    /// The reboot command was sent, or may have been: from here on the node may be down.
    RebootSent,
    /// The node went NotReady or changed its boot.
    Down,
    /// The node is Ready on a new boot.
    Back,
    /// Every check has a verdict.
    Checked,
}

impl Phase {
    /// The reboot was sent, or may have been: what a report's `rebooted` says. A run
    /// refused before that (permissions, the lock, the preflight, the drain) rebooted
    /// nothing, whatever it was asked to do.
    pub fn rebooted(self) -> bool {
        self >= Phase::RebootSent
    }
}

/// Something a run made in the cluster, which its end must undo or account for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owed {
    /// Probe pods labelled with this run id.
    ProbePods { run_id: String },
    /// Node-shell pods labelled with this run id: privileged, so never left behind.
    NodeShellPods { run_id: String },
    /// The node this run cordoned (not one that was cordoned before it).
    Cordon { node: String },
    /// The reboot lock's Lease, held by this run.
    Lease,
}

/// How a run ended, as far as its cleanup cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Every check that has a verdict passed (or had nothing to judge).
    pub all_passed: bool,
    /// Ctrl-C or SIGTERM cut the run short.
    pub interrupted: bool,
    /// The run's lease was taken over or expired while it held it: how.
    pub lock_lost: Option<String>,
}

/// One thing the end of a run does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    DeleteProbePods {
        run_ids: Vec<String>,
    },
    DeleteNodeShellPods {
        run_ids: Vec<String>,
    },
    Uncordon {
        node: String,
        note: Option<String>,
    },
    /// The node stays out of service; the note says why and how to lift it.
    LeaveCordoned {
        node: String,
        note: String,
    },
    ReleaseLease,
    /// Nothing to undo, only something the report must say.
    Note(String),
}

/// What a run owes when it ends, in the order it is done: probe pods first (they are
/// the run's own), then the cordon (the node goes back into service only when that is
/// safe), and the lock last, so no other run reboots a node while this one still
/// decides about its own.
///
/// A node this run cordoned is uncordoned when it was never rebooted (the reboot was not
/// sent, so it is as it was), or when every check passed and the run was not cut short.
/// A rebooted node that failed, or whose run was interrupted after the reboot, stays
/// cordoned, and the note says so.
pub fn cleanup_plan(phase: Phase, owed: &[Owed], outcome: &Outcome) -> Vec<Cleanup> {
    let mut plan = Vec::new();
    let run_ids = |pods_of: fn(&Owed) -> Option<&String>| -> Vec<String> {
        owed.iter().filter_map(pods_of).cloned().collect()
    };
    let probe_runs = run_ids(|o| match o {
        Owed::ProbePods { run_id } => Some(run_id),
        _ => None,
    });
    if !probe_runs.is_empty() {
        plan.push(Cleanup::DeleteProbePods {
            run_ids: probe_runs,
        });
    }
    // The node shells go whatever the outcome: nothing after the run may need them, and
    // a privileged pod is not left on a node.
    let shell_runs = run_ids(|o| match o {
        Owed::NodeShellPods { run_id } => Some(run_id),
        _ => None,
    });
    if !shell_runs.is_empty() {
        plan.push(Cleanup::DeleteNodeShellPods {
            run_ids: shell_runs,
        });
    }
    let rebooted = phase.rebooted();
    for owed in owed {
        let Owed::Cordon { node } = owed else {
            continue;
        };
        if !rebooted {
            plan.push(Cleanup::Uncordon {
                node: node.clone(),
                note: Some(format!(
                    "{node} was not rebooted, so it is uncordoned again as it was"
                )),
            });
        } else if outcome.all_passed && !outcome.interrupted && outcome.lock_lost.is_none() {
            plan.push(Cleanup::Uncordon {
                node: node.clone(),
                note: None,
            });
        } else {
            let why = if outcome.interrupted {
                "the run was interrupted"
            } else if outcome.lock_lost.is_some() {
                "the reboot lock was lost while it was down"
            } else {
                "a check did not pass"
            };
            plan.push(Cleanup::LeaveCordoned {
                node: node.clone(),
                note: format!(
                    "{node} stays cordoned: {why}; uncordon it with `kubectl uncordon {node}` once it is fixed"
                ),
            });
        }
    }
    if owed.contains(&Owed::Lease) {
        if let Some(how) = &outcome.lock_lost {
            plan.push(Cleanup::Note(format!(
                "the reboot lock was lost during the run ({how}): another run may have rebooted a node meanwhile"
            )));
        }
        // Even a lost lease is given back if it still names this run (nobody took it
        // over); a release never touches a lease that names another holder.
        plan.push(Cleanup::ReleaseLease);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const NODE: &str = "k8s-worker-03";

    fn everything() -> Vec<Owed> {
        vec![
            Owed::Lease,
            Owed::Cordon { node: NODE.into() },
            Owed::ProbePods {
                run_id: "r1".into(),
            },
        ]
    }

    fn outcome(all_passed: bool, interrupted: bool, lock_lost: bool) -> Outcome {
        Outcome {
            all_passed,
            interrupted,
            lock_lost: lock_lost.then(|| "taken over by another run".to_string()),
        }
    }

    /// What happens to the node this run cordoned, for every phase and outcome.
    #[rstest]
    fn the_cordon_is_lifted_only_when_that_is_safe(
        #[values(
            Phase::Started,
            Phase::Locked,
            Phase::Preflighted,
            Phase::Cordoned,
            Phase::Drained,
            Phase::RebootSent,
            Phase::Down,
            Phase::Back,
            Phase::Checked
        )]
        phase: Phase,
        #[values(true, false)] all_passed: bool,
        #[values(true, false)] interrupted: bool,
        #[values(true, false)] lock_lost: bool,
    ) {
        let plan = cleanup_plan(
            phase,
            &everything(),
            &outcome(all_passed, interrupted, lock_lost),
        );
        let uncordoned = plan
            .iter()
            .any(|c| matches!(c, Cleanup::Uncordon { node, .. } if node == NODE));
        let left = plan
            .iter()
            .any(|c| matches!(c, Cleanup::LeaveCordoned { node, .. } if node == NODE));
        let never_rebooted = phase < Phase::RebootSent;
        let safe = never_rebooted || (all_passed && !interrupted && !lock_lost);
        assert_eq!(uncordoned, safe, "{phase:?} {plan:?}");
        assert_eq!(left, !safe, "{phase:?} {plan:?}");
        // The probe pods always go first, the lock always last; its loss is said.
        assert!(matches!(
            plan.first(),
            Some(Cleanup::DeleteProbePods { .. })
        ));
        assert_eq!(plan.last(), Some(&Cleanup::ReleaseLease));
        let said_lost = plan
            .iter()
            .any(|c| matches!(c, Cleanup::Note(n) if n.contains("lost")));
        assert_eq!(said_lost, lock_lost);
    }

    #[rstest]
    #[case::refused_before_anything(Phase::Started, false)]
    #[case::refused_by_the_lock_or_rbac(Phase::Started, false)]
    #[case::refused_by_the_preflight(Phase::Locked, false)]
    #[case::the_drain_failed(Phase::Cordoned, false)]
    #[case::drained(Phase::Drained, false)]
    #[case::sent(Phase::RebootSent, true)]
    #[case::down(Phase::Down, true)]
    #[case::back(Phase::Back, true)]
    #[case::checked(Phase::Checked, true)]
    fn a_report_says_rebooted_only_once_the_reboot_was_sent(
        #[case] phase: Phase,
        #[case] rebooted: bool,
    ) {
        assert_eq!(phase.rebooted(), rebooted);
    }

    #[rstest]
    #[case::never_reached_the_api(vec![], vec![])]
    #[case::probes_only(
        vec![Owed::ProbePods { run_id: "r1".into() }, Owed::ProbePods { run_id: "r1-pre".into() }],
        vec![Cleanup::DeleteProbePods { run_ids: vec!["r1".into(), "r1-pre".into()] }]
    )]
    #[case::lock_only(vec![Owed::Lease], vec![Cleanup::ReleaseLease])]
    #[case::node_shells_before_the_lock(
        vec![Owed::Lease, Owed::NodeShellPods { run_id: "r1".into() }, Owed::ProbePods { run_id: "r1".into() }],
        vec![
            Cleanup::DeleteProbePods { run_ids: vec!["r1".into()] },
            Cleanup::DeleteNodeShellPods { run_ids: vec!["r1".into()] },
            Cleanup::ReleaseLease,
        ]
    )]
    fn a_run_undoes_only_what_it_made(#[case] owed: Vec<Owed>, #[case] expected: Vec<Cleanup>) {
        assert_eq!(
            cleanup_plan(Phase::Checked, &owed, &outcome(false, true, false)),
            expected
        );
    }

    #[test]
    fn a_node_that_was_cordoned_before_the_run_is_never_uncordoned_by_it() {
        // The run did not cordon it, so nothing of the cordon is on its list.
        let owed = vec![Owed::Lease];
        let plan = cleanup_plan(Phase::Checked, &owed, &outcome(true, false, false));
        assert!(!plan
            .iter()
            .any(|c| matches!(c, Cleanup::Uncordon { .. } | Cleanup::LeaveCordoned { .. })));
    }

    #[test]
    fn the_notes_say_why_a_node_stays_out_of_service() {
        let plan = cleanup_plan(Phase::Back, &everything(), &outcome(false, false, false));
        assert!(plan.iter().any(|c| matches!(c,
            Cleanup::LeaveCordoned { note, .. } if note.contains("a check did not pass") && note.contains("kubectl uncordon k8s-worker-03"))));
        let plan = cleanup_plan(Phase::Drained, &everything(), &outcome(false, true, false));
        assert!(plan.iter().any(|c| matches!(c,
            Cleanup::Uncordon { note: Some(note), .. } if note.contains("was not rebooted"))));
    }
}
