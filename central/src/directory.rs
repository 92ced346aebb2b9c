//! The directory: people, their devices, groups, and communication plans with forms, as
//! `central.toml` declares them (`[[people]]`, `[[groups]]`, `[[plans]]`).
//!
//! It answers three questions: does a form exist and may this sender send it
//! ([`Directory::authorize`]), which devices does an event reach ([`Directory::resolve`]), and what
//! do the xMatters-shaped REST reads show ([`Directory::people_json`] and friends).
//!
//! What it deliberately does NOT do: store anything (the directory is configuration, reloaded as
//! a whole), deliver notifications (see [`crate::notify`]) or count them for flood control (see
//! [`crate::flood`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use server::exit::ConfigError;

/// A kind of device, with the xMatters names (`TEXT_PHONE` is SMS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeviceType {
    /// An email address.
    Email,
    /// A phone number that receives SMS.
    TextPhone,
    /// A phone number that receives voice calls.
    Voice,
    /// The xMatters mobile app (a push notification).
    MobileApp,
    /// A chat application (Slack, Teams, ...).
    ChatApp,
}

impl DeviceType {
    /// Every device type, for parsing and listing.
    pub const ALL: [DeviceType; 5] = [
        DeviceType::Email,
        DeviceType::TextPhone,
        DeviceType::Voice,
        DeviceType::MobileApp,
        DeviceType::ChatApp,
    ];

    /// The xMatters name (`EMAIL`, `TEXT_PHONE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::Email => "EMAIL",
            DeviceType::TextPhone => "TEXT_PHONE",
            DeviceType::Voice => "VOICE",
            DeviceType::MobileApp => "MOBILE_APP",
            DeviceType::ChatApp => "CHAT_APP",
        }
    }

    /// The type named `text` (case-insensitive; `SMS` is accepted for `TEXT_PHONE`).
    pub fn parse(text: &str) -> Option<Self> {
        let upper = text.trim().to_ascii_uppercase();
        if upper == "SMS" {
            return Some(DeviceType::TextPhone);
        }
        Self::ALL.into_iter().find(|kind| kind.as_str() == upper)
    }

    /// The JSON member xMatters uses for this device's address.
    fn address_member(self) -> &'static str {
        match self {
            DeviceType::Email => "emailAddress",
            DeviceType::TextPhone | DeviceType::Voice => "phoneNumber",
            DeviceType::MobileApp | DeviceType::ChatApp => "address",
        }
    }
}

impl fmt::Display for DeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One device of a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The device's name, unique per person ("Work Email").
    pub name: String,
    /// What kind of device it is.
    pub device_type: DeviceType,
    /// Where a notification goes: an email address, a phone number, a chat handle.
    pub address: String,
}

/// A person who can be notified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// The unique name (xMatters `targetName`).
    pub target_name: String,
    /// Given name.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
    /// Roles, which forms' sender permissions can name.
    pub roles: Vec<String>,
    /// The `targetName`s of the person's supervisors.
    pub supervisors: Vec<String>,
    /// The person's devices, in configured order.
    pub devices: Vec<Device>,
}

/// A named set of people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The unique name (xMatters `targetName`), shared with people's names.
    pub target_name: String,
    /// What the group is for.
    pub description: String,
    /// The `targetName`s of the members (people).
    pub members: Vec<String>,
}

/// A form of a communication plan: what an integration creates events from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    /// The form's name, unique within its plan.
    pub name: String,
    /// The property names the form defines (informational: events keep every property).
    pub properties: Vec<String>,
    /// Recipients used when an event names none.
    pub recipients: Vec<Recipient>,
    /// People (by `targetName` or agent user name) allowed to send the form.
    pub senders: Vec<String>,
    /// Roles whose holders may send the form.
    pub sender_roles: Vec<String>,
}

/// A communication plan: a named set of forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The plan's unique name.
    pub name: String,
    /// Its forms.
    pub forms: Vec<Form>,
}

