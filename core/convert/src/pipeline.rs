//! The conversion pipeline: a per-tensor plan (copy or transcode) executed
//! tensor by tensor, in bounded row chunks, in parallel within each chunk,
//! streaming into an atomically committed output file.

use crate::output::AtomicOutput;
use gguftool_calib::calib_file::Calibration;
pub use gguftool_calib::gptq::GptqReport;
use gguftool_calib::gptq::{GptqOptions, Hessian};
use gguftool_calib::gptq_factor::gptq_shared;
use gguftool_gguf::error::{Error, Result};
use gguftool_gguf::seal::{OutputWriter, WriteOptions};
use gguftool_gguf::value::Metadata;
use gguftool_gguf::write::TensorSpec;
use gguftool_gguf::{GgufFile, TensorInfo};
use gguftool_quant::format::Format;
use gguftool_quant::registry;
use gguftool_quant::rows::row_importance;
use gguftool_quant::rows::RowCodec;
use rayon::prelude::*;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

/// Decoded elements processed per chunk (bounds memory to ~64 MiB of f32).
const CHUNK_ELEMENTS: u64 = 16 << 20;

/// What happens to one tensor.
#[derive(Clone)]
pub enum TensorAction {
    /// Bytes copied unchanged.
    Copy,
    /// Decoded with the source format and re-encoded with `target`.
    Transcode {
        /// Source format (decoder).
        source: &'static dyn Format,
        /// Target format (encoder).
        target: &'static dyn Format,
    },
    /// Bytes already encoded by the caller (e.g. by QAT), written as they are.
    Encoded(Arc<Vec<u8>>),
    /// Decoded with the source format and rounded with GPTQ under the
    /// Hessian of the tensor's input (`gguftool_calib::gptq`).
    Gptq {
        /// Source format (decoder).
        source: &'static dyn Format,
        /// Target format (encoder).
        target: &'static dyn Format,
        /// `X^T X` of the tensor's input (row length square).
        hessian: Arc<Hessian>,
    },
}

impl std::fmt::Debug for TensorAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TensorAction::Copy => write!(f, "copy"),
            TensorAction::Transcode { source, target } => {
                write!(f, "{} -> {}", source.name(), target.name())
            }
            TensorAction::Encoded(b) => write!(f, "encoded ({} bytes)", b.len()),
            TensorAction::Gptq { source, target, .. } => {
                write!(f, "{} -> {} (GPTQ)", source.name(), target.name())
            }
        }
    }
}

/// One tensor of the plan.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// Index of the source tensor.
    pub source_index: usize,
    /// The output tensor.
    pub spec: TensorSpec,
    /// How its bytes are produced.
    pub action: TensorAction,
    /// Importance per input column (`row_len` values, or `row_len` per
    /// matrix of a stacked tensor), weighting the encoder's error.
    pub importance: Option<Arc<Vec<f32>>>,
    /// Why the planner chose this (shown by `--dry-run`).
    pub note: Option<String>,
}

/// A full conversion plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Output metadata.
    pub metadata: Metadata,
    /// Output tensors in order.
    pub tensors: Vec<PlannedTensor>,
}

impl Plan {
    /// Total output tensor-data bytes (padding excluded).
    pub fn output_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.spec.n_bytes).sum()
    }

    /// The metadata handed to the writer: without sealing, any manifest is
    /// dropped, since it describes the file it was made for.
    fn output_metadata(&self, opts: WriteOptions) -> Metadata {
        let mut md = self.metadata.clone();
        if !opts.seal {
            md.remove_where(gguftool_gguf::integrity::is_integrity_key);
        }
        md
    }

    /// Exact size of the file [`execute`] would write.
    pub fn output_file_size(&self, opts: WriteOptions) -> Result<u64> {
        let specs: Vec<TensorSpec> = self.tensors.iter().map(|t| t.spec.clone()).collect();
        let w = OutputWriter::begin(
            std::io::Cursor::new(Vec::new()),
            &self.output_metadata(opts),
            specs,
            opts,
        )
        .map_err(|e| Error::Other(e.to_string()))?;
        let alignment = gguftool_gguf::validate::alignment(&self.metadata)
            .map_err(|e| Error::Other(e.to_string()))?;
        let data: u64 = self
            .tensors
            .iter()
            .map(|t| t.spec.n_bytes.div_ceil(alignment) * alignment)
            .sum();
        Ok(w.header_len() + data)
    }
}

