//! Batch verification jobs: a TOML manifest of many checks, run with one shared GPU
//! context, reported as JSON and JUnit XML.
//!
//! ```toml
//! [defaults]            # optional; any job may override
//! backend = "auto"      # auto | cpu | gpu
//! precision = "auto"    # auto | f64 | f64-plain | f32 | f32-plain
//! epsilon = 1e-7               # or "auto": a short sweep picks it per job
//! threshold = 2e-7             # the notebook's rule, reported beside the verdict
//! stencil = 2                   # or 4
//! # fast = 4                    # random directions first; the full check if they do not pass
//!
//! [[job]]
//! name = "mlp"
//! params = "mlp/params.npz"      # relative to the manifest
//! data = "mlp/data.npz"
//! grads = "mlp/grads.npz"        # optional: the built-in backprop's otherwise
//! model = "mlp/model.json"       # optional: inferred from the shapes otherwise
//!
//! [[job]]
//! name = "notebook"
//! example = "seed-buggy"         # a built-in example instead of files (seed-fixed, seed-1d, conv-buggy, conv-fixed)
//! ```
//!
//! A front end. May use: `check`, `problem`, `examples`, `report`, `sweep`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::check::{Backend, KinkPolicy, Precision, Report, Verdict};
use crate::error::{Error, Result};
use crate::examples;
use crate::plan::{Epsilon, Fast, Plan};
use crate::problem::Problem;
use crate::report::failure_summary;
use std::fmt::Write as _;

/// Settings a job inherits from `[defaults]` unless it sets its own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Evaluator.
    pub backend: Option<Backend>,
    /// GPU precision.
    pub precision: Option<Precision>,
    /// ε, or "auto".
    pub epsilon: Option<EpsilonSetting>,
    /// Threshold.
    pub threshold: Option<f64>,
    /// Kink policy.
    pub kinks: Option<KinkPolicy>,
    /// 2 or 4 (see `check --stencil`).
    pub stencil: Option<u64>,
    /// Fast mode first with this many random directions (see `check --fast`).
    pub fast: Option<u64>,
}

/// ε in a manifest: a number, or `"auto"` (a short sweep per job picks it, as
/// `check --epsilon auto` does).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "RawEpsilon")]
pub enum EpsilonSetting {
    /// This ε.
    Value(f64),
    /// Chosen by a sweep over 1e-2 … 1e-9.
    Auto,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawEpsilon {
    Number(f64),
    Word(String),
}

impl TryFrom<RawEpsilon> for EpsilonSetting {
    type Error = String;
    fn try_from(raw: RawEpsilon) -> std::result::Result<Self, String> {
        match raw {
            RawEpsilon::Number(e) => Ok(EpsilonSetting::Value(e)),
            RawEpsilon::Word(w) if w == "auto" => Ok(EpsilonSetting::Auto),
            RawEpsilon::Word(w) => Err(format!("epsilon = {w:?}: a number or \"auto\"")),
        }
    }
}

/// One job of the manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Name shown in reports (default: job-N).
    pub name: Option<String>,
    /// Built-in example instead of files: seed-buggy, seed-fixed, seed-1d, conv-buggy or
    /// conv-fixed.
    pub example: Option<String>,
    /// Parameters .npz.
    pub params: Option<PathBuf>,
    /// Data .npz.
    pub data: Option<PathBuf>,
    /// Gradients .npz.
    pub grads: Option<PathBuf>,
    /// Model spec .json.
    pub model: Option<PathBuf>,
    /// Per-job settings.
    #[serde(flatten)]
    pub settings: Settings,
}

/// A parsed manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Settings for every job.
    #[serde(default)]
    pub defaults: Settings,
    /// The jobs.
    #[serde(rename = "job", default)]
    pub jobs: Vec<JobSpec>,
}

