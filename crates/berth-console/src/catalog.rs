//! Specs and images: everyone reads the catalog; admins create, edit and delete entries, through
//! the API's handlers.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use berth_http::Path;
use berth_http::Problem;
use berth_store::catalog::{self, Image, Spec};

use super::forms::{
    Field, FieldView, FormData, Kind, Refusal, field, form_error, form_status, required,
    simple_views, submit, views,
};
use super::session::{Visitor, admin_only};
use super::text::Tr;
use super::{Chrome, human_bytes, problem_page, rendered, see_other, size_text};
use berth_hub::api;
use berth_hub::state::HubState;

type Shared = State<Arc<HubState>>;

const SPEC_FIELDS: &[Field] = &[
    required("name", Kind::Text),
    required("cpu_cores", Kind::Number),
    required("memory", Kind::Size),
    field("system_disk", Kind::Size),
    field("data_disk", Kind::Size),
    field("gpu_count", Kind::Integer),
    field("memory_split", Kind::Flag),
    field("gpu_memory_gb", Kind::Integer),
];

const IMAGE_FIELDS: &[Field] = &[
    required("name", Kind::Text),
    required("reference", Kind::Text),
    field("description", Kind::Text),
];

/// A spec as a table row.
#[derive(Debug, Clone)]
pub struct SpecRow {
    id: i64,
    name: String,
    cpu: String,
    memory: String,
    disks: String,
    gpus: String,
}

fn spec_row(spec: &Spec) -> SpecRow {
    let size = |bytes: Option<i64>| bytes.map_or_else(|| "—".to_owned(), human_bytes);
    SpecRow {
        id: spec.id,
        name: spec.name.clone(),
        cpu: format!("{:.2}", spec.cpu_millis as f64 / 1000.0),
        memory: human_bytes(spec.memory_bytes),
        disks: format!(
            "{} / {}",
            size(spec.system_disk_bytes),
            size(spec.data_disk_bytes)
        ),
        gpus: if spec.memory_split {
            format!("{} GB slice", spec.gpu_memory_gb)
        } else {
            spec.gpu_count.to_string()
        },
    }
}

#[derive(Template)]
#[template(path = "console/catalog.html")]
struct CatalogPage {
    t: Tr,
    chrome: Chrome,
    specs: Vec<SpecRow>,
    images: Vec<Image>,
    spec_fields: Vec<FieldView>,
    image_fields: Vec<FieldView>,
    spec_error: Option<String>,
    image_error: Option<String>,
    spec_open: bool,
    image_open: bool,
}

/// Which form of the catalog page was refused, with what was typed.
enum Refused<'a> {
    Nothing,
    Spec(&'a FormData, &'a Refusal),
    Image(&'a FormData, &'a Refusal),
}

async fn catalog_page(state: &HubState, visitor: &Visitor, refused: Refused<'_>) -> Response {
    let loaded = async {
        let mut connection = state.store.acquire().await?;
        let specs = catalog::list_specs(&mut connection).await?;
        let images = catalog::list_images(&mut connection).await?;
        Ok::<_, Problem>((specs, images))
    };
    let (specs, images) = match loaded.await {
        Ok(found) => found,
        Err(problem) => return problem_page(visitor, "catalog", &problem),
    };
    let empty = FormData::default();
    let (spec_values, spec_refusal, image_values, image_refusal) = match refused {
        Refused::Nothing => (&empty, None, &empty, None),
        Refused::Spec(values, refusal) => (values, Some(refusal), &empty, None),
        Refused::Image(values, refusal) => (&empty, None, values, Some(refusal)),
    };
    let top = |refusal: Option<&Refusal>| {
        refusal
            .filter(|refusal| refusal.field.is_none())
            .map(|refusal| refusal.message.clone())
    };
    let status = if spec_refusal.is_some() || image_refusal.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let none = HashMap::new();
    rendered(
        status,
        &CatalogPage {
            t: visitor.t,
            chrome: visitor.chrome("catalog"),
            specs: specs.iter().map(spec_row).collect(),
            images,
            spec_fields: views(
                visitor.t,
                "spec",
                SPEC_FIELDS,
                spec_values,
                &none,
                &HashMap::new(),
                spec_refusal,
            ),
            image_fields: views(
                visitor.t,
                "image",
                IMAGE_FIELDS,
                image_values,
                &none,
                &HashMap::new(),
                image_refusal,
            ),
            spec_error: top(spec_refusal),
            image_error: top(image_refusal),
            spec_open: spec_refusal.is_some(),
            image_open: image_refusal.is_some(),
        },
    )
}

