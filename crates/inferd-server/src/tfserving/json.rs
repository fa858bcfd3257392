//! TF Serving's REST JSON and inferd's tensors, both ways (pure; unit-tested).
//!
//! Requests: the row form (`instances`: one entry per example, each the value of the only
//! input or an object by input name; stacked along a new first dimension) and the columnar
//! form (`inputs`: the value of the only input or an object by input name, batch dimension
//! included). Values are nested lists of numbers, booleans or strings; `{"b64": "..."}` is a
//! binary string. Responses mirror the form: `predictions` (per example; an object by output
//! name when there are several) or `outputs`. Strings come back as text when they are UTF-8,
//! else as `{"b64": ...}`.

use base64::Engine as _;
use inferd_core::backend::NamedTensor;
use inferd_core::tensor::{DataType, Tensor, TensorData};
use serde_json::{Map, Number, Value, json};

/// What an input looks like to the converter.
#[derive(Clone, Debug)]
pub struct InputSpec {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: DataType,
}

/// Which form the request used (the response mirrors it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `instances` -> `predictions`.
    Row,
    /// `inputs` -> `outputs`.
    Columnar,
}

/// A client mistake, worded for the `error` field.
pub type Error = String;

fn is_b64(v: &Value) -> Option<&str> {
    match v {
        Value::Object(m) if m.len() == 1 => m.get("b64").and_then(|s| s.as_str()),
        _ => None,
    }
}

/// The shape of a nested list and its leaves, in order.
fn flatten<'a>(name: &str, v: &'a Value, leaves: &mut Vec<&'a Value>) -> Result<Vec<usize>, Error> {
    match v {
        Value::Array(items) => {
            let mut inner: Option<Vec<usize>> = None;
            for item in items {
                let s = flatten(name, item, leaves)?;
                match &inner {
                    None => inner = Some(s),
                    Some(prev) if *prev != s => {
                        return Err(format!(
                            "input '{name}': ragged list (an element of shape {s:?} beside one of {prev:?}); every element of a list must have the same shape"
                        ));
                    }
                    _ => {}
                }
            }
            let mut shape = vec![items.len()];
            shape.extend(inner.unwrap_or_default());
            Ok(shape)
        }
        Value::Object(_) if is_b64(v).is_none() => Err(format!(
            "input '{name}': an object where a value was expected (only {{\"b64\": ...}} objects are values)"
        )),
        _ => {
            leaves.push(v);
            Ok(Vec::new())
        }
    }
}

fn leaf_f64(name: &str, v: &Value) -> Result<f64, Error> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("input '{name}': {n} is not a number it can hold")),
        Value::Bool(b) => Ok(f64::from(u8::from(*b))),
        other => Err(format!("input '{name}': expected a number, got {other}")),
    }
}

fn leaf_i128(name: &str, v: &Value) -> Result<i128, Error> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .ok_or_else(|| format!("input '{name}': {n} is not an integer")),
        Value::Bool(b) => Ok(i128::from(*b)),
        other => Err(format!("input '{name}': expected an integer, got {other}")),
    }
}

