//! The agent ↔ central websocket protocol.
//!
//! Every websocket text frame carries exactly one JSON object tagged by `"type"`. The agent speaks
//! first with [`AgentFrame::Hello`] naming the protocol version it implements; the central answers
//! [`CentralFrame::Welcome`] (or closes the socket). After that the agent streams
//! [`AgentFrame::EventCreate`] frames and the central answers each with an [`CentralFrame::Ack`]
//! or a [`CentralFrame::Reject`], matched by `seq`.
//!
//! Growing the protocol without a new version: members added to a frame are optional (both
//! sides ignore members they do not know, so an old peer reads a new frame), and a new frame
//! type from the agent is sent only to a central whose `welcome` lists it in `accepts` (a
//! central that does not know a frame type closes the socket). The agent's `status` frame
//! ([`AgentStatus`]: software version in `hello`, queue figures and integrations in `status`)
//! feeds the central's view of its agents.
//!
//! This crate holds only the types, so both sides (and any third-party central) agree on the wire
//! shape without pulling in each other's runtime. It deliberately does no I/O.
#![forbid(unsafe_code)]

pub mod frame;
pub mod limits;
pub mod managed;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use managed::{ManagedIntegration, ManagedIntegrations, ScriptText};

/// The protocol version this build speaks. A central refuses a `hello` with a version it does not
/// know, so an old central never misreads frames from a newer agent.
pub const PROTOCOL_VERSION: u32 = 1;

/// The path on the central where agents open their websocket.
pub const CONNECT_PATH: &str = "/api/agent/1/connect";

/// The name a central lists in [`CentralFrame::Welcome`]'s `accepts` when it reads
/// [`AgentFrame::Status`] frames.
pub const ACCEPTS_STATUS: &str = "status";

/// The name a central lists in `accepts` when it reads [`AgentFrame::Activity`] frames (a
/// central that sends `integrations` reads them too, listed or not).
pub const ACCEPTS_ACTIVITY: &str = "activity";

/// What an agent reports of itself in a `status` frame: right after `welcome`, then
/// periodically and soon after its queue changes, so the central's console shows each agent's
/// backlog without logging in to its host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Entries accepted and not yet acknowledged by the central (requests waiting for their
    /// script plus events waiting for their ack).
    pub queue_depth: u64,
    /// Events the central refused for good, kept on the agent for `xmagent queue retry`.
    pub dead_letters: u64,
    /// Age in milliseconds of the oldest accepted-but-unacknowledged request, `null` when none.
    #[serde(default)]
    pub oldest_pending_ms: Option<u64>,
    /// The ids of the integrations the agent serves (its own and the central's), sorted.
    #[serde(default)]
    pub integrations: Vec<String>,
}

/// One event-creation call taken from the agent's outbox.
///
/// `(agent, request_id, index)` identifies the event globally: a resend after a reconnect or a
/// crash carries the same triple, and the central answers it with the event it already created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventCreate {
    /// The agent's outbox sequence number; only meaningful within one agent.
    pub seq: u64,
    /// The inbound request that produced this event.
    pub request_id: String,
    /// Position of this event among the events of its request (a script may post several).
    pub index: u32,
    /// The integration that handled the request.
    pub integration_id: String,
    /// The form (communication plan form) the event is created from, if the integration names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<String>,
    /// The trigger object: `properties`, `recipients`, `priority`, ... exactly as the script or the
    /// request body built it.
    pub trigger: Value,
    // The members below came later: they are optional and declared after `trigger`, so every
    // frame an older agent wrote (in any form serde reads) still parses the same.
    /// The communication plan of `form`, if the integration names one (without it the central
    /// looks the form up in every plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Who sends the event, for the form's sender permissions: the integration's authenticating
    /// user for URL and API-key authentication, the caller for Basic and OAuth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Whether the integration enables notification flood control.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flood_control: bool,
}

