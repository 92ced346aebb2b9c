//! Notification flood control, the company-level setting `[flood_control]`: within `period_secs`,
//! a person gets at most `max_notifications` notifications from one integration on the covered
//! device types; the ones beyond are SUPPRESSED (recorded, not delivered).
//!
//! [`Window`] is one person's count for one integration: the times of the notifications that
//! counted, within the period. It is plain data so the notification store can keep it in sled
//! and the count survives a restart.
//!
//! What it deliberately does NOT do: decide which integrations use flood control (the
//! integration's `flood_control` flag, carried by the agent), store windows, or look at device
//! types outside [`FloodSettings::device_types`] (those are never counted nor suppressed).

use std::time::Duration;

use serde::Deserialize;

use crate::directory::DeviceType;
use server::exit::ConfigError;

/// The default maximum: one notification per period.
pub const DEFAULT_MAX_NOTIFICATIONS: u32 = 1;
/// The default period: 300 seconds.
pub const DEFAULT_PERIOD_SECS: u64 = 300;
/// The device types covered by default: mobile app, SMS and voice (email and chat are not).
pub const DEFAULT_DEVICE_TYPES: [DeviceType; 3] = [
    DeviceType::MobileApp,
    DeviceType::TextPhone,
    DeviceType::Voice,
];

/// The validated `[flood_control]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloodSettings {
    /// Notifications a person may get per period from one integration on covered devices.
    pub max_notifications: u32,
    /// The sliding period.
    pub period: Duration,
    /// The device types counted and suppressed.
    pub device_types: Vec<DeviceType>,
}

impl Default for FloodSettings {
    fn default() -> Self {
        Self {
            max_notifications: DEFAULT_MAX_NOTIFICATIONS,
            period: Duration::from_secs(DEFAULT_PERIOD_SECS),
            device_types: DEFAULT_DEVICE_TYPES.to_vec(),
        }
    }
}

impl FloodSettings {
    /// Whether notifications to `kind` are counted (and may be suppressed).
    pub fn covers(&self, kind: DeviceType) -> bool {
        self.device_types.contains(&kind)
    }
}

/// `[flood_control]` as written in `central.toml`; absent keys take the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFloodSettings {
    max_notifications: Option<u32>,
    period_secs: Option<u64>,
    device_types: Option<Vec<DeviceType>>,
}

impl RawFloodSettings {
    /// Validate: a maximum of at least 1 and a period from 1 second to 1 day.
    pub fn validate(self, file: &str) -> Result<FloodSettings, ConfigError> {
        let max_notifications = self.max_notifications.unwrap_or(DEFAULT_MAX_NOTIFICATIONS);
        if max_notifications == 0 {
            return Err(ConfigError::new(
                file,
                "flood_control.max_notifications",
                "must be at least 1 (to stop notifications, leave flood control off instead)",
            ));
        }
        let period_secs = self.period_secs.unwrap_or(DEFAULT_PERIOD_SECS);
        if !(1..=86_400).contains(&period_secs) {
            return Err(ConfigError::new(
                file,
                "flood_control.period_secs",
                format!("must be from 1 to 86400 seconds, got {period_secs}"),
            ));
        }
        Ok(FloodSettings {
            max_notifications,
            period: Duration::from_secs(period_secs),
            device_types: self
                .device_types
                .unwrap_or_else(|| DEFAULT_DEVICE_TYPES.to_vec()),
        })
    }
}

/// The times (milliseconds since the Unix epoch) of one person's counted notifications from one
/// integration, oldest first, none older than the period at the last [`Window::admit`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Window(pub Vec<u64>);

impl Window {
    /// Whether one more notification at `now_ms` may go: true (and counted) while fewer than
    /// the maximum counted ones fall within the period ending at `now_ms`; false means
    /// SUPPRESSED, and a suppressed notification is not counted.
    pub fn admit(&mut self, now_ms: u64, settings: &FloodSettings) -> bool {
        self.admit_within(now_ms, settings.max_notifications, settings.period)
    }

    /// [`Window::admit`] with the maximum and the period given directly (the alert rate filter
    /// counts events with the same window).
    pub fn admit_within(&mut self, now_ms: u64, max: u32, period: Duration) -> bool {
        self.forget_before(now_ms, period);
        if self.0.len() < max as usize {
            self.0.push(now_ms);
            true
        } else {
            false
        }
    }

    /// Drop the times that are `period` or more before `now_ms`; true when none is left.
    pub fn forget_before(&mut self, now_ms: u64, period: Duration) -> bool {
        let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        let start = now_ms.saturating_sub(period_ms);
        self.0.retain(|&at| at > start);
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_are_one_per_five_minutes_on_app_sms_and_voice() {
        let settings = RawFloodSettings::default()
            .validate("c.toml")
            .expect("valid");
        assert_eq!(settings, FloodSettings::default());
        assert_eq!(settings.max_notifications, 1);
        assert_eq!(settings.period, Duration::from_secs(300));
        assert!(settings.covers(DeviceType::TextPhone));
        assert!(settings.covers(DeviceType::Voice));
        assert!(settings.covers(DeviceType::MobileApp));
        assert!(!settings.covers(DeviceType::Email));
        assert!(!settings.covers(DeviceType::ChatApp));
    }

    #[test]
    fn bad_settings_name_the_key() {
        let zero = RawFloodSettings {
            max_notifications: Some(0),
            ..RawFloodSettings::default()
        };
        assert_eq!(
            zero.validate("c.toml").unwrap_err().key,
            "flood_control.max_notifications"
        );
        let long = RawFloodSettings {
            period_secs: Some(86_401),
            ..RawFloodSettings::default()
        };
        assert_eq!(
            long.validate("c.toml").unwrap_err().key,
            "flood_control.period_secs"
        );
    }

    #[test]
    fn the_window_slides() {
        let settings = FloodSettings {
            max_notifications: 2,
            period: Duration::from_secs(10),
            device_types: DEFAULT_DEVICE_TYPES.to_vec(),
        };
        let mut window = Window::default();
        assert!(window.admit(1_000, &settings));
        assert!(window.admit(2_000, &settings));
        assert!(!window.admit(3_000, &settings), "third within 10 s");
        assert!(
            !window.admit(10_999, &settings),
            "the first is 9.999 s old: still in"
        );
        assert!(
            window.admit(11_000, &settings),
            "10 s old: the first left the period"
        );
        assert_eq!(window.0, [2_000, 11_000]);
    }

    proptest! {
        /// Whatever the arrival times, no period ever holds more admitted notifications than
        /// the maximum, and a notification is refused only when the period before it is full.
        #[test]
        fn never_more_than_the_maximum_per_period(
            gaps in proptest::collection::vec(0u64..4_000, 1..60),
            max in 1u32..4,
        ) {
            let settings = FloodSettings {
                max_notifications: max,
                period: Duration::from_secs(5),
                device_types: DEFAULT_DEVICE_TYPES.to_vec(),
            };
            let mut window = Window::default();
            let mut admitted: Vec<u64> = Vec::new();
            let mut now = 0;
            for gap in gaps {
                now += gap;
                let in_period = admitted.iter().filter(|&&at| at > now.saturating_sub(5_000)).count();
                let ok = window.admit(now, &settings);
                prop_assert_eq!(ok, in_period < max as usize);
                if ok {
                    admitted.push(now);
                }
            }
        }
    }
}
