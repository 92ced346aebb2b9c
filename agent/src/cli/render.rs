//! Readable text for the operator commands (`xmagent status`, `queue`, `activity`): one
//! function per answer, from the admin endpoint's JSON (the same JSON `--json` prints).
//!
//! It only formats; it never calls the agent, and it tolerates missing fields (an older or
//! newer agent) by printing what it has.

use std::fmt::Write;

use serde_json::Value;

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

fn duration(secs: u64) -> String {
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours) {
        (0, 0) => format!("{minutes}m {seconds:02}s"),
        (0, _) => format!("{hours}h {minutes:02}m {seconds:02}s"),
        _ => format!("{days}d {hours:02}h {minutes:02}m"),
    }
}

/// `xmagent status`.
pub fn status(answer: &Value) -> String {
    let central = &answer["central"];
    let connection = if central["connected"].as_bool().unwrap_or(false) {
        format!(
            "connected (in flight {}, reconnects {})",
            central["inFlight"].as_u64().unwrap_or(0),
            central["reconnects"].as_u64().unwrap_or(0)
        )
    } else {
        "NOT connected".to_owned()
    };
    let last_error = central["lastError"].as_str().unwrap_or("none");
    let restart: Vec<&str> = answer["restartNeeded"]
        .as_array()
        .map(|keys| keys.iter().map(text).collect())
        .unwrap_or_default();
    let restart = if restart.is_empty() {
        "no".to_owned()
    } else {
        format!("yes ({} changed in the file)", restart.join(", "))
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "xmagent {}, up {}",
        text(&answer["version"]),
        duration(answer["uptimeSecs"].as_u64().unwrap_or(0))
    );
    let _ = writeln!(out, "central:         {connection}");
    let _ = writeln!(
        out,
        "queue:           {} accepted, {} waiting for the central",
        answer["accepted"].as_u64().unwrap_or(0),
        answer["waitingForCentral"].as_u64().unwrap_or(0)
    );
    let _ = writeln!(
        out,
        "oldest pending:  {}",
        answer["oldestPending"].as_str().unwrap_or("none")
    );
    let _ = writeln!(
        out,
        "dead letters:    {}",
        answer["deadLetters"].as_u64().unwrap_or(0)
    );
    let _ = writeln!(out, "last error:      {last_error}");
    let _ = writeln!(out, "restart needed:  {restart}");
    if let Some(error) = answer["reloadError"].as_str() {
        let _ = writeln!(out, "last reload:     refused: {error}");
    }
    out
}

/// `xmagent queue list`.
pub fn queue(answer: &Value) -> String {
    let entries = answer["data"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        return "the queue is empty\n".to_owned();
    }
    let mut out = format!(
        "{:<8} {:<9} {:<24} {:<36} {:<25} REASON\n",
        "ID", "STATE", "INTEGRATION", "REQUEST", "RECEIVED"
    );
    for entry in &entries {
        let _ = writeln!(
            out,
            "{:<8} {:<9} {:<24} {:<36} {:<25} {}",
            entry["id"].to_string(),
            text(&entry["state"]),
            text(&entry["integrationId"]),
            text(&entry["requestId"]),
            text(&entry["receivedAt"]),
            text(&entry["reason"]),
        );
    }
    out
}

/// `xmagent queue retry`.
pub fn retried(answer: &Value) -> String {
    format!(
        "queued again: {} dead letter(s)\n",
        answer["retried"].as_u64().unwrap_or(0)
    )
}

/// `xmagent queue purge --dead --yes`.
pub fn purged(answer: &Value) -> String {
    format!(
        "purged {} dead letter(s)\n",
        answer["purged"].as_u64().unwrap_or(0)
    )
}

/// `xmagent activity`: newest first, one line per request.
pub fn activity(answer: &Value) -> String {
    let entries = answer["data"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        return "no activity yet\n".to_owned();
    }
    entries.iter().map(activity_line).collect()
}

/// One activity entry: when, request, status, events and the error if any.
pub fn activity_line(entry: &Value) -> String {
    let events: Vec<&str> = entry["eventIds"]
        .as_array()
        .map(|ids| ids.iter().map(text).collect())
        .unwrap_or_default();
    let mut line = format!(
        "{} {} {}",
        text(&entry["created"]),
        text(&entry["requestId"]),
        text(&entry["status"])
    );
    if !events.is_empty() {
        let _ = write!(line, " events={}", events.join(","));
    }
    if let Some(message) = entry["error"]["message"].as_str() {
        let _ = write!(line, " error={message:?}");
    }
    // An http_trigger run whose filter output said "no event".
    if let Some(reason) = entry["skipped"].as_str() {
        let _ = write!(line, " no event: {reason}");
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_activity_line_says_why_a_flow_trigger_created_no_event() {
        let line = activity_line(&json!({
            "created": "2026-12-01T09:23:14.392Z", "requestId": "r1", "status": "COMPLETED",
            "eventIds": [], "skipped": "output \"Skip\" is true"
        }));
        assert_eq!(
            line,
            "2026-12-01T09:23:14.392Z r1 COMPLETED no event: output \"Skip\" is true\n"
        );
    }

    #[test]
    fn status_says_what_an_operator_needs() {
        let text = status(&json!({
            "version": "0.1.0", "uptimeSecs": 3723,
            "central": {"connected": false, "lastError": "connection refused", "reconnects": 2},
            "accepted": 1, "waitingForCentral": 9, "oldestPending": "2026-12-01T04:00:00Z",
            "deadLetters": 2, "restartNeeded": ["agent.listen"],
            "reloadError": "agent.toml: integrations[0].action: unknown action"
        }));
        assert!(text.contains("xmagent 0.1.0, up 1h 02m 03s"), "{text}");
        assert!(text.contains("central:         NOT connected"), "{text}");
        assert!(
            text.contains("1 accepted, 9 waiting for the central"),
            "{text}"
        );
        assert!(
            text.contains("oldest pending:  2026-12-01T04:00:00Z"),
            "{text}"
        );
        assert!(text.contains("dead letters:    2"), "{text}");
        assert!(
            text.contains("last error:      connection refused"),
            "{text}"
        );
        assert!(
            text.contains("restart needed:  yes (agent.listen changed"),
            "{text}"
        );
        assert!(
            text.contains("last reload:     refused: agent.toml: integrations[0]"),
            "{text}"
        );
    }

    #[test]
    fn empty_answers_say_so() {
        assert_eq!(
            queue(&json!({"count": 0, "data": []})),
            "the queue is empty\n"
        );
        assert_eq!(activity(&json!({"data": []})), "no activity yet\n");
    }

    #[test]
    fn an_activity_line_carries_events_and_errors() {
        let line = activity_line(
            &json!({"created": "t", "requestId": "r", "status": "FAILED",
            "eventIds": ["e1"], "error": {"message": "boom"}}),
        );
        assert_eq!(line, "t r FAILED events=e1 error=\"boom\"\n");
    }
}
