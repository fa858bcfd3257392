//! The executor thread of one model instance: takes batches from the version's scheduler,
//! runs them on the instance (merged into one tensor per input, or as separate requests for
//! instances that take them), and answers each request with its rows or its error.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::assembly::{merge_inputs, split_outputs};
use crate::backend::{BackendError, ModelInstance, NamedTensor};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::request::finish_outputs;
use crate::scheduler::{ComputeBudget, Job, Scheduler};
use crate::stats::{ExecutionTimes, VersionStats};

/// A batch that ran: per-job outputs and timings.
struct Executed {
    per_job: Vec<Result<Vec<NamedTensor>>>,
    times: ExecutionTimes,
}

pub(crate) struct Executor {
    pub(crate) model: String,
    pub(crate) config: Arc<ModelConfig>,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) stats: Arc<Mutex<VersionStats>>,
    pub(crate) budget: Arc<ComputeBudget>,
    /// The version's drift sampler, when monitoring is on.
    pub(crate) drift: Option<Arc<crate::drift::DriftSampler>>,
}

impl Executor {
    pub(crate) fn run(self, mut instance: Box<dyn ModelInstance>) {
        while let Some(mut jobs) = self.scheduler.next_batch() {
            let started = Instant::now();
            // Inputs of the requests drift monitoring samples, kept before the batch consumes them.
            let sampled: Vec<Option<Vec<NamedTensor>>> = match &self.drift {
                Some(d) => jobs
                    .iter()
                    .map(|j| d.sample().then(|| j.req.inputs.clone()))
                    .collect(),
                None => Vec::new(),
            };
            let result = self.execute(instance.as_mut(), &mut jobs, started);
            match result {
                // One request's input failed the whole batch: run each request alone, so only
                // the one at fault gets the error.
                Err(Error::InvalidArgument(_)) if jobs.len() > 1 => {
                    let mut sampled = sampled.into_iter();
                    for job in jobs {
                        let mut one = vec![job];
                        let started = Instant::now();
                        let r = self.execute(instance.as_mut(), &mut one, started);
                        self.deliver(one, r, started, vec![sampled.next().flatten()]);
                    }
                }
                r => self.deliver(jobs, r, started, sampled),
            }
        }
    }

    /// Runs one batch; any panic (backend, batch assembly, output checks) becomes an error for
    /// the batch instead of ending this executor thread.
    fn execute(
        &self,
        instance: &mut dyn ModelInstance,
        jobs: &mut [Job],
        started: Instant,
    ) -> Result<Executed> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if instance.takes_requests() {
                return self.execute_requests(instance, jobs, started);
            }
            let rows: Vec<usize> = jobs.iter().map(|j| j.req.batch).collect();
            let outputs = jobs[0].req.outputs.clone();
            let (inputs, total) = merge_inputs(jobs)?;
            let t0 = Instant::now();
            let ran = {
                let _share = self.budget.acquire();
                instance.execute(&inputs, &outputs)
            };
            let t1 = Instant::now();
            let outs = ran.map_err(|e| self.backend_error(e))?;
            let per_job = split_outputs(&self.model, outs, &rows)?
                .into_iter()
                .zip(&rows)
                .map(|(o, &r)| finish_outputs(&self.model, &self.config, o, r))
                .collect::<Result<Vec<_>>>()?;
            let t2 = Instant::now();
            Ok(Executed {
                per_job: per_job.into_iter().map(Ok).collect(),
                times: ExecutionTimes {
                    batch: total,
                    requests: rows.len(),
                    input: t0 - started,
                    infer: t1 - t0,
                    output: t2 - t1,
                },
            })
        }))
        .unwrap_or_else(|_| {
            Err(Error::Internal(format!(
                "model '{}' panicked during execution",
                self.model
            )))
        })
    }

    /// A batch run as its separate requests ([`ModelInstance::takes_requests`]): each request
    /// gets its own answer or error.
    fn execute_requests(
        &self,
        instance: &mut dyn ModelInstance,
        jobs: &mut [Job],
        started: Instant,
    ) -> Result<Executed> {
        let outputs = jobs[0].req.outputs.clone();
        let requests: Vec<&[NamedTensor]> = jobs.iter().map(|j| j.req.inputs.as_slice()).collect();
        let t0 = Instant::now();
        // No compute share is held: such instances run out of process (a python worker), and
        // their models may call other models (BLS) that need a share to answer; holding one
        // while waiting on them could leave every share waiting on itself.
        let meta: Vec<&crate::request::RequestMeta> = jobs.iter().map(|j| &j.req.meta).collect();
        let jobs_now: &[Job] = jobs;
        let gone = |i: usize| jobs_now.get(i).is_some_and(Job::caller_gone);
        let ran = instance.execute_requests_with(&requests, &meta, &gone, &outputs);
        let t1 = Instant::now();
        let results = ran.map_err(|e| self.backend_error(e))?;
        if results.len() != jobs.len() {
            return Err(Error::Internal(format!(
                "model '{}' answered {} of {} requests",
                self.model,
                results.len(),
                jobs.len()
            )));
        }
        let per_job = results
            .into_iter()
            .zip(jobs.iter())
            .map(|(r, job)| {
                let outs = r.map_err(|e| self.backend_error(e))?;
                finish_outputs(&self.model, &self.config, outs, job.req.batch)
            })
            .collect();
        let t2 = Instant::now();
        Ok(Executed {
            per_job,
            times: ExecutionTimes {
                batch: jobs.iter().map(|j| j.req.batch).sum(),
                requests: jobs.len(),
                input: t0 - started,
                infer: t1 - t0,
                output: t2 - t1,
            },
        })
    }

    fn backend_error(&self, e: BackendError) -> Error {
        e.into_request_error(&self.model)
    }

    /// Records statistics and answers every job of a batch.
    /// `sampled`: per job, its inputs when drift monitoring sampled it (empty: none).
    fn deliver(
        &self,
        jobs: Vec<Job>,
        result: Result<Executed>,
        started: Instant,
        mut sampled: Vec<Option<Vec<NamedTensor>>>,
    ) {
        let mut observed = Vec::new();
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(ex) => {
                stats.record_execution(ex.times);
                for (k, (job, out)) in jobs.into_iter().zip(ex.per_job).enumerate() {
                    stats.record_queue(started - job.enqueued);
                    if let (Some(inputs), Ok(outs)) =
                        (sampled.get_mut(k).and_then(Option::take), out.as_ref())
                    {
                        observed.push((inputs, outs.clone(), job.req.batch));
                    }
                    self.scheduler.complete(job, out);
                }
            }
            Err(e) => {
                for job in jobs {
                    stats.record_queue(started - job.enqueued);
                    self.scheduler.complete(job, Err(e.clone()));
                }
            }
        }
        drop(stats);
        // After the answers went out: the observation never delays a client.
        if let Some(d) = &self.drift {
            for (inputs, outputs, rows) in observed {
                d.observe(&inputs, &outputs, rows);
            }
        }
    }
}
