//! Time, passed in: the allocator never reads the OS clock itself.

use std::sync::Mutex;

use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// The current time, UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The system's wall clock; the one place a real time enters the library.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// A clock that moves only when told (plus one nanosecond per reading, so readings stay
/// distinct, as block sequence numbers derived from them must be).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<OffsetDateTime>,
}

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        ManualClock {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: time::Duration) {
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now += time::Duration::nanoseconds(1);
        *now
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
}

/// RFC 3339 text of a time, as Kubernetes' `metav1.Time` writes it.
pub fn rfc3339(t: OffsetDateTime) -> String {
    use time::format_description::well_known::Rfc3339;
    // Formatting a UTC OffsetDateTime within years 0..=9999 as RFC 3339 cannot fail.
    t.format(&Rfc3339).unwrap_or_default()
}

/// Go's `time.Time.String()` form, as Calico writes the `timestamp` attribute.
pub fn go_time_string(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let nanos = t.nanosecond();
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_owned()
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{frac} +0000 UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_format_matches_calico_attributes() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_658_856_923_756_365_378).unwrap();
        assert_eq!(go_time_string(t), "2022-07-26 17:35:23.756365378 +0000 UTC");
        assert_eq!(rfc3339(t), "2022-07-26T17:35:23.756365378Z");
    }
}
