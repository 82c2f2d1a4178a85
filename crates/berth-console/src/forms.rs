//! Forms: one list of fields per form drives both the inputs the page shows (label, help, the
//! value typed so far, the error next to its field) and the JSON body handed to the API's
//! handler, so the console and the API cannot disagree about a field.

use std::collections::{BTreeMap, HashMap};

use axum::body::{Bytes, to_bytes};
use axum::extract::{FromRequest, Request};
use berth_http::Problem;
use serde_json::{Map, Value, json};

use super::text::Tr;

/// A submitted form (or query string): its pairs in order.
#[derive(Debug, Clone, Default)]
pub struct FormData(Vec<(String, String)>);

impl FormData {
    /// Parses `application/x-www-form-urlencoded` bytes.
    pub fn parse(bytes: &[u8]) -> Self {
        Self(
            form_urlencoded::parse(bytes)
                .map(|(key, value)| (key.into_owned(), value.into_owned()))
                .collect(),
        )
    }

    /// The first value of `name`, or the empty string.
    pub fn get(&self, name: &str) -> String {
        self.find(name).unwrap_or_default().to_owned()
    }

    /// The first value of `name`, if sent.
    pub fn find(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every value of `name`, in order (the checked boxes of a list).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// A form holding `pairs`, for pre-filling an edit form.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Self(pairs)
    }
}

impl<S: Send + Sync> FromRequest<S> for FormData {
    type Rejection = Problem;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        let bytes: Bytes = to_bytes(request.into_body(), 1 << 20)
            .await
            .map_err(|_| Problem::invalid_field("body", "is too large"))?;
        Ok(Self::parse(&bytes))
    }
}

/// How a field is typed, shown and turned into JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One line of text.
    Text,
    /// A size such as `4g` or `512m` (sent as text; the API parses it).
    Size,
    /// A whole number.
    Integer,
    /// A number with a fraction.
    Number,
    /// A checkbox.
    Flag,
    /// One of fixed values.
    Choice(&'static [&'static str]),
    /// One of values the page supplies (an id and its label); empty means none.
    Select,
    /// A secret: never shown; on edit, left empty it keeps what is stored.
    Secret,
    /// PEM text, pasted or read from a file by the page; a secret like [`Kind::Secret`].
    Pem,
    /// `KEY=VALUE` lines, sent as an object.
    Pairs,
}

/// One field of a form.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The API's name for it (also the input's name).
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// The form is refused without it.
    pub required: bool,
}

