//! The probes' fast path: agnhost netexec's `/dial`. A probe pod S asking pod B for
//! `/dial?host=C&port=P&request=hostname&protocol=http&tries=1` makes B itself fetch
//! `http://C:P/hostname`; B answers 200 only when that fetch got an answer (417 when it
//! did not, 400 for bad parameters). So one HTTP 200 proves two directed pairs, S → B
//! (the request arrived and was answered) and B → C (B's own dial), and one exec in one
//! pod can prove a whole mesh. Whatever a 200 does not prove is probed directly, as
//! without the fast path, so a failure keeps the client's own error, its retries and
//! its flakiness.

use super::*;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// At most this many /dial URLs per exec: several execs from the same pod run at once,
/// and none carries an argv (or a wait) that grows with the whole mesh.
const DIAL_URLS_PER_EXEC: usize = 256;

/// The client's limit for one /dial URL: agnhost gives its own fetch 5 s per try, and
/// the answer needs time to come back, so that a failed dial is seen as B's 417 (B
/// could not reach C) rather than as a timeout of the whole request.
const DIAL_CLIENT_TIMEOUT: Duration = Duration::from_secs(7);

/// One /dial URL of an exec: `http://VIA/dial?host=HOST…`, and the pairs its HTTP 200
/// proves, as indexes into the planned pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DialUrl {
    pub url: String,
    /// Source → VIA: proven by VIA answering the request.
    pub arrives: Vec<usize>,
    /// VIA → HOST: proven by VIA's own fetch; a 417 is their failure.
    pub dials: Vec<usize>,
}

/// One exec: the client in `source` reaching every URL at once.
#[derive(Debug, Clone)]
pub(super) struct DialExec {
    pub source: ReadyProbe,
    pub urls: Vec<DialUrl>,
}

/// The dial-back execs for a set of directed pairs. One source pod, the hub (the pod in
/// the most pairs), suffices for any set: the hub's own outgoing pairs are proven by its
/// requests arriving, and every other pair X → Y by asking X to dial Y. Pairs that cannot
/// be planned (a pod to itself, an address that is not an IP) are in no URL's claims.
pub(super) fn plan_dial_back(pairs: &[Pair], port: u16) -> Vec<DialExec> {
    // A pod's address comes from the cluster: only a real IP goes into a query string,
    // where anything else could name another host to dial.
    let ip = |probe: &ReadyProbe| probe.ip.parse::<IpAddr>().ok();
    let plannable: Vec<usize> = (0..pairs.len())
        .filter(|&i| {
            let pair = &pairs[i];
            pair.from.name != pair.to.name && ip(&pair.from).is_some() && ip(&pair.to).is_some()
        })
        .collect();
    let Some(hub) = busiest_pod(pairs, &plannable) else {
        return Vec::new();
    };

    let mut urls: Vec<(ReadyProbe, DialUrl)> = Vec::new();
    let mut url_index: HashMap<(String, String), usize> = HashMap::new();
    let mut add_url =
        |urls: &mut Vec<(ReadyProbe, DialUrl)>, via: &ReadyProbe, host: &ReadyProbe| {
            *url_index
                .entry((via.name.clone(), host.name.clone()))
                .or_insert_with(|| {
                    let url = dial_url(
                        ip(via).expect("plannable"),
                        ip(host).expect("plannable"),
                        port,
                    );
                    urls.push((
                        via.clone(),
                        DialUrl {
                            url,
                            arrives: Vec::new(),
                            dials: Vec::new(),
                        },
                    ));
                    urls.len() - 1
                })
        };
    // The hub's own pairs, by target, in the order they were asked for.
    let mut arrivals: Vec<(&ReadyProbe, Vec<usize>)> = Vec::new();
    for &i in &plannable {
        let pair = &pairs[i];
        if pair.from.name == hub.name {
            match arrivals.iter_mut().find(|(to, _)| to.name == pair.to.name) {
                Some((_, indexes)) => indexes.push(i),
                None => arrivals.push((&pair.to, vec![i])),
            }
        } else {
            let at = add_url(&mut urls, &pair.from, &pair.to);
            urls[at].1.dials.push(i);
        }
    }
    for (target, indexes) in arrivals {
        if !urls.iter().any(|(via, _)| via.name == target.name) {
            // No pair asks the target to dial anywhere: it dials itself, which never
            // leaves its network namespace, so the answer proves the arrival alone.
            add_url(&mut urls, target, target);
        }
        for (via, url) in urls.iter_mut() {
            if via.name == target.name {
                url.arrives.extend(&indexes);
            }
        }
    }

    let urls: Vec<DialUrl> = urls.into_iter().map(|(_, url)| url).collect();
    let execs = urls.len().div_ceil(DIAL_URLS_PER_EXEC).max(1);
    let per_exec = urls.len().div_ceil(execs).max(1);
    urls.chunks(per_exec)
        .map(|chunk| DialExec {
            source: hub.clone(),
            urls: chunk.to_vec(),
        })
        .collect()
}

