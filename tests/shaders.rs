//! Every kernel family parses and validates with naga, in f32 and in f64, without a GPU.
#![cfg(feature = "gpu")]

use gradcheck::eval::gpu::source;

fn validate(src: &str, name: &str) {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
    let mut v = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::FLOAT64,
    );
    if let Err(e) = v.validate(&module) {
        panic!("{name}: {}", e.emit_to_string(src));
    }
    for ep in &module.entry_points {
        assert_eq!(ep.stage, naga::ShaderStage::Compute, "{name}: {}", ep.name);
    }
}

#[test]
fn every_family_validates_in_both_precisions() {
    for (name, family, entries) in source::families() {
        for f64 in [false, true] {
            let src = source::module(family, f64);
            validate(&src, &format!("{name} f64={f64}"));
            let module = naga::front::wgsl::parse_str(&src).unwrap();
            for e in entries {
                assert!(
                    module.entry_points.iter().any(|ep| ep.name == *e),
                    "{name}: entry {e} missing"
                );
            }
        }
    }
}

#[test]
fn f64_kernels_never_call_32_bit_only_builtins_on_f64() {
    // exp/log/tanh are GLSL.std.450 32-bit-only: the f64 math must not call them.
    let src = source::MATH_F64;
    for bad in ["exp(", "log(", "tanh(", "pow("] {
        for (n, line) in src.lines().enumerate() {
            let code = line.split("//").next().unwrap();
            let hit = code.match_indices(bad).any(|(i, _)| {
                i == 0
                    || !code.as_bytes()[i - 1].is_ascii_alphanumeric()
                        && code.as_bytes()[i - 1] != b'_'
            });
            assert!(!hit, "math_f64.wgsl:{}: calls {bad}", n + 1);
        }
    }
}
