//! Where the progress a person reads goes. Not on a terminal, it is plain
//! lines. On a terminal the lines scroll as usual above one live status
//! line listing the jobs running now and how long each has been running,
//! redrawn as jobs start and end and once a second in between. What the
//! lines say is `progress`'s business.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quire_core::clock::format_duration_ms;
use quire_core::id::JobId;

/// The status line is cut to this many characters.
const STATUS_WIDTH: usize = 100;

pub struct Screen {
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

struct Shared {
    out: Box<dyn Write + Send>,
    live: bool,
    running: Vec<(JobId, Instant)>,
}

impl Screen {
    /// `live`: `out` is a terminal, so a status line may be drawn.
    pub fn new(out: Box<dyn Write + Send>, live: bool) -> Screen {
        let shared = Arc::new(Mutex::new(Shared { out, live, running: Vec::new() }));
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = live.then(|| {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1000));
                    if let Ok(mut shared) = shared.lock() {
                        shared.redraw();
                    }
                }
            })
        });
        Screen { shared, stop, ticker }
    }

    /// Prints one line above the status line. Best effort: a closed
    /// terminal must not fail the run.
    pub fn line(&self, text: &str) {
        let Ok(mut shared) = self.shared.lock() else { return };
        if shared.live {
            let _ = write!(shared.out, "\r\x1b[2K");
        }
        let _ = writeln!(shared.out, "{text}");
        shared.redraw();
    }

    pub fn job_started(&self, job: &JobId) {
        if let Ok(mut shared) = self.shared.lock() {
            shared.running.push((job.clone(), Instant::now()));
            shared.redraw();
        }
    }

    pub fn job_ended(&self, job: &JobId) {
        if let Ok(mut shared) = self.shared.lock() {
            shared.running.retain(|(id, _)| id != job);
            shared.redraw();
        }
    }
}

impl Shared {
    fn redraw(&mut self) {
        if !self.live {
            let _ = self.out.flush();
            return;
        }
        let status: String = if self.running.is_empty() {
            String::new()
        } else {
            let jobs: Vec<String> = self
                .running
                .iter()
                .map(|(id, since)| format!("{id} {}", format_duration_ms(since.elapsed().as_millis() as i64)))
                .collect();
            format!("running: {}", jobs.join(" · ")).chars().take(STATUS_WIDTH).collect()
        };
        let _ = write!(self.out, "\r\x1b[2K{status}");
        let _ = self.out.flush();
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut shared) = self.shared.lock() {
            shared.running.clear();
            shared.redraw();
        }
        // The ticker notices within a second; it holds nothing to finish.
        drop(self.ticker.take());
    }
}
