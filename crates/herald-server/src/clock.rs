//! The wall clock that campaigns are scheduled by: their start and end
//! times, the recipients' windows and the pauses before retries. It is the
//! system's, except where a test sets one of its own: that one runs at the
//! system's speed from where it was set, and can be moved on at once, to
//! see a night pass or a daylight-saving change without waiting for either.

use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

#[derive(Clone, Default)]
pub struct Clock(Option<Arc<Mutex<Duration>>>);

impl Clock {
    /// The system's clock.
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock that reads `at` now, and runs on from there.
    pub fn starting_at(at: DateTime<Utc>) -> Clock {
        Clock(Some(Arc::new(Mutex::new(at - Utc::now()))))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &self.0 {
            Some(ahead) => Utc::now() + *ahead.lock().unwrap_or_else(|e| e.into_inner()),
            None => Utc::now(),
        }
    }

    /// Moves a set clock to `at` (the system's is not moved).
    pub fn set(&self, at: DateTime<Utc>) {
        if let Some(ahead) = &self.0 {
            *ahead.lock().unwrap_or_else(|e| e.into_inner()) = at - Utc::now();
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(_) => write!(f, "Clock::starting_at({})", self.now()),
            None => f.write_str("Clock::system()"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_clock_reads_where_it_was_set_in_every_copy_and_runs_on() {
        let start: DateTime<Utc> = "2026-03-28T18:00:00Z".parse().unwrap();
        let clock = Clock::starting_at(start);
        let copy = clock.clone();
        let read = copy.now();
        assert!(
            read >= start && read - start < Duration::seconds(5),
            "{read}"
        );
        clock.set(start + Duration::hours(2));
        let read = copy.now();
        assert!(read >= start + Duration::hours(2), "{read}");
        assert!(read - start < Duration::hours(2) + Duration::seconds(5));
        let system = Clock::system();
        system.set(start);
        assert!((system.now() - Utc::now()).abs() < Duration::seconds(5));
    }
}
