//! Checkpoints of block-wise training ([`crate::blockwise::Checkpoint`],
//! `general.type` [`GENERAL_TYPE`]) and of end-to-end distillation
//! ([`crate::e2e::DistillCheckpoint`], [`E2E_GENERAL_TYPE`]) as GGUF files:
//! the counters, the shuffled order and the Adam step sizes as metadata
//! under `gguftool.qat.checkpoint.`, every tensor (parameters, best
//! snapshot, Adam moments) as F32. Floats are stored exactly (f64 or f32
//! values), so a resumed run continues bit for bit. Reading validates every
//! key, type and length, and the tensors' sizes.

use crate::blockwise::{BlockReport, Checkpoint};
use crate::e2e::{DistillCheckpoint, EvalStats, LossParts};
use crate::engine_error::{EngineError, EngineResult};
use gguftool_gguf::validate::StandardTypes;
use gguftool_gguf::value::{Array, Metadata, Value};
use gguftool_gguf::write::{GgufWriter, TensorSpec};
use gguftool_gguf::GgufFile;
use std::io::{Seek, Write};

const P: &str = "gguftool.qat.checkpoint.";
/// Value of `general.type` in a checkpoint of block-wise training.
pub const GENERAL_TYPE: &str = "qat-checkpoint";
/// Value of `general.type` in a checkpoint of end-to-end distillation
/// (also LoRA-QAT).
pub const E2E_GENERAL_TYPE: &str = "qat-e2e-checkpoint";
const VERSION: u32 = 1;

/// The kind of checkpoint `f` is (its `general.type`): [`GENERAL_TYPE`],
/// [`E2E_GENERAL_TYPE`], or `None` for anything else.
pub fn kind(f: &GgufFile) -> Option<&'static str> {
    match f
        .header()
        .metadata
        .get("general.type")
        .and_then(Value::as_str)
    {
        Some(GENERAL_TYPE) => Some(GENERAL_TYPE),
        Some(E2E_GENERAL_TYPE) => Some(E2E_GENERAL_TYPE),
        _ => None,
    }
}

type NamedTensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Writes `md` and `tensors` (F32) as GGUF into `w`.
fn write_gguf<W: Write + Seek>(w: W, md: &Metadata, tensors: &NamedTensors) -> EngineResult<W> {
    let specs = tensors
        .iter()
        .map(|(name, shape, v)| TensorSpec {
            name: name.clone(),
            ggml_type: 0,
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            n_bytes: v.len() as u64 * 4,
        })
        .collect();
    let err = |e: gguftool_gguf::GgufError| bad(e.to_string());
    let mut writer = GgufWriter::begin(w, md, specs, &StandardTypes).map_err(err)?;
    for (_, _, v) in tensors {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        writer.write_tensor_data(&bytes).map_err(err)?;
    }
    writer.finish().map_err(err)
}

/// Every tensor of `f`, which must all be F32.
fn read_tensors(f: &GgufFile) -> EngineResult<NamedTensors> {
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
    Ok(tensors)
}

/// Typed access to the `gguftool.qat.checkpoint.` keys of a checkpoint
/// whose `general.type` is `kind`.
struct Keys<'a> {
    md: &'a Metadata,
}

impl<'a> Keys<'a> {
    fn open(f: &'a GgufFile, kind: &str) -> EngineResult<Self> {
        let md = &f.header().metadata;
        if md.get("general.type").and_then(Value::as_str) != Some(kind) {
            return Err(bad(format!(
                "general.type is not {kind:?} (not a QAT checkpoint)"
            )));
        }
        let k = Self { md };
        match k.key("version")? {
            Value::U32(VERSION) => Ok(k),
            v => Err(bad(format!("{P}version is {v:?}, expected u32 {VERSION}"))),
        }
    }

    fn key(&self, s: &str) -> EngineResult<&'a Value> {
        self.md
            .get(&format!("{P}{s}"))
            .ok_or_else(|| bad(format!("missing {P}{s}")))
    }

    fn string(&self, s: &str) -> EngineResult<String> {
        Ok(self
            .key(s)?
            .as_str()
            .ok_or_else(|| bad(format!("{P}{s} must be a string")))?
            .to_string())
    }

    fn u64s(&self, s: &str) -> EngineResult<Vec<usize>> {
        match self.key(s)? {
            Value::Array(Array::U64(v)) => v
                .iter()
                .map(|&x| usize::try_from(x).map_err(|_| bad(format!("{P}{s}: {x} too large"))))
                .collect(),
            _ => Err(bad(format!("{P}{s} must be a u64 array"))),
        }
    }

    fn f64s(&self, s: &str) -> EngineResult<Vec<f64>> {
        match self.key(s)? {
            Value::Array(Array::F64(v)) => Ok(v.clone()),
            _ => Err(bad(format!("{P}{s} must be an f64 array"))),
        }
    }

    fn u32s(&self, s: &str) -> EngineResult<Vec<u32>> {
        match self.key(s)? {
            Value::Array(Array::U32(v)) => Ok(v.clone()),
            _ => Err(bad(format!("{P}{s} must be a u32 array"))),
        }
    }
}

