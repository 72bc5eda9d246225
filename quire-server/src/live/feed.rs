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
//! Bounds, all from configuration: the number of concurrent streams and of
//! feeds ([`FeedLimits::max_streams`], a 503 past it), the backlog of each
//! feed (events and log lines each up to [`FeedLimits::backlog_bytes`],
//! oldest dropped first, with a `truncated` message to a new viewer), and
//! what a slow viewer may fall behind by ([`BROADCAST_BATCHES`] polls; past
//! that it is told with a `gap` message and goes on from the newest). A
//! poll's messages are framed once, into one buffer every viewer shares.
//! A feed nobody has watched for [`IDLE`] stops. Once the run has ended
//! the task reads the files to their end (paced by its slowest viewer),
//! sends `end` and, if the run was followed while active, keeps the feed
//! for [`LINGER`] so that a viewer reconnecting with `Last-Event-ID`
//! resumes instead of starting over.

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
/// How many polls' batches a viewer may be behind before it skips ahead.
pub const BROADCAST_BATCHES: usize = 16;
/// A feed without viewers for this long stops (a new viewer starts another).
pub const IDLE: Duration = Duration::from_secs(10);
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

/// What one poll produced, framed once and broadcast as one value.
struct Batch {
    bytes: Bytes,
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

    /// The kept messages after `seq`, in order: the two queues are each
    /// in order already, so this is a merge.
    fn after(&self, seq: u64) -> Vec<Bytes> {
        let skip = |queue: &VecDeque<Arc<Message>>| queue.partition_point(|m| m.seq <= seq);
        let (mut events, mut logs) =
            (self.events.range(skip(&self.events)..), self.logs.range(skip(&self.logs)..));
        let (mut event, mut log) = (events.next(), logs.next());
        let mut out = Vec::new();
        loop {
            let take_event = match (event, log) {
                (Some(e), Some(l)) => e.seq < l.seq,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return out,
            };
            if take_event {
                out.extend(event.map(|m| m.bytes.clone()));
                event = events.next();
            } else {
                out.extend(log.map(|m| m.bytes.clone()));
                log = logs.next();
            }
        }
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
        let mut batch = Vec::new();
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
            batch.extend_from_slice(&message.bytes);
            state.backlog.push(message, is_log, self.backlog_bytes);
        }
        state.ended |= end.is_some();
        // No receivers is not an error: the backlog has it.
        let _ = self.sender.send(Arc::new(Batch { bytes: Bytes::from(batch), ends: end.is_some() }));
    }
}

/// Where a new viewer starts.
enum Start {
    /// These messages, then the broadcast; `omitted` when the start of the
    /// backlog was dropped.
    Backlog { messages: Vec<Bytes>, omitted: bool },
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
#[error("{0} live streams (or followed runs) are open, the most `:http {{:max-live-streams}}` allows; try again later")]
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
        // The registry stays locked until the viewer is subscribed, so an
        // idle feed cannot stop between being found and being subscribed to.
        let mut feeds = self.map();
        let feed = self.feed_of(&mut feeds, run, dir)?;
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
        drop(feeds);
        Ok(viewer_stream(start, receiver, slot))
    }

    /// The run's feed, started if there is none (and there is room).
    fn feed_of(
        self: &Arc<Feeds>,
        feeds: &mut HashMap<RunId, Arc<Feed>>,
        run: RunId,
        dir: RunDir,
    ) -> Result<Arc<Feed>, TooManyStreams> {
        if let Some(feed) = feeds.get(&run) {
            return Ok(feed.clone());
        }
        if feeds.len() >= self.limits.max_streams {
            return Err(TooManyStreams(self.limits.max_streams));
        }
        let feed = Arc::new(Feed::new(self.limits.backlog_bytes));
        feeds.insert(run, feed.clone());
        let registered = Registered { feeds: self.clone(), run, feed: feed.clone() };
        tokio::spawn(follow(registered, Follower::new(dir)));
        Ok(feed)
    }

    fn remove(&self, run: RunId, feed: &Arc<Feed>) {
        let mut feeds = self.map();
        if feeds.get(&run).is_some_and(|f| Arc::ptr_eq(f, feed)) {
            feeds.remove(&run);
        }
    }

    /// Removes a feed nobody watches; false if a viewer came meanwhile.
    fn remove_if_unwatched(&self, run: RunId, feed: &Arc<Feed>) -> bool {
        let mut feeds = self.map();
        if feed.sender.receiver_count() > 0 {
            return false;
        }
        if feeds.get(&run).is_some_and(|f| Arc::ptr_eq(f, feed)) {
            feeds.remove(&run);
        }
        true
    }
}