/// The pod that is an end of the most plannable pairs (the first of them on a tie): the
/// node under test's own pod after a reboot, so that its pairs need no dial at all.
fn busiest_pod<'a>(pairs: &'a [Pair], plannable: &[usize]) -> Option<&'a ReadyProbe> {
    let mut counts: Vec<(&ReadyProbe, usize)> = Vec::new();
    for &i in plannable {
        for probe in [&pairs[i].from, &pairs[i].to] {
            match counts.iter_mut().find(|(p, _)| p.name == probe.name) {
                Some((_, count)) => *count += 1,
                None => counts.push((probe, 1)),
            }
        }
    }
    let most = counts.iter().map(|(_, count)| *count).max()?;
    counts
        .into_iter()
        .find(|(_, count)| *count == most)
        .map(|(probe, _)| probe)
}

/// agnhost joins `host` and `port` itself, so `host` is the bare address; the URL's own
/// authority brackets an IPv6 one.
fn dial_url(via: IpAddr, host: IpAddr, port: u16) -> String {
    format!(
        "http://{}/dial?host={host}&port={port}&request=hostname&protocol=http&tries=1",
        SocketAddr::new(via, port)
    )
}

/// What the dial-back execs said about one pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DialVerdict {
    /// An HTTP 200 to this URL proved it.
    Proven { url: String },
    /// Nothing proved it: probe it directly. `earlier` holds what a 417 said about the
    /// pair's own dial, or the client's error for a /dial request that the pair's
    /// source sent to its destination and got no answer to: a failed attempt of that very
    /// pair, so a direct pass is flaky.
    Direct { earlier: Vec<String> },
}

/// Each pair's verdict from the execs' answers: `answers[e]` is exec `e`'s result per
/// URL, or `None` when the exec told nothing. Only a 200 proves; a curl error, a 404 from
/// a server without /dial, a 400, or a 417 leave the pair to the direct probes, the 417
/// and the curl error as a first try of the pair they failed.
pub(super) fn settle(
    execs: &[DialExec],
    pair_count: usize,
    answers: &[Option<ClientResults>],
) -> Vec<DialVerdict> {
    let mut proven: Vec<Option<String>> = vec![None; pair_count];
    let mut earlier: Vec<Vec<String>> = vec![Vec::new(); pair_count];
    for (exec, answer) in execs.iter().zip(answers) {
        let Some(results) = answer else { continue };
        for (url, result) in exec.urls.iter().zip(results) {
            match result {
                Some(Ok(200)) => {
                    for &i in url.arrives.iter().chain(&url.dials) {
                        proven[i].get_or_insert_with(|| url.url.clone());
                    }
                }
                Some(Ok(417)) => {
                    for &i in &url.dials {
                        earlier[i]
                            .push(format!("HTTP 417 (its own fetch failed) from {}", url.url));
                    }
                }
                // The request itself got no answer (timed out, refused, reset): the
                // source's own try at VIA failed, which is what a direct probe of the
                // arriving pair tries again; whether VIA dialled at all is not known.
                Some(Err(error)) => {
                    for &i in &url.arrives {
                        earlier[i].push(format!("{error} (the /dial request {})", url.url));
                    }
                }
                _ => {}
            }
        }
    }
    proven
        .into_iter()
        .zip(earlier)
        .map(|(proven, earlier)| match proven {
            Some(url) => DialVerdict::Proven { url },
            None => DialVerdict::Direct { earlier },
        })
        .collect()
}

/// Only agnhost netexec is known to serve /dial as described: another probe server may
/// answer 200 to any path, which would prove nothing about the pod it names.
fn serves_dial(settings: &crate::inventory::ProbeSettings) -> bool {
    settings
        .server_args
        .first()
        .is_some_and(|arg| arg == "netexec")
}

