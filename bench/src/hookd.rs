//! The hookd process under test: started from the release binary on a data
//! directory, polled until `/health` returns 200, sampled through `/proc`, and
//! stopped with SIGTERM.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::api::ApiTarget;

/// Admin token given to every hookd the harness starts.
pub const ADMIN_TOKEN: &str = "hookd-bench-admin-token-0123456789";

/// Time a new hookd gets to return 200 on `/health`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start hookd.
#[derive(Debug, Clone)]
pub struct HookdSettings {
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    /// Extra `HOOKD_*` (or `RUST_LOG`) variables, applied after the defaults.
    pub env: Vec<(String, String)>,
}

/// A running hookd.
pub struct Hookd {
    child: Child,
    pub pid: u32,
    pub api: ApiTarget,
    pub log_path: PathBuf,
    /// When the process was spawned.
    pub spawned: Instant,
    /// Time from the spawn until `/health` returned 200.
    pub ready_after: Duration,
}

impl Hookd {
    /// Spawns hookd on a free port of 127.0.0.1 and waits until `/health` answers 200.
    /// Its standard output and error are appended to `hookd.log` beside the data directory.
    pub async fn start(settings: &HookdSettings) -> anyhow::Result<Self> {
        let port = free_port()?;
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let log_path = settings
            .data_dir
            .parent()
            .unwrap_or(Path::new("."))
            .join("hookd.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open the hookd log {}", log_path.display()))?;

        let mut command = Command::new(&settings.binary);
        command
            .arg("serve")
            .env("HOOKD_LISTEN", listen.to_string())
            .env("HOOKD_DATA_DIR", &settings.data_dir)
            .env("HOOKD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("HOOKD_ALLOWED_NETWORKS", "127.0.0.1/32")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (key, value) in &settings.env {
            command.env(key, value);
        }
        let spawned = Instant::now();
        let child = command.spawn().with_context(|| {
            format!(
                "cannot start {}; build it with `cargo build --release` in the hookd crate or pass --hookd",
                settings.binary.display()
            )
        })?;
        let pid = child.id();
        let mut hookd = Self {
            child,
            pid,
            api: ApiTarget {
                addr: listen,
                token: ADMIN_TOKEN.to_owned(),
            },
            log_path,
            spawned,
            ready_after: Duration::ZERO,
        };
        hookd.wait_ready().await?;
        hookd.ready_after = spawned.elapsed();
        Ok(hookd)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "hookd exited with {status} before it was ready; log {}:\n{}",
                    self.log_path.display(),
                    tail(&self.log_path, 20)
                );
            }
            if let Ok(mut connection) = self.api.connect().await {
                if let Ok((status, _)) = connection.get("/health").await {
                    if status.is_success() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "GET /health on hookd did not return 200 within {}s; see the hookd log {}",
                    READY_TIMEOUT.as_secs(),
                    self.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads the process's CPU time, memory and per-thread CPU from `/proc`.
    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        ProcSample::read(self.pid)
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit, then sends
    /// SIGKILL. Returns how long the process took to exit.
    pub async fn stop(mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("cannot run kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed with {status}", self.pid);
        }
        while started.elapsed() < timeout {
            if self.child.try_wait()?.is_some() {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "hookd {} did not exit within {}s of SIGTERM; sending SIGKILL",
            self.pid,
            timeout.as_secs()
        );
        self.child.kill()?;
        self.child.wait()?;
        Ok(started.elapsed())
    }
}

impl Drop for Hookd {
    /// Kills a hookd that was not stopped, for example after an error.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Returns a port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Returns the last `lines` lines of a file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// CPU time and memory of a process at one moment.
#[derive(Debug, Clone, Default)]
pub struct ProcSample {
    /// utime + stime, in seconds.
    pub cpu_seconds: f64,
    /// VmHWM: peak resident set size so far, in KiB.
    pub peak_rss_kib: u64,
    /// VmRSS: current resident set size, in KiB.
    pub rss_kib: u64,
    /// CPU seconds by thread id, with the thread's name.
    pub threads: BTreeMap<u32, (String, f64)>,
}

impl ProcSample {
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        let cpu_seconds = cpu_seconds_from_stat(&stat)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let peak_rss_kib = status_field_kib(&status, "VmHWM:").unwrap_or(0);
        let rss_kib = status_field_kib(&status, "VmRSS:").unwrap_or(0);

        let mut threads = BTreeMap::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let Some(tid) = task
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                // A thread may exit between the listing and the read.
                let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                    continue;
                };
                let name = std::fs::read_to_string(task.path().join("comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                if let Ok(seconds) = cpu_seconds_from_stat(&stat) {
                    threads.insert(tid, (name, seconds));
                }
            }
        }
        Ok(Self {
            cpu_seconds,
            peak_rss_kib,
            rss_kib,
            threads,
        })
    }

    /// CPU seconds spent between `earlier` and `self`, summed by thread name,
    /// largest first. Threads that started after `earlier` count from zero.
    pub fn threads_since(&self, earlier: &ProcSample) -> Vec<(String, f64)> {
        let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
        for (tid, (name, seconds)) in &self.threads {
            let before = earlier
                .threads
                .get(tid)
                .map_or(0.0, |(_, seconds)| *seconds);
            *by_name.entry(name.clone()).or_default() += seconds - before;
        }
        let mut sorted: Vec<(String, f64)> = by_name.into_iter().collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
        sorted
    }
}

