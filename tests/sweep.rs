//! The ε sweep of seed-fixed shows the V: truncation error falling with ε, rounding
//! error rising below ~1e-6 in f64; the plot is well-formed SVG; `--epsilon auto` uses it.
// Without the cli/gpu features some helpers and imports serve only gated-out tests.
#![cfg_attr(not(all(feature = "cli", feature = "gpu")), allow(unused))]

mod common;

use common::tempdir;
use gradcheck::check::{Backend, GradCheck, Precision};
use gradcheck::examples::seed_problem;
use gradcheck::sweep::{epsilons, render_svg, sweep};

#[test]
fn seed_fixed_sweep_is_a_v_on_the_cpu() {
    let p = seed_problem(false).unwrap();
    let eps = epsilons(1e-1, 1e-10, 3).unwrap();
    let gc = GradCheck::new().backend(Backend::Cpu);
    let s = sweep(
        &gc,
        &p.model,
        &p.params,
        &p.data,
        &p.grads,
        &eps,
        &[Precision::F64Plain],
    )
    .unwrap();
    let c = &s.curves[0];
    let at = |e: f64| {
        c.points
            .iter()
            .find(|q| (q.epsilon / e - 1.0).abs() < 1e-9)
            .unwrap()
            .difference
    };
    // Truncation ∝ ε²: a decade of ε is two decades of difference (measured 1.7e-4 → 1.7e-6).
    assert!(at(1e-1) / at(1e-2) > 50.0, "{} {}", at(1e-1), at(1e-2));
    // Rounding ∝ 1/ε below the optimum (measured 1.2e-7 at 1e-7, 1.3e-4 at 1e-10).
    assert!(at(1e-10) / at(1e-7) > 100.0, "{} {}", at(1e-10), at(1e-7));
    assert!(
        c.best_epsilon >= 1e-6 && c.best_epsilon <= 1e-3,
        "{}",
        c.best_epsilon
    );
    assert!(at(c.best_epsilon) < 1e-9);
    // The notebook's point is on the curve.
    assert!((at(1e-7) / 1.1890913024229996e-07 - 1.0).abs() < 1e-12);
    let svg = render_svg(&s);
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    assert_eq!(
        doc.descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .count(),
        1
    );
    assert!(svg.contains("threshold 2e-7"));
    // One threshold line per curve (each precision has its own), and a title.
    let thresholds = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("threshold"))
        .count();
    assert_eq!(thresholds, s.curves.len());
    assert!(svg.contains("4-5-3-1 net, m = 3"), "{svg}");
}

#[test]
#[cfg(feature = "cli")]
fn sweep_cli_writes_the_plot_and_epsilon_auto_picks_the_bottom_of_the_v() {
    let dir = tempdir("sweep");
    let svg = dir.join("v.svg");
    let (code, out, err) = common::gradcheck(&[
        "sweep",
        "--example",
        "seed-fixed",
        "--backend",
        "cpu",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("best ε for cpu f64"), "{out}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    let (code, out, err) = common::gradcheck(&[
        "check",
        "--example",
        "seed-fixed",
        "--backend",
        "cpu",
        "--epsilon",
        "auto",
        "--json",
        "-",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let e = v["epsilon"].as_f64().unwrap();
    assert!((1e-6..=1e-3).contains(&e), "{e}");
    assert!(
        v["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("epsilon auto: a sweep"))
    );
}

#[test]
fn each_precision_is_swept_once_and_labelled_as_it_ran() {
    // The default backend over a software adapter runs on the CPU, which has no f32: the
    // sweep used to label copies of its f64 curve "f32" ("cpu f64" three times).
    let p = seed_problem(false).unwrap();
    let eps = epsilons(1e-2, 1e-8, 1).unwrap();
    let all = [
        Precision::F64,
        Precision::F64Plain,
        Precision::F32,
        Precision::F32Plain,
    ];
    for backend in [Backend::Cpu, Backend::Auto] {
        let gc = GradCheck::new().backend(backend);
        let s = sweep(&gc, &p.model, &p.params, &p.data, &p.grads, &eps, &all).unwrap();
        let labels: Vec<&str> = s.curves.iter().map(|c| c.label.as_str()).collect();
        let mut unique = labels.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), labels.len(), "{backend:?}: {labels:?}");
        for c in &s.curves {
            // The label's precision is the one that ran (a CPU curve is never f32).
            assert!(
                !(c.label.starts_with("cpu") && c.label.contains("f32")),
                "{}",
                c.label
            );
        }
        if backend == Backend::Cpu {
            assert_eq!(labels, ["cpu f64", "cpu f64-plain"]);
        }
    }
}
