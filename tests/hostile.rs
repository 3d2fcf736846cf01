//! Hostile and careless inputs: every one ends in a clear exit code within seconds,
//! never a panic, an abort or a hang, and no report is ever half-written. The crafted
//! files are made here, a few lines each (no committed binaries).
#![cfg(feature = "cli")]

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{gradcheck, seed_dir, tempdir};
use gradcheck::io::Npz;
use gradcheck::rng::Rng;

/// A .npy stream with the given header dict and raw data.
fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((header.len() as u16).to_le_bytes());
    b.extend(header.as_bytes());
    b.extend(data);
    b
}

/// An .npz of (name, .npy bytes), deflated or stored.
fn npz(path: &std::path::Path, entries: &[(&str, Vec<u8>)], deflate: bool) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .large_file(true);
    for (name, bytes) in entries {
        z.start_file(format!("{name}.npy"), opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

/// Runs the CLI under an 8 GiB address-space limit (`ulimit -v`), asserting it ends by
/// itself within `limit` with no panic (an allocation over the limit would abort).
fn run(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (i32, String, String) {
    let t0 = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg("ulimit -v 8388608; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_gradcheck"))
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(t0.elapsed() < limit, "{args:?} took {:?}", t0.elapsed());
    assert!(!e.contains("panicked"), "{args:?}: {e}");
    (out.status.code().unwrap_or(-1), o, e)
}

/// A case this machine cannot set up: skipped with the reason — except under CI=true,
/// where CI's machine (root, as this project's are) can, so a skip would hide a case.
fn cannot_run(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but this case cannot run: {why}");
    }
    eprintln!("skipped: {why}");
}

fn seed(f: &str) -> String {
    seed_dir().join(f).to_string_lossy().into_owned()
}

#[test]
fn huge_header_shapes_are_refused_before_allocating() {
    let dir = tempdir("hostile-header");
    for descr in ["<f8", "<f4", "<i8", "|b1"] {
        let p = dir.join(format!("huge-{}.npz", &descr[1..]));
        // 1e12 × 8 elements claimed, 64 bytes present.
        npz(
            &p,
            &[
                ("X", npy(descr, "(1000000000000, 8)", &[0u8; 64])),
                ("Y", npy("<f8", "(1, 8)", &[0u8; 64])),
            ],
            false,
        );
        let (code, _, err) = run(
            &[
                "check",
                "--params",
                &seed("seed_params.npz"),
                "--data",
                p.to_str().unwrap(),
            ],
            &[],
            Duration::from_secs(10),
        );
        assert_eq!(code, 2, "{descr}: {err}");
        assert!(err.contains("X") && err.contains("huge"), "{err}");
    }
}

#[test]
fn a_deflate_bomb_is_refused_by_the_input_budget() {
    let dir = tempdir("hostile-bomb");
    let p = dir.join("bomb.npz");
    // 4 × 2 M zeros = 64 MB unpacked from ~64 KB, against a budget of 8 MB.
    let zeros = vec![0u8; 4 * 2_000_000 * 8];
    npz(&p, &[("X", npy("<f8", "(4, 2000000)", &zeros))], true);
    assert!(std::fs::metadata(&p).unwrap().len() < 1 << 20);
    let (code, _, err) = run(
        &[
            "check",
            "--params",
            &seed("seed_params.npz"),
            "--data",
            p.to_str().unwrap(),
        ],
        &[("GRADCHECK_MAX_INPUT_BYTES", "8000000")],
        Duration::from_secs(10),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("input budget"), "{err}");
}

#[test]
fn fifos_devices_truncated_and_garbage_files_end_in_exit_2() {
    let dir = tempdir("hostile-files");
    let fifo = dir.join("fifo.npz");
    let made = Command::new("mkfifo").arg(&fifo).status();
    let garbage = dir.join("garbage.npz");
    std::fs::write(&garbage, b"PK\x03\x04 this is not a zip at all").unwrap();
    let truncated = dir.join("truncated.npz");
    let good = std::fs::read(seed_dir().join("seed_data.npz")).unwrap();
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let mut cases = vec![garbage, truncated];
    if made.is_ok_and(|s| s.success()) {
        cases.push(fifo);
    }
    for data in &cases {
        let (code, _, err) = run(
            &[
                "check",
                "--params",
                &seed("seed_params.npz"),
                "--data",
                data.to_str().unwrap(),
            ],
            &[],
            Duration::from_secs(10),
        );
        assert_eq!(code, 2, "{data:?}: {err}");
        assert!(
            err.contains(data.file_name().unwrap().to_str().unwrap()),
            "{err}"
        );
    }
    let (code, _, err) = run(
        &["check", "--example", "seed-fixed", "--model", "/dev/zero"],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(
        &[
            "check",
            "--params",
            &seed("seed_params.npz"),
            "--data",
            &seed("seed_data.npz"),
            "--model",
            "/dev/zero",
        ],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn option_extremes_are_usage_errors() {
    for args in [
        vec!["check", "--example", "seed-fixed", "--fast", "1000000000"],
        vec!["check", "--example", "seed-fixed", "--epsilon", "1e300"],
        vec!["check", "--example", "seed-fixed", "--epsilon", "-1"],
        vec!["check", "--example", "seed-fixed", "--epsilon", "nan"],
        vec![
            "sweep",
            "--example",
            "seed-fixed",
            "--from",
            "1e300",
            "--to",
            "1e-300",
        ],
    ] {
        let (code, _, err) = run(&args, &[], Duration::from_secs(10));
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}

#[test]
fn a_closed_or_full_stdout_does_not_panic() {
    // The reader goes away after one byte: the rest is dropped quietly.
    let mut child = Command::new(env!("CARGO_BIN_EXE_gradcheck"))
        .args([
            "check",
            "--example",
            "seed-buggy",
            "--backend",
            "cpu",
            "--json",
            "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(1), "the verdict's code: {err}");
    // A full device is an error, exit 2, said once.
    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        let out = Command::new(env!("CARGO_BIN_EXE_gradcheck"))
            .args(["check", "--example", "seed-buggy", "--backend", "cpu"])
            .stdout(full)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("stdout"), "{err}");
    }
}

#[test]
fn reports_are_written_whole_and_unwritable_paths_fail_first() {
    let dir = tempdir("hostile-reports");
    let json = dir.join("report.json");
    let (code, _, err) = gradcheck(&[
        "check",
        "--example",
        "seed-fixed",
        "--backend",
        "cpu",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["verdict"], "pass");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A folder that does not exist: refused before any work, naming the path.
    let (code, _, err) = gradcheck(&[
        "check",
        "--example",
        "seed-fixed",
        "--json",
        "/nonexistent-dir/r.json",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent-dir/r.json"), "{err}");
    // A folder as the report path.
    let (code, _, err) = gradcheck(&[
        "check",
        "--example",
        "seed-fixed",
        "--json",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn junit_with_control_characters_is_valid_xml() {
    let dir = tempdir("hostile-junit");
    let m = dir.join("jobs.toml");
    std::fs::write(
        &m,
        "[[job]]\nname = \"bell\\u0007 and <tag> & \\u001b[31mred\"\nexample = \"seed-buggy\"\n\n[[job]]\nname = \"nul\\u0000\"\nexample = \"nope\"\n",
    )
    .unwrap();
    let junit = dir.join("junit.xml");
    let (code, _, err) = gradcheck(&[
        "batch",
        m.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
        "--json",
        "-",
    ]);
    assert_eq!(code, 2, "{err}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
}

#[test]
fn nan_gradients_are_a_backprop_bug() {
    let dir = tempdir("hostile-nan");
    let g = Npz::open(&seed_dir().join("seed_grads_fixed.npz")).unwrap();
    let arrays: Vec<(String, ndarray::Array2<f64>)> = g
        .arrays
        .iter()
        .map(|(k, a)| {
            let s = a.shape();
            let (r, c) = if s.len() == 2 {
                (s[0], s[1])
            } else {
                (s[0], 1)
            };
            let mut m =
                ndarray::Array2::from_shape_vec((r, c), a.iter().copied().collect()).unwrap();
            if k == "db2" {
                m[[1, 0]] = f64::NAN;
            }
            (k.clone(), m)
        })
        .collect();
    let p = dir.join("grads.npz");
    let refs: Vec<(&str, ndarray::Array2<f64>)> = arrays
        .iter()
        .map(|(k, a)| (k.as_str(), a.clone()))
        .collect();
    common::write_npz(&p, &refs);
    let (code, out, err) = gradcheck(&[
        "check",
        "--params",
        &seed("seed_params.npz"),
        "--data",
        &seed("seed_data.npz"),
        "--grads",
        p.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(out.contains("db2 has 1 NaN"), "{out}");
}

#[test]
fn shards_of_another_problem_are_refused() {
    let dir = tempdir("hostile-shards");
    let part = |i: usize, data: &str| {
        let path = dir.join(format!("part{i}-{}.json", data.len()));
        let (code, _, err) = gradcheck(&[
            "check",
            "--params",
            &seed("seed_params.npz"),
            "--data",
            data,
            "--backend",
            "cpu",
            "--shard",
            &format!("{i}/2"),
            "--json",
            path.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        path.to_string_lossy().into_owned()
    };
    // Other data: Y flipped.
    let d = Npz::open(&seed_dir().join("seed_data.npz")).unwrap();
    let other = dir.join("other.npz");
    let x = d.arrays.iter().find(|(k, _)| k == "X").unwrap().1.clone();
    let y = d
        .arrays
        .iter()
        .find(|(k, _)| k == "Y")
        .unwrap()
        .1
        .mapv(|v| 1.0 - v);
    let to2 = |a: ndarray::ArrayD<f64>| {
        let s = a.shape().to_vec();
        let (r, c) = if s.len() == 2 {
            (s[0], s[1])
        } else {
            (1, s[0])
        };
        ndarray::Array2::from_shape_vec((r, c), a.iter().copied().collect()).unwrap()
    };
    common::write_npz(&other, &[("X", to2(x)), ("Y", to2(y))]);
    let p1 = part(1, &seed("seed_data.npz"));
    let p2 = part(2, other.to_str().unwrap());
    let (code, _, err) = gradcheck(&[
        "merge",
        "--params",
        &seed("seed_params.npz"),
        "--data",
        &seed("seed_data.npz"),
        "--grads",
        &seed("seed_grads_fixed.npz"),
        &p1,
        &p2,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("another problem"), "{err}");
}

#[test]
fn mutated_npz_files_never_panic_and_stay_in_budget() {
    let good = std::fs::read(seed_dir().join("seed_data.npz")).unwrap();
    let mut rng = Rng(7);
    for _ in 0..3000 {
        let mut b = good.clone();
        for _ in 0..1 + (rng.next_f64() * 8.0) as usize {
            let at = (rng.next_f64() * b.len() as f64) as usize;
            b[at] = (rng.next_f64() * 256.0) as u8;
        }
        if rng.next_f64() < 0.2 {
            b.truncate((rng.next_f64() * b.len() as f64) as usize);
        }
        // Ok or a typed error; never a panic (the test would abort).
        let _ = Npz::from_bytes("mutated.npz", &b);
    }
    for _ in 0..2000 {
        let len = (rng.next_f64() * 400.0) as usize;
        let text: String = (0..len)
            .map(|_| {
                char::from(
                    b" {}[]\",:0123456789.eE-+layersactivationsrelu"
                        [(rng.next_f64() * 44.0) as usize],
                )
            })
            .collect();
        let _ = serde_json::from_str::<gradcheck::ModelSpec>(&text).map(gradcheck::Model::new);
    }
}

#[test]
fn a_full_filesystem_keeps_the_earlier_report_whole() {
    // A 64 KiB tmpfs, nearly filled: the new report cannot be written, the old one stays.
    let dir = tempdir("hostile-full");
    let mnt = dir.join("fs");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        cannot_run("cannot mount a tmpfs here (needs root)");
        return;
    }
    let report = mnt.join("report.json");
    let earlier = "{\"verdict\": \"pass\", \"earlier\": true}\n";
    std::fs::write(&report, earlier).unwrap();
    // Fill every page that is left.
    for k in 0..64 {
        if std::fs::write(mnt.join(format!("filler{k}")), vec![0u8; 4096]).is_err() {
            break;
        }
    }
    let (code, _, err) = run(
        &[
            "check",
            "--example",
            "seed-buggy",
            "--backend",
            "cpu",
            "--json",
            report.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(20),
    );
    let after = std::fs::read_to_string(&report).unwrap_or_default();
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("report.json"), "{err}");
    assert_eq!(after, earlier, "the earlier report survives whole");
}

/// The seed's parameters as (name, .npy bytes, float64, C order), for archives built here.
fn seed_param_entries() -> Vec<(String, Vec<u8>)> {
    let z = Npz::open(std::path::Path::new(&seed("seed_params.npz"))).unwrap();
    z.arrays
        .iter()
        .map(|(name, a)| {
            let shape = format!(
                "({})",
                a.shape()
                    .iter()
                    .map(|d| format!("{d}, "))
                    .collect::<String>()
            );
            let data: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), npy("<f8", &shape, &data))
        })
        .collect()
}

fn check_params(path: &std::path::Path) -> (i32, String, String) {
    run(
        &[
            "check",
            "--params",
            path.to_str().unwrap(),
            "--data",
            &seed("seed_data.npz"),
            "--grads",
            &seed("seed_grads_fixed.npz"),
            "--backend",
            "cpu",
        ],
        &[],
        Duration::from_secs(20),
    )
}

#[test]
fn an_archive_with_a_member_twice_is_refused_by_name() {
    let dir = tempdir("dup-member");
    let mut entries = seed_param_entries();
    // A second W1 under a placeholder name of the same length, renamed in the bytes.
    let w1 = entries.iter().find(|(n, _)| n == "W1").unwrap().1.clone();
    entries.push(("Q1".into(), w1));
    let refs: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(n, b)| (n.as_str(), b.clone()))
        .collect();
    let path = dir.join("p.npz");
    npz(&path, &refs, false);
    let bytes = std::fs::read(&path).unwrap();
    let renamed: Vec<u8> = {
        let mut b = bytes.clone();
        let pat = b"Q1.npy";
        let mut i = 0;
        while i + pat.len() <= b.len() {
            if &b[i..i + pat.len()] == pat {
                b[i] = b'W';
            }
            i += 1;
        }
        b
    };
    std::fs::write(&path, renamed).unwrap();
    let (code, _, err) = check_params(&path);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("W1 appears twice"), "{err}");
}

#[test]
fn a_member_whose_crc_does_not_match_is_refused() {
    let dir = tempdir("crc");
    let entries = seed_param_entries();
    let refs: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(n, b)| (n.as_str(), b.clone()))
        .collect();
    for deflate in [false, true] {
        let path = dir.join("p.npz");
        npz(&path, &refs, deflate);
        let mut bytes = std::fs::read(&path).unwrap();
        if deflate {
            // A bit of the first member's compressed stream.
            let (n, e) = (
                u16::from_le_bytes([bytes[26], bytes[27]]) as usize,
                u16::from_le_bytes([bytes[28], bytes[29]]) as usize,
            );
            bytes[30 + n + e + 40] ^= 0x04;
        } else {
            // A bit of the first array's last value (stored: its raw bytes).
            let w1 = &entries[0].1;
            let at = bytes
                .windows(w1.len())
                .position(|w| w == w1.as_slice())
                .unwrap();
            bytes[at + w1.len() - 2] ^= 0x10;
        }
        std::fs::write(&path, &bytes).unwrap();
        let (code, _, err) = check_params(&path);
        assert_eq!(
            code, 2,
            "deflate={deflate}: a damaged member was accepted: {err}"
        );
        if !deflate {
            assert!(err.contains("CRC-32"), "{err}");
        }
    }
}

#[test]
fn npy_headers_are_parsed_as_the_literal_they_are() {
    let dir = tempdir("npy-header");
    let entries = seed_param_entries();
    let w1_data: Vec<u8> = {
        let z = Npz::open(std::path::Path::new(&seed("seed_params.npz"))).unwrap();
        let a = &z.arrays.iter().find(|(n, _)| n == "W1").unwrap().1;
        a.iter().flat_map(|v| v.to_le_bytes()).collect()
    };
    let raw = |header: &str| {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b.extend(&w1_data);
        b
    };
    for (header, needle) in [
        // 'descr': '<f4' inside another key's string used to be read as the dtype.
        (
            "{'note': \"'descr': '<f4', 'fortran_order': True\", 'descr': '<f8', 'fortran_order': False, 'shape': (5, 4), }",
            "unknown key \"note\"",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (5, 4), 'descr': '<f4', }",
            "\"descr\" twice",
        ),
        ("{'descr': '<f8', 'shape': (5, 4), }", "no 'fortran_order'"),
        (
            "{'descr': '<f8', 'fortran_order': 0, 'shape': (5, 4), }",
            "fortran_order",
        ),
    ] {
        let mut refs: Vec<(&str, Vec<u8>)> = entries
            .iter()
            .map(|(n, b)| (n.as_str(), b.clone()))
            .collect();
        refs[0] = ("W1", raw(header));
        let path = dir.join("p.npz");
        npz(&path, &refs, true);
        let (code, _, err) = check_params(&path);
        assert_eq!(code, 2, "{header}: {err}");
        assert!(err.contains(needle), "{header}: {err}");
    }
    // numpy's own spelling, with and without the trailing comma, still reads.
    for header in [
        "{'descr': '<f8', 'fortran_order': False, 'shape': (5, 4), }",
        "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (5, 4)}",
    ] {
        let mut refs: Vec<(&str, Vec<u8>)> = entries
            .iter()
            .map(|(n, b)| (n.as_str(), b.clone()))
            .collect();
        refs[0] = ("W1", raw(header));
        let path = dir.join("p.npz");
        npz(&path, &refs, true);
        let (code, out, err) = check_params(&path);
        assert_eq!(code, 0, "{header}: {out}{err}");
    }
}

/// Runs `check --example seed-fixed` with extra output arguments.
fn check_writing(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["check", "--example", "seed-fixed", "--backend", "cpu"];
    all.extend_from_slice(args);
    gradcheck(&all)
}

#[test]
fn outputs_to_devices_fifos_links_stdout_and_long_names() {
    use std::os::unix::fs::FileTypeExt as _;
    let dir = tempdir("out-paths");
    // `--junit -` is stdout, like `--json -`.
    let (code, out, err) = check_writing(&["--junit", "-"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("<testsuite"), "{out}");
    assert!(
        !std::path::Path::new("-").exists(),
        "a file named '-' was written"
    );
    // A symlink: the target is replaced, the link stays a link.
    let target = dir.join("target.json");
    std::fs::write(&target, "stale").unwrap();
    let link = dir.join("link.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (code, _, err) = check_writing(&["--json", link.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&target).unwrap()).unwrap();
    assert_eq!(v["verdict"], "pass");
    // A legal 250-byte name (the temporary name must not exceed NAME_MAX).
    let long = dir.join(format!("{}.json", "r".repeat(245)));
    let (code, _, err) = check_writing(&["--json", long.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(long.exists());
    // A FIFO: written straight through to its reader.
    let fifo = dir.join("fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if made {
        let f = fifo.clone();
        let reader = std::thread::spawn(move || std::fs::read_to_string(f).unwrap());
        let (code, _, err) = check_writing(&["--json", fifo.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(reader.join().unwrap().contains("\"verdict\""));
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    } else {
        eprintln!("skipping the FIFO case: mkfifo failed");
    }
    // A character device (a private copy of /dev/null, where mknod is allowed): written
    // through, still a device afterwards.
    let null = dir.join("null");
    let made = Command::new("mknod")
        .args([null.to_str().unwrap(), "c", "1", "3"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if made {
        for flag in ["--json", "--junit"] {
            let (code, _, err) = check_writing(&[flag, null.to_str().unwrap()]);
            assert_eq!(code, 0, "{flag}: {err}");
            assert!(
                std::fs::metadata(&null)
                    .unwrap()
                    .file_type()
                    .is_char_device(),
                "{flag} replaced the device node with a regular file"
            );
        }
    } else {
        // No mknod here. Not root: the real /dev/null (which this user cannot replace)
        // must still be writable through. Root without mknod: skipped — never risk the
        // machine's /dev/null.
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(true);
        if root {
            cannot_run("the device-node case: mknod is not allowed here");
        } else {
            let (code, _, err) = check_writing(&["--json", "/dev/null"]);
            assert_eq!(code, 0, "{err}");
        }
    }
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
}

#[test]
fn shortcut_tables_over_the_memory_budget_fall_back_to_the_layer_by_layer_path() {
    // A valid 64-4096-256 net at m = 2,048 needed 17 GB of tables and aborted; here a
    // tiny budget stands in for it: the layers over it go layer by layer, with a note, and
    // the numbers are the same.
    let args = [
        "check",
        "--example",
        "seed-fixed",
        "--backend",
        "cpu",
        "--precision",
        "f64",
        "--json",
        "-",
    ];
    let (code, whole, err) = run(&args, &[], Duration::from_secs(20));
    assert_eq!(code, 0, "{err}");
    let (code, small, err) = run(
        &args,
        &[("GRADCHECK_MAX_TABLE_BYTES", "300")],
        Duration::from_secs(20),
    );
    assert_eq!(code, 0, "{err}");
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&whole).unwrap(),
        serde_json::from_str(&small).unwrap(),
    );
    assert!(
        b["notes"].to_string().contains("exceed 0 MiB"),
        "{}",
        b["notes"]
    );
    let diff = |v: &serde_json::Value| v["difference"].as_f64().unwrap();
    // Both are rounding noise of correct gradients (≈ 1e-16): equal to well below 1e-14.
    assert!(
        (diff(&a) - diff(&b)).abs() <= 1e-14,
        "{} vs {}",
        diff(&a),
        diff(&b)
    );
    assert_eq!(a["verdict"], "pass");
    assert_eq!(b["verdict"], "pass");
}

/// Ctrl-C during a long check: the CLI stops at once (killed by SIGINT: the shell's 130),
/// and the report a previous run left at the --json path is intact (reports are written
/// whole or not at all).
#[test]
fn sigint_stops_the_cli_at_once_and_leaves_the_previous_report() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempdir("sigint");
    let spec = gradcheck::ModelSpec::notebook_default(vec![784, 512, 256, 1]);
    let (model, params, data) = gradcheck::examples::random_problem(spec, 64, 1).unwrap();
    let mut arrays = Vec::new();
    for (t, slot) in model.layout().tensors().iter().enumerate() {
        let a = ndarray::Array2::from_shape_vec((slot.rows, slot.cols), params.tensor(t).to_vec());
        arrays.push((slot.name.clone(), a.unwrap()));
    }
    let refs: Vec<(&str, ndarray::Array2<f64>)> = arrays
        .iter()
        .map(|(k, a)| (k.as_str(), a.clone()))
        .collect();
    let (p, d, out) = (dir.join("p.npz"), dir.join("d.npz"), dir.join("r.json"));
    common::write_npz(&p, &refs);
    common::write_npz(&d, &[("X", data.x.clone()), ("Y", data.y.clone())]);
    std::fs::write(&out, "{\"previous\": true}").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gradcheck"))
        .args(["check", "--backend", "cpu", "--quiet", "--json"])
        .arg(&out)
        .arg("--params")
        .arg(&p)
        .arg("--data")
        .arg(&d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let sent = Instant::now();
    // SAFETY: kill(2) on the child's pid; no memory is touched.
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    assert_eq!(unsafe { kill(child.id() as i32, 2) }, 0);
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    if status.code() == Some(0) || status.code() == Some(1) {
        // The check finished before the signal (a fast machine): nothing to judge.
        eprintln!("the check ended before SIGINT ({took:?}); skipping the timing");
        return;
    }
    assert_eq!(status.signal(), Some(2), "{status:?}");
    assert!(
        took < Duration::from_millis(300),
        "stopped {took:?} after SIGINT"
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "{\"previous\": true}"
    );
}
