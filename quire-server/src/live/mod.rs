//! Following runs as they happen, for `GET /api/runs/{id}/events`.
//!
//! One [`feed::Feed`] per followed run, shared by every viewer of it: a
//! single task reads the run's files ([`follower`]), numbers what it finds,
//! keeps a bounded backlog and broadcasts each new message to the viewers.
//! A viewer joining gets the backlog (or, with `Last-Event-ID`, only what
//! came after that id) and then the broadcast, so nothing arrives twice and
//! the work is the same for one viewer or three hundred. [`feed::Feeds`]
//! is the registry, with the cap on concurrent streams and the counts
//! `/api/health` reports. The SSE framing is in [`sse`]. Handlers, the
//! database and HTTP are not here: the registry is told how to ask whether
//! a run has ended.

pub mod feed;
pub mod follower;
pub mod sse;
