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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::Verdict;

    #[test]
    fn boot_id_must_change() {
        assert_eq!(judge_boot_id("a", "b").0, Verdict::Passed);
        assert!(matches!(judge_boot_id("a", "a").0, Verdict::Failed(_)));
    }
}
