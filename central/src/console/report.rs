//! The events report's search form: what the operator typed, turned into a store
//! [`Query`], and back into links for paging and live updates.
//!
//! Empty fields mean "any", as a browser submits every field of a form. The request id, status
//! and property filters mean exactly what they mean in the REST events report (they go through
//! [`crate::rest::parse_query`]); the time range is the console's own: `datetime-local` values,
//! read as UTC.
//!
//! What it does NOT do: read the store or render HTML.

use time::macros::format_description;
use time::PrimitiveDateTime;

use crate::store::Query;

/// Events per page of the report and of an activity stream.
pub const PAGE_SIZE: usize = 25;

/// The report's search form, as submitted (so it can be shown again as typed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportForm {
    /// `requestId`: the agent's request id.
    pub request_id: String,
    /// `status`: ACTIVE, SUSPENDED or TERMINATED.
    pub status: String,
    /// `propertyName`.
    pub property_name: String,
    /// `propertyValue`.
    pub property_value: String,
    /// `from`: created at or after (UTC, `YYYY-MM-DDTHH:MM[:SS]`).
    pub from: String,
    /// `to`: created before (UTC).
    pub to: String,
    /// `offset`: events skipped (paging).
    pub offset: usize,
    /// `after`: only events newer than this id (live updates).
    pub after: String,
}

impl ReportForm {
    /// Read the form from a query string; unknown fields are ignored.
    pub fn parse(raw: Option<&str>) -> Self {
        let mut form = Self::default();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let value = value.trim().to_owned();
            match key.as_ref() {
                "requestId" => form.request_id = value,
                "status" => form.status = value,
                "propertyName" => form.property_name = value,
                "propertyValue" => form.property_value = value,
                "from" => form.from = value,
                "to" => form.to = value,
                "offset" => form.offset = value.parse().unwrap_or(0),
                "after" => form.after = value,
                _ => {}
            }
        }
        form
    }

    /// The store query for one page, newest first, or a message saying which field is wrong.
    pub fn query(&self) -> Result<Query, String> {
        let mut query = crate::rest::parse_query(Some(&self.filled(false)))?;
        query.created_from_ms = utc_millis("from", &self.from)?;
        query.created_until_ms = utc_millis("to", &self.to)?;
        if let (Some(from), Some(to)) = (query.created_from_ms, query.created_until_ms) {
            if from >= to {
                return Err("`from` must be earlier than `to`".to_owned());
            }
        }
        query.newest_first = true;
        query.offset = self.offset;
        query.limit = PAGE_SIZE;
        Ok(query)
    }

    /// The query string of this search at `offset` (without `after`).
    pub fn link(&self, offset: usize) -> String {
        let mut link = self.filled(true);
        if offset > 0 {
            if !link.is_empty() {
                link.push('&');
            }
            link.push_str(&format!("offset={offset}"));
        }
        link
    }

    /// The filled-in fields as a query string: the filters REST knows, and the time range too
    /// when `with_range`.
    fn filled(&self, with_range: bool) -> String {
        let filters = [
            ("requestId", &self.request_id),
            ("status", &self.status),
            ("propertyName", &self.property_name),
            ("propertyValue", &self.property_value),
        ];
        let range = [("from", &self.from), ("to", &self.to)];
        let range = if with_range { &range[..] } else { &[] };
        let mut params = form_urlencoded::Serializer::new(String::new());
        for (name, value) in filters.iter().chain(range) {
            if !value.is_empty() {
                params.append_pair(name, value);
            }
        }
        params.finish()
    }
}

/// A `datetime-local` value (`YYYY-MM-DDTHH:MM`, seconds optional) read as UTC, in Unix
/// milliseconds; empty means no bound.
fn utc_millis(field: &str, value: &str) -> Result<Option<u64>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    let with_seconds = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let without = format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let parsed = PrimitiveDateTime::parse(value, with_seconds)
        .or_else(|_| PrimitiveDateTime::parse(value, without))
        .map_err(|_| {
            format!("`{field}` must be a date and time like 2024-05-01T13:30, got `{value}`")
        })?;
    let millis = parsed.assume_utc().unix_timestamp_nanos() / 1_000_000;
    u64::try_from(millis)
        .map(Some)
        .map_err(|_| format!("`{field}` must be after 1970, got `{value}`"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Status;

    #[test]
    fn empty_fields_mean_any_and_filters_carry_over() {
        let form = ReportForm::parse(Some(
            "requestId=&status=&propertyName=&propertyValue=&from=&to=&unknown=1",
        ));
        let query = form.query().expect("valid");
        assert_eq!(query.request_id, None);
        assert_eq!(query.status, None);
        assert!(query.newest_first);
        assert_eq!((query.offset, query.limit), (0, PAGE_SIZE));

        let form = ReportForm::parse(Some(
            "requestId=r+1&status=terminated&propertyName=Host%23en&propertyValue=db1\
             &from=2024-05-01T13:30&to=2024-05-01T13:31:30&offset=50",
        ));
        let query = form.query().expect("valid");
        assert_eq!(query.request_id.as_deref(), Some("r 1"));
        assert_eq!(query.status, Some(Status::Terminated));
        assert_eq!(query.property, Some(("Host".into(), "db1".into())));
        assert_eq!(query.created_from_ms, Some(1_714_570_200_000));
        assert_eq!(query.created_until_ms, Some(1_714_570_290_000));
        assert_eq!(query.offset, 50);

        let again = ReportForm::parse(Some(&form.link(75)));
        assert_eq!(again.offset, 75);
        assert_eq!(
            ReportForm {
                offset: 50,
                ..again
            },
            form
        );
    }

    #[test]
    fn bad_fields_are_named() {
        for (raw, field) in [
            ("status=paused", "status"),
            ("propertyName=Host", "propertyName"),
            ("from=yesterday", "`from`"),
            ("to=2024-13-01T00:00", "`to`"),
            ("from=2024-05-02T00:00&to=2024-05-01T00:00", "earlier"),
        ] {
            let error = ReportForm::parse(Some(raw)).query().expect_err(raw);
            assert!(error.contains(field), "{raw}: {error}");
        }
    }
}