/// Frames the agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum AgentFrame {
    /// First frame on every connection.
    #[serde(rename = "hello", rename_all = "camelCase")]
    Hello {
        /// [`PROTOCOL_VERSION`] of the agent.
        version: u32,
        /// The agent's configured id; informational (the token identifies the agent).
        agent_id: String,
        /// The agent's software version (its package version), for the central's console;
        /// absent from agents older than this member.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        software_version: Option<String>,
    },
    /// Create one event.
    #[serde(rename = "event.create")]
    EventCreate(EventCreate),
    /// Activity-stream entries of integrations the central manages, so its stream shows the
    /// requests agents ran; best effort and never answered. Sent only on a connection where the
    /// central sent `integrations` (an older central closes on a frame type it does not know).
    #[serde(rename = "activity")]
    Activity {
        /// The entries, oldest first.
        entries: Vec<Value>,
    },
    /// The agent's queue figures and integrations; never answered. Sent only to a central whose
    /// `welcome` lists [`ACCEPTS_STATUS`].
    #[serde(rename = "status")]
    Status(AgentStatus),
}

/// Frames the central sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum CentralFrame {
    /// Answer to `hello`: the connection is ready for `event.create`.
    #[serde(rename = "welcome", rename_all = "camelCase")]
    Welcome {
        /// The protocol version the central will speak on this connection.
        version: u32,
        /// The agent id the central bound to the token.
        agent_id: String,
        /// The agent frame types beyond `event.create` this central reads ([`ACCEPTS_STATUS`],
        /// [`ACCEPTS_ACTIVITY`]); absent from centrals older than this member, which close the
        /// socket on a frame type they do not know.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        accepts: Vec<String>,
    },
    /// The event exists at the central (created now or by an earlier send of the same triple).
    #[serde(rename = "ack", rename_all = "camelCase")]
    Ack {
        /// The `seq` of the acknowledged `event.create`.
        seq: u64,
        /// The central's event id.
        event_id: String,
    },
    /// The central refused the event. `retryable: false` means sending it again cannot succeed
    /// (the agent dead-letters it); `retryable: true` means try again later.
    #[serde(rename = "reject", rename_all = "camelCase")]
    Reject {
        /// The `seq` of the refused `event.create`.
        seq: u64,
        /// Whether a later resend may succeed.
        retryable: bool,
        /// An HTTP-like status code classifying the refusal (400 bad trigger, 503 busy, ...).
        status: u16,
        /// A human-readable reason, shown in the agent's request status and dead-letter list.
        message: String,
    },
    /// The integrations this agent runs for the central (see [`managed`]); sent after
    /// `welcome` and again when the central's configuration changes the set.
    #[serde(rename = "integrations")]
    Integrations(ManagedIntegrations),
}

impl AgentFrame {
    /// Encode as the JSON text of one websocket frame.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("agent frames always serialize")
    }
}

