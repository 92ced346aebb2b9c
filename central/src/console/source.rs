//! The seam through which the console reads what other parts of the central know beyond events
//! and agents: notifications (with flood control) and cloud-hosted integrations with their
//! activity stream.
//!
//! Each is an optional trait object in [`Sources`]. A central without the feature leaves it
//! `None` and the console shows an empty state that says the central does not track it; it
//! never invents data. The module that owns the data implements the trait and sets it in
//! [`crate::State`]'s console at start-up.
//!
//! What it does NOT do: store anything, or read events (the console reads those from
//! [`crate::store`] directly).

use std::sync::Arc;

/// One notification of an event, as the event page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationView {
    /// Who was notified (a user or group target name).
    pub recipient: String,
    /// The device's name and type (e.g. `Work Email (EMAIL)`).
    pub device: String,
    /// `DELIVERED`, `SUPPRESSED`, `FAILED`, ...
    pub status: String,
    /// For a `SUPPRESSED` notification, the flood control rule that held it back.
    pub rule: Option<String>,
    /// When it was sent or held back (RFC 3339).
    pub at: Option<String>,
}

/// Notifications counted in one minute of one integration, for the picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteCount {
    /// The start of the minute, in Unix milliseconds.
    pub minute_ms: u64,
    /// The integration whose events they belong to.
    pub integration: String,
    /// Notifications delivered.
    pub delivered: u64,
    /// Notifications held back by flood control.
    pub suppressed: u64,
}

/// What the console needs from the notifications feature.
pub trait Notifications: Send + Sync {
    /// The notifications of event `event_id`, in the order they were created (an event's are
    /// created together); empty when it has none. An error message is shown as is, so it must
    /// not contain a secret.
    fn of_event(&self, event_id: &str) -> Result<Vec<NotificationView>, String>;
    /// Counts per minute and integration since `since_ms` (Unix milliseconds).
    fn per_minute(&self, since_ms: u64) -> Vec<MinuteCount>;
}

/// One cloud-hosted integration, as the integrations page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedIntegration {
    /// The integration id (the path segment of its trigger URL).
    pub id: String,
    /// Its display name.
    pub name: String,
    /// Its action (`create_event`, `transform`, `run_script`, ...).
    pub action: String,
    /// How callers authenticate (`url`, `basic`, `api_key`, `oauth`, `any`).
    pub auth: String,
    /// Whether flood control applies to its events.
    pub flood_control: bool,
    /// The trigger URL to give callers; never with a key or other secret in it.
    pub trigger_url: String,
    /// When a request last arrived (RFC 3339).
    pub last_activity: Option<String>,
}

/// One request in a hosted integration's activity stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityEntry {
    /// The request id.
    pub request_id: String,
    /// When it arrived (RFC 3339).
    pub at: String,
    /// How it ended (`SUCCESS`, `FAILED`, ...).
    pub outcome: String,
    /// Its steps in order, as (step, detail): auth, stored, script log lines, events created,
    /// errors. Details are already cut and redacted by the owner of the data.
    pub steps: Vec<(String, String)>,
}

/// What the console needs from the cloud-hosted integrations feature.
pub trait HostedIntegrations: Send + Sync {
    /// Every hosted integration.
    fn list(&self) -> Vec<HostedIntegration>;
    /// The newest `limit` requests of integration `id`, newest first; `None` when no hosted
    /// integration has this id. An error message is shown as is (no secret in it).
    fn activity(&self, id: &str, limit: usize) -> Option<Result<Vec<ActivityEntry>, String>>;
}

/// The optional data sources; `None` renders the empty state.
#[derive(Clone, Default)]
pub struct Sources {
    /// Notifications and flood control.
    pub notifications: Option<Arc<dyn Notifications>>,
    /// Cloud-hosted integrations and their activity.
    pub hosted: Option<Arc<dyn HostedIntegrations>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("notifications", &self.notifications.is_some())
            .field("hosted", &self.hosted.is_some())
            .finish()
    }
}
