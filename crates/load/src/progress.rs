//! The live progress display: one rewritten line on a terminal, plain lines otherwise.

use std::io::Write;
use std::time::{Duration, Instant};

/// Latest numbers per shard, combined into one line.
pub struct Progress {
    tty: bool,
    shards: Vec<ShardProgress>,
    last_print: Instant,
    last_done: u64,
    stage_label: String,
    stage_started: Instant,
    dirty_line: bool,
}

#[derive(Default, Clone, Copy)]
struct ShardProgress {
    done: u64,
    failed: u64,
    open: usize,
    p99_us: u64,
}

impl Progress {
    pub fn new(tty: bool, shards: usize) -> Progress {
        Progress {
            tty,
            shards: vec![ShardProgress::default(); shards],
            last_print: Instant::now(),
            last_done: 0,
            stage_label: String::new(),
            stage_started: Instant::now(),
            dirty_line: false,
        }
    }

    pub fn stage(&mut self, label: String) {
        self.stage_label = label;
        self.stage_started = Instant::now();
        // Connections stay open from stage to stage; only the counts start again.
        for s in &mut self.shards {
            s.done = 0;
            s.failed = 0;
            s.p99_us = 0;
        }
        self.last_done = 0;
        self.last_print = Instant::now();
    }

    pub fn update(&mut self, shard: usize, done: u64, failed: u64, open: usize, p99_us: u64) {
        if let Some(s) = self.shards.get_mut(shard) {
            *s = ShardProgress {
                done,
                failed,
                open,
                p99_us,
            };
        }
    }

    pub fn open_connections(&self) -> u64 {
        self.shards.iter().map(|s| s.open as u64).sum()
    }

    /// Prints when due: every second on a terminal, every 5 s otherwise.
    pub fn tick(&mut self) {
        let every = if self.tty {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        let elapsed = self.last_print.elapsed();
        if elapsed < every {
            return;
        }
        let done: u64 = self.shards.iter().map(|s| s.done).sum();
        let failed: u64 = self.shards.iter().map(|s| s.failed).sum();
        let p99 = self.shards.iter().map(|s| s.p99_us).max().unwrap_or(0);
        let rps = done.saturating_sub(self.last_done) as f64 / elapsed.as_secs_f64();
        self.last_done = done;
        self.last_print = Instant::now();
        let line = format!(
            "{} | {:>4.0}s | conns {} | {:.0} req/s | p99 {:.2} ms | errors {}",
            self.stage_label,
            self.stage_started.elapsed().as_secs_f64(),
            self.open_connections(),
            rps,
            p99 as f64 / 1000.0,
            failed
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            self.dirty_line = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Prints a permanent line to stdout (ending the live line first on a terminal).
    pub fn println(&mut self, line: &str) {
        if self.dirty_line {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.dirty_line = false;
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}
