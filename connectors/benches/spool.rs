//! What the disk spool costs per line (BENCHMARKS.md, "InfluxDB disk
//! spool"), side by side in one run: the memory buffer, the spool with
//! `spool_fsync = "batch"` at several commit sizes (how many records the
//! sink takes in at once) and with `"interval_ms"`, and reading lines back
//! as a replay does (batches of 5000, acknowledged).
//!
//! cargo bench -p ironbridge-connectors --bench spool
//!
//! The spool lives in a temporary folder on the disk of $TMPDIR (or /tmp):
//! the fsync figures are that disk's. Output: one JSON line per variant,
//! min and median ns per line over the rounds.

use std::time::{Duration, Instant};

use ironbridge_connectors::influx::buffer::{BatchOutcome, LineBuffer};
use ironbridge_connectors::influx::line_protocol::encode_scan;
use ironbridge_connectors::influx::spool::{DiskSpool, FsyncPolicy};

#[path = "common/pump_scans.rs"]
mod pump_scans;
use pump_scans::scans;

const ROUNDS: usize = 7;
const SPOOL_MAX: u64 = 512 * 1024 * 1024;

fn per_line(mut samples: Vec<Duration>, lines: usize) -> (f64, f64) {
    samples.sort();
    let ns = |d: Duration| d.as_secs_f64() * 1e9 / lines as f64;
    (ns(samples[0]), ns(samples[samples.len() / 2]))
}

fn report(variant: &str, lines: usize, samples: Vec<Duration>) {
    let (min, median) = per_line(samples, lines);
    println!(
        "{{\"variant\":\"{variant}\",\"lines\":{lines},\"ns_per_line\":{{\"min\":{min:.0},\"median\":{median:.0}}}}}"
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lines: Vec<String> = scans(20_000)
        .iter()
        .filter_map(|scan| encode_scan(scan).ok().flatten())
        .collect();

    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        let mut buffer = LineBuffer::new(lines.len());
        let started = Instant::now();
        for line in &lines {
            buffer.push(line);
        }
        samples.push(started.elapsed());
    }
    report("memory", lines.len(), samples);

    let variants: [(&str, FsyncPolicy, usize, usize); 5] = [
        (
            "disk fsync=batch, 1 line per commit",
            FsyncPolicy::EveryCommit,
            1,
            500,
        ),
        (
            "disk fsync=batch, 10 lines per commit",
            FsyncPolicy::EveryCommit,
            10,
            5_000,
        ),
        (
            "disk fsync=batch, 100 lines per commit",
            FsyncPolicy::EveryCommit,
            100,
            20_000,
        ),
        (
            "disk fsync=batch, 1000 lines per commit",
            FsyncPolicy::EveryCommit,
            1000,
            20_000,
        ),
        (
            "disk fsync=interval_ms 1000, 1 line per commit",
            FsyncPolicy::Interval(Duration::from_secs(1)),
            1,
            20_000,
        ),
    ];
    for (name, fsync, per_commit, n) in variants {
        let mut samples = Vec::new();
        for _ in 0..ROUNDS {
            let dir = tempfile::tempdir()?;
            let (mut spool, _) = DiskSpool::open(dir.path(), SPOOL_MAX, fsync)?;
            let started = Instant::now();
            for chunk in lines[..n].chunks(per_commit) {
                for line in chunk {
                    spool.push(line);
                }
                if let Some(e) = spool.commit().error {
                    return Err(e.into());
                }
            }
            samples.push(started.elapsed());
        }
        report(name, n, samples);
    }

    // Replay: what a backlog costs to read back and acknowledge.
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        let dir = tempfile::tempdir()?;
        let (mut spool, _) = DiskSpool::open(dir.path(), SPOOL_MAX, FsyncPolicy::EveryCommit)?;
        for line in &lines {
            spool.push(line);
        }
        spool.close();
        drop(spool);
        let (mut spool, recovery) =
            DiskSpool::open(dir.path(), SPOOL_MAX, FsyncPolicy::EveryCommit)?;
        assert_eq!(recovery.lines, lines.len());
        let started = Instant::now();
        let mut read = 0;
        while let Some(body) = spool.start_batch(5000)? {
            read += body.len();
            spool.finish_batch(BatchOutcome::Delivered);
        }
        samples.push(started.elapsed());
        assert!(read > 0 && spool.is_empty());
    }
    report("replay read + ack, batches of 5000", lines.len(), samples);
    Ok(())
}