/// A shorthand for the field lists.
pub const fn field(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

/// A required field.
pub const fn required(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

/// An input as the template draws it.
#[derive(Debug, Clone)]
pub struct FieldView {
    /// Input name.
    pub name: &'static str,
    /// Input id, unique on the page (`{form}-{name}`).
    pub id: String,
    /// Label text.
    pub label: &'static str,
    /// Help text under the input, or empty.
    pub help: &'static str,
    /// `text`, `number`, `checkbox`, `select`, `password`, `pem` or `pairs`.
    pub input: &'static str,
    /// The value to show (never a secret's).
    pub value: String,
    /// The error next to the field.
    pub error: Option<String>,
    /// Choices: value, label, selected.
    pub options: Vec<(String, String, bool)>,
    /// Required.
    pub required: bool,
    /// Checked (checkboxes).
    pub checked: bool,
    /// For secrets on an edit form: whether one is stored (`set` / `not set`).
    pub stored: Option<bool>,
    /// The `step` of a number input.
    pub step: &'static str,
}

/// The error a refused form shows: next to its field when it names one of the form's fields,
/// else above the form.
#[derive(Debug, Clone, Default)]
pub struct Refusal {
    /// The field, when the error is one field's.
    pub field: Option<String>,
    /// What was wrong.
    pub message: String,
}

impl Refusal {
    /// The refusal a problem from the API describes, placed against `fields`.
    pub fn from_problem(problem: &Problem, fields: &[Field]) -> Self {
        let field = problem.field().and_then(|named| {
            let top = named.split(['.', '[']).next().unwrap_or(named);
            fields
                .iter()
                .find(|field| field.name == top)
                .map(|field| field.name.to_owned())
        });
        Self {
            field,
            message: problem.detail().to_owned(),
        }
    }
}

/// The error shown above the form: a refusal that names none of its fields.
pub fn form_error(refusal: Option<&Refusal>) -> Option<String> {
    refusal
        .filter(|refusal| refusal.field.is_none())
        .map(|refusal| refusal.message.clone())
}

/// 422 for a form shown again because it was refused, 200 otherwise.
pub fn form_status(refusal: Option<&Refusal>) -> axum::http::StatusCode {
    if refusal.is_some() {
        axum::http::StatusCode::UNPROCESSABLE_ENTITY
    } else {
        axum::http::StatusCode::OK
    }
}

/// [`views`] of a form with neither [`Kind::Select`] fields nor secrets.
pub fn simple_views(
    t: Tr,
    form: &str,
    fields: &[Field],
    values: &FormData,
    refusal: Option<&Refusal>,
) -> Vec<FieldView> {
    views(
        t,
        form,
        fields,
        values,
        &HashMap::new(),
        &HashMap::new(),
        refusal,
    )
}

/// The inputs of form `form` for `fields`, with the values in `values` (what was typed, or what is stored),
/// `choices` for [`Kind::Select`] fields, `stored` secrets, and `refusal`'s error.
pub fn views(
    t: Tr,
    form: &str,
    fields: &[Field],
    values: &FormData,
    choices: &HashMap<&str, Vec<(String, String)>>,
    stored: &HashMap<&str, bool>,
    refusal: Option<&Refusal>,
) -> Vec<FieldView> {
    fields
        .iter()
        .map(|field| {
            let value = values.get(field.name);
            let error = refusal
                .filter(|refusal| refusal.field.as_deref() == Some(field.name))
                .map(|refusal| refusal.message.clone());
            let (input, step) = match field.kind {
                Kind::Text | Kind::Size => ("text", ""),
                Kind::Integer => ("number", "1"),
                Kind::Number => ("number", "any"),
                Kind::Flag => ("checkbox", ""),
                Kind::Choice(_) | Kind::Select => ("select", ""),
                Kind::Secret => ("password", ""),
                Kind::Pem => ("pem", ""),
                Kind::Pairs => ("pairs", ""),
            };
            let options = match field.kind {
                Kind::Choice(values) => values
                    .iter()
                    .map(|option| ((*option).to_owned(), (*option).to_owned(), *option == value))
                    .collect(),
                Kind::Select => std::iter::once((String::new(), "—".to_owned()))
                    .chain(choices.get(field.name).cloned().unwrap_or_default())
                    .map(|(id, label)| {
                        let selected = id == value;
                        (id, label, selected)
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let secret = matches!(field.kind, Kind::Secret | Kind::Pem);
            FieldView {
                name: field.name,
                id: format!("{form}-{}", field.name.replace('.', "-")),
                label: t.get(&format!("field.{}", field.name)),
                help: t.find(&format!("help.{}", field.name)).unwrap_or(""),
                input,
                checked: field.kind == Kind::Flag && matches!(value.as_str(), "on" | "true"),
                value: if secret { String::new() } else { value },
                error,
                options,
                required: field.required,
                stored: if secret {
                    stored.get(field.name).copied()
                } else {
                    None
                },
                step,
            }
        })
        .collect()
}

/// The JSON body `form` describes. Empty optional fields are left out (so an update keeps
/// them); a secret is sent only when typed, or as `""` (cleared) when its `clear_` box is
/// ticked. A value of the wrong type is refused here, naming its field.
pub fn to_json(fields: &[Field], form: &FormData) -> Result<Value, Refusal> {
    let refuse = |field: &Field, message: String| Refusal {
        field: Some(field.name.to_owned()),
        message,
    };
    let mut body = Map::new();
    for field in fields {
        let raw = form.get(field.name);
        let text = raw.trim();
        if field.kind == Kind::Flag {
            body.insert(field.name.to_owned(), json!(matches!(text, "on" | "true")));
            continue;
        }
        if matches!(field.kind, Kind::Secret | Kind::Pem) {
            if form.find(&format!("clear_{}", field.name)).is_some() {
                body.insert(field.name.to_owned(), json!(""));
            } else if !text.is_empty() {
                body.insert(field.name.to_owned(), json!(raw.trim_end()));
            }
            continue;
        }
        if text.is_empty() {
            if field.required {
                return Err(refuse(field, format!("{}: is required", field.name)));
            }
            continue;
        }
        let value = match field.kind {
            Kind::Integer | Kind::Select => text.parse::<i64>().map(Value::from).map_err(|_| {
                refuse(
                    field,
                    format!("{}: {text:?} is not a whole number", field.name),
                )
            })?,
            Kind::Number => text
                .parse::<f64>()
                .ok()
                .filter(|number| number.is_finite())
                .map(Value::from)
                .ok_or_else(|| {
                    refuse(field, format!("{}: {text:?} is not a number", field.name))
                })?,
            Kind::Pairs => {
                let mut pairs = BTreeMap::new();
                for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
                    let Some((key, value)) = line.split_once('=') else {
                        return Err(refuse(
                            field,
                            format!("{}: {line:?} is not KEY=VALUE", field.name),
                        ));
                    };
                    pairs.insert(key.trim().to_owned(), value.trim().to_owned());
                }
                json!(pairs)
            }
            _ => json!(text),
        };
        insert_at(&mut body, field.name, value);
    }
    Ok(Value::Object(body))
}

/// Puts `value` at `name` in `body`; a dotted name (`serving.warmup.path`) goes into nested
/// objects, made as needed.
fn insert_at(body: &mut Map<String, Value>, name: &str, value: Value) {
    match name.split_once('.') {
        None => {
            body.insert(name.to_owned(), value);
        }
        Some((head, rest)) => {
            let inner = body
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(inner) = inner {
                insert_at(inner, rest, value);
            }
        }
    }
}

/// Sends `form`, as the JSON `fields` describe, to an API handler (`call` gets the body); the
/// refusal to show beside the form when the form or the handler refuses it.
pub async fn submit<T, Answer>(
    fields: &[Field],
    form: &FormData,
    call: impl FnOnce(Bytes) -> Answer,
) -> Result<T, Refusal>
where
    Answer: Future<Output = Result<T, Problem>>,
{
    let body = to_json(fields, form)?;
    call(Bytes::from(body.to_string()))
        .await
        .map_err(|problem| Refusal::from_problem(&problem, fields))
}

/// `KEY=VALUE` lines of a map, for pre-filling a [`Kind::Pairs`] field.
pub fn pairs_text(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[Field] = &[
        required("name", Kind::Text),
        field("count", Kind::Integer),
        field("cores", Kind::Number),
        field("public", Kind::Flag),
        field("password", Kind::Secret),
        field("ca_cert", Kind::Pem),
        field("labels", Kind::Pairs),
    ];

    #[test]
    fn forms_become_the_apis_json_and_refusals_name_the_field() {
        let form = FormData::parse(
            b"name=demo&count=3&cores=0.5&public=on&password=&clear_ca_cert=on&labels=zone%3Da%0Agpu%3Da100",
        );
        assert_eq!(
            to_json(FIELDS, &form).expect("valid"),
            json!({"name": "demo", "count": 3, "cores": 0.5, "public": true,
                "ca_cert": "", "labels": {"zone": "a", "gpu": "a100"}})
        );
        let missing = to_json(FIELDS, &FormData::parse(b"count=2")).expect_err("no name");
        assert_eq!(missing.field.as_deref(), Some("name"));
        let bad = to_json(FIELDS, &FormData::parse(b"name=x&count=two")).expect_err("count");
        assert_eq!(bad.field.as_deref(), Some("count"));
        assert!(bad.message.contains("\"two\""));
        let pairs = to_json(FIELDS, &FormData::parse(b"name=x&labels=zone")).expect_err("pairs");
        assert_eq!(pairs.field.as_deref(), Some("labels"));

        let problem = Problem::invalid_field("labels.zone", "bad");
        assert_eq!(
            Refusal::from_problem(&problem, FIELDS).field.as_deref(),
            Some("labels")
        );
        let elsewhere = Problem::invalid_field("spec_id", "bad");
        assert_eq!(Refusal::from_problem(&elsewhere, FIELDS).field, None);
    }

    #[test]
    fn inputs_keep_what_was_typed_but_never_a_secret() {
        let typed = FormData::parse(b"name=demo&count=x&password=hunter2&public=on");
        let refusal = Refusal {
            field: Some("count".into()),
            message: "count: not a number".into(),
        };
        let stored = HashMap::from([("password", true)]);
        let views = views(
            Tr::default(),
            "demo",
            FIELDS,
            &typed,
            &HashMap::new(),
            &stored,
            Some(&refusal),
        );
        assert_eq!(
            (views[0].id.as_str(), views[0].value.as_str()),
            ("demo-name", "demo")
        );
        assert_eq!(
            views[1].value, "x",
            "the refused value stays for correcting"
        );
        assert_eq!(views[1].error.as_deref(), Some("count: not a number"));
        assert!(views[3].checked);
        assert_eq!(views[4].value, "", "a secret is never sent back");
        assert_eq!(views[4].stored, Some(true));
        assert_eq!(views[5].stored, None);
    }
}