/// Plans transcoding of `t` to `target`, checking both sides are possible.
pub fn transcode(
    t: &TensorInfo,
    index: usize,
    target: &'static dyn Format,
) -> Result<PlannedTensor> {
    let unsupported = |reason: String| Error::Unsupported {
        tensor: t.name.clone(),
        reason,
    };
    let source = registry::by_type_id(t.ggml_type)
        .ok_or_else(|| unsupported(format!("no decoder for type {}", t.type_name)))?;
    if target.quantizer().is_none() {
        return Err(unsupported(format!("{} cannot be encoded", target.name())));
    }
    let bs = target.block_size() as u64;
    if !t.row_len().is_multiple_of(bs) {
        return Err(unsupported(format!(
            "row length {} is not a multiple of the {} block size {bs}",
            t.row_len(),
            target.name()
        )));
    }
    if let Some(rt) = target.row_transform() {
        rt.prepare(t.row_len() as usize, gguftool_quant::rows::DEFAULT_SEED)
            .map_err(unsupported)?;
    }
    Ok(PlannedTensor {
        source_index: index,
        spec: TensorSpec {
            name: t.name.clone(),
            ggml_type: target.type_id(),
            dims: t.dims.clone(),
            n_bytes: t.n_elements / bs * target.type_size() as u64,
        },
        action: TensorAction::Transcode { source, target },
        importance: None,
        note: None,
    })
}

/// Plans an unchanged copy of `t`.
pub fn copy(t: &TensorInfo, index: usize) -> PlannedTensor {
    PlannedTensor {
        source_index: index,
        spec: TensorSpec::from(t),
        action: TensorAction::Copy,
        importance: None,
        note: None,
    }
}

/// Executes `plan` against `src`, writing `out` atomically. `progress` is
/// called with the number of source bytes finished after each chunk.
pub fn execute(
    src: &GgufFile,
    plan: &Plan,
    out: &Path,
    force: bool,
    opts: WriteOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    execute_with_source_hash(src, plan, out, force, opts, None, progress, &|_| {})
}

/// Called as each GPTQ tensor finishes (see [`GptqDone`]).
pub type GptqHook<'a> = dyn Fn(&GptqDone) + Sync + 'a;

/// One GPTQ tensor finished, as reported to the `on_gptq` callback of
/// [`execute_with_source_hash`] (from a worker thread, in completion order).
#[derive(Debug, Clone)]
pub struct GptqDone<'a> {
    /// Tensor name.
    pub tensor: &'a str,
    /// GPTQ tensors finished so far, this one included.
    pub done: usize,
    /// GPTQ tensors in the plan.
    pub total: usize,
    /// Damping, retries and dead columns of its group (the tensors that
    /// share its Hessian and formats are rounded under one factorization).
    pub report: GptqReport,
}

