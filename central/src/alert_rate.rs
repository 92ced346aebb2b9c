//! The alert rate filter, xMatters' "Alert Rate Filter" rule, off by default
//! (`[alert_rate_filter] max_events_per_minute = N` turns it on): an integration's events to the
//! same recipients beyond N within a minute are SUPPRESSED. A suppressed event is still created,
//! acknowledged and listed in the events report, with `suppressed: {rule, reason}`; it notifies
//! nobody.
//!
//! "The same recipients" is the event's `recipients` as its canonical JSON text (an event that
//! names none counts with the others that name none, as they all go to the form's defaults).
//!
//! What it deliberately does NOT do: keep its counts across a restart (a one-minute window
//! restarts empty, which at worst lets N more events through), or look at notifications
//! (that is [`crate::flood`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

use crate::flood::Window;
use server::exit::ConfigError;

/// The period of the rule: one minute.
pub const PERIOD: Duration = Duration::from_secs(60);

/// Above this many tracked (integration, recipients) pairs, expired ones are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// The validated `[alert_rate_filter]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertRateSettings {
    /// Events an integration may create per minute for the same recipients.
    pub max_events_per_minute: u32,
}

/// `[alert_rate_filter]` as written in `central.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertRateSettings {
    max_events_per_minute: u32,
}

impl RawAlertRateSettings {
    /// Validate: at least one event per minute.
    pub fn validate(self, file: &str) -> Result<AlertRateSettings, ConfigError> {
        if self.max_events_per_minute == 0 {
            return Err(ConfigError::new(
                file,
                "alert_rate_filter.max_events_per_minute",
                "must be at least 1 (remove the table to turn the filter off)",
            ));
        }
        Ok(AlertRateSettings {
            max_events_per_minute: self.max_events_per_minute,
        })
    }
}

/// The counts of the rule, in memory.
#[derive(Debug, Default)]
pub struct AlertRateFilter {
    windows: Mutex<HashMap<(String, String), Window>>,
}

impl AlertRateFilter {
    /// Count one new event of `integration_id` to `recipients` at `now_ms`: `None` when it may
    /// go, `Some(reason)` when it is suppressed (suppressed events are not counted).
    pub fn check(
        &self,
        settings: &AlertRateSettings,
        integration_id: &str,
        recipients: &[u8],
        now_ms: u64,
    ) -> Option<String> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() > PRUNE_ABOVE {
            windows.retain(|_, window| !window.forget_before(now_ms, PERIOD));
        }
        let key = (
            integration_id.to_owned(),
            String::from_utf8_lossy(recipients).into_owned(),
        );
        let window = windows.entry(key).or_default();
        if window.admit_within(now_ms, settings.max_events_per_minute, PERIOD) {
            None
        } else {
            Some(format!(
                "Alert Rate Filter: more than {} event(s) from integration `{integration_id}` to \
                 the same recipients within a minute",
                settings.max_events_per_minute
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_beyond_the_rate_to_the_same_recipients_are_suppressed() {
        let settings = AlertRateSettings {
            max_events_per_minute: 2,
        };
        let filter = AlertRateFilter::default();
        let check = |integration: &str, recipients: &str, at: u64| {
            filter.check(&settings, integration, recipients.as_bytes(), at)
        };
        assert_eq!(check("i", "[\"ops\"]", 10_000), None);
        assert_eq!(check("i", "[\"ops\"]", 11_000), None);
        let third = check("i", "[\"ops\"]", 12_000).expect("suppressed");
        assert!(third.contains("more than 2 event(s)"), "{third}");
        assert_eq!(check("i", "[\"dba\"]", 12_000), None, "other recipients");
        assert_eq!(check("j", "[\"ops\"]", 12_000), None, "other integration");
        assert!(
            check("i", "[\"ops\"]", 69_999).is_some(),
            "within the minute"
        );
        assert_eq!(
            check("i", "[\"ops\"]", 70_000),
            None,
            "a minute after the first"
        );
    }

    #[test]
    fn zero_is_refused_with_the_key() {
        let error = RawAlertRateSettings {
            max_events_per_minute: 0,
        }
        .validate("c.toml")
        .expect_err("zero");
        assert_eq!(error.key, "alert_rate_filter.max_events_per_minute");
    }
}
