//! The xMatters-shaped REST reads of the directory and of notifications:
//! `GET /api/xm/1/people[/{targetName}[/devices]]`, `/groups[/{targetName}]`, `/plans`,
//! `/plans/{plan}/forms`, `/events/{id}/notifications` and `/integrations[/{id}]` ([`crate::catalog`]). Lists answer `{count, total, data,
//! links}` with `offset`/`limit` paging and `links.next` while more remain.
//!
//! Every authenticated caller may read the directory (scripts use it to pick recipients);
//! notifications are visible to callers who may see their event, and an event outside the
//! caller's scope is answered like a missing one.
//!
//! What it deliberately does NOT do: authenticate (the caller comes from [`crate::rest`]),
//! change anything (the directory is configuration; notifications change through events).

use hyper::StatusCode;
use serde_json::{json, Value};

use crate::access::Caller;
use crate::directory::{self, Directory};
use crate::rest::DEFAULT_LIMIT;
use crate::State;
use server::http_util;
use server::serve::Body;

/// The prefix of the xMatters REST API.
const API: &str = "/api/xm/1";

/// What a path under `/api/xm/1` names, if it is one of this module's resources.
#[derive(Debug, PartialEq, Eq)]
pub enum Resource<'p> {
    /// `/people`.
    People,
    /// `/people/{targetName}`.
    Person(&'p str),
    /// `/people/{targetName}/devices`.
    Devices(&'p str),
    /// `/groups`.
    Groups,
    /// `/groups/{targetName}`.
    Group(&'p str),
    /// `/plans`.
    Plans,
    /// `/plans/{plan}/forms`.
    Forms(&'p str),
    /// `/events/{id}/notifications`.
    Notifications(&'p str),
    /// `/integrations` (REST users only; see [`crate::catalog`]).
    Integrations,
    /// `/integrations/{id}`.
    Integration(&'p str),
}

impl<'p> Resource<'p> {
    /// The resource at `path`, if this module serves it.
    pub fn of(path: &'p str) -> Option<Self> {
        let rest = path.strip_prefix(API)?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        let named = |part: &&str| !part.is_empty();
        Some(match parts.as_slice() {
            ["people"] => Resource::People,
            ["people", name] if named(name) => Resource::Person(name),
            ["people", name, "devices"] if named(name) => Resource::Devices(name),
            ["groups"] => Resource::Groups,
            ["groups", name] if named(name) => Resource::Group(name),
            ["plans"] => Resource::Plans,
            ["plans", name, "forms"] if named(name) => Resource::Forms(name),
            ["events", id, "notifications"] if named(id) => Resource::Notifications(id),
            ["integrations"] => Resource::Integrations,
            ["integrations", id] if named(id) => Resource::Integration(id),
            _ => return None,
        })
    }
}

/// Answer a GET of `resource` for `caller`.
pub fn get(
    state: &State,
    caller: &Caller,
    resource: &Resource<'_>,
    path: &str,
    query: Option<&str>,
) -> http::Response<Body> {
    let paging = match Paging::parse(query) {
        Ok(paging) => paging,
        Err(message) => return http_util::error(StatusCode::BAD_REQUEST, message),
    };
    let policy = state.notifier.policy();
    let directory = &policy.directory;
    let missing = |what: &str| http_util::error(StatusCode::NOT_FOUND, what.to_owned());
    let name = |raw: &str| percent_decode(raw);
    match resource {
        Resource::People => paging.page(path, directory.people_json()),
        Resource::Person(target) => match directory.person_json(&name(target)) {
            Some(person) => http_util::json(StatusCode::OK, &person),
            None => missing(&format!("no person with targetName {}", name(target))),
        },
        Resource::Devices(target) => match directory.devices_json(&name(target)) {
            Some(devices) => paging.page(path, devices),
            None => missing(&format!("no person with targetName {}", name(target))),
        },
        Resource::Groups => paging.page(path, directory.groups_json()),
        Resource::Group(target) => match directory.group_json(&name(target)) {
            Some(group) => http_util::json(StatusCode::OK, &group),
            None => missing(&format!("no group with targetName {}", name(target))),
        },
        Resource::Plans => paging.page(path, directory.plans_json()),
        Resource::Forms(plan) => match directory.forms_json(&name(plan)) {
            Some(forms) => paging.page(path, forms),
            None => missing(&format!("no communication plan named {}", name(plan))),
        },
        Resource::Integrations | Resource::Integration(_) if !matches!(caller, Caller::User(_)) => {
            http_util::error(
                StatusCode::FORBIDDEN,
                "only REST users may read the integrations",
            )
        }
        Resource::Integrations => paging.page(
            path,
            crate::catalog::list_json(
                state
                    .config
                    .hosted
                    .iter()
                    .flat_map(|hosted| hosted.integrations.values().map(|i| &**i)),
            ),
        ),
        Resource::Integration(id) => match state
            .config
            .hosted
            .as_ref()
            .and_then(|hosted| hosted.integrations.get(*id))
        {
            Some(integration) => http_util::json(
                StatusCode::OK,
                &crate::catalog::integration_json(integration),
            ),
            None => missing(&format!("no integration with id {}", name(id))),
        },
        Resource::Notifications(id) => {
            let visible = match state.store.get(id) {
                Ok(event) => event.is_some_and(|event| caller.may_touch(&event)),
                Err(error) => return crate::rest::store_failure(&error),
            };
            if !visible {
                return missing(&format!("no event with id {id}"));
            }
            match state.notifier.list(id) {
                Ok(notifications) => paging.page(path, notifications),
                Err(error) => crate::rest::store_failure(&error),
            }
        }
    }
}

/// An event's `recipients` as the embedded xMatters list: each target with its
/// `recipientType` (PERSON, GROUP, or UNKNOWN when the directory does not know the name) and
/// its device filter.
pub fn recipients_list(recipients: &Value, directory: &Directory) -> Value {
    let data: Vec<Value> = directory::recipients_from(recipients)
        .iter()
        .map(|recipient| {
            let kind = if directory.person(&recipient.target_name).is_some() {
                "PERSON"
            } else if directory.group(&recipient.target_name).is_some() {
                "GROUP"
            } else {
                "UNKNOWN"
            };
            let mut value = directory::recipient_json(recipient);
            value["recipientType"] = Value::from(kind);
            value
        })
        .collect();
    json!({"count": data.len(), "total": data.len(), "data": data})
}

fn percent_decode(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

/// `offset` and `limit` of a list.
struct Paging {
    offset: usize,
    limit: usize,
}

impl Paging {
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut paging = Paging {
            offset: 0,
            limit: DEFAULT_LIMIT,
        };
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "offset" => paging.offset = crate::rest::parse_offset(&value)?,
                "limit" => paging.limit = crate::rest::parse_limit(&value)?,
                _ => {}
            }
        }
        Ok(paging)
    }

    /// The page of `all` this paging selects, with `links.self` and (while more remain)
    /// `links.next`.
    fn page(&self, path: &str, all: Vec<Value>) -> http::Response<Body> {
        let total = all.len();
        let data: Vec<Value> = all.into_iter().skip(self.offset).take(self.limit).collect();
        let link = |offset: usize| format!("{path}?offset={offset}&limit={}", self.limit);
        let mut links = json!({"self": link(self.offset)});
        let next = self.offset.saturating_add(data.len());
        if next < total {
            links["next"] = Value::from(link(next));
        }
        http_util::json(
            StatusCode::OK,
            &json!({"count": data.len(), "total": total, "data": data, "links": links}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_resources() {
        assert_eq!(Resource::of("/api/xm/1/people"), Some(Resource::People));
        assert_eq!(
            Resource::of("/api/xm/1/people/oncall/devices"),
            Some(Resource::Devices("oncall"))
        );
        assert_eq!(
            Resource::of("/api/xm/1/plans/Ops/forms"),
            Some(Resource::Forms("Ops"))
        );
        assert_eq!(
            Resource::of("/api/xm/1/events/e-1/notifications"),
            Some(Resource::Notifications("e-1"))
        );
        for other in [
            "/api/xm/1/events",
            "/api/xm/1/people/",
            "/api/xm/1/people//devices",
            "/api/xm/1/plans/Ops",
            "/api/xm/2/people",
        ] {
            assert_eq!(Resource::of(other), None, "{other}");
        }
    }

    #[test]
    fn paging_rejects_bad_values() {
        assert!(Paging::parse(Some("limit=0")).is_err());
        assert!(Paging::parse(Some("offset=x")).is_err());
        let paging = Paging::parse(Some("offset=1&limit=1")).expect("valid");
        assert_eq!((paging.offset, paging.limit), (1, 1));
    }
}