/// One recipient of an event: a person or a group, optionally only some of its device types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The `targetName` of a person or group.
    pub target_name: String,
    /// Only these device types (empty: all).
    pub devices: Vec<DeviceType>,
}

/// A device an event reaches, with who it belongs to and through which recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reached {
    /// The person's `targetName`.
    pub person: String,
    /// The device.
    pub device: Device,
    /// The group the person was reached through, if any.
    pub via_group: Option<String>,
}

/// Why an event is refused for good: the agent dead-letters it and shows this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The named plan does not exist.
    #[error("no communication plan named `{0}`")]
    UnknownPlan(String),
    /// The named form does not exist (in the plan, when one is named).
    #[error("no form named `{form}`{}", plan.as_deref().map(|p| format!(" in plan `{p}`")).unwrap_or_default())]
    UnknownForm {
        /// The plan searched, if named.
        plan: Option<String>,
        /// The form asked for.
        form: String,
    },
    /// The sender may not send this form.
    #[error("sender `{sender}` does not have permission to send form `{form}` of plan `{plan}`")]
    NotPermitted {
        /// Who sent it (empty when the agent named nobody).
        sender: String,
        /// The plan.
        plan: String,
        /// The form.
        form: String,
    },
}

/// The whole directory. Cheap to query; replaced whole on reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    people: BTreeMap<String, Person>,
    groups: BTreeMap<String, Group>,
    plans: Vec<Plan>,
}

/// What [`Directory::authorize`] found: the plan and form the event uses.
#[derive(Debug, Clone, Copy)]
pub struct FormRef<'d> {
    /// The plan holding the form.
    pub plan: &'d Plan,
    /// The form.
    pub form: &'d Form,
}

impl Directory {
    /// Whether any plan is configured. Without plans the central checks no forms (a plain event
    /// sink, as before plans existed).
    pub fn has_plans(&self) -> bool {
        !self.plans.is_empty()
    }

    /// Whether nobody can be notified (no people): resolution can be skipped.
    pub fn is_empty(&self) -> bool {
        self.people.is_empty()
    }

    /// The person called `target_name`.
    pub fn person(&self, target_name: &str) -> Option<&Person> {
        self.people.get(target_name)
    }

