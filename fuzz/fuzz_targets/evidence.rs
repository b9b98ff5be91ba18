//! Everything postflight parses from a node's output, and the writers it feeds, on
//! arbitrary bytes: `stat`, tmpfiles.d files and `systemd-tmpfiles --cat-config`, BIRD's
//! `show protocols`, and the hostile-text rules for XML and the terminal. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postflight::checks::{
    effective_tmpfiles_entry, judge_bgp, judge_next_boot, judge_node_tmpfiles, judge_tmpfiles,
    parse_bgp_sessions, parse_tmpfiles, RunDirStat,
};
use postflight::diagnose::session_peer_address;
use postflight::expectations::{CalicoExpectations, TmpfilesDeclaration};
use postflight::hostile;

fuzz_target!(|data: &[u8]| {
    let text = hostile::lossy(data.to_vec());
    let _ = RunDirStat::parse(&text);
    let site = CalicoExpectations::hardened_site();
    let declared = TmpfilesDeclaration {
        file: "/etc/tmpfiles.d/calico.conf".into(),
        line: "d /run/calico 0755 999 999 -".into(),
    };
    let _ = parse_tmpfiles(&text);
    if let Some(entry) = effective_tmpfiles_entry(&text, "/var/run/calico") {
        let _ = entry.stat();
    }
    let _ = judge_tmpfiles(Some(&text), &declared, "/var/run/calico");
    let _ = judge_node_tmpfiles(&text, &site);
    let _ = judge_next_boot(&text, &site);
    for session in parse_bgp_sessions(&text) {
        let _ = session_peer_address(&session.name);
    }
    let _ = judge_bgp(Some(&text), "/var/run/calico/bird.ctl");
    let _ = hostile::for_terminal(&text);
    let _ = hostile::for_cdata(&text);
    let _ = hostile::truncate(&text, 7);
    let _ = hostile::tail(&text, 7);
});
