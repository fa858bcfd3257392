//! The `identity` backend (Triton's test backend of that name): output `i` is input `i`,
//! unchanged, for any datatype, batched or not. Its behaviour is all in the config, so it needs
//! no model file: inputs and outputs pair by position and must have the same datatypes.
//! Useful to check a client's tensor encoding end to end (every KServe datatype, BF16 too).

use std::path::Path;
use std::sync::Arc;

use inferd_core::backend::{
    Backend, BackendError, LoadRequest, LoadedModel, ModelInstance, ModelSignature, NamedTensor,
    TensorSpec,
};
use inferd_core::config::ModelConfig;

/// The backend (`backend: "identity"`).
pub struct IdentityBackend;

#[derive(Clone)]
struct IdentityModel {
    sig: ModelSignature,
}

impl Backend for IdentityBackend {
    fn name(&self) -> &'static str {
        "identity"
    }
    fn platform(&self) -> Option<&'static str> {
        None
    }
    fn accepts(&self, _platform: &str, backend: &str) -> bool {
        backend == "identity"
    }
    fn default_model_filename(&self, _config: &ModelConfig, _dir: &Path) -> String {
        String::new()
    }
    fn needs_model_file(&self) -> bool {
        false
    }
    fn load(&self, req: &LoadRequest<'_>) -> Result<Arc<dyn LoadedModel>, BackendError> {
        let c = req.config;
        if c.input.is_empty() || c.input.len() != c.output.len() {
            return Err(BackendError::Load(format!(
                "the identity backend pairs inputs with outputs by position: the config has {} inputs and {} outputs",
                c.input.len(),
                c.output.len()
            )));
        }
        for (i, o) in c.input.iter().zip(&c.output) {
            if i.data_type != o.data_type {
                return Err(BackendError::Load(format!(
                    "the identity backend returns input '{}' ({}) as output '{}', which is {}: the datatypes must match",
                    i.name, i.data_type.0, o.name, o.data_type.0
                )));
            }
        }
        let spec = |name: &str, dtype| TensorSpec {
            name: name.to_string(),
            dtype,
            shape: None,
        };
        Ok(Arc::new(IdentityModel {
            sig: ModelSignature {
                inputs: c
                    .input
                    .iter()
                    .map(|i| spec(&i.name, i.data_type.0))
                    .collect(),
                outputs: c
                    .output
                    .iter()
                    .map(|o| spec(&o.name, o.data_type.0))
                    .collect(),
            },
        }))
    }
}

impl LoadedModel for IdentityModel {
    fn signature(&self) -> &ModelSignature {
        &self.sig
    }
    fn new_instance(&self) -> Result<Box<dyn ModelInstance>, BackendError> {
        Ok(Box::new(self.clone()))
    }
}

impl ModelInstance for IdentityModel {
    fn execute(
        &mut self,
        inputs: &[NamedTensor],
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, BackendError> {
        outputs
            .iter()
            .map(|name| {
                let at = self
                    .sig
                    .outputs
                    .iter()
                    .position(|o| &o.name == name)
                    .ok_or_else(|| {
                        BackendError::InvalidInput(format!("the model has no output '{name}'"))
                    })?;
                let from = &self.sig.inputs[at].name;
                let t = inputs.iter().find(|t| &t.name == from).ok_or_else(|| {
                    BackendError::InvalidInput(format!(
                        "output '{name}' is input '{from}', which the request does not have"
                    ))
                })?;
                Ok(NamedTensor {
                    name: name.clone(),
                    tensor: t.tensor.clone(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferd_core::tensor::{DataType, Tensor, TensorData};

    fn model(config: &str) -> Result<Arc<dyn LoadedModel>, BackendError> {
        let config = inferd_core::config::parse_config(config, Path::new("config.pbtxt"))
            .expect("config")
            .config;
        IdentityBackend.load(&LoadRequest {
            model: "m",
            version: 1,
            version_dir: Path::new("."),
            model_file: Path::new(".").to_path_buf(),
            config: &config,
            model_bytes: None,
            caller: None,
            metrics: Default::default(),
        })
    }

    #[test]
    fn each_output_is_the_input_in_its_position() {
        let m = model(
            r#"name: "m" backend: "identity"
            input [ { name: "A" data_type: TYPE_BF16 dims: [ 2 ] }, { name: "B" data_type: TYPE_STRING dims: [ 1 ] } ]
            output [ { name: "X" data_type: TYPE_BF16 dims: [ 2 ] }, { name: "Y" data_type: TYPE_STRING dims: [ 1 ] } ]"#,
        )
        .expect("loads");
        let a = Tensor::new(
            DataType::BF16,
            vec![2],
            TensorData::Raw(vec![1, 2, 3, 4].into()),
        )
        .expect("tensor");
        let b = Tensor::new(
            DataType::Bytes,
            vec![1],
            TensorData::Bytes(vec!["s".into()]),
        )
        .expect("tensor");
        let inputs = vec![
            NamedTensor {
                name: "A".into(),
                tensor: a.clone(),
            },
            NamedTensor {
                name: "B".into(),
                tensor: b.clone(),
            },
        ];
        let out = m
            .new_instance()
            .expect("instance")
            .execute(&inputs, &["Y".into(), "X".into()])
            .expect("runs");
        assert_eq!((out[0].name.as_str(), &out[0].tensor), ("Y", &b));
        assert_eq!((out[1].name.as_str(), &out[1].tensor), ("X", &a));
    }

    #[test]
    fn an_output_of_another_datatype_than_its_input_is_refused_at_load() {
        let err = model(
            r#"name: "m" backend: "identity"
            input [ { name: "A" data_type: TYPE_FP32 dims: [ 2 ] } ]
            output [ { name: "X" data_type: TYPE_FP16 dims: [ 2 ] } ]"#,
        )
        .err()
        .expect("refused");
        assert!(
            err.to_string().contains("the datatypes must match"),
            "{err}"
        );
    }
}
