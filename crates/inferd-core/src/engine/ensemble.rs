//! Running ensembles: loading checks the plan against the members (present in the repository,
//! types agreeing along every edge), and a request runs each step through its member's own
//! scheduler and batcher, every step as soon as the tensors it reads exist, so independent
//! steps run at once. Tensors pass between steps by reference (their buffers are shared, not
//! copied). The ensemble routes to its members' current versions, so a member reloaded under
//! traffic is picked up with no action; a member that is not ready makes the ensemble not
//! ready, and its requests fail with the member named.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use futures::stream::{FuturesUnordered, StreamExt};

use super::*;
use crate::backend::{BackendError, LoadedModel, ModelInstance, ModelSignature};
use crate::ensemble::{Plan, Step};
use crate::request::ParamValue;
use crate::tensor::Tensor;

/// How deep ensembles may nest (an ensemble step that is itself an ensemble).
const MAX_DEPTH: usize = 8;

tokio::task_local! {
    static DEPTH: usize;
}

/// The model an ensemble version "loads": it has no instances.
struct EnsembleModel {
    sig: ModelSignature,
}

impl LoadedModel for EnsembleModel {
    fn signature(&self) -> &ModelSignature {
        &self.sig
    }
    fn new_instance(&self) -> std::result::Result<Box<dyn ModelInstance>, BackendError> {
        Err(BackendError::Internal(
            "an ensemble has no instances; its steps run on their models".into(),
        ))
    }
}

type StepFuture<'a> = Pin<Box<dyn Future<Output = (usize, Result<InferResponse>)> + Send + 'a>>;

impl Engine {
    /// The config a member is known by: its serving version's (completed), else its folder's.
    fn member_config(&self, name: &str) -> Option<ModelConfig> {
        if let Ok(g) = self.route(name, None) {
            return Some(g.runner().config().as_ref().clone());
        }
        let (root, text) = self.source_of(name);
        let mut dir = repository::scan_model(&root, name)?;
        if let Some(t) = text {
            dir.config = Some(Ok(t));
        }
        self.read_config(name, &dir).ok().map(|p| p.config)
    }

    /// Loads an ensemble version: checks its plan and members, and starts a runner with no
    /// executors.
    pub(super) fn load_ensemble(
        &self,
        name: &str,
        version: u64,
        cfg: ModelConfig,
    ) -> std::result::Result<Arc<VersionRunner>, LoadFailure> {
        if cfg.platform != "ensemble" {
            return Err(
                "field 'ensemble_scheduling' needs platform: \"ensemble\" (and no backend)"
                    .to_string()
                    .into(),
            );
        }
        let plan = crate::ensemble::plan(&cfg)?;
        for (i, s) in plan.steps.iter().enumerate() {
            let (root, _) = self.source_of(&s.model);
            if !root.join(&s.model).is_dir() && self.route(&s.model, None).is_err() {
                return Err(format!(
                    "ensemble step {i}: model '{}' is not in the repository",
                    s.model
                )
                .into());
            }
        }
        crate::ensemble::check_types(&cfg, &plan, &|m| self.member_config(m))?;
        validate_config(&cfg).map_err(|e| format!("invalid config: {e}"))?;
        let runner_opts = crate::runner::RunnerOptions {
            default_queue: self.inner.opts.queue_capacity,
            budget: self.inner.budget.clone(),
            idle_spin: self.inner.opts.executor_spin,
            cache: None,
            drift: None,
        };
        let model = Arc::new(EnsembleModel {
            sig: ModelSignature::default(),
        });
        VersionRunner::start(
            name,
            version,
            Arc::new(cfg),
            model,
            &runner_opts,
            crate::runner::VersionExtras {
                sequences: None,
                ensemble: Some(plan),
            },
        )
        .map_err(|e| LoadFailure::server(e.to_string()))
    }

    /// Why an ensemble cannot serve now, if it cannot: a member not ready, or a member
    /// reloaded with a config its edges no longer fit (checked against the members' serving
    /// configs, so a member's reload is followed without reloading the ensemble).
    pub(super) fn ensemble_blocked(&self, cfg: &ModelConfig, plan: &Plan) -> Option<String> {
        let mut configs = HashMap::new();
        for s in &plan.steps {
            match self.route(&s.model, s.version) {
                Ok(g) => {
                    configs.insert(s.model.clone(), g.runner().config().clone());
                }
                Err(e) => return Some(format!("ensemble member '{}' is not ready: {e}", s.model)),
            }
        }
        crate::ensemble::check_types(cfg, plan, &|m| configs.get(m).map(|c| c.as_ref().clone()))
            .err()
            .map(|e| format!("an ensemble member changed and no longer fits: {e}"))
    }

    fn step_request(
        step: &Step,
        tensors: &HashMap<String, Tensor>,
        params: &BTreeMap<String, ParamValue>,
        id: &str,
    ) -> InferRequest {
        InferRequest {
            id: id.to_string(),
            inputs: step
                .inputs
                .iter()
                .filter_map(|(name, t)| {
                    tensors.get(t).map(|tensor| NamedTensor {
                        name: name.clone(),
                        tensor: tensor.clone(),
                    })
                })
                .collect(),
            outputs: Some(step.outputs.iter().map(|(o, _)| o.clone()).collect()),
            parameters: params.clone(),
        }
    }

