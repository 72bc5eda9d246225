//! The shared feed of one run and the registry of feeds.
//!
//! A [`Feed`] is created by the first viewer of a run and fed by one task:
//! it polls the run's files through a [`Follower`] on the blocking pool,
//! gives every message an id (`<feed>-<seq>`, the feed part telling this
//! feed's ids from those of an earlier feed of the same run, say before a
//! server restart), appends it to a bounded backlog and broadcasts the
//! poll's messages as one batch. A viewer subscribes under the same lock
//! the task appends under, so it gets each message exactly once: from the
//! backlog or from the broadcast.
//!
//! Bounds, all from configuration: the number of concurrent streams
//! ([`FeedLimits::max_streams`], a 503 past it), the backlog of each feed
//! (events and log lines each up to [`FeedLimits::backlog_bytes`], oldest
//! dropped first, with a `truncated` message to a new viewer), and what a
//! slow viewer may fall behind by ([`BROADCAST_BATCHES`] polls; past that it
//! gets `reset` and its stream ends, and the page reloads). Once the run
//! has ended the task reads the files to their end, sends `end` and, if the
//! run was followed while active, keeps the feed for [`LINGER`] so that a
//! viewer reconnecting with `Last-Event-ID` resumes instead of starting
//! over.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use quire_core::id::RunId;
use quire_core::run_dir::RunDir;
use serde_json::json;
use tokio::sync::broadcast;

use super::follower::{Follower, Item};
use super::sse;

/// How often a feed looks at its run's files.
pub const POLL: Duration = Duration::from_millis(100);
/// How long a feed outlives the end of a run it followed while active.
pub const LINGER: Duration = Duration::from_secs(60);
/// How many polls' batches a viewer may be behind before it is reset.
pub const BROADCAST_BATCHES: usize = 64;
/// An idle stream gets a keep-alive comment this often.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the operator bounds.
#[derive(Debug, Clone, Copy)]
pub struct FeedLimits {
    pub max_streams: usize,
    pub backlog_bytes: usize,
}

/// Whether a run has ended, asked from the blocking pool: `Some` with the
/// `end` message's data once it has, `None` while it goes on (or when it
/// cannot be told: the feed asks again).
pub type EndProbe = Arc<dyn Fn(RunId) -> Option<String> + Send + Sync>;

/// One numbered SSE message.
#[derive(Debug)]
struct Message {
    seq: u64,
    bytes: Bytes,
}

/// What one poll produced, broadcast as one value.
struct Batch {
    messages: Vec<Arc<Message>>,
    /// It holds the `end` message: the last batch of the feed.
    ends: bool,
}

/// The most recent messages, bounded by bytes. Events and log lines are
/// kept apart, so a flood of output cannot push the run's structure (which
/// jobs and commands there are) out of the backlog.
#[derive(Default)]
struct Backlog {
    events: VecDeque<Arc<Message>>,
    logs: VecDeque<Arc<Message>>,
    event_bytes: usize,
    log_bytes: usize,
    /// The highest sequence number dropped so far (0: none).
    dropped_through: u64,
}

impl Backlog {
    fn push(&mut self, message: Arc<Message>, is_log: bool, limit: usize) {
        let (queue, bytes) = if is_log {
            (&mut self.logs, &mut self.log_bytes)
        } else {
            (&mut self.events, &mut self.event_bytes)
        };
        *bytes += message.bytes.len();
        queue.push_back(message);
        while *bytes > limit && queue.len() > 1 {
            let Some(old) = queue.pop_front() else { break };
            *bytes -= old.bytes.len();
            self.dropped_through = self.dropped_through.max(old.seq);
        }
    }

    /// The kept messages after `seq`, in order.
    fn after(&self, seq: u64) -> Vec<Arc<Message>> {
        let mut out: Vec<Arc<Message>> =
            self.events.iter().chain(&self.logs).filter(|m| m.seq > seq).cloned().collect();
        out.sort_unstable_by_key(|m| m.seq);
        out
    }
}

struct FeedState {
    backlog: Backlog,
    next_seq: u64,
    ended: bool,
}

/// The shared feed of one run.
pub struct Feed {
    /// The first part of every id this feed hands out.
    name: String,
    state: Mutex<FeedState>,
    sender: broadcast::Sender<Arc<Batch>>,
    backlog_bytes: usize,
}

