//! What a person or a CI log sees while a run goes on, on stderr: the binary's front end
//! for the library's `Progress`. At a terminal, one live line (indicatif) naming every
//! step in progress with its elapsed time, and each check as it finishes. Off a
//! terminal — every CI log — plain lines: each step as it finishes, each check, and a
//! heartbeat every 10 s naming what is still being waited on, so a long wait is never
//! silent. `--quiet` shows none of it; the report on stdout is the same either way.

use indicatif::{ProgressBar, ProgressStyle};
use postflight::checks::{CheckResult, Verdict};
use postflight::gate::Progress;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a CI log hears that a wait goes on.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How often the live line's elapsed times move.
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour on a terminal, unless NO_COLOR is set.
    #[default]
    Auto,
    /// Colour everywhere (CI logs that render ANSI).
    Always,
    Never,
}

/// How the console is asked to behave.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    pub quiet: bool,
    pub color: ColorChoice,
}

/// NO_COLOR (https://no-color.org): set and not empty.
pub fn no_color_asked() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty())
}

enum Style {
    Live(ProgressBar),
    Plain,
    Quiet,
}

/// The steps in progress: (node, step) and when each started.
type Running = Arc<Mutex<BTreeMap<(String, String), Instant>>>;

pub struct Console {
    style: Style,
    /// Colour in the report on stdout.
    pub color: bool,
    started: Instant,
    running: Running,
}

impl Console {
    pub fn new(settings: Settings) -> Self {
        let started = Instant::now();
        let running: Running = Arc::default();
        let style = if settings.quiet {
            Style::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed:>4}] {msg}")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(TICK);
            Style::Live(bar)
        } else {
            Style::Plain
        };
        // The elapsed times on the live line, and the heartbeat of a CI log, move with
        // the clock, not with events: a detached thread, gone with the process.
        match &style {
            Style::Live(bar) => {
                let (bar, running) = (bar.clone(), running.clone());
                std::thread::spawn(move || loop {
                    std::thread::sleep(TICK);
                    bar.set_message(waiting_on(
                        &running.lock().expect("console lock"),
                        Instant::now(),
                    ));
                });
            }
            Style::Plain => {
                let running = running.clone();
                std::thread::spawn(move || loop {
                    std::thread::sleep(HEARTBEAT);
                    let summary =
                        waiting_on(&running.lock().expect("console lock"), Instant::now());
                    if !summary.is_empty() {
                        eprintln!("[{}] still waiting: {summary}", clock(started));
                    }
                });
            }
            Style::Quiet => {}
        }
        let color = match settings.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => std::io::stdout().is_terminal() && !no_color_asked(),
        };
        Console {
            style,
            color,
            started,
            running,
        }
    }

    /// Ends the live line before the report is printed.
    pub fn clear_line(&self) {
        if let Style::Live(bar) = &self.style {
            bar.finish_and_clear();
        }
    }

    fn say(&self, line: String) {
        match &self.style {
            Style::Live(bar) => bar.println(line),
            Style::Plain => eprintln!("{line}"),
            Style::Quiet => {}
        }
    }
}

/// `[ 12.3s]`: time since the run started.
fn clock(started: Instant) -> String {
    format!("{:>5.1}s", started.elapsed().as_secs_f64())
}

/// The steps in progress, each with how long it has run:
/// `k8s-worker-03: wait for the node to be Ready on a new boot 12 s`.
pub fn waiting_on(running: &BTreeMap<(String, String), Instant>, now: Instant) -> String {
    running
        .iter()
        .map(|((node, step), since)| {
            format!(
                "{node}: {step} {} s",
                now.saturating_duration_since(*since).as_secs()
            )
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

impl Progress for Console {
    fn step_started(&self, node: &str, step: &str) {
        self.running
            .lock()
            .expect("console lock")
            .insert((node.into(), step.into()), Instant::now());
    }

    fn step_finished(&self, node: &str, step: &str, took: Duration) {
        self.running
            .lock()
            .expect("console lock")
            .remove(&(node.to_string(), step.to_string()));
        if let Style::Plain = self.style {
            eprintln!(
                "[{}] {node}: {step}: {:.1}s",
                clock(self.started),
                took.as_secs_f64()
            );
        }
    }

    fn check_finished(&self, result: &CheckResult) {
        let mark = match result.verdict {
            Verdict::Passed => "✔",
            Verdict::Failed(_) => "✘",
            Verdict::Error(_) => "!",
            Verdict::Skipped(_) => "-",
        };
        self.say(format!(
            "[{}] {mark} {} {}",
            clock(self.started),
            result.node,
            result.name
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_names_every_step_in_progress_with_its_time() {
        let now = Instant::now();
        let mut running = BTreeMap::new();
        running.insert(
            (
                "k8s-worker-03".to_string(),
                "wait for calico-node Ready".to_string(),
            ),
            now - Duration::from_secs(12),
        );
        running.insert(
            ("k8s-worker-03".to_string(), "start probe pods".to_string()),
            now - Duration::from_secs(3),
        );
        assert_eq!(
            waiting_on(&running, now),
            "k8s-worker-03: start probe pods 3 s · k8s-worker-03: wait for calico-node Ready 12 s"
        );
        assert_eq!(waiting_on(&BTreeMap::new(), now), "");
    }
}