/// A feed's place in the registry, given back when its task ends, however
/// it ends (a panic included).
struct Registered {
    feeds: Arc<Feeds>,
    run: RunId,
    feed: Arc<Feed>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.feeds.remove(self.run, &self.feed);
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
/// the files to their end (a bounded amount at a time, waiting only while
/// the slowest viewer is half a channel behind), publish `end`, linger,
/// and leave the registry. A feed nobody watches for [`IDLE`] stops early.
async fn follow(registered: Registered, mut follower: Follower) {
    let (feeds, run, feed) = (registered.feeds.clone(), registered.run, registered.feed.clone());
    let mut followed_while_active = false;
    let mut unwatched_since: Option<tokio::time::Instant> = None;
    let end = loop {
        if feed.sender.receiver_count() == 0 {
            let since = *unwatched_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= IDLE && feeds.remove_if_unwatched(run, &feed) {
                return;
            }
        } else {
            unwatched_since = None;
        }
        let probe = feeds.probe.clone();
        let polled = tokio::task::spawn_blocking(move || {
            // Ask first, read second: once the run has ended its files are
            // complete, so reading after the answer misses nothing.
            let ended = probe(run);
            let polled = if ended.is_some() { follower.poll_to_end() } else { follower.poll() };
            (follower, polled, ended)
        })
        .await;
        let Ok((back, polled, ended)) = polled else {
            break json!({ "error": "following the run failed; reload the page" }).to_string();
        };
        follower = back;
        feed.publish(polled.items, None);
        match ended {
            Some(end) if !polled.progressed => break end,
            Some(_) if feed.sender.len() < BROADCAST_BATCHES / 2 => {}
            _ => {
                followed_while_active |= ended.is_none();
                tokio::time::sleep(POLL).await;
            }
        }
    };
    feed.publish(Vec::new(), Some(&end));
    if followed_while_active {
        tokio::time::sleep(LINGER).await;
    }
}

/// One viewer's stream: the start, then batches, keep-alives while idle,
/// until `end`. A viewer that falls behind is told how much it missed
/// (`gap`) and goes on from the oldest batch still there.
fn viewer_stream(
    start: Start,
    receiver: Option<broadcast::Receiver<Arc<Batch>>>,
    slot: StreamSlot,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let (first, receiver): (VecDeque<Bytes>, _) = match start {
        Start::Backlog { messages, omitted } => {
            let mut first = VecDeque::with_capacity(messages.len() + 1);
            if omitted {
                let note = json!({ "reason": "the start of this run's output is not kept for live viewers; the raw logs have it" });
                first.push_back(sse::message(None, "truncated", &note.to_string()));
            }
            first.extend(messages);
            (first, receiver)
        }
        Start::Reset => {
            let note = json!({ "reason": "cannot resume from that Last-Event-ID; start over" });
            (VecDeque::from([sse::message(None, "reset", &note.to_string())]), None)
        }
    };
    futures_util::stream::unfold((first, receiver, slot), |(mut pending, mut receiver, slot)| async move {
        if let Some(bytes) = pending.pop_front() {
            return Some((Ok(bytes), (pending, receiver, slot)));
        }
        let rx = receiver.as_mut()?;
        let next = match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
            Err(_) => sse::keep_alive(),
            Ok(Ok(batch)) => {
                if batch.ends {
                    receiver = None;
                }
                batch.bytes.clone()
            }
            Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                let note = json!({ "reason": "this viewer fell behind; some output was skipped (the raw logs have it)", "missed_polls": missed });
                sse::message(None, "gap", &note.to_string())
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => return None,
        };
        Some((Ok(next), (pending, receiver, slot)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message of 10 bytes that names its number.
    fn body(seq: u64) -> Bytes {
        Bytes::from(format!("{seq:>10}"))
    }

    fn message(seq: u64, len: usize) -> Arc<Message> {
        let bytes = if len == 10 { body(seq) } else { Bytes::from(vec![b'x'; len]) };
        Arc::new(Message { seq, bytes })
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
        let kept: Vec<Bytes> = backlog.after(0);
        let expected: Vec<Bytes> =
            [1, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30].iter().map(|&n| body(n)).collect();
        assert_eq!(kept, expected, "the one event survives the flood, in order");
        assert_eq!(backlog.after(28), [body(29), body(30)]);
    }

    #[test]
    fn one_message_larger_than_the_limit_is_still_kept() {
        let mut backlog = Backlog::default();
        backlog.push(message(1, 500), true, 100);
        assert_eq!(backlog.after(0).len(), 1);
    }
}