impl DistillCheckpoint {
    /// Writes the checkpoint as GGUF into `w` (`general.type`
    /// [`E2E_GENERAL_TYPE`]).
    ///
    /// # Errors
    /// Writer failures.
    pub fn write<W: Write + Seek>(&self, w: W) -> EngineResult<W> {
        let mut md = Metadata::new();
        md.set("general.type", Value::String(E2E_GENERAL_TYPE.into()));
        let k = |s: &str| format!("{P}{s}");
        md.set(&k("version"), Value::U32(VERSION));
        md.set(&k("fingerprint"), Value::String(self.fingerprint.clone()));
        md.set(&k("notes"), Value::String(self.notes.clone()));
        md.set(
            &k("counters"),
            u64s([
                self.step,
                self.shuffles,
                self.adam_t as usize,
                self.best_step,
                self.tokens,
            ]),
        );
        md.set(&k("order"), Value::Array(Array::U32(self.order.clone())));
        md.set(&k("step_sizes"), f64s(self.step_sizes.clone()));
        md.set(&k("train_seconds"), f64s(vec![self.train_seconds]));
        md.set(&k("evals.steps"), u64s(self.evals.iter().map(|(s, _)| *s)));
        md.set(
            &k("evals.positions"),
            u64s(self.evals.iter().map(|(_, e)| e.positions)),
        );
        md.set(
            &k("evals.values"),
            f64s(
                self.evals
                    .iter()
                    .flat_map(|(_, e)| [e.kl, e.nll, e.top1_agreement])
                    .collect(),
            ),
        );
        md.set(
            &k("train_loss"),
            f64s(
                self.train_loss
                    .iter()
                    .flat_map(|p| [p.kd, p.ce, p.total])
                    .collect(),
            ),
        );
        write_gguf(w, &md, &self.tensors)
    }

    /// Reads and validates a checkpoint written by
    /// [`DistillCheckpoint::write`].
    ///
    /// # Errors
    /// Not such a checkpoint, another version, keys missing or of the wrong
    /// type or length, tensors that are not F32.
    pub fn from_gguf(f: &GgufFile) -> EngineResult<Self> {
        let k = Keys::open(f, E2E_GENERAL_TYPE)?;
        let c = k.u64s("counters")?;
        let [step, shuffles, adam_t, best_step, tokens] = c[..] else {
            return Err(bad(format!("{P}counters must hold 5 values")));
        };
        let steps = k.u64s("evals.steps")?;
        let positions = k.u64s("evals.positions")?;
        let values = k.f64s("evals.values")?;
        if positions.len() != steps.len() || values.len() != 3 * steps.len() {
            return Err(bad("evaluation arrays of inconsistent lengths"));
        }
        let evals = steps
            .iter()
            .zip(&positions)
            .zip(values.chunks_exact(3))
            .map(|((&s, &p), v)| {
                (
                    s,
                    EvalStats {
                        kl: v[0],
                        nll: v[1],
                        top1_agreement: v[2],
                        positions: p,
                    },
                )
            })
            .collect();
        let losses = k.f64s("train_loss")?;
        if !losses.len().is_multiple_of(3) {
            return Err(bad(format!("{P}train_loss must hold 3 values per step")));
        }
        let train_loss = losses
            .chunks_exact(3)
            .map(|v| LossParts {
                kd: v[0],
                ce: v[1],
                total: v[2],
            })
            .collect();
        let [train_seconds] = k.f64s("train_seconds")?[..] else {
            return Err(bad(format!("{P}train_seconds must hold 1 value")));
        };
        Ok(Self {
            fingerprint: k.string("fingerprint")?,
            notes: k.string("notes")?,
            step,
            shuffles,
            order: k.u32s("order")?,
            adam_t: adam_t as u64,
            step_sizes: k.f64s("step_sizes")?,
            evals,
            best_step,
            train_loss,
            tokens,
            train_seconds,
            tensors: read_tensors(f)?,
        })
    }
}

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
        write_gguf(w, &md, &self.tensors)
    }

    /// Reads and validates a checkpoint.
    ///
    /// # Errors
    /// Not a checkpoint, another version, keys missing or of the wrong type
    /// or length, tensors that are not F32.
    pub fn from_gguf(f: &GgufFile) -> EngineResult<Self> {
        let k = Keys::open(f, GENERAL_TYPE)?;
        let fingerprint = k.string("fingerprint")?;
        let arr_u64 = |s: &str| k.u64s(s);
        let arr_f64 = |s: &str| k.f64s(s);
        let c = arr_u64("counters")?;
        let [layer, epoch, pos, block_steps, global_step, adam_t, best_epoch] = c[..] else {
            return Err(bad(format!("{P}counters must hold 7 values")));
        };
        let order = k.u32s("order")?;
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
        let tensors = read_tensors(f)?;
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
