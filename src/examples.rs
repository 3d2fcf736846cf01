//! The built-in examples: the seed notebook's own test case, compiled in so that
//! `gradcheck check --example seed-buggy` needs no files.

use crate::error::Result;
use crate::io::{Npz, Problem};

/// The notebook's parameters (W1…b3, 4-5-3-1).
pub const SEED_PARAMS: &[u8] = include_bytes!("../fixtures/seed/seed_params.npz");
/// The notebook's data (X 4×3, Y 1×3).
pub const SEED_DATA: &[u8] = include_bytes!("../fixtures/seed/seed_data.npz");
/// The notebook's backprop with its two planted bugs (dW2 doubled, db1 × 4).
pub const SEED_GRADS_BUGGY: &[u8] = include_bytes!("../fixtures/seed/seed_grads_buggy.npz");
/// The notebook's backprop with the bugs fixed.
pub const SEED_GRADS_FIXED: &[u8] = include_bytes!("../fixtures/seed/seed_grads_fixed.npz");

/// The notebook's numbers for the examples.
pub mod expected {
    /// 1-D: J(θ) = θ·x with x = 2, θ = 4, ε = 1e-7.
    pub const ONE_D_DIFFERENCE: f64 = 2.919335883291695e-10;
    /// J(θ) of the N-D case.
    pub const COST: f64 = 2.407833389834357;
    /// Difference with the planted bugs.
    pub const BUGGY_DIFFERENCE: f64 = 0.2850931567761623;
    /// Difference with the bugs fixed.
    pub const FIXED_DIFFERENCE: f64 = 1.1890913024229996e-07;
}

/// A built-in example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Example {
    /// The notebook's N-D case with its buggy backprop (dW2 × 2, db1 × 4).
    SeedBuggy,
    /// The notebook's N-D case with the bugs fixed.
    SeedFixed,
    /// The notebook's 1-D case J(θ) = θ·x.
    #[value(name = "seed-1d")]
    Seed1d,
}

/// x of the 1-D example.
pub const ONE_D_X: f64 = 2.0;
/// θ of the 1-D example.
pub const ONE_D_THETA: f64 = 4.0;

/// The N-D seed problem with the buggy or the fixed gradients.
pub fn seed_problem(buggy: bool) -> Result<Problem> {
    let p = Npz::from_bytes("seed_params.npz (built in)", SEED_PARAMS)?;
    let d = Npz::from_bytes("seed_data.npz (built in)", SEED_DATA)?;
    let g = if buggy {
        Npz::from_bytes("seed_grads_buggy.npz (built in)", SEED_GRADS_BUGGY)?
    } else {
        Npz::from_bytes("seed_grads_fixed.npz (built in)", SEED_GRADS_FIXED)?
    };
    let mut prob = Problem::from_npz(&p, &d, Some(&g), None)?;
    prob.notes.clear();
    prob.notes.push(format!(
        "built-in example: the seed notebook's 4-5-3-1 network, {} gradients",
        if buggy {
            "buggy (dW2 × 2, db1 × 4 planted)"
        } else {
            "fixed"
        }
    ));
    Ok(prob)
}