/// Probes `pairs` through the dial-back execs first, then directly (as
/// `probe_until_settled`) every pair they did not prove. For a network expected healthy:
/// a failed dial costs up to `DIAL_CLIENT_TIMEOUT` before the direct probes start.
pub(super) async fn probe_with_dial_back(
    cluster: &Cluster,
    inventory: &Inventory,
    namespace: &str,
    pairs: Vec<Pair>,
    tries: Tries,
) -> Vec<(Pair, ProbeRun)> {
    if !serves_dial(&inventory.probe) {
        return probe_until_settled(cluster, inventory, namespace, pairs, tries).await;
    }
    let execs = plan_dial_back(&pairs, inventory.probe.port);
    let answers: Vec<Option<ClientResults>> = futures::stream::iter(&execs)
        .map(|exec| async move {
            let urls: Vec<String> = exec.urls.iter().map(|u| u.url.clone()).collect();
            run_client(
                cluster,
                inventory,
                namespace,
                &exec.source.name,
                &urls,
                tries.connect_timeout,
                DIAL_CLIENT_TIMEOUT,
            )
            .await
            .ok()
        })
        .buffered(PROBE_CONCURRENCY)
        .collect()
        .await;
    let verdicts = settle(&execs, pairs.len(), &answers);
    let mut done = Vec::new();
    let mut direct = Vec::new();
    for (pair, verdict) in pairs.into_iter().zip(verdicts) {
        match verdict {
            DialVerdict::Proven { url } => {
                let outcome = pair.outcome(url, Ok(200), Vec::new());
                done.push((pair, ProbeRun::Ran(outcome)));
            }
            DialVerdict::Direct { earlier } => direct.push((pair, earlier)),
        }
    }
    if !direct.is_empty() {
        done.extend(probe_until_settled_after(cluster, inventory, namespace, direct, tries).await);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn probe(index: usize, ipv6: bool) -> ReadyProbe {
        ReadyProbe {
            name: format!("pf-{index}"),
            node: format!("node-{index:03}"),
            ip: if ipv6 {
                format!("fd00::{:x}", index + 1)
            } else {
                format!("198.19.{}.{}", index / 200, index % 200 + 1)
            },
            container: None,
        }
    }

    fn pair(probes: &[ReadyProbe], from: usize, to: usize) -> Pair {
        Pair {
            from: probes[from].clone(),
            to: probes[to].clone(),
            same_node: probes[from].node == probes[to].node,
        }
    }

    /// The post-reboot check's pairs: pods 0 and 1 on the node under test, both ways,
    /// and pod 0 to and from each of the `others` pods after them.
    fn after_reboot(others: usize, ipv6: bool) -> (Vec<ReadyProbe>, Vec<Pair>) {
        let mut probes: Vec<ReadyProbe> = (0..others + 2).map(|i| probe(i, ipv6)).collect();
        probes[1].node = probes[0].node.clone();
        let mut pairs = vec![pair(&probes, 0, 1), pair(&probes, 1, 0)];
        for other in 2..others + 2 {
            pairs.push(pair(&probes, 0, other));
            pairs.push(pair(&probes, other, 0));
        }
        (probes, pairs)
    }

    /// The preflight's pairs over `nodes` pods, the node under test being the fourth.
    fn preflight(nodes: usize) -> (Vec<ReadyProbe>, Vec<Pair>) {
        let probes: Vec<ReadyProbe> = (0..nodes).map(|i| probe(i, false)).collect();
        let names: Vec<&str> = probes.iter().map(|p| p.node.as_str()).collect();
        let pairs = preflight_pairs(&names, names[3])
            .into_iter()
            .map(|(from, to)| pair(&probes, from, to))
            .collect();
        (probes, pairs)
    }

    /// Every ordered pair of `nodes` pods: the preflight's set for a small cluster, and
    /// the planner's largest case.
    fn full_mesh(nodes: usize) -> (Vec<ReadyProbe>, Vec<Pair>) {
        let probes: Vec<ReadyProbe> = (0..nodes).map(|i| probe(i, false)).collect();
        let pairs = (0..nodes)
            .flat_map(|from| (0..nodes).map(move |to| (from, to)))
            .filter(|(from, to)| from != to)
            .map(|(from, to)| pair(&probes, from, to))
            .collect();
        (probes, pairs)
    }

    /// Reads each URL back (not trusting the planner's bookkeeping): which pod it asks,
    /// which pod that one is to dial, and that the query is what agnhost expects.
    fn read_url<'a>(url: &str, probes: &'a [ReadyProbe]) -> (&'a ReadyProbe, &'a ReadyProbe) {
        let rest = url.strip_prefix("http://").expect(url);
        let (authority, query) = rest.split_once("/dial?").expect(url);
        let via_ip = authority
            .rsplit_once(':')
            .map(|(ip, _)| ip.trim_start_matches('[').trim_end_matches(']'))
            .expect(url);
        let params: HashMap<&str, &str> = query
            .split('&')
            .map(|kv| kv.split_once('=').expect(url))
            .collect();
        assert_eq!(params.len(), 5, "{url}");
        assert_eq!(params["port"], "8080", "{url}");
        assert_eq!(params["request"], "hostname", "{url}");
        assert_eq!(params["protocol"], "http", "{url}");
        assert_eq!(params["tries"], "1", "{url}");
        let by_ip = |ip: &str| probes.iter().find(|p| p.ip == ip).expect(url);
        (by_ip(via_ip), by_ip(params["host"]))
    }

    /// Every claim is what a 200 of its URL proves, from the exec's source pod; returns
    /// the pairs claimed, by index.
    fn checked_claims(execs: &[DialExec], probes: &[ReadyProbe], pairs: &[Pair]) -> Vec<usize> {
        let mut claimed = Vec::new();
        for exec in execs {
            assert!(exec.urls.len() <= DIAL_URLS_PER_EXEC, "{}", exec.urls.len());
            for url in &exec.urls {
                let (via, host) = read_url(&url.url, probes);
                for &i in &url.arrives {
                    assert_eq!(
                        (&pairs[i].from.name, &pairs[i].to.name),
                        (&exec.source.name, &via.name),
                        "{} claims an arrival it does not prove",
                        url.url
                    );
                }
                for &i in &url.dials {
                    assert_eq!(
                        (&pairs[i].from.name, &pairs[i].to.name),
                        (&via.name, &host.name),
                        "{} claims a dial it does not make",
                        url.url
                    );
                }
                claimed.extend(url.arrives.iter().chain(&url.dials));
            }
        }
        claimed.sort_unstable();
        claimed.dedup();
        claimed
    }

    fn sources(execs: &[DialExec]) -> std::collections::BTreeSet<&str> {
        execs.iter().map(|e| e.source.name.as_str()).collect()
    }

    #[rstest]
    #[case::five_nodes(4, false)]
    #[case::fifty_nodes(49, false)]
    #[case::ipv6(4, true)]
    fn after_a_reboot_one_exec_in_the_nodes_own_pod_proves_every_pair(
        #[case] others: usize,
        #[case] ipv6: bool,
    ) {
        let (probes, pairs) = after_reboot(others, ipv6);
        let execs = plan_dial_back(&pairs, 8080);
        assert_eq!(
            execs.len(),
            1,
            "was {} execs, one per source pod",
            others + 2
        );
        assert_eq!(execs[0].source.name, "pf-0");
        assert_eq!(execs[0].urls.len(), others + 1, "one URL per other pod");
        assert_eq!(
            checked_claims(&execs, &probes, &pairs),
            (0..pairs.len()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_ipv6_url_brackets_the_pod_it_asks_and_not_the_host_it_names() {
        let (_, pairs) = after_reboot(1, true);
        let execs = plan_dial_back(&pairs, 8080);
        assert_eq!(
            execs[0].urls[0].url,
            "http://[fd00::2]:8080/dial?host=fd00::1&port=8080&request=hostname&protocol=http&tries=1"
        );
    }

    #[rstest]
    #[case::five_nodes(5, 1)]
    #[case::fifty_nodes(50, 10)]
    #[case::sixty_four_nodes(64, 16)]
    fn a_full_mesh_is_proven_from_one_hub_in_execs_of_at_most_256_urls(
        #[case] nodes: usize,
        #[case] execs_expected: usize,
    ) {
        let (probes, pairs) = full_mesh(nodes);
        assert_eq!(pairs.len(), nodes * (nodes - 1), "the full mesh");
        let execs = plan_dial_back(&pairs, 8080);
        assert_eq!(execs.len(), execs_expected, "was {nodes}, one per pod");
        assert_eq!(sources(&execs).len(), 1);
        let urls: usize = execs.iter().map(|e| e.urls.len()).sum();
        assert_eq!(
            urls,
            (nodes - 1) * (nodes - 1),
            "one URL per pair not from the hub"
        );
        assert_eq!(
            checked_claims(&execs, &probes, &pairs),
            (0..pairs.len()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_linear_set_of_a_large_cluster_is_proven_from_the_node_under_test() {
        let (probes, pairs) = preflight(100);
        assert_eq!(pairs.len(), 3 * 99, "the linear set");
        let execs = plan_dial_back(&pairs, 8080);
        assert_eq!(sources(&execs), ["pf-3"].into());
        assert_eq!(execs.len(), 1, "2 × 99 URLs");
        assert_eq!(
            checked_claims(&execs, &probes, &pairs),
            (0..pairs.len()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_ring_alone_is_proven_too() {
        let probes: Vec<ReadyProbe> = (0..6).map(|i| probe(i, false)).collect();
        let pairs: Vec<Pair> = (0..6).map(|i| pair(&probes, i, (i + 1) % 6)).collect();
        let execs = plan_dial_back(&pairs, 8080);
        assert_eq!(execs.len(), 1);
        assert_eq!(
            checked_claims(&execs, &probes, &pairs),
            (0..6).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_target_that_dials_nowhere_dials_itself_and_proves_only_the_arrival() {
        let probes: Vec<ReadyProbe> = (0..3).map(|i| probe(i, false)).collect();
        let pairs = vec![pair(&probes, 0, 1), pair(&probes, 0, 2)];
        let execs = plan_dial_back(&pairs, 8080);
        let urls: Vec<&str> = execs[0].urls.iter().map(|u| u.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://198.19.0.2:8080/dial?host=198.19.0.2&port=8080&request=hostname&protocol=http&tries=1",
                "http://198.19.0.3:8080/dial?host=198.19.0.3&port=8080&request=hostname&protocol=http&tries=1",
            ]
        );
        assert!(execs[0].urls.iter().all(|u| u.dials.is_empty()));
        assert_eq!(checked_claims(&execs, &probes, &pairs), [0, 1]);
    }

    #[test]
    fn an_address_that_is_not_an_ip_is_never_put_in_a_url() {
        let (mut probes, _) = after_reboot(2, false);
        probes[3].ip = "198.19.0.9&host=10.0.0.1".into();
        let (_, mut pairs) = after_reboot(2, false);
        for pair in &mut pairs {
            for end in [&mut pair.from, &mut pair.to] {
                if end.name == probes[3].name {
                    *end = probes[3].clone();
                }
            }
        }
        let execs = plan_dial_back(&pairs, 8080);
        assert!(execs
            .iter()
            .flat_map(|e| &e.urls)
            .all(|u| !u.url.contains("10.0.0.1") && !u.url.contains("198.19.0.9")));
        let claimed = checked_claims(&execs, &probes, &pairs);
        let unclaimed: Vec<(&str, &str)> = (0..pairs.len())
            .filter(|i| !claimed.contains(i))
            .map(|i| (pairs[i].from.name.as_str(), pairs[i].to.name.as_str()))
            .collect();
        assert_eq!(
            unclaimed,
            [("pf-0", "pf-3"), ("pf-3", "pf-0")],
            "left to direct probes"
        );
    }

    #[test]
    fn no_pairs_no_execs() {
        assert!(plan_dial_back(&[], 8080).is_empty());
    }

    fn answers(
        execs: &[DialExec],
        status: impl Fn(&str) -> Option<Result<u16, String>>,
    ) -> Vec<Option<ClientResults>> {
        execs
            .iter()
            .map(|e| Some(e.urls.iter().map(|u| status(&u.url)).collect()))
            .collect()
    }

    #[test]
    fn only_a_200_proves_and_a_417_is_a_failed_attempt_of_the_dialed_pair_alone() {
        let (probes, pairs) = after_reboot(3, false);
        let execs = plan_dial_back(&pairs, 8080);
        // pf-2 answers but cannot reach pf-0; pf-3 has no /dial; pf-4 is unreachable.
        let said = answers(&execs, |url| {
            let (via, _) = read_url(url, &probes);
            match via.name.as_str() {
                "pf-2" => Some(Ok(417)),
                "pf-3" => Some(Ok(404)),
                "pf-4" => Some(Err("curl: (28) Connection timed out".into())),
                _ => Some(Ok(200)),
            }
        });
        let verdicts = settle(&execs, pairs.len(), &said);
        let verdict = |from: &str, to: &str| {
            let i = pairs
                .iter()
                .position(|p| p.from.name == from && p.to.name == to)
                .unwrap();
            verdicts[i].clone()
        };
        assert!(
            matches!(verdict("pf-0", "pf-1"), DialVerdict::Proven { url } if url.starts_with("http://198.19.0.2:8080/dial?host=198.19.0.1&"))
        );
        assert!(matches!(
            verdict("pf-1", "pf-0"),
            DialVerdict::Proven { .. }
        ));
        for (from, to) in [
            ("pf-0", "pf-2"),
            ("pf-0", "pf-3"),
            ("pf-3", "pf-0"),
            ("pf-4", "pf-0"),
        ] {
            assert_eq!(
                verdict(from, to),
                DialVerdict::Direct {
                    earlier: Vec::new()
                },
                "{from} → {to}: nothing proven, nothing failed for certain"
            );
        }
        let DialVerdict::Direct { earlier } = verdict("pf-2", "pf-0") else {
            panic!("a 417 proves nothing");
        };
        assert_eq!(earlier.len(), 1);
        assert!(earlier[0].starts_with("HTTP 417"), "{earlier:?}");
        // The request pf-0 sent to pf-4 timed out: pf-0 → pf-4's first try failed.
        let DialVerdict::Direct { earlier } = verdict("pf-0", "pf-4") else {
            panic!("a timeout proves nothing");
        };
        assert_eq!(earlier.len(), 1, "{earlier:?}");
        assert!(
            earlier[0].starts_with("curl: (28) Connection timed out (the /dial request http://"),
            "{earlier:?}"
        );
    }

    /// A pair whose /dial try timed out and whose direct probe then passed is a flaky
    /// pass, which JUnit marks with `<flakyFailure>`.
    #[test]
    fn a_pair_that_passed_directly_after_its_dial_timed_out_is_flaky() {
        let (probes, pairs) = after_reboot(3, false);
        let execs = plan_dial_back(&pairs, 8080);
        let said = answers(&execs, |url| match read_url(url, &probes).0.name.as_str() {
            "pf-4" => Some(Err("curl: (28) Connection timed out after 7001 ms".into())),
            _ => Some(Ok(200)),
        });
        let verdicts = settle(&execs, pairs.len(), &said);
        let i = pairs
            .iter()
            .position(|p| p.from.name == "pf-0" && p.to.name == "pf-4")
            .unwrap();
        let DialVerdict::Direct { earlier } = verdicts[i].clone() else {
            panic!("{:?}", verdicts[i]);
        };
        let direct_pass =
            pairs[i].outcome("http://198.19.0.5:8080/hostname".into(), Ok(200), earlier);
        let flaky = crate::checks::flaky_pairs(std::slice::from_ref(&direct_pass));
        assert_eq!(flaky.len(), 1, "{flaky:?}");
        assert!(
            flaky[0]
                .contains("node-000/pf-0 → node-004/pf-4 passed on attempt 2 after: curl: (28)"),
            "{flaky:?}"
        );
        assert!(direct_pass.pair_result().flaky());
    }

    #[test]
    fn an_exec_that_told_nothing_leaves_all_its_pairs_to_the_direct_probes() {
        let (_, pairs) = full_mesh(50);
        let execs = plan_dial_back(&pairs, 8080);
        let mut said = answers(&execs, |_| Some(Ok(200)));
        said[4] = None;
        let verdicts = settle(&execs, pairs.len(), &said);
        let direct: Vec<usize> = (0..pairs.len())
            .filter(|&i| matches!(verdicts[i], DialVerdict::Direct { .. }))
            .collect();
        let claims = |exec: &DialExec| -> std::collections::BTreeSet<usize> {
            exec.urls
                .iter()
                .flat_map(|u| u.arrives.iter().chain(&u.dials))
                .copied()
                .collect()
        };
        let answered: std::collections::BTreeSet<usize> = execs
            .iter()
            .enumerate()
            .filter(|(e, _)| *e != 4)
            .flat_map(|(_, exec)| claims(exec))
            .collect();
        let unanswered: Vec<usize> = claims(&execs[4]).difference(&answered).copied().collect();
        assert_eq!(direct, unanswered);
        assert!(!direct.is_empty());
    }

    #[test]
    fn only_agnhost_netexec_is_trusted_with_dial() {
        let mut settings = crate::inventory::ProbeSettings::default();
        assert!(serves_dial(&settings));
        settings.server_args = vec!["serve".into(), "--port={port}".into()];
        assert!(!serves_dial(&settings));
    }
}
