//! BGP as BIRD reports it: every session Established.

use super::{Evidence, Judgement, Verdict};

/// One BGP session as BIRD's `show protocols` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpSession {
    pub name: String,
    pub state: String,
    pub info: String,
}

impl BgpSession {
    pub fn established(&self) -> bool {
        self.info.starts_with("Established")
    }
}

/// The BGP sessions in `birdcl show protocols` output (`Name Proto Table State Since
/// Info`); other protocols (device, kernel, static) are not sessions.
pub fn parse_bgp_sessions(show_protocols: &str) -> Vec<BgpSession> {
    show_protocols
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 5 && fields[1] == "BGP").then(|| BgpSession {
                name: fields[0].into(),
                state: fields[3].into(),
                info: fields
                    .get(5..)
                    .map(|rest| rest.join(" "))
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// `bgp_sessions_established`: BIRD on the node has every BGP session Established, as
/// calico-node's `-bird-ready` demands. None: BIRD's control socket did not answer.
pub fn judge_bgp(show_protocols: Option<&str>, socket: &str) -> Judgement {
    let Some(output) = show_protocols else {
        let message = format!("BIRD does not answer on {socket}: calico-node has not started it");
        return (
            Verdict::Failed(message),
            vec![Evidence::new(
                "BIRD",
                "not running",
                "running, sessions Established",
            )],
        );
    };
    let sessions = parse_bgp_sessions(output);
    if sessions.is_empty() {
        let message = "BIRD runs but has no BGP session: the node peers with nobody".to_string();
        return (
            Verdict::Failed(message),
            vec![Evidence::new(
                "BGP sessions",
                "none",
                "one per peer, Established",
            )],
        );
    }
    let evidence = sessions
        .iter()
        .map(|s| {
            Evidence::new(
                format!("BGP {}", s.name),
                format!("{} {}", s.state, s.info).trim_end().to_string(),
                "up Established",
            )
        })
        .collect();
    let down: Vec<String> = sessions
        .iter()
        .filter(|s| !s.established())
        .map(|s| format!("{} ({} {})", s.name, s.state, s.info).replace(" )", ")"))
        .collect();
    if down.is_empty() {
        (Verdict::Passed, evidence)
    } else {
        let message = format!(
            "{} of {} BGP sessions are not Established: {}",
            down.len(),
            sessions.len(),
            down.join(", ")
        );
        (Verdict::Failed(message), evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bgp_sessions_are_read_from_show_protocols() {
        let output = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\n\
            device1    Device     ---        up     17:43:07.686\n\
            Mesh_0     BGP        ---        up     17:43:08.495  Established\n\
            Mesh_1     BGP        ---        start  17:43:08.604  Active        Socket: Connection refused\n";
        let sessions = parse_bgp_sessions(output);
        assert_eq!(sessions.len(), 2);
        let (verdict, evidence) = judge_bgp(Some(output), "/var/run/calico/bird.ctl");
        let Verdict::Failed(message) = verdict else {
            panic!("{verdict:?}")
        };
        assert!(
            message.contains("1 of 2")
                && message.contains("Mesh_1 (start Active Socket: Connection refused)"),
            "{message}"
        );
        assert_eq!(evidence.len(), 2);
        assert!(
            matches!(judge_bgp(None, "/s").0, Verdict::Failed(ref m) if m.contains("does not answer"))
        );
        let healthy = output.replace(
            "start  17:43:08.604  Active        Socket: Connection refused",
            "up 17:43:08.604 Established",
        );
        assert_eq!(judge_bgp(Some(&healthy), "/s").0, Verdict::Passed);
    }
}