impl CentralFrame {
    /// Encode as the JSON text of one websocket frame.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("central frames always serialize")
    }

    /// Whether this is a `welcome` that lists `frame_type` in `accepts`: the agent may send
    /// frames of that type on this connection.
    pub fn accepts(&self, frame_type: &str) -> bool {
        matches!(self, CentralFrame::Welcome { accepts, .. } if accepts.iter().any(|t| t == frame_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_create_wire_shape_is_flat_and_camel_case() {
        let frame = AgentFrame::EventCreate(EventCreate {
            seq: 7,
            request_id: "r-1".into(),
            index: 2,
            integration_id: "i-1".into(),
            form: None,
            plan: None,
            sender: None,
            flood_control: false,
            trigger: json!({"properties": {"a": 1}}),
        });
        let v: Value = serde_json::from_str(&frame.to_text()).unwrap();
        assert_eq!(
            v,
            json!({"type": "event.create", "seq": 7, "requestId": "r-1", "index": 2,
                   "integrationId": "i-1", "trigger": {"properties": {"a": 1}}})
        );
        assert_eq!(serde_json::from_value::<AgentFrame>(v).unwrap(), frame);
    }

    #[test]
    fn routing_fields_are_optional_and_round_trip() {
        let older = r#"{"type":"event.create","seq":1,"requestId":"r","index":0,
            "integrationId":"i","trigger":{}}"#;
        let Ok(AgentFrame::EventCreate(create)) = serde_json::from_str::<AgentFrame>(older) else {
            panic!("an older frame still parses");
        };
        assert_eq!(
            (create.plan, create.sender, create.flood_control),
            (None, None, false)
        );
        let frame = AgentFrame::EventCreate(EventCreate {
            seq: 2,
            request_id: "r".into(),
            index: 0,
            integration_id: "i".into(),
            form: Some("F".into()),
            plan: Some("P".into()),
            sender: Some("svc".into()),
            flood_control: true,
            trigger: json!({}),
        });
        let v: Value = serde_json::from_str(&frame.to_text()).unwrap();
        assert_eq!(v["plan"], "P");
        assert_eq!(v["sender"], "svc");
        assert_eq!(v["floodControl"], true);
        assert_eq!(serde_json::from_value::<AgentFrame>(v).unwrap(), frame);
    }

    #[test]
    fn central_frames_round_trip() {
        for frame in [
            CentralFrame::Welcome {
                version: 1,
                agent_id: "a".into(),
                accepts: vec![ACCEPTS_STATUS.into()],
            },
            CentralFrame::Ack {
                seq: 1,
                event_id: "e".into(),
            },
            CentralFrame::Reject {
                seq: 2,
                retryable: false,
                status: 400,
                message: "bad".into(),
            },
        ] {
            let back: CentralFrame = serde_json::from_str(&frame.to_text()).unwrap();
            assert_eq!(back, frame);
        }
        let ack: CentralFrame =
            serde_json::from_str(r#"{"type":"ack","seq":3,"eventId":"x"}"#).unwrap();
        assert_eq!(
            ack,
            CentralFrame::Ack {
                seq: 3,
                event_id: "x".into()
            }
        );
    }

    #[test]
    fn integrations_frame_round_trips_without_plain_secrets() {
        let frame = CentralFrame::Integrations(ManagedIntegrations {
            version: "v1".into(),
            integrations: vec![ManagedIntegration {
                id: "dc".into(),
                name: "Data centre".into(),
                action: "transform".into(),
                form: Some("Alert".into()),
                plan: None,
                flood_control: false,
                auth: "url".into(),
                authenticating_user: Some("svc".into()),
                url_key_sha256: Some("ab".repeat(32)),
                allowed_users: None,
                rate_limit_per_minute: Some(60),
                script_events_of: vec![],
                script: Some(ScriptText {
                    name: "dc.js".into(),
                    code: "form.post(trigger);".into(),
                }),
                libraries: vec!["util".into()],
                constants: [("A".to_owned(), "1".to_owned())].into(),
                event: None,
            }],
            libraries: [(
                "util".to_owned(),
                ScriptText {
                    name: "util.js".into(),
                    code: "exports.x = 1;".into(),
                },
            )]
            .into(),
        });
        let text = frame.to_text();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "integrations");
        assert_eq!(v["integrations"][0]["urlKeySha256"], "ab".repeat(32));
        assert!(v["integrations"][0].get("urlKey").is_none());
        assert_eq!(serde_json::from_str::<CentralFrame>(&text).unwrap(), frame);
    }

    /// The frames as the first release of protocol 1 declared them: what an old peer parses.
    mod first_release {
        use serde::{Deserialize, Serialize};

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type")]
        pub enum AgentFrame {
            #[serde(rename = "hello", rename_all = "camelCase")]
            Hello { version: u32, agent_id: String },
        }

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type")]
        pub enum CentralFrame {
            #[serde(rename = "welcome", rename_all = "camelCase")]
            Welcome { version: u32, agent_id: String },
        }
    }

    #[test]
    fn hello_carries_the_software_version_and_stays_readable_both_ways() {
        let new = AgentFrame::Hello {
            version: PROTOCOL_VERSION,
            agent_id: "a".into(),
            software_version: Some("1.2.3".into()),
        };
        let text = new.to_text();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["softwareVersion"], "1.2.3");
        assert_eq!(serde_json::from_str::<AgentFrame>(&text).unwrap(), new);
        // An old central reads the new hello, ignoring the member it does not know.
        assert_eq!(
            serde_json::from_str::<first_release::AgentFrame>(&text).unwrap(),
            first_release::AgentFrame::Hello {
                version: PROTOCOL_VERSION,
                agent_id: "a".into()
            }
        );
        // A new central reads an old agent's hello: no software version.
        let old = first_release::AgentFrame::Hello {
            version: 1,
            agent_id: "a".into(),
        };
        let read = serde_json::from_str::<AgentFrame>(&serde_json::to_string(&old).unwrap());
        assert_eq!(
            read.unwrap(),
            AgentFrame::Hello {
                version: 1,
                agent_id: "a".into(),
                software_version: None
            }
        );
    }

    #[test]
    fn welcome_lists_what_the_central_accepts_and_stays_readable_both_ways() {
        let new = CentralFrame::Welcome {
            version: 1,
            agent_id: "a".into(),
            accepts: vec![ACCEPTS_STATUS.into(), ACCEPTS_ACTIVITY.into()],
        };
        assert!(new.accepts(ACCEPTS_STATUS) && new.accepts(ACCEPTS_ACTIVITY));
        assert!(!new.accepts("telemetry"));
        let text = new.to_text();
        // An old agent reads the new welcome.
        assert_eq!(
            serde_json::from_str::<first_release::CentralFrame>(&text).unwrap(),
            first_release::CentralFrame::Welcome {
                version: 1,
                agent_id: "a".into()
            }
        );
        // A new agent reads an old central's welcome as accepting nothing new.
        let old = serde_json::to_string(&first_release::CentralFrame::Welcome {
            version: 1,
            agent_id: "a".into(),
        })
        .unwrap();
        let read: CentralFrame = serde_json::from_str(&old).unwrap();
        assert!(!read.accepts(ACCEPTS_STATUS));
        assert!(!CentralFrame::Ack {
            seq: 1,
            event_id: "e".into()
        }
        .accepts(ACCEPTS_STATUS));
    }

    #[test]
    fn status_frame_round_trips_with_an_explicit_null_age() {
        let frame = AgentFrame::Status(AgentStatus {
            queue_depth: 3,
            dead_letters: 1,
            oldest_pending_ms: None,
            integrations: vec!["a".into(), "b".into()],
        });
        let text = frame.to_text();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({"type": "status", "queueDepth": 3, "deadLetters": 1,
                   "oldestPendingMs": null, "integrations": ["a", "b"]})
        );
        assert_eq!(serde_json::from_str::<AgentFrame>(&text).unwrap(), frame);
        let aged: AgentFrame = serde_json::from_str(
            r#"{"type":"status","queueDepth":0,"deadLetters":0,"oldestPendingMs":1500}"#,
        )
        .unwrap();
        let AgentFrame::Status(status) = aged else {
            panic!("a status frame");
        };
        assert_eq!(
            (status.oldest_pending_ms, status.integrations.len()),
            (Some(1500), 0)
        );
        assert!(
            serde_json::from_str::<AgentFrame>(r#"{"type":"status","queueDepth":-1}"#).is_err(),
            "figures are counts"
        );
    }

    #[test]
    fn unknown_frame_type_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<CentralFrame>(r#"{"type":"nope"}"#).is_err());
        assert!(serde_json::from_str::<AgentFrame>(r#"{"type":"hello"}"#).is_err());
    }
}
