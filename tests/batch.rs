//! Batch manifests: exit codes, the JSON report with every job, and JUnit XML that a
//! JUnit (XML) parser reads.
#![cfg(feature = "cli")]

mod common;

use common::{gradcheck, seed_dir, tempdir};

fn manifest(dir: &std::path::Path, body: &str) -> String {
    let p = dir.join("jobs.toml");
    std::fs::write(&p, body).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn pass_fail_and_missing_file_jobs() {
    let dir = tempdir("batch");
    // Relative paths are relative to the manifest: copy the seed files next to it.
    std::fs::create_dir_all(dir.join("seed")).unwrap();
    for f in [
        "seed_params.npz",
        "seed_data.npz",
        "seed_grads_fixed.npz",
        "seed_grads_buggy.npz",
    ] {
        std::fs::copy(seed_dir().join(f), dir.join("seed").join(f)).unwrap();
    }
    let m = manifest(
        &dir,
        r#"
[defaults]
backend = "cpu"
precision = "f64-plain"

[[job]]
name = "fixed from files"
params = "seed/seed_params.npz"
data = "seed/seed_data.npz"
grads = "seed/seed_grads_fixed.npz"

[[job]]
name = "buggy <built in>"
example = "seed-buggy"

[[job]]
name = "missing"
params = "seed/nope.npz"
data = "seed/seed_data.npz"
"#,
    );
    let junit = dir.join("junit.xml");
    let json = dir.join("report.json");
    let (code, out, err) = gradcheck(&[
        "batch",
        &m,
        "--json",
        json.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "an error job makes the exit 2: {out} {err}");
    assert!(
        out.contains("batch: 1 pass, 1 fail, 0 inconclusive, 1 error"),
        "{out}"
    );

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    assert_eq!(jobs[0]["outcome"], "pass");
    assert!(
        (jobs[0]["report"]["difference"].as_f64().unwrap() - 1.1890913024229996e-07).abs() < 1e-12
    );
    assert_eq!(jobs[1]["outcome"], "fail");
    assert!(
        jobs[1]["report"]["tensors"][2]["diagnosis"]["message"]
            .as_str()
            .unwrap()
            .contains("2.000")
    );
    assert_eq!(jobs[2]["outcome"], "error");
    assert!(jobs[2]["error"].as_str().unwrap().contains("nope.npz"));
    assert!(jobs[0]["seconds"].as_f64().unwrap() >= 0.0);

    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("well-formed JUnit XML");
    let suite = doc
        .descendants()
        .find(|n| n.has_tag_name("testsuite"))
        .unwrap();
    assert_eq!(suite.attribute("tests"), Some("3"));
    assert_eq!(suite.attribute("failures"), Some("1"));
    assert_eq!(suite.attribute("errors"), Some("1"));
    let cases: Vec<_> = suite
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases[1].attribute("name"), Some("buggy <built in>"));
    let failure = cases[1]
        .children()
        .find(|n| n.has_tag_name("failure"))
        .unwrap();
    let text = failure.text().unwrap();
    assert!(
        text.contains("W2 FAIL") && text.contains("b1 FAIL") && text.contains("4.000"),
        "{text}"
    );
    assert!(cases[2].children().any(|n| n.has_tag_name("error")));
    assert!(cases[0].children().all(|n| !n.is_element()));
}

#[test]
fn all_pass_exits_0_and_a_failure_exits_1() {
    let dir = tempdir("batch-codes");
    let m = manifest(
        &dir,
        "[[job]]\nexample = \"seed-fixed\"\nbackend = \"cpu\"\n",
    );
    assert_eq!(gradcheck(&["batch", &m]).0, 0);
    let m = manifest(
        &dir,
        "[[job]]\nexample = \"seed-fixed\"\n[[job]]\nexample = \"seed-buggy\"\n[defaults]\nbackend = \"cpu\"\n",
    );
    assert_eq!(gradcheck(&["batch", &m]).0, 1);
}

#[test]
fn bad_manifests_exit_2() {
    let dir = tempdir("batch-bad");
    let m = manifest(&dir, "[[job]]\nexample = \"seed-fixed\"\nepsilonn = 3\n");
    let (code, _, err) = gradcheck(&["batch", &m]);
    assert_eq!(code, 2);
    assert!(
        err.contains("jobs.toml") && err.contains("epsilonn"),
        "{err}"
    );
    let m = manifest(&dir, "");
    let (code, _, err) = gradcheck(&["batch", &m]);
    assert_eq!(code, 2);
    assert!(err.contains("no [[job]]"), "{err}");
}

#[test]
fn batch_shards_split_the_jobs() {
    let dir = tempdir("batch-shard");
    let m = manifest(
        &dir,
        "[defaults]\nbackend = \"cpu\"\n[[job]]\nexample = \"seed-fixed\"\n[[job]]\nexample = \"seed-buggy\"\n[[job]]\nexample = \"seed-fixed\"\n",
    );
    let (code, out, _) = gradcheck(&["batch", &m, "--shard", "1/2", "--json", "-"]);
    assert_eq!(code, 0, "shard 1/2 holds job-1 only: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["jobs"].as_array().unwrap().len(), 1);
    let (code, out, _) = gradcheck(&["batch", &m, "--shard", "2/2", "--json", "-"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["job-2", "job-3"]);
}

#[test]
fn a_single_check_writes_junit_too() {
    let dir = tempdir("check-junit");
    let junit = dir.join("one.xml");
    let (code, _, err) = gradcheck(&[
        "check",
        "--example",
        "seed-buggy",
        "--backend",
        "cpu",
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let failures: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("failure"))
        .collect();
    assert_eq!(failures.len(), 1, "{xml}");
    assert!(
        failures[0].text().unwrap().contains("db1 is 4.000"),
        "{xml}"
    );
}

#[test]
fn manifests_take_epsilon_auto_and_the_1d_example() {
    let dir = tempdir("batch-auto");
    let m = manifest(
        &dir,
        r#"
[defaults]
backend = "cpu"

[[job]]
name = "auto"
example = "seed-fixed"
epsilon = "auto"

[[job]]
name = "one-d"
example = "seed-1d"
"#,
    );
    let json = dir.join("report.json");
    let (code, out, err) = gradcheck(&["batch", &m, "--json", json.to_str().unwrap()]);
    assert_eq!(code, 0, "{out} {err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    // The sweep chose some ε in its range and said so; the check at it passed.
    let auto = &jobs[0]["report"];
    let e = auto["epsilon"].as_f64().unwrap();
    assert!((1e-9..=1e-2).contains(&e), "{e}");
    assert!(
        auto["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("epsilon auto")),
        "{auto}"
    );
    // The notebook's 1-D case: its own difference.
    let one_d = &jobs[1]["report"];
    assert_eq!(jobs[1]["outcome"], "pass");
    assert_eq!(
        one_d["difference"].as_f64().unwrap(),
        gradcheck::examples::expected::ONE_D_DIFFERENCE
    );
    // A word other than auto names the field.
    let bad = manifest(
        &dir,
        "[[job]]\nexample = \"seed-fixed\"\nepsilon = \"small\"\n",
    );
    let (code, _, err) = gradcheck(&["batch", &bad]);
    assert_eq!(code, 2);
    assert!(err.contains("epsilon") && err.contains("auto"), "{err}");
}

#[test]
fn quiet_check_prints_the_verdict_sentence_only() {
    for (example, code, sentence) in [
        ("seed-buggy", 1, "FAIL: there is a mistake"),
        ("seed-fixed", 0, "PASS: your backward propagation"),
    ] {
        let (c, out, err) = gradcheck(&["check", "--example", example, "--quiet"]);
        assert_eq!(c, code, "{out} {err}");
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.starts_with(sentence), "{out}");
        assert!(err.is_empty(), "{err}");
    }
}