/// One tensor from a value tree.
pub fn tensor(spec: &InputSpec, v: &Value) -> Result<Tensor, Error> {
    let name = spec.name.as_str();
    let mut leaves = Vec::new();
    let shape = flatten(name, v, &mut leaves)?;
    let dt = spec.dtype;
    let data = if dt == DataType::Bytes {
        let mut items = Vec::with_capacity(leaves.len());
        for l in leaves {
            items.push(match (l, is_b64(l)) {
                (_, Some(b)) => base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| format!("input '{name}': bad base64: {e}"))?
                    .into(),
                (Value::String(s), None) => s.as_bytes().to_vec().into(),
                (other, None) => {
                    return Err(format!("input '{name}': expected a string, got {other}"));
                }
            });
        }
        TensorData::Bytes(items)
    } else {
        let mut raw = Vec::with_capacity(leaves.len() * dt.size().unwrap_or(1));
        for l in leaves {
            let range = |x: i128, lo: i128, hi: i128| {
                if x < lo || x > hi {
                    Err(format!("input '{name}': {x} does not fit {}", dt.as_str()))
                } else {
                    Ok(x)
                }
            };
            match dt {
                DataType::Bool => raw.push(u8::from(match l {
                    Value::Bool(b) => *b,
                    other => leaf_i128(name, other)? != 0,
                })),
                DataType::U8 => raw.push(range(leaf_i128(name, l)?, 0, 255)? as u8),
                DataType::I8 => raw.push(range(leaf_i128(name, l)?, -128, 127)? as i8 as u8),
                DataType::U16 => {
                    raw.extend((range(leaf_i128(name, l)?, 0, 65535)? as u16).to_le_bytes())
                }
                DataType::I16 => {
                    raw.extend((range(leaf_i128(name, l)?, -32768, 32767)? as i16).to_le_bytes())
                }
                DataType::U32 => raw
                    .extend((range(leaf_i128(name, l)?, 0, u32::MAX.into())? as u32).to_le_bytes()),
                DataType::I32 => raw.extend(
                    (range(leaf_i128(name, l)?, i32::MIN.into(), i32::MAX.into())? as i32)
                        .to_le_bytes(),
                ),
                DataType::U64 => raw
                    .extend((range(leaf_i128(name, l)?, 0, u64::MAX.into())? as u64).to_le_bytes()),
                DataType::I64 => raw.extend(
                    (range(leaf_i128(name, l)?, i64::MIN.into(), i64::MAX.into())? as i64)
                        .to_le_bytes(),
                ),
                DataType::F16 => raw.extend(half::f16::from_f64(leaf_f64(name, l)?).to_le_bytes()),
                DataType::BF16 => {
                    raw.extend(half::bf16::from_f64(leaf_f64(name, l)?).to_le_bytes())
                }
                DataType::F32 => raw.extend((leaf_f64(name, l)? as f32).to_le_bytes()),
                DataType::F64 => raw.extend(leaf_f64(name, l)?.to_le_bytes()),
                DataType::Bytes => {}
            }
        }
        TensorData::Raw(raw.into())
    };
    Tensor::new(dt, shape, data).map_err(|e| format!("input '{name}': {e}"))
}

