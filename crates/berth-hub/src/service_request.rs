//! What a caller asks for when creating or updating a service — the body of
//! `POST /api/{username}/{repo}/services` and `PUT /api/services/{id}`, and the YAML of
//! `berth apply` — and the checks that need nothing but the request itself, so that
//! `berth validate` gives the same answers offline as the hub would.

use std::collections::BTreeMap;

use berth_core::ByteSize;
use berth_core::spec::{Command, MIN_MEMORY_LIMIT, check_cpu_cores};
use berth_http::Problem;
use serde::{Deserialize, Serialize};

use crate::model_file::ModelFile;
use crate::service_definition::ServingSettings;

pub use berth_core::spec::MAX_REPLICAS;

/// A service as asked for.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRequest {
    /// Its name, unique per owner.
    pub name: String,
    /// Image reference (or `image_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// An image of the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<i64>,
    /// A product spec of the catalog (or explicit limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_id: Option<i64>,
    /// CPU cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<f64>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<ByteSize>,
    /// One GPU unless `gpu_count` says otherwise.
    #[serde(default)]
    pub gpu_required: bool,
    /// Whole GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_count: Option<i64>,
    /// Environment.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Command (a string split like a shell, or an argv list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    /// The HTTP port it listens on (`GRADIO_SERVER_PORT`); the gateway serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Reachable through the gateway without a token.
    #[serde(default)]
    pub is_public: bool,
    /// Stays on its node during failover.
    #[serde(default)]
    pub pinned: bool,
    /// How many replicas (1 when absent at create; unchanged when absent at update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    /// Start each replica as soon as it is created (create only).
    #[serde(default)]
    pub start: bool,
    /// Node labels its nodes must carry.
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    /// How the gateway serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<ServingSettings>,
    /// Which GPU of a node a GPU share takes: `best_fit` (the tightest, default) or
    /// `most_free`. A model file on `device: cuda` takes `most_free` unless this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_choice: Option<berth_core::schedule::GpuChoice>,
    /// Seed 004's model file: the image, command, port, model mount and GPU come from it and
    /// the hub's `model_runtimes`, unless given here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelFile>,
}

impl ServiceRequest {
    /// The request that declares `service` as it stands (its spec, or its limits), for a
    /// change of part of it.
    pub fn declared(
        service: &berth_store::services::ServiceRecord,
        definition: &crate::service_definition::ServiceDefinition,
    ) -> Self {
        let by_spec = service.spec_id.is_some();
        Self {
            name: service.name.clone(),
            image: Some(definition.image.clone()),
            image_id: None,
            spec_id: service.spec_id,
            cpu_limit: (!by_spec).then(|| definition.cpu_millis as f64 / 1000.0),
            memory_limit: (!by_spec)
                .then(|| ByteSize::from_bytes(u64::try_from(definition.memory_bytes).unwrap_or(0))),
            gpu_required: false,
            gpu_count: (!by_spec).then_some(definition.gpu_count),
            environment: definition.environment.clone(),
            command: definition.command.clone().map(Command::Argv),
            port: definition.port,
            is_public: service.is_public,
            pinned: service.pinned,
            replicas: Some(service.replicas),
            start: false,
            constraints: definition.constraints.clone(),
            serving: Some(definition.serving.clone()),
            model: definition.model.clone(),
            gpu_choice: Some(definition.gpu_choice),
        }
    }

    /// Every check that needs only the request; the error names the field.
    pub fn check(&self) -> Result<(), Problem> {
        berth_core::spec::validate_name("name", &self.name)?;
        match (&self.image, self.image_id) {
            (Some(_), Some(_)) => {
                return Err(Problem::invalid_field(
                    "image_id",
                    "give image or image_id, not both",
                ));
            }
            (Some(image), None)
                if image.trim().is_empty() || image.contains(char::is_whitespace) =>
            {
                return Err(Problem::invalid_field(
                    "image",
                    format!("{image:?} is not an image reference"),
                ));
            }
            (None, None) if self.model.is_none() => {
                return Err(Problem::invalid_field(
                    "image",
                    "is required (or image_id, or a model file)",
                ));
            }
            _ => {}
        }
        if let Some(model) = &self.model {
            model.check()?;
        }
        if self.spec_id.is_some() {
            for (field, given) in [
                ("cpu_limit", self.cpu_limit.is_some()),
                ("memory_limit", self.memory_limit.is_some()),
                ("gpu_count", self.gpu_count.is_some()),
            ] {
                if given {
                    return Err(Problem::invalid_field(
                        field,
                        "comes from the spec; give spec_id or limits, not both",
                    ));
                }
            }
        }
        if let Some(cores) = self.cpu_limit {
            check_cpu_cores("cpu_limit", cores)?;
        }
        if let Some(memory) = self.memory_limit
            && memory < MIN_MEMORY_LIMIT
        {
            return Err(Problem::invalid_field(
                "memory_limit",
                format!("{memory} is below Docker's minimum of 6m"),
            ));
        }
        if self.gpu_count.is_some_and(|count| count < 0) {
            return Err(Problem::invalid_field("gpu_count", "must not be negative"));
        }
        if let Some(command) = &self.command {
            command.argv()?;
        }
        if self.port == Some(0) {
            return Err(Problem::invalid_field("port", "0 is not a port"));
        }
        if let Some(replicas) = self.replicas
            && !(1..=MAX_REPLICAS).contains(&replicas)
        {
            return Err(Problem::invalid_field(
                "replicas",
                format!("{replicas} is not between 1 and {MAX_REPLICAS}"),
            ));
        }
        berth_core::schedule::validate_labels("constraints", &self.constraints)?;
        if let Some(serving) = &self.serving {
            serving.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> ServiceRequest {
        serde_json::from_value(json).expect("parses")
    }

    #[test]
    fn each_mistake_names_its_field() {
        let good = serde_json::json!({"name": "flood", "image": "geo/flood:1", "port": 7860});
        assert!(request(good.clone()).check().is_ok());
        for (change, field) in [
            (serde_json::json!({"name": "-bad"}), "name"),
            (serde_json::json!({"image": "a b"}), "image"),
            (serde_json::json!({"image_id": 3}), "image_id"),
            (
                serde_json::json!({"spec_id": 1, "cpu_limit": 1.0}),
                "cpu_limit",
            ),
            (serde_json::json!({"cpu_limit": 0.0}), "cpu_limit"),
            (serde_json::json!({"memory_limit": "1m"}), "memory_limit"),
            (serde_json::json!({"gpu_count": -1}), "gpu_count"),
            (serde_json::json!({"port": 0}), "port"),
            (serde_json::json!({"replicas": 0}), "replicas"),
            (serde_json::json!({"constraints": {"": "x"}}), "constraints"),
            (
                serde_json::json!({"serving": {"timeout_seconds": 0}}),
                "serving.timeout_seconds",
            ),
        ] {
            let mut body = good.clone();
            for (key, value) in change.as_object().expect("object") {
                body[key] = value.clone();
            }
            let problem = request(body).check().expect_err("refused");
            let json = serde_json::to_value(&problem).expect("json");
            assert_eq!(json["field"], field, "{json}");
        }
        let mut without_image = good;
        without_image
            .as_object_mut()
            .expect("object")
            .remove("image");
        assert!(request(without_image).check().is_err());
    }
}