    /// Check that `form` (of `plan`, if named) exists and that `sender` may send it.
    ///
    /// `Ok(None)` when no check applies: the event names no form, or no plans are configured.
    /// A sender may send when the form lists its name, or it is a person holding one of the
    /// form's sender roles; a form with neither list is open to every sender.
    pub fn authorize(
        &self,
        plan: Option<&str>,
        form: Option<&str>,
        sender: Option<&str>,
    ) -> Result<Option<FormRef<'_>>, Refusal> {
        let Some(form_name) = form else {
            return Ok(None);
        };
        if !self.has_plans() {
            return Ok(None);
        }
        let candidates: Vec<&Plan> = match plan {
            Some(name) => vec![self
                .plans
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| Refusal::UnknownPlan(name.to_owned()))?],
            None => self.plans.iter().collect(),
        };
        let found = candidates.into_iter().find_map(|plan| {
            plan.forms
                .iter()
                .find(|f| f.name == form_name)
                .map(|form| FormRef { plan, form })
        });
        let Some(found) = found else {
            return Err(Refusal::UnknownForm {
                plan: plan.map(str::to_owned),
                form: form_name.to_owned(),
            });
        };
        let form = found.form;
        if form.senders.is_empty() && form.sender_roles.is_empty() {
            return Ok(Some(found));
        }
        let sender = sender.unwrap_or("");
        let by_name = form.senders.iter().any(|name| name == sender);
        let by_role = self.people.get(sender).is_some_and(|person| {
            person
                .roles
                .iter()
                .any(|role| form.sender_roles.contains(role))
        });
        if by_name || by_role {
            Ok(Some(found))
        } else {
            Err(Refusal::NotPermitted {
                sender: sender.to_owned(),
                plan: found.plan.name.clone(),
                form: form.name.clone(),
            })
        }
    }

    /// The devices `recipients` reach: people directly, groups through their members, each
    /// narrowed to the recipient's device types. A device is reached once even when several
    /// recipients name it (the first one counts); unknown names reach nobody.
    pub fn resolve(&self, recipients: &[Recipient]) -> Vec<Reached> {
        let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
        let mut reached = Vec::new();
        let mut reach = |person: &'_ Person, filter: &[DeviceType], via: Option<&str>| {
            for device in &person.devices {
                if !filter.is_empty() && !filter.contains(&device.device_type) {
                    continue;
                }
                if seen.insert((person.target_name.clone(), device.name.clone())) {
                    reached.push(Reached {
                        person: person.target_name.clone(),
                        device: device.clone(),
                        via_group: via.map(str::to_owned),
                    });
                }
            }
        };
        for recipient in recipients {
            if let Some(person) = self.people.get(&recipient.target_name) {
                reach(person, &recipient.devices, None);
            } else if let Some(group) = self.groups.get(&recipient.target_name) {
                for member in &group.members {
                    if let Some(person) = self.people.get(member) {
                        reach(person, &recipient.devices, Some(&group.target_name));
                    }
                }
            }
        }
        reached
    }

    /// The group called `target_name`.
    pub fn group(&self, target_name: &str) -> Option<&Group> {
        self.groups.get(target_name)
    }

    /// All people, in the shape of `GET /api/xm/1/people` items.
    pub fn people_json(&self) -> Vec<Value> {
        self.people.values().map(person_json).collect()
    }

    /// One person by `targetName`.
    pub fn person_json(&self, target_name: &str) -> Option<Value> {
        self.people.get(target_name).map(person_json)
    }

    /// A person's devices, in the shape of `GET /api/xm/1/people/{id}/devices` items.
    pub fn devices_json(&self, target_name: &str) -> Option<Vec<Value>> {
        let person = self.people.get(target_name)?;
        Some(
            person
                .devices
                .iter()
                .map(|device| device_json(person, device))
                .collect(),
        )
    }

    /// All groups, in the shape of `GET /api/xm/1/groups` items.
    pub fn groups_json(&self) -> Vec<Value> {
        self.groups.values().map(group_json).collect()
    }

    /// One group by `targetName`.
    pub fn group_json(&self, target_name: &str) -> Option<Value> {
        self.groups.get(target_name).map(group_json)
    }

    /// All plans, in the shape of `GET /api/xm/1/plans` items.
    pub fn plans_json(&self) -> Vec<Value> {
        self.plans.iter().map(plan_json).collect()
    }

    /// The forms of plan `name`, in the shape of `GET /api/xm/1/plans/{plan}/forms` items.
    pub fn forms_json(&self, plan: &str) -> Option<Vec<Value>> {
        let plan = self.plans.iter().find(|p| p.name == plan)?;
        Some(
            plan.forms
                .iter()
                .map(|form| form_json(plan, form))
                .collect(),
        )
    }
}

fn person_json(person: &Person) -> Value {
    json!({
        "id": person.target_name,
        "targetName": person.target_name,
        "recipientType": "PERSON",
        "firstName": person.first_name,
        "lastName": person.last_name,
        "status": "ACTIVE",
        "roles": list(person.roles.iter().map(|name| json!({"name": name})).collect()),
        "supervisors": list(person.supervisors.iter()
            .map(|name| json!({"id": name, "targetName": name, "recipientType": "PERSON"}))
            .collect()),
        "links": {"self": format!("/api/xm/1/people/{}", person.target_name)},
    })
}

