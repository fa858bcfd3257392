//! A model's calls on its worker: a batch's requests in one `execute`, a decoupled request's
//! stream of responses (with credits for backpressure), and turning the answers into outputs
//! or errors.

use super::*;

/// Responses a decoupled model may have on their way to the server before its `send` waits
/// for the client to take some (see [`Worker::run_decoupled`]).
const RESPONSE_CREDITS: u64 = 64;
/// Credits go back to the worker in batches of this many.
const CREDIT_BATCH: u64 = 16;
/// How often a running `execute` checks whether its requests' clients are still there.
const CANCEL_POLL: Duration = Duration::from_millis(50);

impl Worker {
    /// Runs a batch's requests in one `execute(requests)`: one result per request.
    pub fn execute(
        &self,
        requests: &[&[NamedTensor]],
        meta: &[&RequestMeta],
        gone: &dyn Fn(usize) -> bool,
        outputs: &[String],
    ) -> Result<Vec<Result<Vec<NamedTensor>, BackendError>>, Failure> {
        let described: Vec<Value> = (0..requests.len())
            .map(|i| request_json(outputs, meta.get(i).copied()))
            .collect();
        let call = self.call(json!({"op": "execute", "requests": described}), requests)?;
        // While execute runs, clients that leave are told to the worker, where the model sees
        // them in `request.is_cancelled()` (as in Triton) and may stop early.
        let submitted = Instant::now();
        let timeout = self.shared.spec.execute_timeout;
        let mut told = vec![false; requests.len()];
        let Incoming { msg, tensors } = loop {
            // The call may have waited in the worker behind the other executor thread's batch:
            // its time starts when the last batch before it was answered.
            let deadline = self.answered_since(submitted) + timeout;
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(m) = call.next_within(left.min(CANCEL_POLL))? {
                self.answered();
                break m;
            }
            // Asked again after the wait: the batch before this one may have been answered
            // meanwhile, which moves this one's deadline.
            if Instant::now() >= self.answered_since(submitted) + timeout {
                return Err(call.expire(timeout));
            }
            let newly: Vec<usize> = (0..requests.len())
                .filter(|&i| !told[i] && gone(i))
                .collect();
            if !newly.is_empty() {
                for &i in &newly {
                    told[i] = true;
                }
                call.cancel_requests(&newly);
            }
        };
        if let Some(err) = msg.get("error") {
            return Err(Failure::Request(self.model_error(err, true)));
        }
        let mut tensors: Vec<_> = tensors
            .map_err(Failure::Request)?
            .into_iter()
            .map(Some)
            .collect();
        let responses = msg
            .get("responses")
            .and_then(|r| r.as_array())
            .cloned()
            .unwrap_or_default();
        if responses.len() != requests.len() {
            return Err(Failure::Request(BackendError::Execution(format!(
                "model '{}': the worker answered {} of {} requests",
                self.shared.spec.model,
                responses.len(),
                requests.len()
            ))));
        }
        Ok(responses
            .iter()
            .map(|r| self.response(r, &mut tensors, outputs))
            .collect())
    }

    /// Runs one request of a decoupled model: each response's outputs go to `send` until the
    /// model sends the final flag; `send` returning false (the client left) cancels it.
    pub fn run_decoupled(
        &self,
        inputs: &[NamedTensor],
        outputs: &[String],
        meta: &RequestMeta,
        send: &mut dyn FnMut(Vec<NamedTensor>) -> bool,
    ) -> Result<(), Failure> {
        let msg = json!({
            "op": "execute",
            "decoupled": true,
            "credits": RESPONSE_CREDITS,
            "requests": [request_json(outputs, Some(meta))],
        });
        let call = self.call(msg, &[inputs])?;
        // Backpressure: the worker may have RESPONSE_CREDITS responses on their way; each one
        // delivered to the client earns a credit back, returned in batches. A slow client so
        // slows the model's `send` instead of filling the server's memory.
        let mut delivered: u64 = 0;
        loop {
            let Incoming { msg, tensors } = call.next(self.shared.spec.execute_timeout)?;
            match msg.get("op").and_then(|o| o.as_str()) {
                Some("response") => {
                    let final_ = msg.get("final").and_then(|f| f.as_bool()) == Some(true);
                    if let Some(err) = msg.get("error") {
                        // An error response ends the stream for the client.
                        return Err(Failure::Request(self.model_error(err, false)));
                    }
                    if msg.get("tensors").is_some() {
                        let mut tensors: Vec<_> = tensors
                            .map_err(Failure::Request)?
                            .into_iter()
                            .map(Some)
                            .collect();
                        let all: Vec<usize> = (0..tensors.len()).collect();
                        let outs = self
                            .pick(&all, &mut tensors, outputs)
                            .map_err(Failure::Request)?;
                        if !send(outs) {
                            call.cancel();
                            return Ok(());
                        }
                    }
                    delivered += 1;
                    if !final_ && delivered.is_multiple_of(CREDIT_BATCH) {
                        self.shared
                            .send_later(json!({"op": "credit", "id": call.id, "n": CREDIT_BATCH}));
                    }
                    if final_ {
                        return Ok(());
                    }
                }
                // execute returned: an error fails the request; else wait for the final flag.
                _ => {
                    if let Some(err) = msg.get("error") {
                        return Err(Failure::Request(self.model_error(err, true)));
                    }
                }
            }
        }
    }

