//! The `gradcheck` command line.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gradcheck: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
