//! Records the git commit this build comes from (`FERRY_REVISION`, "unknown" outside a git
//! checkout), for `ferry_build_info`, every node's status and `ferry --version`: during a
//! rolling upgrade operators see which build each node runs.

use std::process::Command;

fn main() {
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=FERRY_REVISION={revision}");
    // A new commit changes HEAD or the branch it points to.
    if let Ok(out) = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
    {
        let git_dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !git_dir.is_empty() {
            let git_dir = std::path::Path::new(&git_dir);
            println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
            if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD")) {
                if let Some(reference) = head.trim().strip_prefix("ref: ") {
                    println!(
                        "cargo:rerun-if-changed={}",
                        git_dir.join(reference).display()
                    );
                }
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