impl Manifest {
    /// Reads a manifest; relative paths in it are made relative to its folder.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = crate::io::read_text(path)?;
        let mut m: Manifest = toml::from_str(&text).map_err(|e| Error::Format {
            path: path.to_owned(),
            msg: format!("not a valid batch manifest: {e}"),
        })?;
        if m.jobs.is_empty() {
            return Err(Error::Format {
                path: path.to_owned(),
                msg: "the manifest has no [[job]]".into(),
            });
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        for j in &mut m.jobs {
            for p in [&mut j.params, &mut j.data, &mut j.grads, &mut j.model]
                .into_iter()
                .flatten()
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        Ok(m)
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The gradients passed.
    Pass,
    /// A gradient is wrong.
    Fail,
    /// Central differences could not decide (the report says why).
    Inconclusive,
    /// The job could not be run (bad files, …).
    Error,
}

/// One job's result.
#[derive(Debug, Clone, Serialize)]
pub struct JobResult {
    /// The job's name.
    pub name: String,
    /// Pass, fail or error.
    pub outcome: Outcome,
    /// Why it could not run.
    pub error: Option<String>,
    /// The full check report.
    pub report: Option<Report>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl BatchReport {
    /// A batch of one finished check (for `check --junit`).
    pub fn single(name: &str, report: Report) -> BatchReport {
        let outcome = match report.verdict {
            Verdict::Pass => Outcome::Pass,
            Verdict::Fail => Outcome::Fail,
            Verdict::Inconclusive => Outcome::Inconclusive,
        };
        let seconds = report.timings.total_s;
        BatchReport {
            complete: true,
            passed: usize::from(outcome == Outcome::Pass),
            failed: usize::from(outcome == Outcome::Fail),
            inconclusive: usize::from(outcome == Outcome::Inconclusive),
            errors: 0,
            seconds,
            jobs: vec![JobResult {
                name: name.to_string(),
                outcome,
                error: None,
                report: Some(report),
                seconds,
            }],
        }
    }
}

/// The whole batch.
#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    /// True in the final report; the interim file written after each job says false.
    pub complete: bool,
    /// Jobs that passed.
    pub passed: usize,
    /// Jobs that failed.
    pub failed: usize,
    /// Jobs whose check was inconclusive.
    pub inconclusive: usize,
    /// Jobs that could not run.
    pub errors: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Every job, in manifest order.
    pub jobs: Vec<JobResult>,
}

impl BatchReport {
    /// 2 any error, else 1 any fails, else 3 any inconclusive, else 0.
    pub fn exit_code(&self) -> u8 {
        if self.errors > 0 {
            2
        } else if self.failed > 0 {
            1
        } else if self.inconclusive > 0 {
            3
        } else {
            0
        }
    }
}

fn load_problem(job: &JobSpec) -> Result<Problem> {
    match (&job.example, &job.params, &job.data) {
        (Some(e), None, None) => match examples::Example::from_name(e) {
            Some(example) => example.problem(),
            None => Err(Error::Config(format!(
                "unknown example {e:?} ({})",
                examples::Example::NAMES
            ))),
        },
        (None, Some(p), Some(d)) => Problem::load(p, d, job.grads.as_deref(), job.model.as_deref()),
        _ => Err(Error::Config(
            "a job needs either `example` or both `params` and `data`".into(),
        )),
    }
}

/// Runs one job; errors are returned, not raised.
fn run_job(n: usize, job: &JobSpec, defaults: &Settings, adapter: Option<&str>) -> JobResult {
    let t0 = Instant::now();
    let name = job.name.clone().unwrap_or_else(|| format!("job-{}", n + 1));
    let s = &job.settings;
    let plan = Plan {
        epsilon: match s.epsilon.or(defaults.epsilon) {
            None => Epsilon::Default,
            Some(EpsilonSetting::Value(e)) => Epsilon::Value(e),
            Some(EpsilonSetting::Auto) => Epsilon::Auto,
        },
        threshold: s.threshold.or(defaults.threshold),
        backend: s.backend.or(defaults.backend).unwrap_or(Backend::Auto),
        precision: s
            .precision
            .or(defaults.precision)
            .unwrap_or(Precision::Auto),
        kinks: s.kinks.or(defaults.kinks).unwrap_or(KinkPolicy::Exclude),
        stencil: s.stencil.or(defaults.stencil).unwrap_or(2),
        adapter: adapter.map(str::to_owned),
        fast: s.fast.or(defaults.fast).map(|directions| Fast {
            directions,
            seed: 0,
        }),
        ..Plan::default()
    };
    let one_d = job.example.as_deref() == Some("seed-1d");
    let result = if one_d && job.params.is_none() && job.data.is_none() {
        plan.check_one_d()
    } else {
        load_problem(job).and_then(|p| plan.check(&p))
    };
    let seconds = t0.elapsed().as_secs_f64();
    match result {
        Ok(r) => JobResult {
            name,
            outcome: match r.verdict {
                Verdict::Pass => Outcome::Pass,
                Verdict::Fail => Outcome::Fail,
                Verdict::Inconclusive => Outcome::Inconclusive,
            },
            error: None,
            report: Some(r),
            seconds,
        },
        Err(e) => JobResult {
            name,
            outcome: Outcome::Error,
            error: Some(e.to_string()),
            report: None,
            seconds,
        },
    }
}

/// Runs every job in order; `progress` is called after each with (done, result).
pub fn run(
    manifest: &Manifest,
    adapter: Option<&str>,
    mut progress: impl FnMut(usize, &JobResult),
) -> BatchReport {
    let t0 = Instant::now();
    let mut jobs = Vec::with_capacity(manifest.jobs.len());
    for (n, job) in manifest.jobs.iter().enumerate() {
        let r = run_job(n, job, &manifest.defaults, adapter);
        progress(n + 1, &r);
        jobs.push(r);
    }
    let count = |o: Outcome| jobs.iter().filter(|j| j.outcome == o).count();
    BatchReport {
        complete: true,
        passed: count(Outcome::Pass),
        failed: count(Outcome::Fail),
        inconclusive: count(Outcome::Inconclusive),
        errors: count(Outcome::Error),
        seconds: t0.elapsed().as_secs_f64(),
        jobs,
    }
}

/// The batch as a table: one line per job (outcome, name, seconds, what went wrong),
/// then the totals.
pub fn render_batch_text(b: &BatchReport) -> String {
    let mut s = String::new();
    for j in &b.jobs {
        let detail = match (&j.report, &j.error) {
            (Some(r), _) if matches!(j.outcome, Outcome::Fail | Outcome::Inconclusive) => {
                failure_summary(r).trim_end().replace('\n', "; ")
            }
            (Some(r), _) => format!("difference {:e}", r.difference),
            (None, Some(e)) => e.clone(),
            _ => String::new(),
        };
        let tag = match j.outcome {
            Outcome::Pass => "pass",
            Outcome::Fail => "FAIL",
            Outcome::Inconclusive => "INCON",
            Outcome::Error => "ERROR",
        };
        let _ = writeln!(s, "{tag:<5} {:<24} {:>8.3} s  {detail}", j.name, j.seconds);
    }
    let _ = writeln!(
        s,
        "batch: {} pass, {} fail, {} inconclusive, {} error ({:.3} s)",
        b.passed, b.failed, b.inconclusive, b.errors, b.seconds
    );
    s
}

/// Escapes XML's five specials and replaces what XML 1.0 forbids (control characters
/// other than tab, newline, carriage return) with U+FFFD.
fn xml_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{FFFE}' | '\u{FFFF}')
            {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The batch as JUnit XML: one testcase per job, failures carrying the per-tensor summary.
pub fn render_junit(b: &BatchReport) -> String {
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let head = format!(
        "name=\"gradcheck\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{:.6}\"",
        b.jobs.len(),
        b.failed,
        b.errors + b.inconclusive,
        b.seconds
    );
    let _ = writeln!(s, "<testsuites {head}>");
    let _ = writeln!(s, "  <testsuite {head}>");
    for j in &b.jobs {
        let _ = write!(
            s,
            "    <testcase classname=\"gradcheck\" name=\"{}\" time=\"{:.6}\"",
            xml_escape(&j.name),
            j.seconds
        );
        match (j.outcome, &j.report, &j.error) {
            (Outcome::Fail, Some(r), _) => {
                let _ = writeln!(
                    s,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    xml_escape(&format!(
                        "gradient check failed: difference {:e}",
                        r.difference_counted
                    )),
                    xml_escape(&failure_summary(r))
                );
            }
            (Outcome::Inconclusive, Some(r), _) => {
                let _ = writeln!(
                    s,
                    ">\n      <error type=\"inconclusive\" message=\"{}\">{}</error>\n    </testcase>",
                    xml_escape("gradient check inconclusive: central differences could not decide"),
                    xml_escape(&failure_summary(r))
                );
            }
            (Outcome::Error, _, Some(e)) => {
                let _ = writeln!(
                    s,
                    ">\n      <error message=\"{}\">{}</error>\n    </testcase>",
                    xml_escape(e),
                    xml_escape(e)
                );
            }
            _ => {
                let _ = writeln!(s, "/>");
            }
        }
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}
