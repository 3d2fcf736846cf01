//! Command-line edge: parses arguments, runs the library, prints, picks the exit code
//! (0 pass, 1 a gradient is wrong, 2 bad input or usage, 3 inconclusive).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};

use gradcheck::check::{Backend, GradCheck, KinkPolicy, Precision, Report};
use gradcheck::examples::Example;
use gradcheck::plan::{Epsilon, Fast, Plan};
use gradcheck::problem::Problem;
use gradcheck::report;

#[derive(Parser)]
#[command(
    name = "gradcheck",
    version,
    about = "Prove that a neural network's backpropagation is right: every central difference, batched on the GPU, compared in f64.",
    after_help = VERDICT_EXIT
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The exit statuses of the commands that judge gradients.
const VERDICT_EXIT: &str = "Exit status: 0 every gradient passed, 1 a gradient is wrong, 2 bad input or usage, 3 inconclusive (central differences could not decide; the report says why).";
/// The exit statuses of the other commands.
const PLAIN_EXIT: &str = "Exit status: 0 done, 2 bad input or usage.";

#[derive(Subcommand)]
enum Command {
    /// Check gradients against central differences of the cost.
    #[command(after_help = VERDICT_EXIT)]
    Check(CheckArgs),
    /// GPU vs CPU numerics: J±, gradapprox and differences per precision and tensor.
    #[command(after_help = PLAIN_EXIT)]
    Compare(CompareArgs),
    /// Run every check of a TOML manifest: JSON and JUnit reports, exit 0/1/2/3.
    #[command(
        after_help = "Exit status: 0 every job passed, 1 a job found a wrong gradient, 2 a job could not run (bad input; before 1) or bad usage, 3 a job was inconclusive (and none failed)."
    )]
    Batch(BatchArgs),
    /// The difference against ε over decades, per precision: table, JSON, SVG plot.
    #[command(after_help = PLAIN_EXIT)]
    Sweep(SweepArgs),
    /// Join the partials of `check --shard I/N` into the report one run would give.
    #[command(after_help = VERDICT_EXIT)]
    Merge(MergeArgs),
    /// List GPU adapters, their f64 support and limits.
    #[command(after_help = PLAIN_EXIT)]
    Devices,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: `gradcheck manpage > gradcheck.1`.
    Manpage,
}

/// The built-in examples that are networks (the 1-D one is `check`'s only).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum NetExample {
    /// The notebook's N-D case with its buggy backprop (dW2 × 2, db1 × 4).
    SeedBuggy,
    /// The notebook's N-D case with the bugs fixed.
    SeedFixed,
    /// A course-style conv net with two classic backprop slips planted.
    ConvBuggy,
    /// The same conv net with correct gradients.
    ConvFixed,
}

impl From<NetExample> for Example {
    fn from(e: NetExample) -> Example {
        match e {
            NetExample::SeedBuggy => Example::SeedBuggy,
            NetExample::SeedFixed => Example::SeedFixed,
            NetExample::ConvBuggy => Example::ConvBuggy,
            NetExample::ConvFixed => Example::ConvFixed,
        }
    }
}

/// A network's inputs for compare, sweep and merge.
#[derive(Args)]
struct Inputs {
    /// A built-in example instead of files.
    #[arg(long, value_enum, conflicts_with_all = ["params", "data", "grads", "model"])]
    example: Option<NetExample>,
    #[command(flatten)]
    files: Files,
}

/// `check`'s inputs: a network, or the notebook's 1-D example.
#[derive(Args)]
struct CheckInputs {
    /// A built-in example instead of files.
    #[arg(long, value_enum, conflicts_with_all = ["params", "data", "grads", "model"])]
    example: Option<Example>,
    #[command(flatten)]
    files: Files,
}

