//! Reports: one Markdown and one JSON file per scenario (under `--out`, by default
//! `target/bench-reports/`), the Markdown also printed. Every report names the machine, the
//! versions and the command; every figure is a median with its min–max over the rounds, shown
//! as Switchyard / Go / ratio / floor.

use std::{fmt::Write as _, path::Path};

use runtime::RuntimeFlavor;
use serde::Serialize;

use crate::stats::Spread;

/// A named figure of a run, read by a function (one row of a table).
pub(crate) type Figure<R> = (&'static str, fn(&R) -> f64);

/// A report in the making.
#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: &'static str,
    pub(crate) title: String,
    pub(crate) machine: Machine,
    pub(crate) versions: Versions,
    pub(crate) command: String,
    pub(crate) rounds: usize,
    pub(crate) tables: Vec<Table>,
    /// Targets of the scenario and whether they were met.
    pub(crate) targets: Vec<TargetCheck>,
    pub(crate) notes: Vec<String>,
}

/// One table.
#[derive(Serialize)]
pub(crate) struct Table {
    pub(crate) title: String,
    pub(crate) columns: Vec<String>,
    pub(crate) rows: Vec<Vec<Cell>>,
}

/// One cell: text, a spread over rounds, or a ratio.
#[derive(Serialize, Clone)]
#[serde(untagged)]
pub(crate) enum Cell {
    Text(String),
    Spread(Spread),
    Ratio(Option<f64>),
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Text(text) => f.write_str(text),
            Cell::Spread(spread) => spread.fmt(f),
            Cell::Ratio(Some(r)) => write!(f, "{r:.2}"),
            Cell::Ratio(None) => f.write_str("—"),
        }
    }
}

/// A system measured: Switchyard, the Go baseline, or the floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum Who {
    Switchyard,
    Go,
    Floor,
}

/// A figure measured on Switchyard, the Go baseline and the floor.
pub(crate) struct Compared {
    pub(crate) switchyard: Option<Spread>,
    pub(crate) go: Option<Spread>,
    pub(crate) floor: Option<Spread>,
}

/// The columns of a comparison table, after the row's own label columns.
pub(crate) const COMPARED: [&str; 5] = [
    "Switchyard",
    "Go",
    "Switchyard / Go",
    "floor",
    "Switchyard / floor",
];

impl Compared {
    /// The median and min–max of `figure` over each system's runs (`None` for a system with
    /// no run).
    pub(crate) fn of<R>(runs: &[(Who, &R)], figure: impl Fn(&R) -> f64) -> Self {
        let spread = |who: Who| {
            let values: Vec<f64> = runs
                .iter()
                .filter(|(w, _)| *w == who)
                .map(|(_, run)| figure(run))
                .collect();
            (!values.is_empty()).then(|| Spread::of(values))
        };
        Compared {
            switchyard: spread(Who::Switchyard),
            go: spread(Who::Go),
            floor: spread(Who::Floor),
        }
    }

    /// One system's figure.
    pub(crate) fn get(&self, who: Who) -> Option<Spread> {
        match who {
            Who::Switchyard => self.switchyard,
            Who::Go => self.go,
            Who::Floor => self.floor,
        }
    }

    /// The five cells of [`COMPARED`].
    pub(crate) fn cells(&self) -> Vec<Cell> {
        let spread = |s: Option<Spread>| s.map_or(Cell::Text("—".into()), Cell::Spread);
        let ratio = |a: Option<Spread>, b: Option<Spread>| {
            Cell::Ratio(match (a, b) {
                (Some(a), Some(b)) if b.median != 0.0 => Some(a.median / b.median),
                _ => None,
            })
        };
        vec![
            spread(self.switchyard),
            spread(self.go),
            ratio(self.switchyard, self.go),
            spread(self.floor),
            ratio(self.switchyard, self.floor),
        ]
    }
}

/// A target of the issue and the figure measured against it.
#[derive(Serialize)]
pub(crate) struct TargetCheck {
    pub(crate) target: String,
    pub(crate) measured: String,
    pub(crate) met: bool,
}