    /// One request's answer: its outputs in the order asked, or its error.
    fn response(
        &self,
        response: &Value,
        tensors: &mut [Option<NamedTensor>],
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, BackendError> {
        if let Some(err) = response.get("error") {
            return Err(self.model_error(err, false));
        }
        let indices: Vec<usize> = response
            .get("outputs")
            .and_then(|o| o.as_array())
            .into_iter()
            .flatten()
            .filter_map(|i| i.as_u64())
            .map(|i| i as usize)
            .collect();
        self.pick(&indices, tensors, outputs)
    }

    /// The tensors at `indices` in the order of `outputs` (all of them when `outputs` is empty).
    fn pick(
        &self,
        indices: &[usize],
        tensors: &mut [Option<NamedTensor>],
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, BackendError> {
        let mut got: Vec<NamedTensor> = Vec::with_capacity(indices.len());
        for &i in indices {
            let t = tensors.get_mut(i).and_then(Option::take).ok_or_else(|| {
                BackendError::Internal(format!(
                    "the worker named tensor {i}, which it did not send (or named twice)"
                ))
            })?;
            got.push(t);
        }
        if outputs.is_empty() {
            return Ok(got);
        }
        outputs
            .iter()
            .map(|name| {
                got.iter()
                    .position(|t| &t.name == name)
                    .map(|i| got.swap_remove(i))
                    .ok_or_else(|| {
                        BackendError::Execution(format!(
                            "model '{}': execute returned no output '{name}'",
                            self.shared.spec.model
                        ))
                    })
            })
            .collect()
    }

    /// The error a model reported: its `TritonError` code picks the status (`whole`: `execute`
    /// itself raised, failing every request of the call).
    fn model_error(&self, err: &Value, whole: bool) -> BackendError {
        let message = err
            .get("message")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let kind = err
            .get("type")
            .and_then(|v| v.as_str())
            .unwrap_or("an error");
        let model = &self.shared.spec.model;
        let text = if whole {
            format!("model '{model}': execute raised {kind}: {message}")
        } else {
            format!("model '{model}': {message}")
        };
        match err.get("code").and_then(|v| v.as_i64()) {
            Some(code::NOT_FOUND) => BackendError::NotFound(text),
            Some(code::INVALID_ARG) | Some(code::UNSUPPORTED) => BackendError::InvalidInput(text),
            Some(code::UNAVAILABLE) | Some(code::CANCELLED) => BackendError::Unavailable(text),
            _ => BackendError::Execution(text),
        }
    }
}

/// A request as `pb_utils.InferenceRequest` shows it: `request_id()` is the client's `id`,
/// `parameters()` its parameters as a JSON string, `correlation_id()` its `sequence_id` (a
/// number or a string, as Triton's sequence batcher takes it; 0 without one).
fn request_json(outputs: &[String], meta: Option<&RequestMeta>) -> Value {
    let Some(meta) = meta else {
        return json!({"outputs": outputs, "request_id": "", "correlation_id": 0, "parameters": "{}"});
    };
    let params: serde_json::Map<String, Value> = meta
        .parameters
        .iter()
        .map(|(k, v)| {
            let v = match v {
                ParamValue::Bool(b) => json!(b),
                ParamValue::Int(i) => json!(i),
                ParamValue::Double(d) => json!(d),
                ParamValue::String(s) => json!(s),
            };
            (k.clone(), v)
        })
        .collect();
    let correlation = match meta.parameters.get("sequence_id") {
        Some(ParamValue::Int(i)) => json!(i),
        Some(ParamValue::String(s)) => json!(s),
        _ => json!(0),
    };
    json!({
        "outputs": outputs,
        "request_id": meta.id,
        "correlation_id": correlation,
        "parameters": Value::Object(params).to_string(),
    })
}