/// `GET /catalog`.
pub async fn page(State(state): Shared, visitor: Visitor) -> Response {
    catalog_page(&state, &visitor, Refused::Nothing).await
}

/// `POST /catalog/specs`.
pub async fn create_spec(State(state): Shared, visitor: Visitor, form: FormData) -> Response {
    let created = submit(SPEC_FIELDS, &form, |body| {
        api::catalog::create_spec(State(Arc::clone(&state)), visitor.as_user(), body)
    })
    .await;
    match created {
        Ok(_) => see_other("/catalog"),
        Err(refusal) => catalog_page(&state, &visitor, Refused::Spec(&form, &refusal)).await,
    }
}

/// `POST /catalog/images`.
pub async fn create_image(State(state): Shared, visitor: Visitor, form: FormData) -> Response {
    let created = submit(IMAGE_FIELDS, &form, |body| {
        api::catalog::create_image(State(Arc::clone(&state)), visitor.as_user(), body)
    })
    .await;
    match created {
        Ok(_) => see_other("/catalog"),
        Err(refusal) => catalog_page(&state, &visitor, Refused::Image(&form, &refusal)).await,
    }
}

#[derive(Template)]
#[template(path = "console/catalog_edit.html")]
struct EditPage {
    t: Tr,
    chrome: Chrome,
    action: String,
    heading: String,
    fields: Vec<FieldView>,
    form_error: Option<String>,
}

fn edit_page(
    visitor: &Visitor,
    action: String,
    heading: String,
    fields: &[Field],
    values: &FormData,
    refusal: Option<&Refusal>,
) -> Response {
    let status = form_status(refusal);
    rendered(
        status,
        &EditPage {
            t: visitor.t,
            chrome: visitor.chrome("catalog"),
            action,
            heading,
            fields: simple_views(visitor.t, "entry", fields, values, refusal),
            form_error: form_error(refusal),
        },
    )
}

fn spec_values(spec: &Spec) -> FormData {
    let bytes = |value: Option<i64>| value.map(size_text).unwrap_or_default();
    FormData::from_pairs(vec![
        ("name".into(), spec.name.clone()),
        (
            "cpu_cores".into(),
            (spec.cpu_millis as f64 / 1000.0).to_string(),
        ),
        ("memory".into(), size_text(spec.memory_bytes)),
        ("system_disk".into(), bytes(spec.system_disk_bytes)),
        ("data_disk".into(), bytes(spec.data_disk_bytes)),
        ("gpu_count".into(), spec.gpu_count.to_string()),
        (
            "memory_split".into(),
            if spec.memory_split { "on" } else { "" }.into(),
        ),
        ("gpu_memory_gb".into(), spec.gpu_memory_gb.to_string()),
    ])
}

/// The catalog entry a `/catalog/{kind}/{id}` path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Spec,
    Image,
}

impl Entry {
    fn parse(kind: &str) -> Result<Self, Problem> {
        match kind {
            "specs" => Ok(Self::Spec),
            "images" => Ok(Self::Image),
            _ => Err(Problem::new(
                StatusCode::NOT_FOUND,
                format!("the catalog has no {kind:?}"),
            )),
        }
    }