/// CPU seconds of the whole machine since boot, from the `cpu` line of
/// `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineCpu {
    /// Busy in this machine: everything but idle, iowait and steal.
    pub busy: f64,
    /// Taken by the hypervisor for other guests while this machine had
    /// work to run.
    pub steal: f64,
}

pub fn machine_cpu_seconds() -> anyhow::Result<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let line = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    // Fields: user nice system idle iowait irq softirq steal guest guest_nice;
    // guest time is already counted in user and nice.
    let sum = |fields: &[usize]| -> f64 {
        let total: u64 = fields.iter().filter_map(|index| ticks.get(*index)).sum();
        total as f64 / clock_ticks_per_second()
    };
    Ok(MachineCpu {
        busy: sum(&[0, 1, 2, 5, 6]),
        steal: sum(&[7]),
    })
}

/// Clock ticks per second of `utime` and `stime` in `/proc/PID/stat`.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            // 100 is the value on every mainstream Linux architecture.
            .unwrap_or(100.0)
    })
}

/// utime + stime in seconds from a `/proc/PID/stat` line. The command name
/// (field 2) may contain spaces, so the fields are counted after its `)`.
pub fn cpu_seconds_from_stat(stat: &str) -> anyhow::Result<f64> {
    let after_name = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("invalid /proc stat line: no `)`")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let utime: u64 = fields
        .get(11)
        .context("invalid /proc stat line: no utime")?
        .parse()?;
    let stime: u64 = fields
        .get(12)
        .context("invalid /proc stat line: no stime")?
        .parse()?;
    Ok((utime + stime) as f64 / clock_ticks_per_second())
}

fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find(|line| line.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_with_spaces_in_name() {
        let line =
            "42 (tokio runtime) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 0 0";
        let seconds = cpu_seconds_from_stat(line).unwrap();
        assert!((seconds - 300.0 / clock_ticks_per_second()).abs() < 1e-9);
    }

    #[test]
    fn status_field_reads_kib() {
        let status = "Name:\thookd\nVmHWM:\t  123456 kB\nVmRSS:\t   2000 kB\n";
        assert_eq!(status_field_kib(status, "VmHWM:"), Some(123_456));
        assert_eq!(status_field_kib(status, "VmRSS:"), Some(2000));
        assert_eq!(status_field_kib(status, "VmSwap:"), None);
    }
}
