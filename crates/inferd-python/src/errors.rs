//! The engine's errors as Python exceptions: each [`inferd_core::Error`] variant raises the
//! class of the same name in `inferd._errors` (pure Python, so the classes can also derive from
//! the built-in exceptions callers already catch: `ValueError`, `LookupError`, `TimeoutError`).

use inferd_core::Error;
use inferd_core::generate::GenerateError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The exception class `name` of `inferd._errors`.
fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let module = ERRORS.get_or_try_init(py, || py.import("inferd._errors").map(|m| m.unbind()))?;
    Ok(module.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

/// Raises `name` with `message` (and the extra constructor arguments).
fn raise<'py>(py: Python<'py>, name: &str, args: impl pyo3::call::PyCallArgs<'py>) -> PyErr {
    match class(py, name).and_then(|c| c.call1(args)) {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// The Python exception for an engine error.
pub fn to_py(py: Python<'_>, e: Error) -> PyErr {
    match e {
        Error::InvalidArgument(m) => raise(py, "InvalidInput", (m,)),
        Error::NotFound(m) => raise(py, "ModelNotFound", (m,)),
        Error::Unavailable(m) => raise(py, "Unavailable", (m,)),
        Error::Overloaded {
            message,
            retry_after_secs,
        } => raise(py, "Overloaded", (message, retry_after_secs)),
        Error::FailedPrecondition(m) => raise(py, "FailedPrecondition", (m,)),
        Error::Cancelled(m) => raise(py, "Cancelled", (m,)),
        Error::DeadlineExceeded(m) => raise(py, "DeadlineExceeded", (m,)),
        Error::Internal(m) => raise(py, "InternalError", (m,)),
    }
}

/// The Python exception for a generation that could not start.
pub fn generate_to_py(py: Python<'_>, e: GenerateError) -> PyErr {
    let message = e.to_string();
    match e {
        GenerateError::Invalid(_) | GenerateError::ContextLength { .. } => {
            raise(py, "InvalidInput", (message,))
        }
        GenerateError::Overloaded(_) => raise(py, "Overloaded", (message, 1u32)),
        _ => raise(py, "Unavailable", (message,)),
    }
}

/// `InvalidInput` with `message`: a request the Python side already knows is wrong.
pub fn invalid(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, "InvalidInput", (message.into(),))
}

/// An engine fault that should not happen (a poisoned lock, a runtime that would not start).
pub fn internal(message: impl Into<String>) -> PyErr {
    PyRuntimeError::new_err(message.into())
}
