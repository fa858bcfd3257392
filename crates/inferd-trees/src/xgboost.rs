//! XGBoost's native model files: JSON and UBJSON (same document, binary encoding).

use serde_json::{Map, Number, Value};

use crate::forest::{Forest, LEAF, Missing, Node, Rule, Transform, Tree};

fn field<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Value, String> {
    let mut cur = v;
    for (i, key) in path.iter().enumerate() {
        cur = cur
            .get(key)
            .ok_or_else(|| format!("missing field '{}'", path[..=i].join(".")))?;
    }
    Ok(cur)
}

/// A number that XGBoost may write as a JSON number or as a string ("5E-1", "[5E-1]").
fn num(v: &Value, what: &str) -> Result<Vec<f64>, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .map(|f| vec![f])
            .ok_or_else(|| format!("{what} is not a number")),
        Value::String(s) => {
            let t = s.trim().trim_start_matches('[').trim_end_matches(']');
            t.split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| {
                    p.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("{what} '{s}' is not a number"))
                })
                .collect()
        }
        _ => Err(format!("{what} is not a number")),
    }
}

fn arr<'a>(t: &'a Value, key: &str, tree: usize) -> Result<&'a Vec<Value>, String> {
    t.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("tree {tree}: missing array '{key}'"))
}

fn ints(t: &Value, key: &str, tree: usize) -> Result<Vec<i64>, String> {
    arr(t, key, tree)?
        .iter()
        .map(|v| match v {
            Value::Bool(b) => Ok(*b as i64),
            other => other
                .as_i64()
                .ok_or_else(|| format!("tree {tree}: '{key}' holds a non-integer")),
        })
        .collect()
}

fn floats(t: &Value, key: &str, tree: usize) -> Result<Vec<f64>, String> {
    arr(t, key, tree)?
        .iter()
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| format!("tree {tree}: '{key}' holds a non-number"))
        })
        .collect()
}

