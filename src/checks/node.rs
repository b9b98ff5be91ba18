//! The node itself: Ready, and on a new boot.

use super::{Evidence, Judgement, Verdict};
use k8s_openapi::api::core::v1::Node;

pub fn judge_node_ready(node: &Node) -> Judgement {
    let condition = crate::cluster::describe_ready_condition(node);
    let evidence = vec![Evidence::new("Ready condition", &condition, "Ready=True")];
    if crate::cluster::node_ready(node) {
        (Verdict::Passed, evidence)
    } else {
        (
            Verdict::Failed(format!("node is not Ready: {condition}")),
            evidence,
        )
    }
}

pub fn judge_boot_id(before: &str, after: &str) -> Judgement {
    let evidence = vec![Evidence::new(
        "bootID",
        after,
        format!("different from {before}"),
    )];
    if before != after && !after.is_empty() {
        (Verdict::Passed, evidence)
    } else {
        (
            Verdict::Failed(format!(
                "boot ID is still {before}: the node did not reboot"
            )),
            evidence,
        )
    }
}

/// `boot_id_changed` for a node that went down after the reboot command and did not
/// come back within its deadline: a node that is down reports nothing, so an unchanged
/// boot ID says it never came back, not that it did not reboot.
pub fn judge_boot_id_not_back(before: &str, last_reported: &str, waited: &str) -> Judgement {
    if before != last_reported && !last_reported.is_empty() {
        return judge_boot_id(before, last_reported);
    }
    let evidence = vec![Evidence::new(
        "bootID",
        format!("{before} (the last it reported, before it went down)"),
        format!("different from {before}"),
    )];
    (
        Verdict::Failed(format!(
            "the node went down after the reboot command and did not come back within {waited}: no new boot was reported"
        )),
        evidence,
    )
}

/// When a node's PID 1 started: what proves that a node which is a container restarted,
/// since its boot ID is its host's and never changes. Read from `/proc/1/stat` (ticks
/// since the kernel booted) and `/proc/stat`'s `btime` (when it booted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStart {
    pub ticks_after_boot: u64,
    pub kernel_booted_at: i64,
}

/// Clock ticks per second in /proc (USER_HZ): 100 on every architecture Linux runs
/// Kubernetes nodes on; the kernel's own HZ does not show through.
const USER_HZ: u64 = 100;

impl ProcessStart {
    /// The command that prints what [`ProcessStart::parse`] reads.
    pub const COMMAND: &'static str = "cat /proc/1/stat && grep '^btime ' /proc/stat";