impl Feed {
    fn new(backlog_bytes: usize) -> Feed {
        let mut nonce = [0u8; 4];
        // Any value will do if randomness fails: the clock part differs.
        let _ = getrandom::fill(&mut nonce);
        let name = format!("{:x}{:08x}", quire_core::clock::now_ms(), u32::from_le_bytes(nonce));
        Feed {
            name,
            state: Mutex::new(FeedState { backlog: Backlog::default(), next_seq: 1, ended: false }),
            sender: broadcast::channel(BROADCAST_BATCHES).0,
            backlog_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, FeedState> {
        // A panic while holding the lock leaves consistent data behind:
        // every update is a push onto a queue.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, items: Vec<Item>, end: Option<&str>) {
        if items.is_empty() && end.is_none() {
            return;
        }
        let mut state = self.lock();
        let mut messages = Vec::with_capacity(items.len() + 1);
        let framed = items
            .iter()
            .map(|item| match item {
                Item::Event(line) => ("event", line.as_str(), false),
                Item::Log(data) => ("log", data.as_str(), true),
            })
            .chain(end.map(|data| ("end", data, false)));
        for (event, data, is_log) in framed {
            let seq = state.next_seq;
            state.next_seq += 1;
            let id = format!("{}-{seq}", self.name);
            let message = Arc::new(Message { seq, bytes: sse::message(Some(&id), event, data) });
            state.backlog.push(message.clone(), is_log, self.backlog_bytes);
            messages.push(message);
        }
        state.ended |= end.is_some();
        // No receivers is not an error: the backlog has it.
        let _ = self.sender.send(Arc::new(Batch { messages, ends: end.is_some() }));
    }
}

/// Where a new viewer starts.
enum Start {
    /// These messages, then the broadcast; `omitted` when the start of the
    /// backlog was dropped.
    Backlog { messages: Vec<Arc<Message>>, omitted: bool },
    /// The viewer's `Last-Event-ID` cannot be resumed from (another feed's,
    /// or dropped from the backlog): it must start over.
    Reset,
}

/// Every feed, and the streams reading them.
pub struct Feeds {
    feeds: Mutex<HashMap<RunId, Arc<Feed>>>,
    streams: AtomicUsize,
    limits: FeedLimits,
    probe: EndProbe,
}

/// A viewer's stream was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0} live streams are open, the most `:http {{:max-live-streams}}` allows; try again later")]
pub struct TooManyStreams(pub usize);

/// Counts for `/api/health`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FeedStats {
    /// Feeds, one per followed run: the work of following, whatever the
    /// number of viewers.
    pub followers: usize,
    pub streams: usize,
    pub max_streams: usize,
}

impl Feeds {
    pub fn new(limits: FeedLimits, probe: EndProbe) -> Arc<Feeds> {
        Arc::new(Feeds { feeds: Mutex::new(HashMap::new()), streams: AtomicUsize::new(0), limits, probe })
    }

    fn map(&self) -> MutexGuard<'_, HashMap<RunId, Arc<Feed>>> {
        self.feeds.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn stats(&self) -> FeedStats {
        FeedStats {
            followers: self.map().len(),
            streams: self.streams.load(Ordering::SeqCst),
            max_streams: self.limits.max_streams,
        }
    }

    /// A stream of `run`'s SSE messages for one viewer: the backlog (after
    /// `last_event_id`, if given), then what happens, until `end`.
    pub fn subscribe(
        self: &Arc<Feeds>,
        run: RunId,
        dir: RunDir,
        last_event_id: Option<&str>,
    ) -> Result<impl Stream<Item = Result<Bytes, std::convert::Infallible>>, TooManyStreams> {
        let slot = StreamSlot::take(self.clone())?;
        let feed = self.feed_of(run, dir);
        let (start, receiver) = {
            let state = feed.lock();
            let start = match last_event_id {
                Some(id) => match id.strip_prefix(&feed.name).and_then(|s| s.strip_prefix('-')) {
                    Some(seq) => match seq.parse::<u64>() {
                        Ok(seq) if seq >= state.backlog.dropped_through && seq < state.next_seq => {
                            Start::Backlog { messages: state.backlog.after(seq), omitted: false }
                        }
                        _ => Start::Reset,
                    },
                    None => Start::Reset,
                },
                None => Start::Backlog {
                    messages: state.backlog.after(0),
                    omitted: state.backlog.dropped_through > 0,
                },
            };
            let receiver = (!state.ended).then(|| feed.sender.subscribe());
            (start, receiver)
        };
        Ok(viewer_stream(start, receiver, slot))
    }

    /// The run's feed, started if there is none.
    fn feed_of(self: &Arc<Feeds>, run: RunId, dir: RunDir) -> Arc<Feed> {
        let mut feeds = self.map();
        if let Some(feed) = feeds.get(&run) {
            return feed.clone();
        }
        let feed = Arc::new(Feed::new(self.limits.backlog_bytes));
        feeds.insert(run, feed.clone());
        tokio::spawn(follow(self.clone(), run, feed.clone(), Follower::new(dir)));
        feed
    }

