//! A schedule (`:schedules [{:repo "app.git" :ref "refs/heads/main"
//! :cron "0 3 * * *"}]` in config.fnl): its cron pattern, when it fires
//! next, and the last tick it fired (`schedule_ticks`), so that a server
//! that was down fires a missed schedule once at start, not once per missed
//! tick. Cron patterns have five fields, or six with seconds first; times
//! are UTC. Parsing the pattern is croner's; firing is `scheduler`'s; what
//! a scheduled run runs is the pipeline's (`:quire/schedule`).

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use quire_core::id::RepoName;
use rusqlite::{params, Connection, OptionalExtension};

/// One configured schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub repo: RepoName,
    pub ref_name: String,
    /// The pattern as written, which also names the schedule.
    pub pattern: String,
    cron: Cron,
}

impl Schedule {
    /// A schedule, or why its pattern is not one.
    pub fn new(repo: RepoName, ref_name: String, pattern: &str) -> Result<Schedule, String> {
        let fields = pattern.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "a cron pattern has five fields (minute hour day month weekday), or six with seconds first; {pattern:?} has {fields}"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| format!("{pattern:?} is not a cron pattern: {e}"))?;
        Ok(Schedule { repo, ref_name, pattern: pattern.to_string(), cron })
    }

    /// The first tick strictly after `ms`.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let at = Timestamp::from_millisecond(ms).ok()?.to_zoned(TimeZone::UTC);
        let next = self.cron.find_next_occurrence(&at, false).ok()?;
        Some(next.timestamp().as_millisecond())
    }

    /// The last tick at or before `ms`.
    pub fn last_until(&self, ms: i64) -> Option<i64> {
        let at = Timestamp::from_millisecond(ms).ok()?.to_zoned(TimeZone::UTC);
        let previous = self.cron.find_previous_occurrence(&at, true).ok()?;
        Some(previous.timestamp().as_millisecond())
    }
}

/// When the schedule last fired, if it ever did.
fn last_fired(conn: &Connection, schedule: &Schedule) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT fired_at_ms FROM schedule_ticks WHERE repo = ?1 AND ref_name = ?2 AND cron = ?3",
        params![schedule.repo.as_str(), schedule.ref_name, schedule.pattern],
        |row| row.get(0),
    )
    .optional()
}

pub fn record_tick(conn: &Connection, schedule: &Schedule, tick: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO schedule_ticks (repo, ref_name, cron, fired_at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (repo, ref_name, cron) DO UPDATE SET fired_at_ms = excluded.fired_at_ms",
        params![schedule.repo.as_str(), schedule.ref_name, schedule.pattern, tick],
    )
    .map(drop)
}

/// What to do about a schedule at start: the missed tick to fire once, if
/// any. A schedule never fired before starts counting now (recorded, so
/// that a later outage is noticed).
pub fn missed_at_start(conn: &Connection, schedule: &Schedule, now: i64) -> rusqlite::Result<Option<i64>> {
    match last_fired(conn, schedule)? {
        None => {
            record_tick(conn, schedule, now)?;
            Ok(None)
        }
        Some(last) => Ok(schedule.last_until(now).filter(|&tick| tick > last)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `repo ref pattern…`.
    fn schedule(text: &str) -> Schedule {
        let mut parts = text.splitn(3, ' ');
        let (repo, ref_name, pattern) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        Schedule::new(repo.parse().unwrap(), ref_name.to_string(), pattern).unwrap()
    }

    #[test]
    fn five_fields_count_minutes_and_six_count_seconds_first() {
        let minutely = schedule("app.git refs/heads/main */5 * * * *");
        assert_eq!(minutely.next_after(0), Some(5 * 60_000));
        let secondly = schedule("app.git refs/heads/main */2 * * * * *");
        assert_eq!(secondly.next_after(0), Some(2_000));
        assert_eq!(secondly.last_until(5_500), Some(4_000));
        let nightly = schedule("app.git refs/heads/main 0 3 * * *");
        assert_eq!(nightly.next_after(0), Some(3 * 3_600_000));
    }

    #[test]
    fn bad_patterns_say_why() {
        for bad in ["* * * *", "* * * * * * *", "61 * * * *", "a b c d e"] {
            let error = Schedule::new("app.git".parse().unwrap(), "refs/heads/main".into(), bad).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn missed_ticks_collapse_to_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::db::open_and_migrate(&dir.path().join("quire.db")).unwrap();
        let hourly = schedule("app.git refs/heads/main 0 * * * *");
        assert_eq!(
            missed_at_start(&conn, &hourly, 10 * 3_600_000 + 5).unwrap(),
            None,
            "a new schedule starts counting"
        );
        // Down for five hours: one tick to fire, the latest.
        assert_eq!(missed_at_start(&conn, &hourly, 15 * 3_600_000 + 5).unwrap(), Some(15 * 3_600_000));
        record_tick(&conn, &hourly, 15 * 3_600_000).unwrap();
        assert_eq!(missed_at_start(&conn, &hourly, 15 * 3_600_000 + 60_000).unwrap(), None);
    }
}
