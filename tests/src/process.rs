//! Child processes that never outlive the test that started them.

use std::process::{Child, Command, Stdio};

/// Kills (and reaps) the child when dropped, so a failing test leaves no
/// server behind.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout/stderr inherited (shown by the test runner
    /// only when the test fails).
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
        })
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the child now (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the child to stop (SIGTERM, so a server writes what it
    /// acknowledged), waits up to `deadline`, then stops it for good.
    pub async fn terminate(mut self, deadline: std::time::Duration) -> anyhow::Result<()> {
        if let Some(pid) = self.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let until = tokio::time::Instant::now() + deadline;
            while self.try_exited()?.is_none() && tokio::time::Instant::now() < until {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        self.stop();
        Ok(())
    }

    /// `Some(status)` if the child already exited.
    pub fn try_exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => anyhow::bail!("{} was stopped", self.name),
        }
    }
}

/// Polls `url` every `poll` until it answers with a success status: a
/// server the harness started is ready. Fails with the server's `log` when
/// `exited` reports the process gone, or when `deadline` passes first.
pub async fn wait_until_answers(
    name: &str,
    http: &reqwest::Client,
    url: &str,
    deadline: std::time::Duration,
    poll: std::time::Duration,
    mut exited: impl FnMut() -> anyhow::Result<Option<std::process::ExitStatus>>,
    log: impl Fn() -> String,
) -> anyhow::Result<()> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(status) = exited()? {
            anyhow::bail!("{name} exited with {status}:\n{}", log());
        }
        if let Ok(response) = http.get(url).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= until {
            anyhow::bail!(
                "{name} did not answer {url} within {deadline:?}:\n{}",
                log()
            );
        }
        tokio::time::sleep(poll).await;
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}
