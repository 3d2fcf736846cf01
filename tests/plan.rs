//! The one call (Problem + Plan → Report): its rules are the library's, so every front end
//! refuses the same settings with the same message, and gives the same report.

mod common;

use gradcheck::examples::seed_problem;
use gradcheck::plan::{Epsilon, Fast, Plan};

const EPS_MSG: &str = "epsilon = 5: must be a number in (0, 1] (or auto)";
const STENCIL_MSG: &str = "stencil = 260: must be 2 or 4 (2: central differences, 4: Richardson)";

#[test]
fn the_library_refuses_bad_settings_itself() {
    let p = seed_problem(false).unwrap();
    let bad = |plan: Plan| plan.check(&p).unwrap_err().to_string();
    assert_eq!(
        bad(Plan {
            epsilon: Epsilon::Value(5.0),
            ..Plan::default()
        }),
        EPS_MSG
    );
    assert_eq!(
        bad(Plan {
            stencil: 260,
            ..Plan::default()
        }),
        STENCIL_MSG
    );
    assert!(
        bad(Plan {
            fast: Some(Fast {
                directions: 0,
                seed: 0
            }),
            ..Plan::default()
        })
        .contains("fast = 0")
    );
    // Shards: same rules, plus their own.
    let plan = Plan {
        stencil: 4,
        ..Plan::default()
    };
    assert!(
        plan.shard(&p, 1, 2)
            .unwrap_err()
            .to_string()
            .contains("--stencil 4")
    );
}

#[test]
fn the_one_call_gives_the_engines_report_with_the_problems_notes() {
    // The notebook's example in its own arithmetic: its digits, its notes, built-in flag.
    let p = seed_problem(true).unwrap();
    let r = Plan::default().check(&p).unwrap();
    assert_eq!(r.precision, gradcheck::eval::Precision::F64Plain);
    assert!(
        (r.difference / 0.2850931567761623 - 1.0).abs() < 1e-8,
        "{}",
        r.difference
    );
    for n in &p.notes {
        assert!(r.notes.contains(n), "{n}");
    }
    assert_eq!(common::failing(&r), ["b1", "W2"]);
}

#[cfg(feature = "cli")]
#[test]
fn cli_and_batch_refuse_with_the_librarys_message() {
    let (code, _, err) = common::gradcheck(&["check", "--example", "seed-fixed", "--epsilon", "5"]);
    assert_eq!(code, 2);
    assert!(err.contains(EPS_MSG), "{err}");
    let (code, _, err) =
        common::gradcheck(&["check", "--example", "seed-fixed", "--stencil", "260"]);
    assert_eq!(code, 2);
    assert!(err.contains(STENCIL_MSG), "{err}");
    let dir = common::tempdir("plan-batch");
    let m = dir.join("jobs.toml");
    std::fs::write(
        &m,
        "[[job]]\nname = \"eps\"\nexample = \"seed-fixed\"\nepsilon = 5.0\n\n[[job]]\nname = \"stencil\"\nexample = \"seed-fixed\"\nstencil = 260\n",
    )
    .unwrap();
    let json = dir.join("out.json");
    let (code, out, err) = common::gradcheck(&[
        "batch",
        m.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let errors: Vec<&str> = doc["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["error"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(errors, [EPS_MSG, STENCIL_MSG]);
}

#[test]
fn an_inconclusive_check_is_rechecked_until_decided() {
    // ε = 1e-12 in the notebook's arithmetic: rounding swamps everything; its suggestion
    // (1e-9) is only half a cure, the next one (1e-6) decides. One run, not three.
    let p = seed_problem(false).unwrap();
    let r = Plan {
        epsilon: Epsilon::Value(1e-12),
        ..Plan::default()
    }
    .check(&p)
    .unwrap();
    assert_eq!(r.verdict, gradcheck::check::Verdict::Pass, "{:?}", r.notes);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("re-checked at ε = 1e-9, then 1e-6")),
        "{:?}",
        r.notes
    );
    assert!(r.model_guessed.is_none(), "the notebook's model is known");
}

#[test]
fn auto_takes_the_cpu_for_a_small_problem_without_looking_for_a_gpu() {
    let p = seed_problem(false).unwrap();
    let r = Plan::default().check(&p).unwrap();
    assert_eq!(r.backend, "cpu");
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("without looking for a GPU")),
        "{:?}",
        r.notes
    );
    // Named or asked for, the GPU is still looked for.
    let r = Plan {
        backend: gradcheck::check::Backend::Cpu,
        ..Plan::default()
    }
    .check(&p)
    .unwrap();
    assert!(r.notes.iter().all(|n| !n.contains("without looking")));
}

/// Progress is counted per check, into the counter its plan carries (no process global):
/// a CPU check at ε and 2ε counts each ± perturbation of each parameter once per ε, 4N in
/// all, an MLP and a conv net alike; a check without a counter counts nowhere.
#[test]
fn each_check_counts_its_perturbations_into_its_own_counter() {
    use gradcheck::eval::{Backend, Precision, Progress};
    for (p, precision) in [
        (seed_problem(false).unwrap(), Precision::F64),
        (
            gradcheck::examples::conv_problem(false).unwrap(),
            Precision::F64,
        ),
    ] {
        let (mine, other) = (Progress::new(), Progress::new());
        let plan = Plan {
            backend: Backend::Cpu,
            precision,
            progress: Some(mine.clone()),
            ..Plan::default()
        };
        let r = plan.check(&p).unwrap();
        assert_eq!(r.verdict, gradcheck::check::Verdict::Pass);
        assert_eq!(mine.done(), 4 * p.model.n_params());
        let plain = Plan {
            backend: Backend::Cpu,
            ..Plan::default()
        };
        plain.check(&p).unwrap();
        assert_eq!((mine.done(), other.done()), (4 * p.model.n_params(), 0));
    }
}