/// Builds a forest from a parsed XGBoost model document.
pub fn from_json(doc: &Value) -> Result<Forest, String> {
    let learner = field(doc, &["learner"])?;
    let objective = field(learner, &["objective", "name"])?
        .as_str()
        .unwrap_or("")
        .to_string();
    let params = field(learner, &["learner_model_param"])?;
    let n_features = num(field(params, &["num_feature"])?, "num_feature")?
        .first()
        .copied()
        .unwrap_or(0.0) as usize;
    let num_class = params
        .get("num_class")
        .map(|v| num(v, "num_class"))
        .transpose()?
        .and_then(|v| v.first().copied())
        .unwrap_or(0.0) as usize;
    let base = num(field(params, &["base_score"])?, "base_score")?;
    let booster = field(learner, &["gradient_booster"])?;
    let name = booster.get("name").and_then(Value::as_str).unwrap_or("");
    if name != "gbtree" {
        return Err(format!("booster '{name}' is not supported (only gbtree)"));
    }
    let model = field(booster, &["model"])?;
    let trees_json = field(model, &["trees"])?
        .as_array()
        .ok_or("'trees' is not an array")?;
    let tree_info: Vec<i64> = model
        .get("tree_info")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    let (n_outputs, transform) = match objective.as_str() {
        "binary:logistic" | "reg:logistic" => (1, Transform::Sigmoid(1.0)),
        "binary:logitraw"
        | "reg:squarederror"
        | "reg:linear"
        | "reg:absoluteerror"
        | "reg:pseudohubererror" => (1, Transform::Identity),
        "count:poisson" | "reg:gamma" | "reg:tweedie" => (1, Transform::Exp),
        "multi:softprob" | "multi:softmax" => (num_class.max(1), Transform::Softmax),
        other => return Err(format!("objective '{other}' is not supported")),
    };
    // The base score is stored in probability space; the margin starts from its inverse link.
    let to_margin = |b: f64| match transform {
        Transform::Sigmoid(_) => (b / (1.0 - b)).ln(),
        Transform::Exp => b.ln(),
        _ => b,
    };
    let base_margin: Vec<f64> = (0..n_outputs)
        .map(|i| to_margin(*base.get(i).or(base.first()).unwrap_or(&0.0)))
        .collect();
    let mut trees = Vec::with_capacity(trees_json.len());
    for (ti, t) in trees_json.iter().enumerate() {
        if t.get("categories")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty())
        {
            return Err(format!("tree {ti}: categorical splits are not supported"));
        }
        let left = ints(t, "left_children", ti)?;
        let right = ints(t, "right_children", ti)?;
        let feat = ints(t, "split_indices", ti)?;
        let cond = floats(t, "split_conditions", ti)?;
        let dleft = ints(t, "default_left", ti)?;
        let n = left.len();
        if [right.len(), feat.len(), cond.len(), dleft.len()]
            .iter()
            .any(|&l| l != n)
        {
            return Err(format!("tree {ti}: node arrays have different lengths"));
        }
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let leaf = left[i] < 0;
            let child =
                |c: i64| u32::try_from(c).map_err(|_| format!("tree {ti} node {i}: bad child {c}"));
            nodes.push(Node {
                feature: if leaf {
                    0
                } else {
                    u32::try_from(feat[i])
                        .map_err(|_| format!("tree {ti} node {i}: bad feature"))?
                },
                left: if leaf { LEAF } else { child(left[i])? },
                right: if leaf { LEAF } else { child(right[i])? },
                default_left: dleft[i] != 0,
                missing: Missing::NaN,
                value: cond[i],
            });
        }
        let group = tree_info.get(ti).copied().unwrap_or(0);
        trees.push(Tree {
            nodes,
            group: usize::try_from(group).map_err(|_| format!("tree {ti}: bad tree_info"))?,
        });
    }
    let forest = Forest {
        trees,
        n_features,
        n_outputs,
        base_margin,
        transform,
        rule: Rule::Xgboost,
        objective,
    };
    forest.validate()?;
    Ok(forest)
}

/// Decodes UBJSON (as XGBoost writes it: big-endian numbers, optimized typed containers).
pub fn ubjson(data: &[u8]) -> Result<Value, String> {
    let mut p = Ubj { d: data, i: 0 };
    let v = p.value(None, 0)?;
    Ok(v)
}

struct Ubj<'a> {
    d: &'a [u8],
    i: usize,
}

