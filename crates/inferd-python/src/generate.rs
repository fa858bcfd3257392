//! LLM text generation as a Python iterator: each `next()` waits (GIL released) for the next
//! piece of text from the engine's continuous batcher.

use std::sync::Mutex;

use inferd_core::generate::{
    ChatMessage, ChatOptions, GenEvent, GenStream, GenerateRequest, Prompt, Sampling,
};
use inferd_core::runner::InflightGuard;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{internal, invalid};

/// The sampling settings `Engine.generate` takes.
pub struct Knobs {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub ignore_eos: bool,
}

fn message(py: Python<'_>, i: usize, item: &Bound<'_, PyAny>) -> PyResult<ChatMessage> {
    let d = item.cast::<PyDict>().map_err(|_| {
        invalid(
            py,
            format!("message {i}: must be a dict with 'role' and 'content'"),
        )
    })?;
    let field = |key: &str| -> PyResult<String> {
        d.get_item(key)?
            .ok_or_else(|| invalid(py, format!("message {i}: missing '{key}'")))?
            .extract()
            .map_err(|_| invalid(py, format!("message {i}: '{key}' must be a str")))
    };
    Ok(ChatMessage {
        role: field("role")?,
        content: field("content")?,
        tool_calls: None,
        tool_call_id: None,
        name: None,
    })
}

/// A generation request from `Engine.generate`'s arguments.
pub fn request(py: Python<'_>, prompt: &Bound<'_, PyAny>, k: Knobs) -> PyResult<GenerateRequest> {
    let prompt = if let Ok(text) = prompt.extract::<String>() {
        Prompt::Text(text)
    } else if let Ok(list) = prompt.cast::<PyList>() {
        let mut messages = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            messages.push(message(py, i, &item)?);
        }
        Prompt::Chat(messages)
    } else {
        return Err(PyTypeError::new_err(
            "prompt must be a str or a list of chat messages ({'role': ..., 'content': ...})",
        ));
    };
    let mut sampling = Sampling::default();
    if let Some(t) = k.temperature {
        sampling.temperature = t;
    }
    if let Some(p) = k.top_p {
        sampling.top_p = p;
    }
    if let Some(top_k) = k.top_k {
        sampling.top_k = top_k;
    }
    sampling.seed = k.seed;
    Ok(GenerateRequest {
        prompt,
        max_tokens: k.max_tokens,
        sampling,
        stop: k.stop,
        ignore_eos: k.ignore_eos,
        logprobs: None,
        constraint: None,
        echo: false,
        prompt_logprobs: None,
        chat: ChatOptions::default(),
    })
}

struct State {
    stream: GenStream,
    /// Held while the generation runs, so a reload lets it finish on its version.
    guard: Option<InflightGuard>,
}

/// The text of one generation, piece by piece (`for piece in engine.generate(...)`).
#[pyclass(module = "inferd")]
pub struct Generation {
    state: Mutex<State>,
    /// Why it ended (`"stop"`, `"length"`), once it has.
    #[pyo3(get)]
    finish_reason: Option<String>,
    /// Tokens in the prompt.
    #[pyo3(get)]
    prompt_tokens: usize,
    /// Tokens generated, once it has ended.
    #[pyo3(get)]
    completion_tokens: Option<usize>,
}

impl Generation {
    /// A generation that has started.
    pub fn new(guard: InflightGuard, stream: GenStream) -> Self {
        let prompt_tokens = stream.prompt_tokens;
        Generation {
            state: Mutex::new(State {
                stream,
                guard: Some(guard),
            }),
            finish_reason: None,
            prompt_tokens,
            completion_tokens: None,
        }
    }
}

#[pymethods]
impl Generation {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(mut slf: PyRefMut<'_, Self>, py: Python<'_>) -> PyResult<Option<String>> {
        slf.next_piece(py)
    }

    /// The whole remaining text at once.
    fn text(mut slf: PyRefMut<'_, Self>, py: Python<'_>) -> PyResult<String> {
        let mut out = String::new();
        while let Some(piece) = slf.next_piece(py)? {
            out.push_str(&piece);
        }
        Ok(out)
    }
}

impl Generation {
    /// Waits (GIL released) for the next piece; `None` once the generation has ended.
    fn next_piece(&mut self, py: Python<'_>) -> PyResult<Option<String>> {
        loop {
            let state = &self.state;
            let event = py
                .detach(|| {
                    let mut s = state
                        .lock()
                        .map_err(|_| "a generation's lock was poisoned")?;
                    if s.guard.is_none() {
                        return Ok(None);
                    }
                    Ok::<_, &str>(s.stream.events.blocking_recv())
                })
                .map_err(internal)?;
            match event {
                Some(GenEvent::Text { text, .. }) => return Ok(Some(text)),
                Some(GenEvent::PromptLogprobs(_)) => continue,
                Some(GenEvent::Done {
                    finish,
                    completion_tokens,
                    ..
                }) => {
                    self.finish_reason = Some(finish.as_str().to_string());
                    self.completion_tokens = Some(completion_tokens);
                    self.release();
                    return Ok(None);
                }
                Some(GenEvent::Failed(why)) => {
                    self.release();
                    return Err(crate::errors::to_py(
                        py,
                        inferd_core::Error::Internal(format!("the generation failed: {why}")),
                    ));
                }
                None => {
                    self.release();
                    return Ok(None);
                }
            }
        }
    }

    fn release(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.guard = None;
        }
    }
}
