//! Checkpoints of block-wise training ([`crate::blockwise::Checkpoint`]) as
//! GGUF files: the counters, the epoch's order and the Adam step sizes as
//! metadata under `gguftool.qat.checkpoint.`, every tensor (parameters,
//! best snapshot, Adam moments) as F32. Floats are stored exactly (f64 or
//! f32 values), so a resumed run continues bit for bit. Reading validates
//! every key, type and length, and the tensors' sizes.

use crate::blockwise::{BlockReport, Checkpoint};
use crate::engine_error::{EngineError, EngineResult};
use gguftool_gguf::validate::StandardTypes;
use gguftool_gguf::value::{Array, Metadata, Value};
use gguftool_gguf::write::{GgufWriter, TensorSpec};
use gguftool_gguf::GgufFile;
use std::io::{Seek, Write};

const P: &str = "gguftool.qat.checkpoint.";
/// Value of `general.type` in a checkpoint.
pub const GENERAL_TYPE: &str = "qat-checkpoint";
const VERSION: u32 = 1;

fn bad(m: impl Into<String>) -> EngineError {
    EngineError::BadInput(format!("checkpoint: {}", m.into()))
}

fn u64s(v: impl IntoIterator<Item = usize>) -> Value {
    Value::Array(Array::U64(v.into_iter().map(|x| x as u64).collect()))
}

fn f64s(v: Vec<f64>) -> Value {
    Value::Array(Array::F64(v))
}

impl Checkpoint {
    /// Writes the checkpoint as GGUF into `w`.
    ///
    /// # Errors
    /// Writer failures.
    pub fn write<W: Write + Seek>(&self, w: W) -> EngineResult<W> {
        let mut md = Metadata::new();
        md.set("general.type", Value::String(GENERAL_TYPE.into()));
        let k = |s: &str| format!("{P}{s}");
        md.set(&k("version"), Value::U32(VERSION));
        md.set(&k("fingerprint"), Value::String(self.fingerprint.clone()));
        md.set(
            &k("counters"),
            u64s([
                self.layer,
                self.epoch,
                self.pos,
                self.block_steps,
                self.global_step,
                self.adam_t as usize,
                self.best.1,
            ]),
        );
        md.set(&k("order"), Value::Array(Array::U32(self.order.clone())));
        md.set(&k("step_sizes"), f64s(self.step_sizes.clone()));
        md.set(
            &k("mse"),
            f64s(vec![
                self.initial_train_mse,
                self.initial_heldout_mse,
                self.best.0,
            ]),
        );
        md.set(
            &k("epoch_heldout_mse"),
            f64s(self.epoch_heldout_mse.clone()),
        );
        let r = &self.reports;
        md.set(
            &k("reports.counts"),
            u64s(
                r.iter()
                    .flat_map(|r| [r.layer, r.best_epoch, r.steps, r.epoch_heldout_mse.len()]),
            ),
        );
        md.set(
            &k("reports.values"),
            f64s(
                r.iter()
                    .flat_map(|r| {
                        [
                            r.initial_train_mse,
                            r.initial_heldout_mse,
                            r.best_heldout_mse,
                            r.final_train_mse,
                            r.heldout_target_power,
                            r.seconds,
                        ]
                    })
                    .collect(),
            ),
        );
        md.set(
            &k("reports.epoch_heldout_mse"),
            f64s(
                r.iter()
                    .flat_map(|r| r.epoch_heldout_mse.iter().copied())
                    .collect(),
            ),
        );
        let specs = self
            .tensors
            .iter()
            .map(|(name, shape, v)| TensorSpec {
                name: name.clone(),
                ggml_type: 0,
                dims: shape.iter().rev().map(|&d| d as u64).collect(),
                n_bytes: v.len() as u64 * 4,
            })
            .collect();
        let err = |e: gguftool_gguf::GgufError| bad(e.to_string());
        let mut writer = GgufWriter::begin(w, &md, specs, &StandardTypes).map_err(err)?;
        for (_, _, v) in &self.tensors {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            writer.write_tensor_data(&bytes).map_err(err)?;
        }
        writer.finish().map_err(err)
    }