/// The request's inputs and its form, from the body of a `:predict` call.
pub fn request(body: &Value, inputs: &[InputSpec]) -> Result<(Form, Vec<NamedTensor>), Error> {
    let obj = body
        .as_object()
        .ok_or("the request body must be a JSON object with 'instances' or 'inputs'")?;
    let one = |spec: &InputSpec, v: &Value| -> Result<NamedTensor, Error> {
        Ok(NamedTensor {
            name: spec.name.clone(),
            tensor: tensor(spec, v)?,
        })
    };
    let by_name = |m: &Map<String, Value>| -> Result<Vec<NamedTensor>, Error> {
        if let Some(extra) = m.keys().find(|k| !inputs.iter().any(|i| &i.name == *k)) {
            return Err(format!(
                "the model has no input '{extra}' (its inputs: {})",
                inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        inputs
            .iter()
            .map(|spec| {
                let v = m
                    .get(&spec.name)
                    .ok_or_else(|| format!("input '{}' is missing", spec.name))?;
                one(spec, v)
            })
            .collect()
    };
    match (obj.get("instances"), obj.get("inputs")) {
        (Some(_), Some(_)) => {
            Err("give either 'instances' (row form) or 'inputs' (columnar form), not both".into())
        }
        (None, None) => Err("the request has neither 'instances' nor 'inputs'".into()),
        (None, Some(v)) => {
            let tensors = match v {
                Value::Object(m) if is_b64(v).is_none() => by_name(m)?,
                _ if inputs.len() == 1 => vec![one(&inputs[0], v)?],
                _ => {
                    return Err(format!(
                        "the model has {} inputs: give 'inputs' as an object by input name",
                        inputs.len()
                    ));
                }
            };
            Ok((Form::Columnar, tensors))
        }
        (Some(v), None) => {
            let rows = v
                .as_array()
                .ok_or("'instances' must be a list, one entry per example")?;
            if rows.is_empty() {
                return Err("'instances' is empty".into());
            }
            let named = rows
                .iter()
                .all(|r| matches!(r, Value::Object(_)) && is_b64(r).is_none());
            let mut columns: Vec<Vec<Value>> = vec![Vec::with_capacity(rows.len()); inputs.len()];
            for (i, r) in rows.iter().enumerate() {
                match (named, r) {
                    (true, Value::Object(m)) => {
                        if let Some(extra) =
                            m.keys().find(|k| !inputs.iter().any(|s| &s.name == *k))
                        {
                            return Err(format!("instance {i}: the model has no input '{extra}'"));
                        }
                        for (c, spec) in columns.iter_mut().zip(inputs) {
                            c.push(m.get(&spec.name).cloned().ok_or_else(|| {
                                format!("instance {i}: input '{}' is missing", spec.name)
                            })?);
                        }
                    }
                    _ if inputs.len() == 1 => columns[0].push(r.clone()),
                    _ => {
                        return Err(format!(
                            "the model has {} inputs: each instance must be an object by input name",
                            inputs.len()
                        ));
                    }
                }
            }
            let tensors = inputs
                .iter()
                .zip(columns)
                .map(|(spec, c)| one(spec, &Value::Array(c)))
                .collect::<Result<_, _>>()?;
            Ok((Form::Row, tensors))
        }
    }
}

fn leaf_json(t: &Tensor, i: usize) -> Value {
    let num = |f: f64| {
        Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    };
    match t.data() {
        TensorData::Bytes(items) => match std::str::from_utf8(&items[i]) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => json!({"b64": base64::engine::general_purpose::STANDARD.encode(&items[i])}),
        },
        TensorData::Raw(r) => {
            let w = t.dtype().size().unwrap_or(1);
            let b = &r[i * w..(i + 1) * w];
            match t.dtype() {
                DataType::Bool => Value::Bool(b[0] != 0),
                DataType::U8 => Value::from(b[0]),
                DataType::I8 => Value::from(b[0] as i8),
                DataType::U16 => Value::from(u16::from_le_bytes([b[0], b[1]])),
                DataType::I16 => Value::from(i16::from_le_bytes([b[0], b[1]])),
                DataType::U32 => Value::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                DataType::I32 => Value::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                DataType::U64 => Value::from(u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))),
                DataType::I64 => Value::from(i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))),
                DataType::F16 => num(half::f16::from_le_bytes([b[0], b[1]]).to_f64()),
                DataType::BF16 => num(half::bf16::from_le_bytes([b[0], b[1]]).to_f64()),
                DataType::F32 => num(f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
                DataType::F64 => num(f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))),
                DataType::Bytes => Value::Null,
            }
        }
    }
}

/// Elements `[start, start + count)` of `t`, nested by `shape`.
fn nest(t: &Tensor, shape: &[usize], start: usize) -> Value {
    match shape.split_first() {
        None => leaf_json(t, start),
        Some((&n, rest)) => {
            let inner: usize = rest.iter().product();
            Value::Array((0..n).map(|k| nest(t, rest, start + k * inner)).collect())
        }
    }
}

/// A tensor as a nested list (a scalar as its value).
pub fn value(t: &Tensor) -> Value {
    nest(t, t.shape(), 0)
}