impl Report {
    pub(crate) fn new(scenario: &'static str, title: impl Into<String>, rounds: usize) -> Self {
        Self {
            scenario,
            title: title.into(),
            machine: Machine::read(),
            versions: Versions::read(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            rounds,
            tables: Vec::new(),
            targets: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn table(&mut self, title: impl Into<String>, columns: &[&str]) -> &mut Table {
        self.tables.push(Table {
            title: title.into(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
        });
        self.tables.last_mut().expect("just pushed")
    }

    pub(crate) fn target(&mut self, target: impl Into<String>, measured: String, met: bool) {
        self.targets.push(TargetCheck {
            target: target.into(),
            measured,
            met,
        });
    }

    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub(crate) fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# {}: {}\n", self.scenario, self.title);
        let _ = writeln!(md, "- command: `{}`", self.command);
        let _ = writeln!(md, "- machine: {}", self.machine);
        let _ = writeln!(md, "- versions: {}", self.versions);
        let _ = writeln!(
            md,
            "- figures: median (min–max) over {} interleaved rounds; ratios of medians",
            self.rounds
        );
        for table in &self.tables {
            let _ = writeln!(md, "\n## {}\n", table.title);
            let _ = writeln!(md, "| {} |", table.columns.join(" | "));
            let _ = writeln!(md, "|{}", "---|".repeat(table.columns.len()));
            for row in &table.rows {
                let cells: Vec<String> = row.iter().map(ToString::to_string).collect();
                let _ = writeln!(md, "| {} |", cells.join(" | "));
            }
        }
        if !self.targets.is_empty() {
            let _ = writeln!(md, "\n## Targets\n");
            let _ = writeln!(md, "| target | measured | met |");
            let _ = writeln!(md, "|---|---|---|");
            for t in &self.targets {
                let met = if t.met { "yes" } else { "**no**" };
                let _ = writeln!(md, "| {} | {} | {met} |", t.target, t.measured);
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(md, "\n## Notes\n");
            for note in &self.notes {
                let _ = writeln!(md, "- {note}");
            }
        }
        md
    }

    /// Prints the Markdown and writes `<out>/<scenario>.md` and `<out>/<scenario>.json`.
    #[allow(clippy::print_stdout)] // the report is the command's output
    pub(crate) fn finish(&self, out: &Path) -> anyhow::Result<()> {
        let md = self.markdown();
        println!("{md}");
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join(format!("{}.md", self.scenario)), &md)?;
        std::fs::write(
            out.join(format!("{}.json", self.scenario)),
            serde_json::to_string_pretty(self)?,
        )?;
        eprintln!(
            "report written to {}/{}.{{md,json}}",
            out.display(),
            self.scenario
        );
        Ok(())
    }
}

impl Table {
    pub(crate) fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// One row per figure: `labels`, the figure's name, then its [`COMPARED`] cells over `runs`.
    pub(crate) fn compared_rows<R>(
        &mut self,
        labels: &[Cell],
        runs: &[(Who, &R)],
        figures: &[Figure<R>],
    ) {
        for (name, figure) in figures {
            let mut row = labels.to_vec();
            row.push(text(name));
            row.extend(Compared::of(runs, figure).cells());
            self.rows.push(row);
        }
    }
}

/// The runs of one server runtime flavour, by system.
pub(crate) fn of_flavor<R>(
    runs: &[(RuntimeFlavor, Who, R)],
    flavor: RuntimeFlavor,
) -> Vec<(Who, &R)> {
    runs.iter()
        .filter(|(f, ..)| *f == flavor)
        .map(|(_, who, run)| (*who, run))
        .collect()
}

/// Text cell.
pub(crate) fn text(value: impl ToString) -> Cell {
    Cell::Text(value.to_string())
}

/// What the report says about the machine.
#[derive(Serialize, Debug)]
pub(crate) struct Machine {
    cores: usize,
    cpu: String,
    kernel: String,
    memory_gib: f64,
}

impl Machine {
    pub(crate) fn read() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let memory_kib: f64 = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0.0);
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel,
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cores, {}, {} GiB, Linux {}",
            self.cores, self.cpu, self.memory_gib, self.kernel
        )
    }
}

/// Versions of what was measured.
#[derive(Serialize, Debug)]
pub(crate) struct Versions {
    switchyard: &'static str,
    commit: String,
    rustc: String,
    go: String,
    profile: &'static str,
}

impl Versions {
    fn read() -> Self {
        let output = |program: &str, args: &[&str]| {
            std::process::Command::new(program)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_else(|| "unknown".into())
        };
        Self {
            switchyard: env!("CARGO_PKG_VERSION"),
            commit: output("git", &["rev-parse", "--short", "HEAD"]),
            rustc: output("rustc", &["--version"]),
            go: output("go", &["version"]),
            profile: if cfg!(debug_assertions) {
                "debug (figures meaningless; build with --release)"
            } else {
                "release"
            },
        }
    }
}

impl std::fmt::Display for Versions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "switchyard {} ({}, {} build), {}, {}",
            self.switchyard, self.commit, self.profile, self.rustc, self.go
        )
    }
}
