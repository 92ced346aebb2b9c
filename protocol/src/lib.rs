//! The agent ↔ central websocket protocol.
//!
//! Every websocket text frame carries exactly one JSON object tagged by `"type"`. The agent speaks
//! first with [`AgentFrame::Hello`] naming the protocol version it implements; the central answers
//! [`CentralFrame::Welcome`] (or closes the socket). After that the agent streams
//! [`AgentFrame::EventCreate`] frames and the central answers each with an [`CentralFrame::Ack`]
//! or a [`CentralFrame::Reject`], matched by `seq`.
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

    #[test]
    fn unknown_frame_type_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<CentralFrame>(r#"{"type":"nope"}"#).is_err());
        assert!(serde_json::from_str::<AgentFrame>(r#"{"type":"hello"}"#).is_err());
    }
}