    /// Reads the output of [`ProcessStart::COMMAND`]. The process name in `stat` may
    /// hold spaces and parentheses, so fields are counted from its last `)`.
    pub fn parse(output: &str) -> Option<Self> {
        let mut lines = output.lines();
        let stat = lines.next()?;
        let after_name = &stat[stat.rfind(')')? + 1..];
        // Field 22 of stat; the text after the name starts at field 3.
        let ticks_after_boot = after_name.split_whitespace().nth(19)?.parse().ok()?;
        let kernel_booted_at = lines
            .find_map(|line| line.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(ProcessStart {
            ticks_after_boot,
            kernel_booted_at,
        })
    }

    /// When PID 1 started, to the second, on the node's clock.
    pub fn timestamp(&self) -> Option<k8s_openapi::jiff::Timestamp> {
        let seconds = self.kernel_booted_at + (self.ticks_after_boot / USER_HZ) as i64;
        k8s_openapi::jiff::Timestamp::from_second(seconds).ok()
    }

    /// When PID 1 started, to the second, in UTC.
    pub fn started_at(&self) -> String {
        self.timestamp().map_or_else(
            || format!("{} ticks after the kernel booted", self.ticks_after_boot),
            |t| t.to_string(),
        )
    }
}

/// A container node restarted: its boot ID changed (it was rebooted with its host), or
/// else its PID 1 is a process started since the one before the restart. The evidence
/// says which proved it.
pub fn judge_restart(
    boot_before: &str,
    boot_after: &str,
    before: &ProcessStart,
    after: &ProcessStart,
) -> Judgement {
    if boot_before != boot_after && !boot_after.is_empty() {
        let evidence = vec![Evidence::new(
            "bootID",
            boot_after,
            format!("different from {boot_before}"),
        )];
        return (Verdict::Passed, evidence);
    }
    let evidence = vec![
        Evidence::new(
            "PID 1 started",
            after.started_at(),
            format!("later than {} (before the restart)", before.started_at()),
        ),
        Evidence::new(
            "bootID",
            format!("{boot_after} (unchanged)"),
            "the host's, shared by a container node",
        ),
    ];
    // Ticks since the shared kernel booted, not wall-clock time: btime moves when the
    // clock is stepped, and the kernel is the same one before and after.
    let restarted = after.ticks_after_boot > before.ticks_after_boot;
    if restarted {
        (Verdict::Passed, evidence)
    } else {
        (
            Verdict::Failed(format!(
                "PID 1 still runs since {}: the node did not restart",
                before.started_at()
            )),
            evidence,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::Verdict;

    #[test]
    fn boot_id_must_change() {
        assert_eq!(judge_boot_id("a", "b").0, Verdict::Passed);
        assert!(matches!(judge_boot_id("a", "a").0, Verdict::Failed(_)));
    }

    #[test]
    fn a_node_that_went_down_and_stayed_down_is_not_said_to_have_stayed_up() {
        let (verdict, evidence) = judge_boot_id_not_back("b1", "b1", "5m");
        let Verdict::Failed(message) = verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!(
            message,
            "the node went down after the reboot command and did not come back within 5m: no new boot was reported"
        );
        assert!(!message.contains("did not reboot"));
        assert!(evidence[0].observed.contains("before it went down"));
        // Back on a new boot but not Ready: the boot ID did change.
        assert_eq!(judge_boot_id_not_back("b1", "b2", "5m").0, Verdict::Passed);
    }

    const STAT: &str = "1 (systemd (init)) S 0 1 1 0 -1 4194560 41 0 0 0 3 5 0 0 20 0 1 0 123456 22200320 2982 18446744073709551615 1 1 0 0 0 0 671173123 4096 1260 0 0 0 17 0 0 0 0 0 0\nbtime 1764150000\n";

    #[test]
    fn pid_1_start_is_read_past_a_name_with_spaces_and_parentheses() {
        let start = ProcessStart::parse(STAT).expect("parses");
        assert_eq!(start.ticks_after_boot, 123456);
        assert_eq!(start.kernel_booted_at, 1764150000);
        assert_eq!(start.started_at(), "2025-11-26T10:00:34Z");
        assert_eq!(ProcessStart::parse("garbage"), None);
        assert_eq!(ProcessStart::parse("1 (init) S 0\nbtime 5\n"), None);
    }

    #[test]
    fn a_container_restart_is_proven_by_a_new_pid_1_and_says_so() {
        let before = ProcessStart::parse(STAT).unwrap();
        let after = ProcessStart {
            ticks_after_boot: before.ticks_after_boot + 4_000,
            ..before
        };
        let (verdict, evidence) = judge_restart("b1", "b1", &before, &after);
        assert_eq!(verdict, Verdict::Passed);
        assert_eq!(evidence[0].what, "PID 1 started");
        assert!(evidence[1].observed.contains("unchanged"));
        let (verdict, _) = judge_restart("b1", "b1", &before, &before);
        assert!(matches!(verdict, Verdict::Failed(m) if m.contains("did not restart")));
        // Rebooted with its host: the boot ID says it.
        let (verdict, evidence) = judge_restart("b1", "b2", &before, &before);
        assert_eq!(verdict, Verdict::Passed);
        assert_eq!(evidence[0].what, "bootID");
    }
}
