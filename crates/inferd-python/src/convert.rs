//! NumPy arrays to engine tensors and back.
//!
//! In: a fixed-size array is read through a `uint8` view of its C-contiguous little-endian
//! buffer and copied once into the request (one `memcpy`: the caller may change its array while
//! the engine runs with the GIL released, so the engine never borrows it). An array that is not
//! C-contiguous or not little-endian is made so first. BYTES come from object arrays of
//! `bytes`/`str` or NumPy `S`/`U` arrays. A `(array, "DATATYPE")` pair names the datatype where
//! NumPy has none: `(bits_as_uint16, "BF16")`.
//!
//! Out: a fixed-size tensor's buffer becomes the array's memory without a copy when the engine
//! holds it alone (a `Vec` handed to NumPy, viewed as the datatype and reshaped); BF16 comes
//! back as `ml_dtypes.bfloat16` when that package is installed, else as its `uint16` bits.
//! BYTES come back as object arrays of `bytes`.

use bytes::Bytes;
use inferd_core::{DataType, NamedTensor, Tensor, TensorData};
use numpy::{
    PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::errors::invalid;

/// `numpy` and (if installed) `ml_dtypes`, imported once.
struct Modules {
    numpy: Py<PyModule>,
    bfloat16: Option<Py<PyAny>>,
}

static MODULES: PyOnceLock<Modules> = PyOnceLock::new();

fn modules(py: Python<'_>) -> PyResult<&Modules> {
    MODULES.get_or_try_init(py, || {
        let numpy = py.import("numpy")?.unbind();
        let bfloat16 = py
            .import("ml_dtypes")
            .and_then(|m| m.getattr("bfloat16"))
            .ok()
            .map(Bound::unbind);
        Ok(Modules { numpy, bfloat16 })
    })
}

/// The KServe datatype of a NumPy dtype, or why there is none.
fn datatype_of(array: &Bound<'_, PyUntypedArray>) -> Result<DataType, String> {
    let dt = array.dtype();
    let size = dt.itemsize();
    let d = match (dt.kind(), size) {
        (b'b', 1) => DataType::Bool,
        (b'u', 1) => DataType::U8,
        (b'u', 2) => DataType::U16,
        (b'u', 4) => DataType::U32,
        (b'u', 8) => DataType::U64,
        (b'i', 1) => DataType::I8,
        (b'i', 2) => DataType::I16,
        (b'i', 4) => DataType::I32,
        (b'i', 8) => DataType::I64,
        (b'f', 2) => DataType::F16,
        (b'f', 4) => DataType::F32,
        (b'f', 8) => DataType::F64,
        (b'O' | b'S' | b'U', _) => DataType::Bytes,
        _ => {
            let name = dt
                .str()
                .map(|s| s.to_string())
                .unwrap_or_else(|_| "?".into());
            if name == "bfloat16" && size == 2 {
                DataType::BF16
            } else {
                return Err(format!(
                    "NumPy dtype {name} has no KServe datatype (use bool, int8-64, uint8-64, float16/32/64, bytes or str objects, or ml_dtypes.bfloat16)"
                ));
            }
        }
    };
    Ok(d)
}

/// The array `value` stands for: an ndarray as is, anything else through `numpy.asarray`.
fn as_array<'py>(
    py: Python<'py>,
    name: &str,
    value: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    if let Ok(a) = value.cast::<PyUntypedArray>() {
        return Ok(a.clone());
    }
    let np = modules(py)?.numpy.bind(py);
    let a = np.call_method1("asarray", (value,)).map_err(|e| {
        invalid(
            py,
            format!("input '{name}': not an array and NumPy cannot make one of it: {e}"),
        )
    })?;
    Ok(a.cast_into::<PyUntypedArray>()?)
}

/// One input: `value` is an array (or anything `numpy.asarray` takes), or `(array, "DATATYPE")`.
pub fn tensor_from_py(py: Python<'_>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let (array, declared) = match value.cast::<PyTuple>() {
        Ok(pair) if pair.len() == 2 => {
            let dt: String = pair.get_item(1)?.extract().map_err(|_| {
                invalid(
                    py,
                    format!("input '{name}': a pair must be (array, \"DATATYPE\") with the datatype as a str"),
                )
            })?;
            let dt: DataType = dt
                .parse()
                .map_err(|e| invalid(py, format!("input '{name}': {e}")))?;
            (as_array(py, name, &pair.get_item(0)?)?, Some(dt))
        }
        _ => (as_array(py, name, value)?, None),
    };
    let natural = datatype_of(&array).map_err(|e| invalid(py, format!("input '{name}': {e}")))?;
    let dtype = match declared {
        None => natural,
        Some(d) if d == natural => d,
        // Bits of the declared type: BF16 from uint16 (or int16), say.
        Some(d) if d.size().is_some() && d.size() == natural.size() => d,
        Some(d) => {
            return Err(invalid(
                py,
                format!(
                    "input '{name}': declared {d} but the array holds {natural}, whose elements are not the same size"
                ),
            ));
        }
    };
    let shape: Vec<usize> = array.shape().to_vec();
    let data = if dtype == DataType::Bytes {
        TensorData::Bytes(bytes_elements(py, name, &array)?)
    } else {
        TensorData::Raw(raw_bytes(py, &array)?)
    };
    Tensor::new(dtype, shape, data).map_err(|e| invalid(py, format!("input '{name}': {e}")))
}

