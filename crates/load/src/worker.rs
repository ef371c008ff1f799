//! A load shard: one pinned thread with its own glommio executor, driving its share of
//! the virtual users. Like a gateway shard it shares nothing: its VUs, connections and
//! [`Record`] live on its thread; the main thread sends it stage commands and receives
//! progress and one finished [`Record`] per stage over crossbeam channels.

use super::client::Failure;
use super::options::{LoadConfig, Mode};
use super::record::{ErrorClass, Record, Sample};
use super::vu::{sweep, virtual_user, VuSlot};
use coregate_runtime::executor::run_pinned;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a shard looks at its command channel while idle.
const COMMAND_POLL: Duration = Duration::from_millis(5);

/// Main thread → shard.
#[derive(Debug, Clone)]
pub enum Command {
    Stage(StageCommand),
    /// End the current window now (Ctrl-C); the stage still reports.
    EndStage,
    Stop,
}

#[derive(Debug, Clone)]
pub struct StageCommand {
    pub index: usize,
    /// This shard's VUs.
    pub vus: usize,
    /// The run's VUs over all shards (open-loop pacing spreads the rate over them).
    pub total_vus: usize,
    pub duration: Duration,
    pub cooldown: Duration,
    /// New connections per second for this shard (0: all at once).
    pub connect_rate: f64,
}

/// Shard → main thread.
#[derive(Debug)]
pub enum Report {
    Ready(Result<(), String>),
    /// Once a second: requests and failures since the stage began (ramp included).
    Progress {
        shard: usize,
        done: u64,
        failed: u64,
        open_connections: usize,
        p99_us: u64,
    },
    WindowStart {
        shard: usize,
    },
    StageDone(Box<ShardStage>),
    /// After Stop, once the VUs finished their last request: the complete responses this
    /// shard received in the run (ramps and cool-downs included).
    Finished {
        shard: usize,
        responses: u64,
    },
}

/// One shard's measured window.
#[derive(Debug)]
pub struct ShardStage {
    pub shard: usize,
    pub core: usize,
    pub index: usize,
    pub vus: usize,
    pub ramp: Duration,
    pub window: Duration,
    /// CPU time this shard's thread used during the window.
    pub cpu: Duration,
    pub open_connections: usize,
    pub record: Record,
    /// The window was cut short (Ctrl-C or stop).
    pub interrupted: bool,
}

pub struct WorkerSpec {
    pub shard: usize,
    pub core: usize,
    pub shards: usize,
    pub config: LoadConfig,
    pub commands: Receiver<Command>,
    pub reports: Sender<Report>,
}

pub fn spawn(spec: WorkerSpec) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("coregate-load-{}", spec.shard))
        .spawn(move || {
            let reports = spec.reports.clone();
            let name = format!("load-{}", spec.shard);
            let on_error = move |e: String| {
                let _ = reports.send(Report::Ready(Err(e)));
            };
            run_pinned(&name, Some(spec.core), on_error, worker_main(spec));
        })
}

/// State shared by one shard's VU tasks (one thread: `Cell`/`RefCell`, no atomics).
pub(super) struct ShardState {
    pub(super) id: usize,
    pub(super) shards: usize,
    pub(super) cfg: LoadConfig,
    pub(super) requests: Vec<Vec<u8>>,
    /// Per target: what its VUs send after a WebSocket handshake (`ws://` targets only).
    pub(super) ws: Vec<Option<super::ws::WsPlan>>,
    /// One slot per VU, in spawn order.
    pub(super) vus: RefCell<Vec<Rc<VuSlot>>>,
    /// Spawned VUs that have not finished their first connect yet.
    pub(super) connecting: Cell<usize>,
    pub(super) open_connections: Cell<usize>,
    pub(super) paused: Cell<bool>,
    pub(super) measuring: Cell<bool>,
    /// Open loop: start of the current schedule and the interval between one VU's sends.
    pub(super) schedule: Cell<(Instant, Duration)>,
    pub(super) total_vus: Cell<usize>,
    /// Bumped when the schedule restarts, so VUs re-align to it.
    pub(super) epoch: Cell<u64>,
    pub(super) record: RefCell<Record>,
    pub(super) done: Cell<u64>,
    pub(super) failed: Cell<u64>,
    pub(super) seq: Cell<u64>,
    /// Complete responses over the whole run.
    pub(super) responses: Cell<u64>,
    /// VU tasks still running (stopping ones included).
    pub(super) live: Cell<usize>,
    /// Stop was received (possibly while a stage was sleeping).
    pub(super) stopping: Cell<bool>,
}