fn device_json(person: &Person, device: &Device) -> Value {
    let mut value = json!({
        "id": format!("{}|{}", person.target_name, device.name),
        "name": device.name,
        "targetName": format!("{}|{}", person.target_name, device.name),
        "recipientType": "DEVICE",
        "deviceType": device.device_type.as_str(),
        "status": "ACTIVE",
        "owner": {"id": person.target_name, "targetName": person.target_name},
    });
    value[device.device_type.address_member()] = Value::from(device.address.as_str());
    value
}

fn group_json(group: &Group) -> Value {
    json!({
        "id": group.target_name,
        "targetName": group.target_name,
        "recipientType": "GROUP",
        "status": "ACTIVE",
        "description": group.description,
        "members": list(group.members.iter()
            .map(|name| json!({"id": name, "targetName": name, "recipientType": "PERSON"}))
            .collect()),
        "links": {"self": format!("/api/xm/1/groups/{}", group.target_name)},
    })
}

fn plan_json(plan: &Plan) -> Value {
    json!({
        "id": plan.name,
        "name": plan.name,
        "planType": "USER",
        "enabled": true,
        "links": {"self": format!("/api/xm/1/plans/{}", plan.name)},
    })
}

fn form_json(plan: &Plan, form: &Form) -> Value {
    json!({
        "id": format!("{}|{}", plan.name, form.name),
        "name": form.name,
        "plan": {"id": plan.name, "name": plan.name},
        "properties": list(form.properties.iter().map(|name| json!({"name": name})).collect()),
        "recipients": list(form.recipients.iter().map(recipient_json).collect()),
        "senderPermissions": {"people": form.senders, "roles": form.sender_roles},
    })
}

/// A recipient as xMatters writes one: `{targetName, devices?}`.
pub fn recipient_json(recipient: &Recipient) -> Value {
    let mut value = json!({"targetName": recipient.target_name});
    if !recipient.devices.is_empty() {
        value["devices"] = recipient
            .devices
            .iter()
            .map(|kind| Value::from(kind.as_str()))
            .collect();
    }
    value
}

/// An embedded xMatters list: `{count, total, data}`.
fn list(data: Vec<Value>) -> Value {
    json!({"count": data.len(), "total": data.len(), "data": data})
}

