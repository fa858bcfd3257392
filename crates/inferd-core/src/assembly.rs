//! Batch assembly: the inputs of the requests of one batch concatenated along the batch
//! dimension, and the batch's outputs split back per request. Both check what they are given,
//! so a scheduler bug is an error naming the input, never tensors of different shapes run as one.

use bytes::{Bytes, BytesMut};

use crate::backend::NamedTensor;
use crate::error::{Error, Result};
use crate::scheduler::Job;
use crate::tensor::{Tensor, TensorData};

/// Concatenates the jobs' inputs along the batch dimension. One job's inputs are moved, not
/// copied. The jobs must batch together ([`crate::request::PreparedRequest::same_batch_as`]) and each input's
/// leading dimension must be its job's row count: checked here again, so a scheduler bug is an
/// error naming the input, never tensors of different shapes run as one.
pub fn merge_inputs(jobs: &mut [Job]) -> Result<(Vec<NamedTensor>, usize)> {
    let rows: usize = jobs.iter().map(|j| j.req.batch).sum();
    if jobs.len() == 1 {
        return Ok((std::mem::take(&mut jobs[0].req.inputs), rows));
    }
    for (k, j) in jobs.iter().enumerate() {
        if !j.req.same_batch_as(&jobs[0].req) {
            return Err(Error::Internal(format!(
                "batch assembly: request {k} of the batch differs from the first in its inputs, \
                 their types or shapes past the batch dimension, or its outputs"
            )));
        }
        if let Some(bad) = j
            .req
            .inputs
            .iter()
            .find(|nt| nt.tensor.shape().first() != Some(&j.req.batch))
        {
            return Err(Error::Internal(format!(
                "batch assembly: input '{}' of request {k} has shape {:?}, not {} rows",
                bad.name,
                bad.tensor.shape(),
                j.req.batch
            )));
        }
    }
    let n_inputs = jobs[0].req.inputs.len();
    let mut merged = Vec::with_capacity(n_inputs);
    for i in 0..n_inputs {
        let first = &jobs[0].req.inputs[i];
        let mut shape = first.tensor.shape().to_vec();
        shape[0] = rows;
        let data = match first.tensor.data() {
            TensorData::Raw(_) => {
                let mut buf = BytesMut::with_capacity(
                    jobs.iter().map(|j| j.req.inputs[i].tensor.wire_len()).sum(),
                );
                for j in jobs.iter() {
                    buf.extend_from_slice(
                        j.req.inputs[i]
                            .tensor
                            .raw()
                            .map(|b| &b[..])
                            .unwrap_or_default(),
                    );
                }
                TensorData::Raw(buf.freeze())
            }
            TensorData::Bytes(_) => TensorData::Bytes(
                jobs.iter()
                    .flat_map(|j| {
                        j.req.inputs[i]
                            .tensor
                            .bytes_elements()
                            .unwrap_or_default()
                            .iter()
                            .cloned()
                    })
                    .collect(),
            ),
        };
        let tensor = Tensor::new(first.tensor.dtype(), shape, data)
            .map_err(|e| Error::Internal(format!("batch assembly: {e}")))?;
        merged.push(NamedTensor {
            name: first.name.clone(),
            tensor,
        });
    }
    Ok((merged, rows))
}

/// Splits batched outputs back into per-job outputs by each job's row count.
pub fn split_outputs(
    model: &str,
    outputs: Vec<NamedTensor>,
    rows: &[usize],
) -> Result<Vec<Vec<NamedTensor>>> {
    if rows.len() == 1 {
        return Ok(vec![outputs]);
    }
    let total: usize = rows.iter().sum();
    let mut per_job: Vec<Vec<NamedTensor>> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for o in outputs {
        let shape = o.tensor.shape().to_vec();
        if shape.first() != Some(&total) {
            return Err(Error::Internal(format!(
                "model '{model}' output '{}' has shape {shape:?}; a batch of {total} rows needs it to start with {total}",
                o.name
            )));
        }
        let per_row = o.tensor.len().checked_div(total).unwrap_or(0);
        let mut start = 0usize;
        for (k, &r) in rows.iter().enumerate() {
            let mut s = shape.clone();
            s[0] = r;
            let data = match o.tensor.data() {
                TensorData::Raw(raw) => {
                    let size = o.tensor.dtype().size().unwrap_or(1);
                    let b: Bytes = raw.slice(start * per_row * size..(start + r) * per_row * size);
                    TensorData::Raw(b)
                }
                TensorData::Bytes(items) => {
                    TensorData::Bytes(items[start * per_row..(start + r) * per_row].to_vec())
                }
            };
            let t = Tensor::new(o.tensor.dtype(), s, data)
                .map_err(|e| Error::Internal(format!("batch split: {e}")))?;
            per_job[k].push(NamedTensor {
                name: o.name.clone(),
                tensor: t,
            });
            start += r;
        }
    }
    Ok(per_job)
}