impl ShardState {
    pub(super) fn note(
        &self,
        result: &Result<super::client::Response, Failure>,
        latency: Duration,
    ) {
        // `seq` numbers every outcome of the run, for sampling and request ids.
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        self.done.set(self.done.get() + 1);
        let (status, error) = match result {
            Ok(r) => {
                self.responses.set(self.responses.get() + 1);
                (r.status, ErrorClass::of_status(r.status))
            }
            Err(f) => (0, Some(f.class)),
        };
        if error.is_some() {
            self.failed.set(self.failed.get() + 1);
        }
        if !self.measuring.get() {
            return;
        }
        let latency_us = latency.as_micros() as u64;
        let mut rec = self.record.borrow_mut();
        match result {
            Ok(r) => rec.response(r.status, latency_us),
            Err(f) => rec.failure(f.class, f.errno),
        }
        let every = self.cfg.log_every;
        if every > 0 && seq % every == 0 {
            rec.sample(Sample {
                unix_us: unix_us(),
                latency_us,
                status,
                error,
                request_id: seq * self.shards as u64 + self.id as u64,
            });
        }
    }
}

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

async fn worker_main(spec: WorkerSpec) {
    let (requests, ws) = spec
        .config
        .targets
        .iter()
        .map(|t| (spec.config.request.build(t), spec.config.request.ws_plan(t)))
        .unzip();
    let st = Rc::new(ShardState {
        id: spec.shard,
        shards: spec.shards,
        cfg: spec.config.clone(),
        requests,
        ws,
        vus: RefCell::new(Vec::new()),
        connecting: Cell::new(0),
        open_connections: Cell::new(0),
        paused: Cell::new(false),
        measuring: Cell::new(false),
        schedule: Cell::new((Instant::now(), Duration::from_secs(1))),
        total_vus: Cell::new(0),
        epoch: Cell::new(0),
        record: RefCell::new(Record::new()),
        done: Cell::new(0),
        failed: Cell::new(0),
        seq: Cell::new(0),
        responses: Cell::new(0),
        live: Cell::new(0),
        stopping: Cell::new(false),
    });
    glommio::spawn_local(sweep(st.clone())).detach();
    let _ = spec.reports.send(Report::Ready(Ok(())));
    while !st.stopping.get() {
        match spec.commands.try_recv() {
            Ok(Command::Stage(cmd)) => run_stage(&st, &spec, cmd).await,
            Ok(Command::EndStage) => {}
            Ok(Command::Stop) | Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => glommio::timer::sleep(COMMAND_POLL).await,
        }
    }
    // Let every VU finish the request it has in flight, so that the run's request count
    // matches what the target answered.
    for slot in st.vus.borrow().iter() {
        slot.stop.set(true);
    }
    let deadline = Instant::now() + st.cfg.timeout + st.cfg.connect_timeout;
    while st.live.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let _ = spec.reports.send(Report::Finished {
        shard: st.id,
        responses: st.responses.get(),
    });
}

fn progress(st: &ShardState, spec: &WorkerSpec) {
    let p99 = {
        let rec = st.record.borrow();
        if rec.responses() > 0 {
            rec.latency.value_at_quantile(0.99)
        } else {
            0
        }
    };
    let _ = spec.reports.send(Report::Progress {
        shard: st.id,
        done: st.done.get(),
        failed: st.failed.get(),
        open_connections: st.open_connections.get(),
        p99_us: p99,
    });
}