/// The .npz/.json files of a problem.
#[derive(Args)]
struct Files {
    /// Parameters W1, b1, … (.npz).
    #[arg(long, requires = "data")]
    params: Option<PathBuf>,
    /// Data X (n0 × m), Y (nL × m) (.npz).
    #[arg(long, requires = "params")]
    data: Option<PathBuf>,
    /// Gradients dW1, db1, … to check (.npz); default: the built-in backprop's.
    #[arg(long)]
    grads: Option<PathBuf>,
    /// Model spec (.json); default: inferred from the weight shapes, notebook activations.
    #[arg(long)]
    model: Option<PathBuf>,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    inputs: CheckInputs,
    /// ε of the central differences, or `auto` (a short sweep picks the best)
    /// [default: 1e-7 in f64, 1e-4 in f32, 1e-3 in f32-plain].
    #[arg(long, allow_hyphen_values = true, value_parser = parse_epsilon)]
    epsilon: Option<EpsilonArg>,
    /// The notebook's threshold on the difference; its rule is reported beside the verdict,
    /// which comes from the per-element error bounds [default: 2e-7 in f64, 1e-6 in f32,
    /// 1e-2 in f32-plain].
    #[arg(long, allow_hyphen_values = true)]
    threshold: Option<f64>,
    /// Which evaluator computes the J±.
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    /// Precision and arithmetic: f64 (the Δ path), f64-plain (the notebook's), f32 (Δ),
    /// f32-plain; auto = f64, or f32 on a GPU without f64, and f64-plain for the built-in
    /// examples [default: auto].
    #[arg(long, value_enum, default_value = "auto", hide_default_value = true)]
    precision: Precision,
    /// Kinks: `exclude` judges a kinked element by the one-sided difference that does not
    /// cross; `include` uses the central difference anyway (the notebook's behaviour).
    #[arg(long, value_enum, default_value = "exclude")]
    kinks: KinkPolicy,
    /// GPU adapter: a substring of its name.
    #[arg(long)]
    adapter: Option<String>,
    /// Fast mode: K random directions first (2K evaluations instead of 2N); on failure
    /// the full check runs to localise the mistake.
    #[arg(long, value_name = "K", num_args = 0..=1, default_missing_value = "4")]
    fast: Option<u64>,
    /// Seed of the fast mode's directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Difference judged: 2 (the notebook's central difference) or 4 (Richardson's
    /// (4·g(ε) − g(2ε))/3, O(ε⁴), from the same two evaluations) [possible values: 2, 4].
    #[arg(long, default_value_t = 2)]
    stencil: u64,
    /// Evaluate only the I-th of N slices of the parameters (1-based) and write the
    /// partial to --json; join the partials with `gradcheck merge`.
    #[arg(long, value_name = "I/N", requires = "json")]
    shard: Option<String>,
    /// Worst elements listed per tensor.
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// Write the JSON report to PATH ('-' = stdout, replacing the table).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write the dropout masks used (D1, D2, … as 0/1, n_l × m) to PATH.npz, to feed the
    /// same masks to your own backprop.
    #[arg(long, value_name = "PATH.npz")]
    save_masks: Option<PathBuf>,
    /// Also write the verdict as JUnit XML (one testcase) to PATH, for CI systems.
    #[arg(long, value_name = "PATH")]
    junit: Option<PathBuf>,
    /// Measure each GPU kernel's device time (timestamp queries, where the adapter has
    /// them): a table after the report, and `timings.kernels` in the JSON.
    #[arg(long)]
    timings: bool,
    /// Print only the verdict sentence (no progress, no table); the exit code and any
    /// --json/--junit file are as usual.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct CompareArgs {
    #[command(flatten)]
    inputs: Inputs,
    /// ε for both sides [default: each precision's].
    #[arg(long, allow_hyphen_values = true)]
    epsilon: Option<f64>,
    /// GPU adapter: a substring of its name.
    #[arg(long)]
    adapter: Option<String>,
    /// Write the comparison as JSON to PATH ('-' = stdout).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct MergeArgs {
    #[command(flatten)]
    inputs: Inputs,
    /// The partial reports written by `check --shard I/N --json PART`.
    #[arg(required = true)]
    parts: Vec<PathBuf>,
    /// The notebook's threshold on the difference (its rule is reported beside the
    /// verdict) [default: the precision's].
    #[arg(long, allow_hyphen_values = true)]
    threshold: Option<f64>,
    /// Kinks: `exclude` judges a kinked element by the one-sided difference that does not
    /// cross; `include` uses the central difference anyway (the notebook's behaviour).
    #[arg(long, value_enum, default_value = "exclude")]
    kinks: KinkPolicy,
    /// Judge the central difference (2) or Richardson's 4-point extrapolation (4).
    #[arg(long, default_value_t = 2)]
    stencil: u64,
    /// Merge CPU and GPU partials (their J± round differently; refused by default).
    #[arg(long)]
    mix_backends: bool,
    /// Write the JSON report to PATH ('-' = stdout).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

fn run_merge(a: MergeArgs) -> Result<ExitCode> {
    preflight(&[a.json.as_ref()])?;
    let p = load(&a.inputs)?;
    let parts = a
        .parts
        .iter()
        .map(|f| gradcheck::shard::load_partial(f))
        .collect::<gradcheck::Result<Vec<_>>>()?;
    let plan = Plan {
        threshold: a.threshold,
        stencil: a.stencil,
        kinks: a.kinks,
        ..Plan::default()
    };
    let r = plan.merge(&p, &parts, a.mix_backends)?;
    emit_report(&r, a.json.as_ref())?;
    Ok(ExitCode::from(r.verdict.exit_code()))
}

#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    inputs: Inputs,
    /// Largest ε (at most 1).
    #[arg(long, default_value = "1e-1")]
    from: f64,
    /// Smallest ε.
    #[arg(long, default_value = "1e-10")]
    to: f64,
    /// Values per decade.
    #[arg(long, default_value_t = 3)]
    per_decade: usize,
    /// Which evaluator computes the J±.
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    /// One precision only [default: every precision the GPU has; f64 and f64-plain on the
    /// CPU].
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Kinks: `exclude` leaves kinked elements out of each point's difference; `include`
    /// counts them [possible values: exclude, include].
    #[arg(
        long,
        value_enum,
        default_value = "exclude",
        hide_possible_values = true
    )]
    kinks: KinkPolicy,
    /// GPU adapter: a substring of its name.
    #[arg(long)]
    adapter: Option<String>,
    /// Write the plot as SVG.
    #[arg(long, value_name = "PATH")]
    svg: Option<PathBuf>,
    /// Write the sweep as JSON ('-' = stdout).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