/// The little-endian bytes of a fixed-size array, copied once.
fn raw_bytes(py: Python<'_>, array: &Bound<'_, PyUntypedArray>) -> PyResult<Bytes> {
    let np = modules(py)?.numpy.bind(py);
    let dt = array.dtype();
    let mut a = array.clone().into_any();
    if dt.is_native_byteorder() == Some(false) {
        // Big-endian data: the same values in little-endian order.
        let le = dt.call_method1("newbyteorder", ("<",))?;
        a = a.call_method1("astype", (le,))?;
    }
    // reshape(-1) of a C-contiguous array is a view; of any other layout, a contiguous copy.
    let flat = np
        .call_method1("ascontiguousarray", (a,))?
        .call_method1("reshape", (-1,))?
        .call_method1("view", (np.getattr("uint8")?,))?;
    let flat = flat.cast_into::<PyArrayDyn<u8>>()?;
    let view = flat.readonly();
    let slice = view
        .as_slice()
        .map_err(|e| crate::errors::internal(format!("reading an input array: {e}")))?;
    Ok(Bytes::copy_from_slice(slice))
}

/// The elements of a BYTES input: `bytes` as they are, `str` as UTF-8.
fn bytes_elements(
    py: Python<'_>,
    name: &str,
    array: &Bound<'_, PyUntypedArray>,
) -> PyResult<Vec<Bytes>> {
    let items = array
        .call_method1("reshape", (-1,))?
        .call_method0("tolist")?;
    let items = items.cast_into::<PyList>()?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if let Ok(b) = item.cast::<PyBytes>() {
            out.push(Bytes::copy_from_slice(b.as_bytes()));
        } else if let Ok(s) = item.cast::<PyString>() {
            out.push(Bytes::copy_from_slice(s.to_cow()?.as_bytes()));
        } else {
            let kind = item
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            return Err(invalid(
                py,
                format!(
                    "input '{name}': element {i} is {kind}; BYTES elements must be bytes or str"
                ),
            ));
        }
    }
    Ok(out)
}

/// One output as a NumPy array.
pub fn tensor_to_py(py: Python<'_>, t: NamedTensor) -> PyResult<Bound<'_, PyAny>> {
    let (dtype, shape, data) = t.tensor.into_parts();
    let shape = PyTuple::new(py, shape)?;
    let m = modules(py)?;
    let np = m.numpy.bind(py);
    match data {
        TensorData::Bytes(items) => {
            let list = PyList::empty(py);
            for b in &items {
                list.append(PyBytes::new(py, b))?;
            }
            let a = np.call_method1("empty", (items.len(), "object"))?;
            // `a[:] = list`: element by element, so a bytes value is never taken as a sequence.
            a.set_item(pyo3::types::PySlice::full(py), list)?;
            a.call_method1("reshape", (shape,))
        }
        TensorData::Raw(raw) => {
            // A Bytes the engine holds alone (most outputs) becomes the Vec without a copy.
            let vec: Vec<u8> = Vec::from(raw);
            let bytes = PyArray1::<u8>::from_vec(py, vec);
            let dtype: Bound<'_, PyAny> = match dtype {
                DataType::BF16 => match &m.bfloat16 {
                    Some(bf) => bf.bind(py).clone(),
                    None => np.getattr("uint16")?,
                },
                d => np.call_method1("dtype", (numpy_name(d),))?,
            };
            bytes
                .call_method1("view", (dtype,))?
                .call_method1("reshape", (shape,))
        }
    }
}

/// NumPy's little-endian name of a fixed-size datatype.
fn numpy_name(d: DataType) -> &'static str {
    match d {
        DataType::Bool => "bool",
        DataType::U8 => "<u1",
        DataType::U16 => "<u2",
        DataType::U32 => "<u4",
        DataType::U64 => "<u8",
        DataType::I8 => "<i1",
        DataType::I16 => "<i2",
        DataType::I32 => "<i4",
        DataType::I64 => "<i8",
        DataType::F16 => "<f2",
        DataType::F32 => "<f4",
        DataType::F64 => "<f8",
        DataType::BF16 => "<u2",
        DataType::Bytes => "object",
    }
}