    /// Reads and validates a checkpoint.
    ///
    /// # Errors
    /// Not a checkpoint, another version, keys missing or of the wrong type
    /// or length, tensors that are not F32.
    pub fn from_gguf(f: &GgufFile) -> EngineResult<Self> {
        let md = &f.header().metadata;
        if md.get("general.type").and_then(Value::as_str) != Some(GENERAL_TYPE) {
            return Err(bad(format!(
                "general.type is not {GENERAL_TYPE:?} (not a QAT checkpoint)"
            )));
        }
        let key = |s: &str| -> EngineResult<&Value> {
            md.get(&format!("{P}{s}"))
                .ok_or_else(|| bad(format!("missing {P}{s}")))
        };
        match key("version")? {
            Value::U32(VERSION) => {}
            v => return Err(bad(format!("{P}version is {v:?}, expected u32 {VERSION}"))),
        }
        let fingerprint = key("fingerprint")?
            .as_str()
            .ok_or_else(|| bad(format!("{P}fingerprint must be a string")))?
            .to_string();
        let arr_u64 = |s: &str| -> EngineResult<Vec<usize>> {
            match key(s)? {
                Value::Array(Array::U64(v)) => v
                    .iter()
                    .map(|&x| usize::try_from(x).map_err(|_| bad(format!("{P}{s}: {x} too large"))))
                    .collect(),
                _ => Err(bad(format!("{P}{s} must be a u64 array"))),
            }
        };
        let arr_f64 = |s: &str| -> EngineResult<Vec<f64>> {
            match key(s)? {
                Value::Array(Array::F64(v)) => Ok(v.clone()),
                _ => Err(bad(format!("{P}{s} must be an f64 array"))),
            }
        };
        let c = arr_u64("counters")?;
        let [layer, epoch, pos, block_steps, global_step, adam_t, best_epoch] = c[..] else {
            return Err(bad(format!("{P}counters must hold 7 values")));
        };
        let order = match key("order")? {
            Value::Array(Array::U32(v)) => v.clone(),
            _ => return Err(bad(format!("{P}order must be a u32 array"))),
        };
        let mse = arr_f64("mse")?;
        let [initial_train_mse, initial_heldout_mse, best_mse] = mse[..] else {
            return Err(bad(format!("{P}mse must hold 3 values")));
        };
        let counts = arr_u64("reports.counts")?;
        let values = arr_f64("reports.values")?;
        let epochs = arr_f64("reports.epoch_heldout_mse")?;
        if !counts.len().is_multiple_of(4) || values.len() != counts.len() / 4 * 6 {
            return Err(bad("report arrays of inconsistent lengths"));
        }
        let mut reports = Vec::new();
        let mut e = 0usize;
        for (c, v) in counts.chunks_exact(4).zip(values.chunks_exact(6)) {
            let ne = c[3];
            let eh = epochs
                .get(e..e.saturating_add(ne))
                .ok_or_else(|| bad("report epoch list too short"))?;
            e += ne;
            reports.push(BlockReport {
                layer: c[0],
                initial_train_mse: v[0],
                initial_heldout_mse: v[1],
                epoch_heldout_mse: eh.to_vec(),
                best_heldout_mse: v[2],
                best_epoch: c[1],
                final_train_mse: v[3],
                heldout_target_power: v[4],
                steps: c[2],
                seconds: v[5],
            });
        }
        let mut tensors = Vec::with_capacity(f.header().tensors.len());
        for (i, t) in f.header().tensors.iter().enumerate() {
            if t.ggml_type != 0 || t.n_bytes != t.n_elements.saturating_mul(4) {
                return Err(bad(format!("tensor {:?} is not F32", t.name)));
            }
            let v: Vec<f32> = f
                .tensor_data(i)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let shape = t.dims.iter().rev().map(|&d| d as usize).collect();
            tensors.push((t.name.clone(), shape, v));
        }
        Ok(Self {
            fingerprint,
            layer,
            epoch,
            pos,
            order,
            block_steps,
            global_step,
            adam_t: adam_t as u64,
            step_sizes: arr_f64("step_sizes")?,
            initial_train_mse,
            initial_heldout_mse,
            epoch_heldout_mse: arr_f64("epoch_heldout_mse")?,
            best: (best_mse, best_epoch),
            reports,
            tensors,
        })
    }
}
