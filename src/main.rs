//! The `gradcheck` command line.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    quiet_wsi();
    match cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gradcheck: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Mesa's Vulkan WSI prints "XDG_RUNTIME_DIR is invalid or not set" on every adapter
/// enumeration when the variable is unset (headless machines, CI). gradcheck never opens
/// a window; point the variable at a private directory so the message does not look like
/// an error of ours.
fn quiet_wsi() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    let user = std::env::var("USER").unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("gradcheck-runtime-{user}"));
    if std::fs::create_dir_all(&dir).is_ok() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
    }
}