    fn take_outputs(
        step: &Step,
        resp: InferResponse,
        tensors: &mut HashMap<String, Tensor>,
    ) -> Result<()> {
        for nt in resp.outputs {
            if let Some((_, t)) = step.outputs.iter().find(|(o, _)| *o == nt.name) {
                tensors.insert(t.clone(), nt.tensor);
            }
        }
        Ok(())
    }

    fn step_error(step: &Step, e: Error) -> Error {
        let why = format!("ensemble step '{}' failed: {e}", step.model);
        match e {
            Error::InvalidArgument(_) => Error::InvalidArgument(why),
            Error::NotFound(_) | Error::Unavailable(_) => Error::Unavailable(why),
            Error::FailedPrecondition(_) => Error::FailedPrecondition(why),
            Error::DeadlineExceeded(_) => Error::DeadlineExceeded(why),
            Error::Cancelled(_) => Error::Cancelled(why),
            // The member's limits answer for the ensemble, as they are (503 with retry advice).
            e @ Error::Overloaded { .. } => e,
            _ => Error::Internal(why),
        }
    }

    /// Runs an ensemble request: each step when its inputs exist, independent ones at once.
    /// (A boxed future: steps call back into [`Engine::infer`], which may run an ensemble.)
    pub(super) fn run_ensemble<'a>(
        &'a self,
        plan: &'a Plan,
        prepared: PreparedRequest,
        params: &'a BTreeMap<String, ParamValue>,
        id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<NamedTensor>>> + Send + 'a>> {
        Box::pin(async move {
            let depth = DEPTH.try_with(|d| *d).unwrap_or(0);
            if depth >= MAX_DEPTH {
                return Err(Error::invalid(format!(
                    "ensembles nest more than {MAX_DEPTH} deep (does one contain itself?)"
                )));
            }
            let mut tensors: HashMap<String, Tensor> = prepared
                .inputs
                .into_iter()
                .map(|nt| (nt.name, nt.tensor))
                .collect();
            let n = plan.steps.len();
            let mut started = vec![false; n];
            let mut finished = vec![false; n];
            let mut running: FuturesUnordered<StepFuture<'_>> = FuturesUnordered::new();
            loop {
                for (i, (step, after)) in plan.steps.iter().zip(&plan.after).enumerate() {
                    if started[i] || !after.iter().all(|&d| finished[d]) {
                        continue;
                    }
                    started[i] = true;
                    let req = Self::step_request(step, &tensors, params, id);
                    let engine = self.clone();
                    let fut = async move {
                        let r = engine.infer(&step.model, step.version, req).await;
                        (i, r)
                    };
                    running.push(Box::pin(DEPTH.scope(depth + 1, fut)));
                }
                let Some((i, r)) = running.next().await else {
                    break;
                };
                let step = &plan.steps[i];
                let resp = r.map_err(|e| Self::step_error(step, e))?;
                Self::take_outputs(step, resp, &mut tensors)?;
                finished[i] = true;
            }
            collect_outputs(prepared.outputs, tensors)
        })
    }

    /// [`Engine::run_ensemble`] on a plain thread: the steps run one after another.
    pub(super) fn run_ensemble_blocking(
        &self,
        plan: &Plan,
        prepared: PreparedRequest,
        params: &BTreeMap<String, ParamValue>,
        id: &str,
    ) -> Result<Vec<NamedTensor>> {
        thread_local! {
            static BLOCKING_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        }
        let depth = BLOCKING_DEPTH.with(|d| d.get());
        if depth >= MAX_DEPTH {
            return Err(Error::invalid(format!(
                "ensembles nest more than {MAX_DEPTH} deep (does one contain itself?)"
            )));
        }
        BLOCKING_DEPTH.with(|d| d.set(depth + 1));
        struct Reset(usize);
        impl Drop for Reset {
            fn drop(&mut self) {
                BLOCKING_DEPTH.with(|d| d.set(self.0));
            }
        }
        let _reset = Reset(depth);
        let mut tensors: HashMap<String, Tensor> = prepared
            .inputs
            .into_iter()
            .map(|nt| (nt.name, nt.tensor))
            .collect();
        for step in &plan.steps {
            let req = Self::step_request(step, &tensors, params, id);
            let resp = self
                .infer_blocking(&step.model, step.version, req)
                .map_err(|e| Self::step_error(step, e))?;
            Self::take_outputs(step, resp, &mut tensors)?;
        }
        collect_outputs(prepared.outputs, tensors)
    }
}

fn collect_outputs(
    names: Vec<String>,
    mut tensors: HashMap<String, Tensor>,
) -> Result<Vec<NamedTensor>> {
    names
        .into_iter()
        .map(|name| {
            let tensor = tensors.remove(&name).ok_or_else(|| {
                Error::Internal(format!("no ensemble step produced output '{name}'"))
            })?;
            Ok(NamedTensor { name, tensor })
        })
        .collect()
}
