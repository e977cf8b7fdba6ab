//! Records the git commit the binary is built from, for `ironbridge --version`.
use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
}

fn main() {
    // A build without .git (the Docker image) is told the commit instead.
    println!("cargo:rerun-if-env-changed=IRONBRIDGE_GIT_COMMIT");
    let commit = std::env::var("IRONBRIDGE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty() && c != "unknown")
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=IRONBRIDGE_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves. HEAD itself usually only names a branch, so
    // also watch the branch refs (a folder: the ref may not exist yet before
    // the first commit) and packed-refs, where git may keep them.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let git_dir = Path::new(&git_dir);
        let watched = [
            git_dir.join("HEAD"),
            git_dir.join("refs/heads"),
            git_dir.join("packed-refs"),
        ];
        // A path that does not exist would make cargo rerun this every build.
        for path in watched.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
