//! What Berth's HTTP APIs (the agent's and the hub's) share: errors as
//! `application/problem+json`, one mapping from driver and store errors to statuses, JSON body
//! and query parsing whose errors name the offending field, and request metrics.

mod extract;
pub mod listen;
mod observe;
mod problem;

pub use extract::{Path, problems_only, require_json};
pub use observe::{RequestMetrics, assert_documents_exactly, method_not_allowed, no_route};
pub use problem::Problem;

/// Parses a JSON body with errors that name the field (`memory_limit: …`).
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    use serde::Deserialize as _;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::invalid_field(
            "body",
            "is empty; send a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let mut json = serde_json::Value::deserialize(&mut deserializer).map_err(|err| {
        let message = err.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message);
        Problem::invalid_field("body", format!("is not JSON: {message}"))
    })?;
    deserializer.end().map_err(|_| {
        Problem::invalid_field("body", "has more after its JSON value; send exactly one")
    })?;
    if !json.is_object() {
        return Err(Problem::invalid_field("body", "must be a JSON object"));
    }
    whole_numbers_as_integers(&mut json);
    serde_path_to_error::deserialize(json).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        let field = if path.is_empty() || path == "." {
            unknown_field(&message).unwrap_or_else(|| "body".to_owned())
        } else {
            path
        };
        Problem::invalid_field(field, message)
    })
}

/// JSON has one kind of number: `3.0` is the integer 3 to JSON Schema and to most clients'
/// encoders, so whole numbers written with a fraction are read as integers (fields that take
/// fractions read integers as well).
fn whole_numbers_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(number) => {
            if let Some(float) = number
                .as_f64()
                .filter(|_| !number.is_i64() && !number.is_u64())
                && float.fract() == 0.0
                && float.abs() < 9.007_199_254_740_992e15
            {
                *value = Value::from(float as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
}

/// serde names an unknown field only in its message: "unknown field `x`, expected …".
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// Parses a query string with errors that name the parameter; no query gives the defaults.
pub fn parse_query<T: serde::de::DeserializeOwned + Default>(
    raw: Option<String>,
) -> Result<T, Problem> {
    let Some(raw) = raw.filter(|raw| !raw.is_empty()) else {
        return Ok(T::default());
    };
    let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let field = err.path().to_string();
        let field = if field.is_empty() || field == "." {
            "query".to_owned()
        } else {
            field
        };
        Problem::invalid_field(field, err.inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default)]
        size: u32,
    }

    #[test]
    fn body_errors_name_the_field() {
        let field = |body: &str| parse_body::<Body>(body.as_bytes()).expect_err("refused");
        assert!(format!("{:?}", field("{\"size\": -1}")).contains("\"size\""));
        assert!(format!("{:?}", field("{\"colour\": 1}")).contains("\"colour\""));
        assert!(format!("{:?}", field("   ")).contains("\"body\""));
        assert_eq!(parse_body::<Body>(b"{\"size\": 3}").expect("valid").size, 3);
        assert!(format!("{:?}", field("{\"size\": 3} trailing")).contains("\"body\""));
        assert!(format!("{:?}", field("{\"size\": 3}{}")).contains("more after"));
        assert_eq!(
            parse_body::<Body>(b"{\"size\": 3}\n").expect("valid").size,
            3
        );
        assert_eq!(
            parse_body::<Body>(b"{\"size\": 3.0}").expect("whole").size,
            3
        );
        assert!(format!("{:?}", field("{\"size\": 3.5}")).contains("\"size\""));
        assert!(format!("{:?}", field("{\"size\": ")).contains("not JSON"));
        assert!(format!("{:?}", field("[3]")).contains("JSON object"));
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let err = parse_query::<Body>(Some("size=big".into())).expect_err("refused");
        assert!(format!("{err:?}").contains("\"size\""));
        assert_eq!(parse_query::<Body>(None).expect("defaults").size, 0);
    }
}