/// The response body for `outputs` in `form`.
pub fn response(form: Form, outputs: &[NamedTensor]) -> Result<Value, Error> {
    match form {
        Form::Columnar => Ok(match outputs {
            [one] => json!({"outputs": value(&one.tensor)}),
            _ => {
                json!({"outputs": outputs.iter().map(|o| (o.name.clone(), value(&o.tensor))).collect::<Map<_, _>>()})
            }
        }),
        Form::Row => {
            let n = outputs
                .first()
                .and_then(|o| o.tensor.shape().first().copied())
                .unwrap_or(0);
            if let Some(o) = outputs
                .iter()
                .find(|o| o.tensor.shape().first() != Some(&n))
            {
                return Err(format!(
                    "output '{}' has no batch dimension of {n} to split into predictions; call with 'inputs' (columnar form)",
                    o.name
                ));
            }
            let per = |o: &NamedTensor, k: usize| {
                let rest = &o.tensor.shape()[1..];
                nest(&o.tensor, rest, k * rest.iter().product::<usize>())
            };
            let preds: Vec<Value> = (0..n)
                .map(|k| match outputs {
                    [one] => per(one, k),
                    _ => Value::Object(
                        outputs
                            .iter()
                            .map(|o| (o.name.clone(), per(o, k)))
                            .collect(),
                    ),
                })
                .collect();
            Ok(json!({"predictions": preds}))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: DataType) -> InputSpec {
        InputSpec {
            name: name.into(),
            dtype,
        }
    }

    #[test]
    fn row_form_stacks_instances_and_splits_predictions() {
        let inputs = [spec("x", DataType::F32)];
        let (form, t) =
            request(&json!({"instances": [[1.0, 2.0], [3.0, 4.0]]}), &inputs).expect("request");
        assert_eq!(form, Form::Row);
        assert_eq!(t[0].tensor.shape(), &[2, 2]);
        let out = response(form, &t).expect("response");
        assert_eq!(out, json!({"predictions": [[1.0, 2.0], [3.0, 4.0]]}));
    }

    #[test]
    fn named_instances_and_several_outputs_are_objects() {
        let inputs = [spec("a", DataType::I64), spec("s", DataType::Bytes)];
        let body = json!({"instances": [{"a": 1, "s": "x"}, {"a": 2, "s": {"b64": "/w=="}}]});
        let (form, t) = request(&body, &inputs).expect("request");
        assert_eq!(
            t[1].tensor.data(),
            &TensorData::Bytes(vec![b"x".to_vec().into(), vec![0xff].into()])
        );
        let out = response(form, &t).expect("response");
        assert_eq!(
            out,
            json!({"predictions": [{"a": 1, "s": "x"}, {"a": 2, "s": {"b64": "/w=="}}]})
        );
    }

    #[test]
    fn columnar_form_keeps_the_given_shape() {
        let inputs = [spec("x", DataType::F64), spec("y", DataType::Bool)];
        let (form, t) =
            request(&json!({"inputs": {"x": [[1.5]], "y": true}}), &inputs).expect("request");
        assert_eq!(form, Form::Columnar);
        assert_eq!(t[0].tensor.shape(), &[1, 1]);
        assert_eq!(t[1].tensor.shape(), &[] as &[usize]);
        assert_eq!(
            response(form, &t).expect("response"),
            json!({"outputs": {"x": [[1.5]], "y": true}})
        );
    }

    #[test]
    fn client_mistakes_are_named() {
        let inputs = [spec("x", DataType::I8)];
        let e = |body: Value| request(&body, &inputs).expect_err("refused");
        assert!(e(json!({"instances": [[1, 2], [3]]})).contains("ragged"));
        assert!(e(json!({"instances": [300]})).contains("does not fit INT8"));
        assert!(e(json!({"instances": [1], "inputs": [1]})).contains("not both"));
        assert!(e(json!({"inputs": {"z": 1}})).contains("no input 'z'"));
        assert!(e(json!({"instances": ["a"]})).contains("expected an integer"));
        assert!(e(json!([1])).contains("JSON object"));
    }
}