/// [`execute`], also hashing the whole source file on a separate thread
/// while converting and writing the hex SHA-256 into the string value of
/// `source_sha256_key` (which must hold a 64-byte placeholder).
///
/// GPTQ tensors are rounded concurrently, grouped by shared Hessian and
/// formats (one factorization per group), a few groups ahead of the writer
/// (at most one per rayon thread in flight or waiting to be written, so
/// memory stays bounded); the output is still written in plan order, and
/// does not depend on the thread count. `on_gptq` is called as each
/// tensor finishes.
#[allow(clippy::too_many_arguments)]
pub fn execute_with_source_hash(
    src: &GgufFile,
    plan: &Plan,
    out: &Path,
    force: bool,
    opts: WriteOptions,
    source_sha256_key: Option<&str>,
    progress: &(dyn Fn(u64) + Sync),
    on_gptq: &GptqHook,
) -> Result<()> {
    std::thread::scope(|scope| {
        let hasher = source_sha256_key
            .map(|_| scope.spawn(|| gguftool_gguf::integrity::sha256_hex(src.bytes())));
        let finish = |w: OutputWriter<_>| -> Result<_> {
            let wrap = |e| Error::Gguf {
                path: out.to_path_buf(),
                source: e,
            };
            match (source_sha256_key, hasher) {
                (Some(key), Some(h)) => {
                    let hex = h
                        .join()
                        .map_err(|_| Error::Other("source hashing thread panicked".into()))?;
                    w.finish_deferred(&[(key, &hex)]).map_err(wrap)
                }
                _ => w.finish().map_err(wrap),
            }
        };
        execute_inner(
            src,
            plan,
            out,
            force,
            opts,
            source_sha256_key,
            (progress, on_gptq),
            finish,
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn execute_inner(
    src: &GgufFile,
    plan: &Plan,
    out: &Path,
    force: bool,
    opts: WriteOptions,
    deferred_key: Option<&str>,
    (progress, on_gptq): (&(dyn Fn(u64) + Sync), &GptqHook),
    finish: impl FnOnce(
        OutputWriter<std::io::BufWriter<std::fs::File>>,
    ) -> Result<std::io::BufWriter<std::fs::File>>,
) -> Result<()> {
    let output = AtomicOutput::create(out, force)?;
    let specs = plan.tensors.iter().map(|t| t.spec.clone()).collect();
    let metadata = plan.output_metadata(opts);
    let wrap = |e| Error::Gguf {
        path: out.to_path_buf(),
        source: e,
    };
    let deferred: Vec<&str> = deferred_key.into_iter().collect();
    let seeds = row_seeds(src, plan)?;
    let mut w = OutputWriter::begin_deferred(output.writer()?, &metadata, specs, opts, &deferred)
        .map_err(wrap)?;
    // Test hook: a pause per tensor, so tests can interrupt a conversion.
    let delay = std::env::var("GGUFTOOL_TEST_DELAY_PER_TENSOR_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let groups = gptq_groups(plan);
    let total: usize = groups.iter().map(Vec::len).sum();
    let window = rayon::current_num_threads().max(1);
    let rounding = GptqQueue::new(&groups, plan.tensors.len(), window);
    std::thread::scope(|scope| -> Result<()> {
        // Stops the workers however the writer leaves (error or done).
        let _stop = rounding.stop_on_drop();
        for _ in 0..window.min(groups.len()) {
            scope.spawn(|| {
                while let Some(g) = rounding.claim() {
                    let members: Vec<&PlannedTensor> =
                        groups[g].iter().map(|&i| &plan.tensors[i]).collect();
                    let first = &src.header().tensors[members[0].source_index].name;
                    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        gptq_group(src, &members, seeds)
                    }))
                    .unwrap_or_else(|_| {
                        Err(Error::Other(format!("tensor {first:?}: GPTQ panicked")))
                    });
                    if let Ok((_, report)) = &res {
                        for pt in &members {
                            let done = rounding.finished();
                            on_gptq(&GptqDone {
                                tensor: &src.header().tensors[pt.source_index].name,
                                done,
                                total,
                                report: *report,
                            });
                        }
                    }
                    rounding.put(g, res.map(|(bytes, _)| bytes));
                }
            });
        }
        for (plan_index, pt) in plan.tensors.iter().enumerate() {
            if let Some(ms) = delay {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            let data = src.tensor_data(pt.source_index);
            let info = &src.header().tensors[pt.source_index];
            match &pt.action {
                TensorAction::Encoded(bytes) => {
                    if bytes.len() as u64 != pt.spec.n_bytes {
                        return Err(Error::Other(format!(
                            "tensor {:?}: {} encoded bytes, expected {}",
                            pt.spec.name,
                            bytes.len(),
                            pt.spec.n_bytes
                        )));
                    }
                    w.write_tensor_data(bytes).map_err(wrap)?;
                    progress(data.len() as u64);
                }
                TensorAction::Copy => {
                    for chunk in data.chunks(CHUNK_ELEMENTS as usize) {
                        w.write_tensor_data(chunk).map_err(wrap)?;
                        progress(chunk.len() as u64);
                    }
                }
                TensorAction::Gptq { .. } => {
                    let bytes = rounding.take(plan_index)?;
                    w.write_tensor_data(&bytes).map_err(wrap)?;
                    progress(data.len() as u64);
                }
                &TensorAction::Transcode { source, target } => {
                    let imp = pt.importance.as_deref().map(Vec::as_slice);
                    let codecs = (source, seeds.0, target, seeds.1);
                    transcode_tensor(info, data, codecs, imp, &mut |bytes, src_done| {
                        w.write_tensor_data(bytes).map_err(wrap)?;
                        progress(src_done);
                        Ok(())
                    })?;
                }
            }
        }
        Ok(())
    })?;
    finish(w)?;
    output.commit()
}

/// The bytes [`execute`] writes for planned tensor `index` of `plan`,
/// computed on their own (a GPTQ tensor under its own factorization of its
/// Hessian), e.g. to train against a tensor as the output will hold it and
/// then write exactly those bytes ([`TensorAction::Encoded`]).
///
/// # Errors
/// `index` out of range, the plan's or the source's row-transform seed
/// unreadable, encoding errors.
pub fn encode_planned(src: &GgufFile, plan: &Plan, index: usize) -> Result<Vec<u8>> {
    let pt = plan
        .tensors
        .get(index)
        .ok_or_else(|| Error::Other(format!("planned tensor {index} out of range")))?;
    let seeds = row_seeds(src, plan)?;
    let data = src.tensor_data(pt.source_index);
    let info = &src.header().tensors[pt.source_index];
    match &pt.action {
        TensorAction::Encoded(bytes) => Ok(bytes.to_vec()),
        TensorAction::Copy => Ok(data.to_vec()),
        TensorAction::Gptq { .. } => {
            let (mut bytes, _) = gptq_group(src, &[pt], seeds)?;
            Ok(bytes.remove(0))
        }
        &TensorAction::Transcode { source, target } => {
            let mut out = Vec::with_capacity(pt.spec.n_bytes as usize);
            let imp = pt.importance.as_deref().map(Vec::as_slice);
            transcode_tensor(
                info,
                data,
                (source, seeds.0, target, seeds.1),
                imp,
                &mut |bytes, _| {
                    out.extend_from_slice(bytes);
                    Ok(())
                },
            )?;
            Ok(out)
        }
    }
}

/// Targets of at least this many bits per weight (Q8_0, F16, ...) are
/// rounded to nearest even with a calibration file: their error is already
/// small, and GPTQ on Gemma-3-270M's tied 262,144 x 640 embedding at Q8_0
/// took most of a 47-minute conversion on the loaded 2-core machine.
pub const GPTQ_MAX_BPW: f64 = 8.0;

/// The error for a Hessian of width `n` given for tensor `name`, whose rows
/// have `row_len` elements (a calibration file made for another model).
pub(crate) fn width_mismatch(name: &str, n: usize, row_len: u64) -> Error {
    Error::Other(format!(
        "calibration Hessian for tensor {name:?} is {n} wide, its rows have {row_len} elements \
         (made for another model?)"
    ))
}

/// The row-transform seeds of the source file and of the plan's output
/// (`None` where a file has none).
///
/// # Errors
/// [`Error::Kernel`] naming the seed key when one is not a u64.
fn row_seeds(src: &GgufFile, plan: &Plan) -> Result<(Option<u64>, Option<u64>)> {
    let seed_err = |source: gguftool_quant::KernelError| Error::Kernel {
        tensor: gguftool_quant::rows::SEED_KEY.into(),
        source: source.into(),
    };
    Ok((
        gguftool_quant::rows::seed(&src.header().metadata).map_err(seed_err)?,
        gguftool_quant::rows::seed(&plan.metadata).map_err(seed_err)?,
    ))
}

/// Note of a tensor that [`apply_calibration`] turned to GPTQ (after the
/// planner's own note, if any, and `"; "`).
pub const GPTQ_NOTE: &str = "GPTQ with the calibration Hessian";

/// Turns every planned transcode whose tensor has a Hessian in `cal` into
/// GPTQ rounding, except targets of [`GPTQ_MAX_BPW`] or more; returns how
/// many. Tensors without a Hessian keep their plan
/// ([`crate::calibration::check_calibration`] refuses those first where
/// every matrix must be covered).
///
/// # Errors
/// [`Error::Other`] naming the tensor when its Hessian's width is not the
/// tensor's row length (a calibration file made for another model).
pub fn apply_calibration(plan: &mut Plan, src: &GgufFile, cal: &Calibration) -> Result<usize> {
    let mut cache: Vec<(usize, Arc<Hessian>)> = Vec::new();
    let mut n = 0;
    for pt in &mut plan.tensors {
        let TensorAction::Transcode { source, target } = pt.action else {
            continue;
        };
        if target.bits_per_weight() >= GPTQ_MAX_BPW {
            continue;
        }
        let info = &src.header().tensors[pt.source_index];
        let Some(h) = cal.hessian_for(&info.name) else {
            continue;
        };
        if h.n() as u64 != info.row_len() {
            return Err(width_mismatch(&info.name, h.n(), info.row_len()));
        }
        let key = h as *const Hessian as usize;
        let hessian = match cache.iter().find(|(k, _)| *k == key) {
            Some((_, a)) => a.clone(),
            None => {
                let a = Arc::new(h.clone());
                cache.push((key, a.clone()));
                a
            }
        };
        pt.action = TensorAction::Gptq {
            source,
            target,
            hessian,
        };
        // Keep the planner's reason (a fallback) in front of the GPTQ note.
        pt.note = Some(match pt.note.take() {
            Some(reason) => format!("{reason}; {GPTQ_NOTE}"),
            None => GPTQ_NOTE.into(),
        });
        n += 1;
    }
    Ok(n)
}

/// The GPTQ tensors of `plan` (plan indices) grouped by shared Hessian,
/// source and target format, each group in plan order, groups in the plan
/// order of their first member: the consumers of one input site rounded
/// into one format share a factorization.
fn gptq_groups(plan: &Plan) -> Vec<Vec<usize>> {
    let mut groups: Vec<(usize, u32, u32, Vec<usize>)> = Vec::new();
    for (i, pt) in plan.tensors.iter().enumerate() {
        let TensorAction::Gptq {
            source,
            target,
            hessian,
        } = &pt.action
        else {
            continue;
        };
        let key = (
            Arc::as_ptr(hessian) as usize,
            source.type_id(),
            target.type_id(),
        );
        match groups.iter_mut().find(|g| (g.0, g.1, g.2) == key) {
            Some(g) => g.3.push(i),
            None => groups.push((key.0, key.1, key.2, vec![i])),
        }
    }
    groups.into_iter().map(|g| g.3).collect()
}

/// Decodes whole tensors that share a Hessian and a target format and
/// rounds them with GPTQ under one factorization; returns each tensor's bytes, in order.
fn gptq_group(
    src: &GgufFile,
    members: &[&PlannedTensor],
    (source_seed, target_seed): (Option<u64>, Option<u64>),
) -> Result<(Vec<Vec<u8>>, GptqReport)> {
    let first = &src.header().tensors[members[0].source_index];
    let TensorAction::Gptq {
        source,
        target,
        hessian,
    } = &members[0].action
    else {
        return Err(Error::Other(format!(
            "tensor {:?}: not planned for GPTQ",
            first.name
        )));
    };
    let mut weights = Vec::with_capacity(members.len());
    for pt in members {
        let info = &src.header().tensors[pt.source_index];
        let err = |e: String| Error::Unsupported {
            tensor: info.name.clone(),
            reason: e,
        };
        let row_len = info.row_len() as usize;
        if row_len != hessian.n() {
            return Err(err(format!(
                "rows of {row_len} for a Hessian of width {}",
                hessian.n()
            )));
        }
        let decoder =
            RowCodec::new(*source, row_len, source_seed).map_err(|e| err(e.to_string()))?;
        let mut w = vec![0f32; info.n_elements as usize];
        decoder
            .decode(src.tensor_data(pt.source_index), &mut w)
            .map_err(|e| err(e.to_string()))?;
        weights.push(w);
    }
    // GPTQ rounds rows independently given the factor: the matrices of a
    // stacked tensor are just more rows.
    let slices: Vec<&[f32]> = weights.iter().map(Vec::as_slice).collect();
    let (parts, report) = gptq_shared(
        *target,
        &slices,
        hessian,
        target_seed,
        GptqOptions::default(),
    )
    .map_err(|e| Error::Unsupported {
        tensor: first.name.clone(),
        reason: format!("GPTQ: {e}"),
    })?;
    Ok((parts, report))
}

/// Results of the GPTQ groups, rounded by worker threads at most `window`
/// groups ahead of the writer, which takes tensors in plan order.
struct GptqQueue {
    state: Mutex<QueueState>,
    changed: Condvar,
    window: usize,
    /// Group and position in it of each plan tensor rounded with GPTQ.
    member_of: Vec<Option<(usize, usize)>>,
}

struct QueueState {
    /// Next group to start.
    next: usize,
    /// Groups the writer has taken a tensor from.
    started: usize,
    /// Tensors finished.
    finished: usize,
    /// Finished groups' bytes per member, taken by the writer one by one.
    results: Vec<Option<Result<Vec<Vec<u8>>>>>,
    /// Set when the writer stops: workers start nothing more.
    stop: bool,
}

impl GptqQueue {
    fn new(groups: &[Vec<usize>], plan_len: usize, window: usize) -> Self {
        let mut member_of = vec![None; plan_len];
        for (g, members) in groups.iter().enumerate() {
            for (m, &i) in members.iter().enumerate() {
                member_of[i] = Some((g, m));
            }
        }
        Self {
            state: Mutex::new(QueueState {
                next: 0,
                started: 0,
                finished: 0,
                results: (0..groups.len()).map(|_| None).collect(),
                stop: false,
            }),
            changed: Condvar::new(),
            window,
            member_of,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next group to round, waiting while `window` groups are ahead of
    /// the writer; `None` when all are claimed or the writer stopped. (The
    /// writer waits only on groups whose first member it has reached, and
    /// groups start in that order, so the window never starves it.)
    fn claim(&self) -> Option<usize> {
        let mut s = self.lock();
        loop {
            if s.stop || s.next >= s.results.len() {
                return None;
            }
            if s.next < s.started + self.window {
                s.next += 1;
                return Some(s.next - 1);
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Counts a finished tensor; returns how many have finished.
    fn finished(&self) -> usize {
        let mut s = self.lock();
        s.finished += 1;
        s.finished
    }

    fn put(&self, g: usize, res: Result<Vec<Vec<u8>>>) {
        self.lock().results[g] = Some(res);
        self.changed.notify_all();
    }

    /// The bytes of plan tensor `i`, waiting for its group.
    fn take(&self, i: usize) -> Result<Vec<u8>> {
        let Some(&Some((g, m))) = self.member_of.get(i) else {
            return Err(Error::Other(format!(
                "plan tensor {i} is not rounded with GPTQ"
            )));
        };
        let mut s = self.lock();
        loop {
            match s.results[g].take() {
                Some(Ok(mut parts)) => {
                    let bytes = std::mem::take(&mut parts[m]);
                    s.results[g] = Some(Ok(parts));
                    if m == 0 {
                        s.started += 1;
                        self.changed.notify_all();
                    }
                    return Ok(bytes);
                }
                Some(Err(e)) => return Err(e),
                None => s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// A guard that stops the workers when dropped.
    fn stop_on_drop(&self) -> impl Drop + '_ {
        struct Stop<'a>(&'a GptqQueue);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.lock().stop = true;
                self.0.changed.notify_all();
            }
        }
        Stop(self)
    }
}

/// True when `a` and `b` name the same existing file (same device and
/// inode on Unix, same canonical path elsewhere). Writing over the input is
/// crash-safe (temp file renamed over it; the input stays mapped), so only
/// commands that transform the input lossily refuse it.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        ma.dev() == mb.dev() && ma.ino() == mb.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
    }
}

/// Source format and its file's row-transform seed, then the same for the target.
pub type CodecPair<'a> = (&'a dyn Format, Option<u64>, &'a dyn Format, Option<u64>);

/// Decodes and re-encodes one tensor chunk by chunk, handing each encoded
/// chunk (and the source bytes it consumed) to `sink`.
pub fn transcode_tensor(
    info: &TensorInfo,
    data: &[u8],
    (source, source_seed, target, target_seed): CodecPair,
    importance: Option<&[f32]>,
    sink: &mut dyn FnMut(&[u8], u64) -> Result<()>,
) -> Result<()> {
    let row_len = info.row_len();
    let n_rows = info.n_rows();
    if n_rows == 0 || row_len == 0 {
        return Ok(());
    }
    let kernel_err = |source: gguftool_quant::KernelError| Error::Kernel {
        tensor: info.name.clone(),
        source: source.into(),
    };
    let decoder = RowCodec::new(source, row_len as usize, source_seed).map_err(kernel_err)?;
    let encoder = RowCodec::new(target, row_len as usize, target_seed).map_err(kernel_err)?;
    let (src_row, dst_row) = (decoder.row_bytes(), encoder.row_bytes());
    let rows_per_chunk = (CHUNK_ELEMENTS / row_len).clamp(1, n_rows) as usize;
    let rows_per_task = rows_per_chunk
        .div_ceil(rayon::current_num_threads() * 4)
        .max(1);
    let mut out = vec![0u8; rows_per_chunk * dst_row];
    for (c, src_chunk) in data.chunks(rows_per_chunk * src_row).enumerate() {
        let rows = src_chunk.len() / src_row;
        let first_row = (c * rows_per_chunk) as u64;
        let dst_chunk = &mut out[..rows * dst_row];
        dst_chunk
            .par_chunks_mut(rows_per_task * dst_row)
            .zip(src_chunk.par_chunks(rows_per_task * src_row))
            .enumerate()
            .try_for_each(|(t, (d, s))| {
                let task_rows = s.len() / src_row;
                let mut tmp = vec![0f32; task_rows * row_len as usize];
                decoder.decode(s, &mut tmp)?;
                let imp: Option<Vec<f32>> = importance.map(|imp| {
                    let first = first_row + (t * rows_per_task) as u64;
                    (0..task_rows as u64)
                        .flat_map(|r| row_importance(info, imp, first + r).iter().copied())
                        .collect()
                });
                encoder.encode(&tmp, imp.as_deref(), d)
            })
            .map_err(kernel_err)?;
        sink(dst_chunk, src_chunk.len() as u64)?;
    }
    Ok(())
}