impl Ubj<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .i
            .checked_add(n)
            .filter(|&e| e <= self.d.len())
            .ok_or("UBJSON runs past the end")?;
        let s = &self.d[self.i..end];
        self.i = end;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn int(&mut self, marker: u8) -> Result<i64, String> {
        Ok(match marker {
            b'i' => self.byte()? as i8 as i64,
            b'U' => self.byte()? as i64,
            b'I' => i16::from_be_bytes(self.take(2)?.try_into().map_err(|_| "short")?) as i64,
            b'l' => i32::from_be_bytes(self.take(4)?.try_into().map_err(|_| "short")?) as i64,
            b'L' => i64::from_be_bytes(self.take(8)?.try_into().map_err(|_| "short")?),
            m => return Err(format!("expected an integer marker, got 0x{m:02x}")),
        })
    }
    fn len(&mut self) -> Result<usize, String> {
        let m = self.byte()?;
        let n = self.int(m)?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.d.len())
            .ok_or_else(|| format!("bad length {n}"))
    }
    fn value(&mut self, marker: Option<u8>, depth: usize) -> Result<Value, String> {
        if depth > 64 {
            return Err("UBJSON nested too deeply".into());
        }
        let m = match marker {
            Some(m) => m,
            None => loop {
                let m = self.byte()?;
                if m != b'N' {
                    break m;
                }
            },
        };
        Ok(match m {
            b'Z' => Value::Null,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            b'i' | b'U' | b'I' | b'l' | b'L' => Value::from(self.int(m)?),
            b'd' => Number::from_f64(f32::from_be_bytes(
                self.take(4)?.try_into().map_err(|_| "short")?,
            ) as f64)
            .map(Value::Number)
            .unwrap_or(Value::Null),
            b'D' => Number::from_f64(f64::from_be_bytes(
                self.take(8)?.try_into().map_err(|_| "short")?,
            ))
            .map(Value::Number)
            .unwrap_or(Value::Null),
            b'C' => Value::String((self.byte()? as char).to_string()),
            b'S' | b'H' => {
                let n = self.len()?;
                Value::String(String::from_utf8_lossy(self.take(n)?).into_owned())
            }
            b'[' | b'{' => {
                let (ty, count) = self.container_header()?;
                if m == b'[' {
                    let mut v = Vec::with_capacity(count.unwrap_or(0).min(1 << 16));
                    match count {
                        Some(n) => {
                            for _ in 0..n {
                                v.push(self.value(ty, depth + 1)?);
                            }
                        }
                        None => loop {
                            if self.d.get(self.i) == Some(&b']') {
                                self.i += 1;
                                break;
                            }
                            v.push(self.value(None, depth + 1)?);
                        },
                    }
                    Value::Array(v)
                } else {
                    let mut map = Map::new();
                    let mut read_pair = |p: &mut Self| -> Result<(), String> {
                        let n = p.len()?;
                        let k = String::from_utf8_lossy(p.take(n)?).into_owned();
                        let v = p.value(ty, depth + 1)?;
                        map.insert(k, v);
                        Ok(())
                    };
                    match count {
                        Some(n) => {
                            for _ in 0..n {
                                read_pair(self)?;
                            }
                        }
                        None => loop {
                            if self.d.get(self.i) == Some(&b'}') {
                                self.i += 1;
                                break;
                            }
                            read_pair(self)?;
                        },
                    }
                    Value::Object(map)
                }
            }
            other => {
                return Err(format!(
                    "unknown UBJSON marker 0x{other:02x} at offset {}",
                    self.i - 1
                ));
            }
        })
    }
    fn container_header(&mut self) -> Result<(Option<u8>, Option<usize>), String> {
        let mut ty = None;
        if self.d.get(self.i) == Some(&b'$') {
            self.i += 1;
            ty = Some(self.byte()?);
            if self.d.get(self.i) != Some(&b'#') {
                return Err("typed UBJSON container without a count".into());
            }
        }
        let mut count = None;
        if self.d.get(self.i) == Some(&b'#') {
            self.i += 1;
            count = Some(self.len()?);
        }
        Ok((ty, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ubjson_typed_containers_decode() {
        // {"a": [$d#U2 1.5f32 -2f32], "b": "xy"}
        let mut d = vec![b'{', b'U', 1, b'a', b'[', b'$', b'd', b'#', b'U', 2];
        d.extend_from_slice(&1.5f32.to_be_bytes());
        d.extend_from_slice(&(-2.0f32).to_be_bytes());
        d.extend_from_slice(&[b'U', 1, b'b', b'S', b'U', 2, b'x', b'y', b'}']);
        let v = ubjson(&d).unwrap();
        assert_eq!(v, serde_json::json!({"a": [1.5, -2.0], "b": "xy"}));
        assert!(ubjson(&d[..d.len() - 3]).is_err());
        assert!(
            ubjson(&[
                b'[', b'#', b'L', 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
            ])
            .is_err()
        );
    }

    #[test]
    fn base_score_forms_parse() {
        assert_eq!(
            num(&serde_json::json!("[4.3E-1]"), "b").unwrap(),
            vec![0.43]
        );
        assert_eq!(num(&serde_json::json!("5E-1"), "b").unwrap(), vec![0.5]);
        assert_eq!(num(&serde_json::json!(0.25), "b").unwrap(), vec![0.25]);
        assert!(num(&serde_json::json!("x"), "b").is_err());
    }
}