    fn fields(self) -> &'static [Field] {
        match self {
            Self::Spec => SPEC_FIELDS,
            Self::Image => IMAGE_FIELDS,
        }
    }

    fn path(self, id: i64) -> String {
        match self {
            Self::Spec => format!("/catalog/specs/{id}"),
            Self::Image => format!("/catalog/images/{id}"),
        }
    }

    fn heading(self, t: Tr) -> &'static str {
        match self {
            Self::Spec => t.get("catalog.edit_spec"),
            Self::Image => t.get("catalog.edit_image"),
        }
    }

    /// The stored entry's name and its values as form values.
    async fn stored(self, state: &HubState, id: i64) -> Result<(String, FormData), Problem> {
        let mut connection = state.store.acquire().await?;
        Ok(match self {
            Self::Spec => {
                let spec = catalog::get_spec(&mut connection, id).await?;
                (spec.name.clone(), spec_values(&spec))
            }
            Self::Image => {
                let image = catalog::get_image(&mut connection, id).await?;
                let values = FormData::from_pairs(vec![
                    ("name".into(), image.name.clone()),
                    ("reference".into(), image.reference),
                    ("description".into(), image.description),
                ]);
                (image.name, values)
            }
        })
    }
}

/// `GET /catalog/{specs|images}/{id}` (admins): the edit form.
pub async fn edit_form(
    State(state): Shared,
    visitor: Visitor,
    Path((kind, id)): Path<(String, i64)>,
) -> Response {
    if let Some(refused) = admin_only(&visitor, "catalog") {
        return refused;
    }
    let stored = match Entry::parse(&kind) {
        Ok(entry) => entry.stored(&state, id).await.map(|stored| (entry, stored)),
        Err(problem) => Err(problem),
    };
    match stored {
        Ok((entry, (name, values))) => edit_page(
            &visitor,
            entry.path(id),
            format!("{} {name}", entry.heading(visitor.t)),
            entry.fields(),
            &values,
            None,
        ),
        Err(problem) => problem_page(&visitor, "catalog", &problem),
    }
}

/// `POST /catalog/{specs|images}/{id}`: saves the edit form through the API.
pub async fn update(
    State(state): Shared,
    visitor: Visitor,
    Path((kind, id)): Path<(String, i64)>,
    form: FormData,
) -> Response {
    let entry = match Entry::parse(&kind) {
        Ok(entry) => entry,
        Err(problem) => return problem_page(&visitor, "catalog", &problem),
    };
    let (shared, user) = (State(Arc::clone(&state)), visitor.as_user());
    let updated = submit(entry.fields(), &form, |body| async move {
        match entry {
            Entry::Spec => api::catalog::update_spec(shared, user, Path(id), body)
                .await
                .map(drop),
            Entry::Image => api::catalog::update_image(shared, user, Path(id), body)
                .await
                .map(drop),
        }
    })
    .await;
    match updated {
        Ok(()) => see_other("/catalog"),
        Err(refusal) => edit_page(
            &visitor,
            entry.path(id),
            entry.heading(visitor.t).to_owned(),
            entry.fields(),
            &form,
            Some(&refusal),
        ),
    }
}

/// `POST /catalog/{specs|images}/{id}/delete`: deletes through the API.
pub async fn delete(
    State(state): Shared,
    visitor: Visitor,
    Path((kind, id)): Path<(String, i64)>,
) -> Response {
    let (shared, user) = (State(state), visitor.as_user());
    let deleted = match Entry::parse(&kind) {
        Ok(Entry::Spec) => api::catalog::delete_spec(shared, user, Path(id)).await,
        Ok(Entry::Image) => api::catalog::delete_image(shared, user, Path(id)).await,
        Err(problem) => Err(problem),
    };
    match deleted {
        Ok(_) => see_other("/catalog"),
        Err(problem) => problem_page(&visitor, "catalog", &problem),
    }
}