/// Read an event's `recipients` as xMatters accepts them: an array of `targetName` strings or
/// `{targetName, devices?}` objects, or one comma-separated string. Members it cannot read are
/// skipped (an event is never refused for its recipients).
pub fn recipients_from(value: &Value) -> Vec<Recipient> {
    let named = |name: &str| {
        let name = name.trim();
        (!name.is_empty()).then(|| Recipient {
            target_name: name.to_owned(),
            devices: Vec::new(),
        })
    };
    match value {
        Value::String(text) => text.split(',').filter_map(named).collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::String(name) => named(name),
                Value::Object(fields) => {
                    let mut recipient = named(fields.get("targetName")?.as_str()?)?;
                    recipient.devices = fields
                        .get("devices")
                        .and_then(Value::as_array)
                        .map(|kinds| {
                            kinds
                                .iter()
                                .filter_map(|kind| match kind {
                                    Value::String(name) => DeviceType::parse(name),
                                    Value::Object(device) => device
                                        .get("deviceType")
                                        .and_then(Value::as_str)
                                        .and_then(DeviceType::parse),
                                    _ => None,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    Some(recipient)
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `[[people]]` as written in `central.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPerson {
    target_name: String,
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    last_name: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    supervisors: Vec<String>,
    #[serde(default)]
    devices: Vec<RawDevice>,
}

/// `[[people.devices]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    name: String,
    device_type: DeviceType,
    address: String,
}

/// `[[groups]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    target_name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    members: Vec<String>,
}

/// `[[plans]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    name: String,
    #[serde(default)]
    forms: Vec<RawForm>,
}

/// `[[plans.forms]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForm {
    name: String,
    #[serde(default)]
    properties: Vec<String>,
    #[serde(default)]
    recipients: Vec<RawRecipient>,
    #[serde(default)]
    senders: Vec<String>,
    #[serde(default)]
    sender_roles: Vec<String>,
}

/// A form's default recipient: a `targetName`, or `{ target_name, devices }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawRecipient {
    /// Just the name: every device.
    Name(String),
    /// A name and the device types to use.
    Filtered {
        /// The person or group.
        target_name: String,
        /// The device types.
        #[serde(default)]
        devices: Vec<DeviceType>,
    },
}

/// The directory tables of a config file, before validation.
#[derive(Debug, Default)]
pub struct RawDirectory {
    /// `[[people]]`.
    pub people: Vec<RawPerson>,
    /// `[[groups]]`.
    pub groups: Vec<RawGroup>,
    /// `[[plans]]`.
    pub plans: Vec<RawPlan>,
}

impl RawDirectory {
    /// Validate: names unique and non-empty, device names unique per person, group members,
    /// supervisors and form recipients known. Errors name `file` and the key.
    pub fn validate(self, file: &str) -> Result<Directory, ConfigError> {
        let mut directory = Directory::default();
        let fail = |key: String, reason: String| ConfigError::new(file, key, reason);
        for (index, raw) in self.people.into_iter().enumerate() {
            let key = format!("people[{index}]");
            if raw.target_name.trim().is_empty() {
                return Err(fail(
                    format!("{key}.target_name"),
                    "must not be empty".into(),
                ));
            }
            let mut devices: Vec<Device> = Vec::new();
            for (at, device) in raw.devices.into_iter().enumerate() {
                let device_key = format!("{key}.devices[{at}]");
                if device.name.trim().is_empty() || device.address.trim().is_empty() {
                    return Err(fail(
                        device_key,
                        "`name` and `address` must not be empty".into(),
                    ));
                }
                if devices.iter().any(|known| known.name == device.name) {
                    return Err(fail(
                        format!("{device_key}.name"),
                        format!("device `{}` is configured twice", device.name),
                    ));
                }
                devices.push(Device {
                    name: device.name,
                    device_type: device.device_type,
                    address: device.address,
                });
            }
            let person = Person {
                target_name: raw.target_name,
                first_name: raw.first_name,
                last_name: raw.last_name,
                roles: raw.roles,
                supervisors: raw.supervisors,
                devices,
            };
            if directory.people.contains_key(&person.target_name) {
                return Err(fail(
                    format!("{key}.target_name"),
                    format!("person `{}` is configured twice", person.target_name),
                ));
            }
            directory.people.insert(person.target_name.clone(), person);
        }
        for (index, person) in directory.people.values().enumerate() {
            if let Some(unknown) = person
                .supervisors
                .iter()
                .find(|name| !directory.people.contains_key(*name))
            {
                return Err(fail(
                    format!("people[{index}].supervisors"),
                    format!("`{unknown}` is not a configured person"),
                ));
            }
        }
        for (index, raw) in self.groups.into_iter().enumerate() {
            let key = format!("groups[{index}]");
            let name = raw.target_name;
            if name.trim().is_empty() {
                return Err(fail(
                    format!("{key}.target_name"),
                    "must not be empty".into(),
                ));
            }
            if directory.groups.contains_key(&name) || directory.people.contains_key(&name) {
                return Err(fail(
                    format!("{key}.target_name"),
                    format!("`{name}` already names a person or group"),
                ));
            }
            if let Some(unknown) = raw
                .members
                .iter()
                .find(|member| !directory.people.contains_key(*member))
            {
                return Err(fail(
                    format!("{key}.members"),
                    format!("`{unknown}` is not a configured person"),
                ));
            }
            directory.groups.insert(
                name.clone(),
                Group {
                    target_name: name,
                    description: raw.description,
                    members: raw.members,
                },
            );
        }
        for (index, raw) in self.plans.into_iter().enumerate() {
            let key = format!("plans[{index}]");
            if raw.name.trim().is_empty() {
                return Err(fail(format!("{key}.name"), "must not be empty".into()));
            }
            if directory.plans.iter().any(|plan| plan.name == raw.name) {
                return Err(fail(
                    format!("{key}.name"),
                    format!("plan `{}` is configured twice", raw.name),
                ));
            }
            let mut forms: Vec<Form> = Vec::new();
            for (at, form) in raw.forms.into_iter().enumerate() {
                let form_key = format!("{key}.forms[{at}]");
                if form.name.trim().is_empty() || forms.iter().any(|f| f.name == form.name) {
                    return Err(fail(
                        format!("{form_key}.name"),
                        format!("form name `{}` is empty or used twice", form.name),
                    ));
                }
                let mut recipients = Vec::new();
                for recipient in form.recipients {
                    let recipient = match recipient {
                        RawRecipient::Name(target_name) => Recipient {
                            target_name,
                            devices: Vec::new(),
                        },
                        RawRecipient::Filtered {
                            target_name,
                            devices,
                        } => Recipient {
                            target_name,
                            devices,
                        },
                    };
                    let known = directory.people.contains_key(&recipient.target_name)
                        || directory.groups.contains_key(&recipient.target_name);
                    if !known {
                        return Err(fail(
                            format!("{form_key}.recipients"),
                            format!(
                                "`{}` is not a configured person or group",
                                recipient.target_name
                            ),
                        ));
                    }
                    recipients.push(recipient);
                }
                forms.push(Form {
                    name: form.name,
                    properties: form.properties,
                    recipients,
                    senders: form.senders,
                    sender_roles: form.sender_roles,
                });
            }
            directory.plans.push(Plan {
                name: raw.name,
                forms,
            });
        }
        Ok(directory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn directory() -> Directory {
        let raw: toml::Value = toml::from_str(
            r#"
            [[people]]
            target_name = "oncall"
            roles = ["Responder"]
            devices = [
              { name = "Work Email", device_type = "EMAIL", address = "oncall@example.com" },
              { name = "Mobile", device_type = "TEXT_PHONE", address = "+15550100" },
            ]
            [[people]]
            target_name = "lead"
            supervisors = ["oncall"]
            roles = ["Sender"]
            devices = [{ name = "Voice", device_type = "VOICE", address = "+15550101" }]
            [[groups]]
            target_name = "ops"
            members = ["oncall", "lead"]
            [[plans]]
            name = "Ops"
            [[plans.forms]]
            name = "Alert"
            recipients = ["ops"]
            senders = ["svc"]
            sender_roles = ["Sender"]
            [[plans.forms]]
            name = "Open"
            "#,
        )
        .expect("toml");
        raw_directory(&raw).validate("test.toml").expect("valid")
    }

    fn raw_directory(value: &toml::Value) -> RawDirectory {
        let take = |name: &str| {
            value
                .get(name)
                .cloned()
                .unwrap_or(toml::Value::Array(vec![]))
        };
        RawDirectory {
            people: take("people").try_into().expect("people"),
            groups: take("groups").try_into().expect("groups"),
            plans: take("plans").try_into().expect("plans"),
        }
    }

    fn names(reached: &[Reached]) -> Vec<String> {
        reached
            .iter()
            .map(|r| format!("{}/{}", r.person, r.device.name))
            .collect()
    }

    #[test]
    fn groups_and_device_filters_resolve_to_devices_once() {
        let directory = directory();
        let reached = directory.resolve(&recipients_from(&json!(["ops"])));
        assert_eq!(
            names(&reached),
            ["oncall/Work Email", "oncall/Mobile", "lead/Voice"]
        );
        assert_eq!(reached[0].via_group.as_deref(), Some("ops"));

        let filtered = directory.resolve(&recipients_from(
            &json!([{"targetName": "ops", "devices": ["TEXT_PHONE", {"deviceType": "VOICE"}]}]),
        ));
        assert_eq!(names(&filtered), ["oncall/Mobile", "lead/Voice"]);

        let twice = directory.resolve(&recipients_from(&json!("oncall, ops,nobody")));
        assert_eq!(
            names(&twice),
            ["oncall/Work Email", "oncall/Mobile", "lead/Voice"]
        );
        assert_eq!(twice[0].via_group, None, "named directly first");
        assert!(directory.resolve(&recipients_from(&json!(42))).is_empty());
    }

    #[test]
    fn sender_permissions_by_name_and_role() {
        let directory = directory();
        assert!(directory
            .authorize(None, Some("Alert"), Some("svc"))
            .is_ok());
        assert!(directory
            .authorize(Some("Ops"), Some("Alert"), Some("lead"))
            .is_ok());
        let refused = directory
            .authorize(None, Some("Alert"), Some("oncall"))
            .expect_err("no permission");
        assert!(refused
            .to_string()
            .contains("`oncall` does not have permission"));
        assert!(matches!(
            directory.authorize(Some("Nope"), Some("Alert"), Some("svc")),
            Err(Refusal::UnknownPlan(_))
        ));
        assert!(matches!(
            directory.authorize(None, Some("Missing"), Some("svc")),
            Err(Refusal::UnknownForm { .. })
        ));
        assert!(directory.authorize(None, Some("Open"), None).is_ok());
        assert!(directory
            .authorize(None, None, None)
            .expect("no form")
            .is_none());
        assert!(Directory::default()
            .authorize(None, Some("Anything"), None)
            .expect("no plans: no check")
            .is_none());
    }

    #[test]
    fn bad_directories_name_the_key() {
        let bad = [
            (
                "[[groups]]\ntarget_name = \"g\"\nmembers = [\"ghost\"]\n",
                "groups[0].members",
            ),
            (
                "[[people]]\ntarget_name = \"p\"\n[[people]]\ntarget_name = \"p\"\n",
                "people[1].target_name",
            ),
            (
                "[[plans]]\nname = \"P\"\n[[plans.forms]]\nname = \"F\"\nrecipients = [\"x\"]\n",
                "plans[0].forms[0].recipients",
            ),
            (
                "[[people]]\ntarget_name = \"p\"\ndevices = [{name = \"a\", device_type = \"EMAIL\", address = \"\"}]\n",
                "people[0].devices[0]",
            ),
        ];
        for (text, key) in bad {
            let value: toml::Value = toml::from_str(text).expect("toml");
            let error = raw_directory(&value).validate("test.toml").expect_err(text);
            assert_eq!(error.key, key, "{text}");
        }
    }

    proptest! {
        /// Whatever the recipients, every reached device belongs to the person it names, passes
        /// the recipient's filter, and appears once.
        #[test]
        fn resolution_is_sound(picks in proptest::collection::vec((0usize..4, proptest::collection::vec(0usize..5, 0..3)), 0..6)) {
            let directory = directory();
            let targets = ["oncall", "lead", "ops", "ghost"];
            let recipients: Vec<Recipient> = picks.iter().map(|(target, kinds)| Recipient {
                target_name: targets[*target].to_owned(),
                devices: kinds.iter().map(|k| DeviceType::ALL[*k]).collect(),
            }).collect();
            let reached = directory.resolve(&recipients);
            let mut seen = BTreeSet::new();
            for r in &reached {
                let person = directory.person(&r.person).expect("a known person");
                prop_assert!(person.devices.contains(&r.device));
                prop_assert!(seen.insert((r.person.clone(), r.device.name.clone())));
                let allowed = recipients.iter().any(|rec| {
                    let names_person = rec.target_name == r.person
                        || directory.groups.get(&rec.target_name).is_some_and(|g| g.members.contains(&r.person));
                    names_person && (rec.devices.is_empty() || rec.devices.contains(&r.device.device_type))
                });
                prop_assert!(allowed);
            }
        }
    }
}