fn sweep_precisions(
    backend: Backend,
    precision: Option<Precision>,
    adapter: Option<&str>,
) -> Vec<Precision> {
    if let Some(p) = precision {
        return vec![p];
    }
    // The Δ path beside the plain arithmetic of the same precision: flat where plain
    // rounding climbs.
    let cpu = vec![Precision::F64, Precision::F64Plain];
    if backend == Backend::Cpu {
        return cpu;
    }
    match gradcheck::eval::gpu::GpuContext::shared(adapter) {
        Ok(c) if c.has_f64() => vec![
            Precision::F64,
            Precision::F64Plain,
            Precision::F32,
            Precision::F32Plain,
        ],
        Ok(_) => vec![Precision::F32, Precision::F32Plain],
        Err(_) => cpu,
    }
}

fn run_sweep(a: SweepArgs) -> Result<ExitCode> {
    preflight(&[a.json.as_ref(), a.svg.as_ref()])?;
    let p = load(&a.inputs)?;
    let eps = gradcheck::sweep::epsilons(a.from, a.to, a.per_decade)?;
    let mut gc = GradCheck::new().backend(a.backend).kinks(a.kinks);
    gc.adapter = a.adapter.clone();
    let precisions = sweep_precisions(a.backend, a.precision, a.adapter.as_deref());
    let s = gradcheck::sweep::sweep(
        &gc,
        &p.model,
        &p.params,
        &p.data,
        &p.grads,
        &eps,
        &precisions,
    )?;
    if let Some(path) = &a.svg {
        write_file(path, gradcheck::sweep::render_svg(&s).as_bytes())?;
    }
    let json = serde_json::to_string_pretty(&s)?;
    emit(&json, a.json.as_ref(), || gradcheck::sweep::render_text(&s))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
struct BatchArgs {
    /// The manifest (TOML; see the README).
    manifest: PathBuf,
    /// Write the batch report (every job's full report and timing) as JSON ('-' = stdout).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write JUnit XML, one testcase per job.
    #[arg(long, value_name = "PATH")]
    junit: Option<PathBuf>,
    /// GPU adapter: a substring of its name (one context serves every job).
    #[arg(long)]
    adapter: Option<String>,
    /// Run only the I-th of N contiguous slices of the jobs (1-based); CI systems read
    /// the N JUnit files together.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
}

fn run_batch(a: BatchArgs) -> Result<ExitCode> {
    use gradcheck::batch::{self, Manifest};
    preflight(&[a.json.as_ref(), a.junit.as_ref()])?;
    let mut manifest = Manifest::load(&a.manifest)?;
    if let Some(spec) = &a.shard {
        let (i, n) = gradcheck::shard::parse_shard(spec)?;
        let r = gradcheck::shard::shard_range(manifest.jobs.len(), i, n);
        // Keep the manifest's numbering in default names.
        for (k, j) in manifest.jobs.iter_mut().enumerate() {
            j.name.get_or_insert_with(|| format!("job-{}", k + 1));
        }
        manifest.jobs = manifest.jobs[r].to_vec();
    }
    // Hidden automatically when stderr is not a terminal.
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(manifest.jobs.len() as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} jobs {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut perturbations, t0) = (0usize, std::time::Instant::now());
    // The finished jobs are in the JSON file (rewritten whole) at most a second after they
    // end, so an interrupted batch still leaves a report of what ran — at most one rewrite
    // a second, so that thousands of quick jobs cost linear time, not quadratic.
    let mut done: Vec<batch::JobResult> = Vec::new();
    let interim = a.json.as_ref().filter(|p| p.as_os_str() != "-");
    let mut last_write: Option<std::time::Instant> = None;
    let report = batch::run(&manifest, a.adapter.as_deref(), |_, job| {
        perturbations += job.report.as_ref().map_or(0, |r| 2 * r.n_params);
        let rate = perturbations as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{perturbations} perturbations, {rate:.0}/s"));
        bar.inc(1);
        if let Some(path) = interim {
            done.push(job.clone());
            if last_write.is_none_or(|t| t.elapsed().as_secs_f64() >= 1.0) {
                let partial = serde_json::json!({"complete": false, "jobs": done});
                if let Ok(text) = serde_json::to_string_pretty(&partial) {
                    let _ = write_file(path, text.as_bytes());
                }
                last_write = Some(std::time::Instant::now());
            }
        }
    });
    bar.finish_and_clear();
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &a.junit {
        write_file(p, batch::render_junit(&report).as_bytes())?;
    }
    emit(&json, a.json.as_ref(), || batch::render_batch_text(&report))?;
    Ok(ExitCode::from(report.exit_code()))
}

/// `--epsilon`: a number or `auto`.
#[derive(Clone, Copy)]
enum EpsilonArg {
    Auto,
    Value(f64),
}

fn parse_epsilon(s: &str) -> std::result::Result<EpsilonArg, String> {
    if s == "auto" {
        return Ok(EpsilonArg::Auto);
    }
    s.parse::<f64>()
        .map(EpsilonArg::Value)
        .map_err(|_| format!("{s:?} is neither a number nor `auto`"))
}

/// Parses the command line and runs it.
pub fn run() -> Result<ExitCode> {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return Ok(ExitCode::from(code));
        }
    };
    match cli.command {
        Command::Check(a) => run_check(a),
        Command::Batch(a) => run_batch(a),
        Command::Sweep(a) => run_sweep(a),
        Command::Merge(a) => run_merge(a),
        Command::Compare(a) => {
            let p = load(&a.inputs)?;
            let ctx = gradcheck::eval::gpu::GpuContext::shared(a.adapter.as_deref())?;
            let c = gradcheck::compare::compare(
                &ctx, &p.model, &p.params, &p.data, &p.grads, a.epsilon,
            )?;
            let json = serde_json::to_string_pretty(&c)?;
            emit(&json, a.json.as_ref(), || {
                gradcheck::compare::render_text(&c)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "gradcheck", &mut out);
            stdout(&String::from_utf8_lossy(&out))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpage => {
            stdout(&man_page()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices => {
            stdout(&gradcheck::eval::gpu::describe_adapters())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One man page: the commands listed with where their options are (`gradcheck CMD
/// --help`; no per-command pages are shipped, so none is referred to), and the exit status.
fn man_page() -> Result<String> {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    let roff = |t: &str| t.replace('\\', "\\\\").replace('-', "\\-");
    let mut text = String::from_utf8_lossy(&out).into_owned();
    text.push_str(".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        text.push_str(&format!(
            ".TP\n\\fBgradcheck {}\\fR\n{}. Options: \\fBgradcheck {} \\-\\-help\\fR.\n",
            sub.get_name(),
            roff(&about),
            sub.get_name()
        ));
    }
    text.push_str(&format!(
        ".SH \"EXIT STATUS\"\n{}\n.PP\nbatch: 0 every job passed, 1 a job found a wrong gradient, 2 a job could not run (this before 1), 3 a job was inconclusive (and none failed).\n.PP\n{}\n",
        roff(VERDICT_EXIT.trim_start_matches("Exit status: ")),
        roff(&format!("compare, sweep, devices: {}", PLAIN_EXIT.trim_start_matches("Exit status: ")))
    ));
    let mut tail = Vec::new();
    man.render_version_section(&mut tail)?;
    text.push_str(&String::from_utf8_lossy(&tail));
    Ok(text)
}

fn load(inputs: &Inputs) -> Result<Problem> {
    load_files(inputs.example.map(Example::from), &inputs.files)
}

fn load_files(example: Option<Example>, files: &Files) -> Result<Problem> {
    match (example, &files.params, &files.data) {
        (Some(example), ..) => Ok(example.problem()?),
        (None, Some(p), Some(d)) => Ok(Problem::load(
            p,
            d,
            files.grads.as_deref(),
            files.model.as_deref(),
        )?),
        _ => bail!("give --example NAME, or --params P.npz --data D.npz"),
    }
}

fn plan_of(a: &CheckArgs) -> Plan {
    Plan {
        epsilon: match a.epsilon {
            None => Epsilon::Default,
            Some(EpsilonArg::Value(e)) => Epsilon::Value(e),
            Some(EpsilonArg::Auto) => Epsilon::Auto,
        },
        threshold: a.threshold,
        backend: a.backend,
        precision: a.precision,
        kinks: a.kinks,
        top_k: a.top,
        stencil: a.stencil,
        adapter: a.adapter.clone(),
        kernel_timings: a.timings,
        fast: a.fast.map(|directions| Fast {
            directions,
            seed: a.seed,
        }),
        ..Plan::default()
    }
}

fn run_check(a: CheckArgs) -> Result<ExitCode> {
    preflight(&[a.json.as_ref(), a.save_masks.as_ref(), a.junit.as_ref()])?;
    let mut plan = plan_of(&a);
    let report = if a.inputs.example == Some(Example::Seed1d) {
        plan.check_one_d()?
    } else {
        let p = load_files(a.inputs.example, &a.inputs.files)?;
        if let Some(path) = &a.save_masks {
            let n = gradcheck::io::write_masks(path, &p.model, &p.data)?;
            eprintln!("{n} dropout mask(s) written to {}", path.display());
        }
        if let Some(spec) = &a.shard {
            let (i, n) = gradcheck::shard::parse_shard(spec)?;
            let part = plan.shard(&p, i, n)?;
            let path = a.json.as_ref().expect("clap requires --json with --shard");
            let text = serde_json::to_string(&part)?;
            if path.as_os_str() == "-" {
                stdout(&format!("{text}\n"))?;
            } else {
                write_file(path, text.as_bytes())?;
                println!(
                    "shard {i}/{n}: parameters {}..{} of {} evaluated, written to {}",
                    part.range[0],
                    part.range[1],
                    part.n_params,
                    path.display()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        let counter = gradcheck::eval::Progress::new();
        plan.progress = Some(counter.clone());
        let bar = if a.quiet {
            Progress::none()
        } else {
            progress(&p, counter)
        };
        let r = plan.check(&p);
        bar.finish();
        r?
    };
    if let Some(path) = &a.junit {
        let one = gradcheck::batch::BatchReport::single("gradcheck check", report.clone());
        write_file(path, gradcheck::batch::render_junit(&one).as_bytes())?;
    }
    if a.quiet {
        emit(&report::render_json(&report), a.json.as_ref(), || {
            format!("{}\n", report::verdict_sentence(&report))
        })?;
    } else {
        emit_report(&report, a.json.as_ref())?;
    }
    Ok(ExitCode::from(report.verdict.exit_code()))
}

/// `--json PATH|-`: '-' prints the JSON instead of the table; a path writes it and the
/// table still goes to stdout; no flag prints the table only.
fn emit(json: &str, path: Option<&PathBuf>, text: impl FnOnce() -> String) -> Result<()> {
    match path {
        Some(p) if p.as_os_str() == "-" => stdout(&format!("{json}\n"))?,
        other => {
            if let Some(p) = other {
                write_file(p, json.as_bytes())?;
            }
            stdout(&text())?;
        }
    }
    Ok(())
}

/// A check report through [`emit`].
fn emit_report(r: &Report, path: Option<&PathBuf>) -> Result<()> {
    emit(&report::render_json(r), path, || report::render_text(r))
}

/// Writes to stdout. A reader that went away (`… | head`) ends the output quietly — the
/// exit code is still the verdict's; any other failure (a full disk) is an error.
fn stdout(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// Writes a report file whole or not at all: into a temporary file beside it, synced,
/// then renamed over the path, so a full disk never leaves a truncated report or
/// destroys an earlier good one.
/// Where an output goes.
enum Sink {
    /// `-`.
    Stdout,
    /// An existing device, FIFO or socket, written straight through: renaming a file over
    /// it would replace the node (`--junit /dev/null` as root would break /dev/null for the
    /// whole machine) or lose the output (`--json /dev/stdout`).
    Through(PathBuf),
    /// A regular file, new or replaced whole (a temporary file beside it, renamed): the
    /// target of a symlink, not the link.
    Atomic(PathBuf),
}

fn sink_of(path: &std::path::Path) -> Result<Sink> {
    if path.as_os_str() == "-" {
        return Ok(Sink::Stdout);
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => bail!("{}: is a directory, not a file to write", path.display()),
        Ok(m) if !m.is_file() => Ok(Sink::Through(path.to_owned())),
        Ok(_) => Ok(Sink::Atomic(
            std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?,
        )),
        Err(_) => match std::fs::read_link(path) {
            // A dangling link: write its target.
            Ok(target) => Ok(Sink::Atomic(match path.parent() {
                Some(dir) if target.is_relative() => dir.join(target),
                _ => target,
            })),
            Err(_) => Ok(Sink::Atomic(path.to_owned())),
        },
    }
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let path = match sink_of(path)? {
        Sink::Stdout => return stdout(&String::from_utf8_lossy(bytes)),
        Sink::Through(p) => {
            return std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .and_then(|mut f| f.write_all(bytes))
                .with_context(|| format!("writing {}", p.display()));
        }
        Sink::Atomic(p) => p,
    };
    let tmp = temp_beside(&path);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    let done = written.and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// A short temporary name in the same folder (the rename must not cross file systems; a
/// name built from the target's could exceed NAME_MAX).
fn temp_beside(path: &std::path::Path) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    path.with_file_name(format!(
        ".gradcheck-{}-{}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Fails before any work when an output path cannot be written (its folder missing or
/// read-only, or it is a folder itself); `-` is stdout.
fn preflight(paths: &[Option<&PathBuf>]) -> Result<()> {
    for p in paths.iter().flatten() {
        match sink_of(p)? {
            // Opening a FIFO here would hand its reader an empty stream (and block until
            // one comes): a device or FIFO is opened once, to write the report.
            Sink::Stdout | Sink::Through(_) => {}
            Sink::Atomic(f) => {
                let tmp = temp_beside(&f);
                std::fs::File::create(&tmp)
                    .with_context(|| format!("{}: cannot be written", p.display()))?;
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }
    Ok(())
}

/// A running check's progress on a terminal (nothing when stderr is not one): the header
/// at once, then perturbations done, rate and ETA, polled from the CPU evaluator's counter
/// (a GPU evaluation is one submission: its bar just shows the time).
struct Progress {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// No display (`--quiet`).
    fn none() -> Progress {
        Progress {
            stop: Default::default(),
            thread: None,
        }
    }

    fn finish(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn progress(p: &Problem, counter: gradcheck::eval::Progress) -> Progress {
    use std::io::IsTerminal as _;
    use std::sync::atomic::Ordering;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if !std::io::stderr().is_terminal() {
        return Progress { stop, thread: None };
    }
    // The report's own first line says what is checked; the bar says only how far.
    let n = p.model.n_params() as u64;
    // 2N perturbations at ε, and 2N more at 2ε (the truncation estimate).
    let bar = indicatif::ProgressBar::new(4 * n);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} perturbations (2N at ε and at 2ε) {rate} ETA {eta} ({elapsed})",
        )
        .map(|s| {
            s.with_key(
                "rate",
                |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", st.per_sec());
                },
            )
        })
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            let done = counter.done();
            bar.set_length(bar.length().unwrap_or(0).max(done as u64));
            bar.set_position(done as u64);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bar.finish_and_clear();
    });
    Progress {
        stop,
        thread: Some(thread),
    }
}