    fn remove(&self, run: RunId, feed: &Arc<Feed>) {
        let mut feeds = self.map();
        if feeds.get(&run).is_some_and(|f| Arc::ptr_eq(f, feed)) {
            feeds.remove(&run);
        }
    }
}

/// A counted place among the open streams, given back on drop.
struct StreamSlot(Arc<Feeds>);

impl StreamSlot {
    fn take(feeds: Arc<Feeds>) -> Result<StreamSlot, TooManyStreams> {
        let max = feeds.limits.max_streams;
        feeds
            .streams
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .map_err(|_| TooManyStreams(max))?;
        Ok(StreamSlot(feeds))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The task behind a feed: poll and publish; once the run has ended, read
/// the files to their end (a bounded amount at a time, without waiting
/// between reads), publish `end`, linger, and leave the registry.
async fn follow(feeds: Arc<Feeds>, run: RunId, feed: Arc<Feed>, mut follower: Follower) {
    let mut followed_while_active = false;
    let end = loop {
        let probe = feeds.probe.clone();
        let polled = tokio::task::spawn_blocking(move || {
            // Ask first, read second: once the run has ended its files are
            // complete, so reading after the answer misses nothing.
            let ended = probe(run);
            let items = if ended.is_some() { follower.poll_to_end() } else { follower.poll() };
            (follower, items, ended)
        })
        .await;
        let Ok((back, items, ended)) = polled else {
            break json!({ "error": "following the run failed; reload the page" }).to_string();
        };
        follower = back;
        let read_all = items.is_empty();
        feed.publish(items, None);
        match ended {
            Some(end) if read_all => break end,
            Some(_) => {}
            None => {
                followed_while_active = true;
                tokio::time::sleep(POLL).await;
            }
        }
    };
    feed.publish(Vec::new(), Some(&end));
    if followed_while_active {
        tokio::time::sleep(LINGER).await;
    }
    feeds.remove(run, &feed);
}

/// One viewer's stream: the start, then batches, keep-alives while idle,
/// until `end` (or a `reset` when it cannot keep up).
fn viewer_stream(
    start: Start,
    receiver: Option<broadcast::Receiver<Arc<Batch>>>,
    slot: StreamSlot,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let first = match start {
        Start::Backlog { messages, omitted } => {
            let mut chunk = Vec::new();
            if omitted {
                let note = json!({ "reason": "the start of this run's output is not kept for live viewers; the raw logs have it" });
                chunk.extend_from_slice(&sse::message(None, "truncated", &note.to_string()));
            }
            for message in &messages {
                chunk.extend_from_slice(&message.bytes);
            }
            (Bytes::from(chunk), receiver)
        }
        Start::Reset => {
            let note = json!({ "reason": "cannot resume from that Last-Event-ID; start over" });
            (sse::message(None, "reset", &note.to_string()), None)
        }
    };
    futures_util::stream::unfold(
        (Some(first.0), first.1, Some(slot)),
        |(pending, mut receiver, slot)| async move {
            let slot = slot?;
            if let Some(bytes) = pending {
                return Some((Ok(bytes), (None, receiver, Some(slot))));
            }
            let rx = receiver.as_mut()?;
            match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
                Err(_) => Some((Ok(sse::keep_alive()), (None, receiver, Some(slot)))),
                Ok(Ok(batch)) => {
                    let bytes: Vec<u8> =
                        batch.messages.iter().flat_map(|m| m.bytes.iter().copied()).collect();
                    let next = if batch.ends { None } else { receiver };
                    Some((Ok(Bytes::from(bytes)), (None, next, Some(slot))))
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    let note = json!({ "reason": "this viewer fell too far behind; start over" });
                    Some((Ok(sse::message(None, "reset", &note.to_string())), (None, None, Some(slot))))
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => None,
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, len: usize) -> Arc<Message> {
        Arc::new(Message { seq, bytes: Bytes::from(vec![b'x'; len]) })
    }

    #[test]
    fn the_backlog_drops_the_oldest_and_keeps_events_apart_from_logs() {
        let mut backlog = Backlog::default();
        backlog.push(message(1, 10), false, 100);
        for seq in 2..=30 {
            backlog.push(message(seq, 10), true, 100);
        }
        assert_eq!(backlog.log_bytes, 100);
        assert_eq!(backlog.dropped_through, 20);
        let kept: Vec<u64> = backlog.after(0).iter().map(|m| m.seq).collect();
        assert_eq!(kept, [1, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30], "the one event survives the flood");
        let tail: Vec<u64> = backlog.after(28).iter().map(|m| m.seq).collect();
        assert_eq!(tail, [29, 30]);
    }

    #[test]
    fn one_message_larger_than_the_limit_is_still_kept() {
        let mut backlog = Backlog::default();
        backlog.push(message(1, 500), true, 100);
        assert_eq!(backlog.after(0).len(), 1);
    }
}