/// Sleeps up to `d`, waking early for EndStage or Stop (which it remembers in
/// `st.stopping`, so the shard's main loop still sees it). Returns true when told to end.
async fn sleep_or_end(st: &ShardState, spec: &WorkerSpec, d: Duration) -> bool {
    let until = Instant::now().checked_add(d).unwrap_or_else(Instant::now);
    loop {
        if st.stopping.get() {
            return true;
        }
        match spec.commands.try_recv() {
            Ok(Command::EndStage) => return true,
            Ok(Command::Stop) | Err(TryRecvError::Disconnected) => {
                st.stopping.set(true);
                return true;
            }
            _ => {}
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        glommio::timer::sleep((until - now).min(Duration::from_millis(50))).await;
    }
}

async fn run_stage(st: &Rc<ShardState>, spec: &WorkerSpec, cmd: StageCommand) {
    st.done.set(0);
    st.failed.set(0);
    st.record.replace(Record::new());
    let mut ended = false;
    if !cmd.cooldown.is_zero() {
        st.paused.set(true);
        ended = sleep_or_end(st, spec, cmd.cooldown).await;
        st.paused.set(false);
    }
    st.total_vus.set(cmd.total_vus);
    let interval = match st.cfg.mode {
        Mode::Open { rate } => Duration::try_from_secs_f64(cmd.total_vus.max(1) as f64 / rate)
            .unwrap_or(Duration::from_secs(3600)),
        Mode::Closed { .. } => Duration::ZERO,
    };
    // Open loop: ramping (and resuming after a cool-down) VUs pace themselves at the
    // stage's rate from now, instead of catching up on a stale schedule.
    restart_schedule(st, interval);
    let ramp_start = Instant::now();
    if !ended {
        ended = resize(st, spec, &cmd).await;
    }
    // The ramp ends when every new VU has connected (or failed to).
    let connect_deadline = Instant::now() + st.cfg.connect_timeout + Duration::from_secs(1);
    while !ended && st.connecting.get() > 0 && Instant::now() < connect_deadline {
        ended = sleep_or_end(st, spec, Duration::from_millis(10)).await;
    }
    let ramp = ramp_start.elapsed();

    st.record.replace(Record::new());
    restart_schedule(st, interval);
    let start = Instant::now();
    st.measuring.set(!ended);
    let cpu_start = thread_cpu();
    let _ = spec.reports.send(Report::WindowStart { shard: st.id });
    let end = start.checked_add(cmd.duration).unwrap_or(start);
    while !ended {
        let now = Instant::now();
        if now >= end {
            break;
        }
        ended = sleep_or_end(st, spec, (end - now).min(Duration::from_secs(1))).await;
        progress(st, spec);
    }
    st.measuring.set(false);
    let window = start.elapsed();
    let cpu = thread_cpu().saturating_sub(cpu_start);
    let record = st.record.replace(Record::new());
    let _ = spec.reports.send(Report::StageDone(Box::new(ShardStage {
        interrupted: ended,
        shard: st.id,
        core: spec.core,
        index: cmd.index,
        vus: cmd.vus,
        ramp,
        window,
        cpu,
        open_connections: st.open_connections.get(),
        record,
    })));
}

fn restart_schedule(st: &ShardState, interval: Duration) {
    st.schedule.set((Instant::now(), interval));
    st.epoch.set(st.epoch.get() + 1);
}

/// Grows (at the connect rate) or shrinks this shard's VUs to `cmd.vus`.
/// Returns true if told to end the stage meanwhile.
async fn resize(st: &Rc<ShardState>, spec: &WorkerSpec, cmd: &StageCommand) -> bool {
    let have = st.vus.borrow().len();
    if cmd.vus <= have {
        for slot in st.vus.borrow_mut().drain(cmd.vus..) {
            slot.stop.set(true);
        }
        return false;
    }
    let want = cmd.vus - have;
    let started = Instant::now();
    let mut spawned = 0;
    let mut last_progress = Instant::now();
    while spawned < want {
        let allowed = if cmd.connect_rate <= 0.0 {
            want
        } else {
            ((started.elapsed().as_secs_f64() * cmd.connect_rate) as usize + 1).min(want)
        };
        while spawned < allowed {
            let slot = Rc::new(VuSlot::default());
            let local = st.vus.borrow().len();
            st.vus.borrow_mut().push(slot.clone());
            st.connecting.set(st.connecting.get() + 1);
            st.live.set(st.live.get() + 1);
            glommio::spawn_local(virtual_user(st.clone(), local, slot)).detach();
            spawned += 1;
        }
        if spawned < want {
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                progress(st, spec);
            }
            if sleep_or_end(st, spec, Duration::from_millis(5)).await {
                return true;
            }
        }
    }
    false
}
