//! `gguftool qat --stage e2e | lora | all`: training through the whole
//! model against the full-precision model INPUT (the teacher) on -f TEXT
//! (`gguftool_qat::e2e`).
//!
//! - `e2e`: end-to-end distillation of the quantized student (scales, norm
//!   gains, optionally latent weights), the best held-out step kept; the
//!   student starts from `--student QUANT.gguf` (its matrices decoded, its
//!   norm gains, its bytes for what is not trained), else from the GPTQ
//!   rounding (`--calibration`), else from the format's initial scales
//!   (under `--imatrix` when given). Exported through the format's encoder.
//! - `lora`: LoRA adapters on the frozen quantized student, distilled the
//!   same way; written as a llama.cpp LoRA GGUF for the `--student` file
//!   (its base), or with `--merge` merged and re-encoded into the model.
//! - `all`: block-wise reconstruction, then `e2e` from its result in
//!   memory (blocks past `max_blocks` start as `e2e` would).
//!
//! Progress, checkpoints (every `--checkpoint-every` steps, at
//! `--max-steps` and on Ctrl-C) and `--resume` as in the block stage; a
//! resumed run writes the same bytes as one that was not interrupted.

use super::{
    another_run, apply_exported, checkpoint_path, control, engine, load_imatrix, load_start,
    not_a_checkpoint, open_checkpoint, open_model, policy_for, prepare_text_run,
    print_block_reports, print_model_check, step_bar, stopped, test_delay, train_blocks_checked,
    write_checkpoint_file, write_output, CliHooks, QatArgs, Stage, Start, TextRun,
};
use crate::{usage, CliError};
use gguftool_convert::output::{signals, AtomicOutput};
use gguftool_convert::{policy, Plan, TensorAction};
use gguftool_gguf::integrity::sha256_hex;
use gguftool_gguf::value::{Array, Metadata, Value};
use gguftool_gguf::Error;
use gguftool_qat::blockwise::{
    quantize_block_from, BlockReport, Checkpoint, Control, Hooks, LinearInit,
};
use gguftool_qat::candle_model::{CandleModel, QLinear};
use gguftool_qat::candle_op::FakeQuant;
use gguftool_qat::config::QatConfig;
use gguftool_qat::e2e::{
    distill_resumable, evaluate, export_student, DistillCheckpoint, DistillHooks, DistillOutcome,
    DistillProgress, DistillReport, EvalStats, TeacherTargets,
};
use gguftool_qat::engine_error::EngineResult;
use gguftool_qat::lora::{attach_lora, is_target, merge_lora_each, LoraConfig};
use gguftool_quant::format::Format;
use indicatif::ProgressBar;
use serde_json::json;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// The `--student` file: an already quantized GGUF of INPUT with the types
/// this run writes.
struct StudentFile {
    path: PathBuf,
    model: gguftool_model::Model,
    sha: String,
}

impl StudentFile {
    /// The ggml type of tensor `name`.
    fn type_of(&self, name: &str) -> Option<u32> {
        let h = self.model.file().header();
        h.tensor_index(name).map(|i| h.tensors[i].ggml_type)
    }

    /// The encoded bytes of 2-D tensor `name` with its rows and row length.
    fn matrix_bytes(&self, name: &str) -> Option<(&[u8], usize, usize)> {
        let f = self.model.file();
        let i = f.header().tensor_index(name)?;
        match f.header().tensors[i].dims.as_slice() {
            &[row_len, rows] => Some((f.tensor_data(i), rows as usize, row_len as usize)),
            _ => None,
        }
    }

    /// The file's name for messages and metadata (without directories).
    fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Opens `--student` and checks that it is a quantization of INPUT (same
/// tensors and shapes, and the source hash convert records, when present)
/// with the types `plan` writes (same format, output and fallback types).
fn open_student(
    p: &Path,
    run: &TextRun,
    plan: &Plan,
    format: &'static dyn Format,
) -> Result<StudentFile, CliError> {
    let model = open_model(p, run.threads)?;
    let name = p.display();
    let other_model = |why: String| -> CliError {
        Error::Other(format!(
            "--student {name}: not a quantization of the model INPUT: {why}"
        ))
        .into()
    };
    let (sh, th) = (model.hparams(), run.model.hparams());
    if sh.arch != th.arch
        || sh.n_layer != th.n_layer
        || sh.n_embd != th.n_embd
        || sh.n_vocab != th.n_vocab
    {
        return Err(other_model(format!(
            "{} with {} layers of {} and {} tokens, INPUT {} with {} layers of {} and {} tokens",
            sh.arch.name(),
            sh.n_layer,
            sh.n_embd,
            sh.n_vocab,
            th.arch.name(),
            th.n_layer,
            th.n_embd,
            th.n_vocab
        )));
    }
    let file = model.file();
    let h = file.header();
    if h.tensors.len() != plan.tensors.len() {
        return Err(other_model(format!(
            "{} tensors, INPUT {}",
            h.tensors.len(),
            plan.tensors.len()
        )));
    }
    for pt in &plan.tensors {
        let Some(i) = h.tensor_index(&pt.spec.name) else {
            return Err(other_model(format!("no tensor {}", pt.spec.name)));
        };
        let t = &h.tensors[i];
        if t.dims != pt.spec.dims {
            return Err(other_model(format!(
                "tensor {} of shape {:?}, INPUT {:?}",
                t.name, t.dims, pt.spec.dims
            )));
        }
        if t.ggml_type != pt.spec.ggml_type {
            let want = gguftool_quant::registry::by_type_id(pt.spec.ggml_type).map_or_else(
                || format!("type {}", pt.spec.ggml_type),
                |f| f.name().to_string(),
            );
            return Err(Error::Other(format!(
                "--student {name}: tensor {} is {}, but this run writes {want} (a student of another format than --format {}, or of other --output-tensor-type)",
                t.name,
                t.type_name,
                format.name()
            ))
            .into());
        }
    }
    let md = &h.metadata;
    if let Some(s) = md.get(policy::KEY_SOURCE_SHA256).and_then(Value::as_str) {
        let src = run.model.file().bytes();
        if s.len() == 64 && s != sha256_hex(src) {
            return Err(other_model(format!(
                "it records another source ({} {s})",
                policy::KEY_SOURCE_SHA256
            )));
        }
    }
    if format.row_transform().is_some() {
        let seed = |m: &Metadata| {
            gguftool_quant::rows::seed(m)
                .ok()
                .flatten()
                .unwrap_or(gguftool_quant::rows::DEFAULT_SEED)
        };
        if seed(md) != seed(&plan.metadata) {
            return Err(Error::Other(format!(
                "--student {name}: its {} differs from INPUT's",
                gguftool_quant::rows::SEED_KEY
            ))
            .into());
        }
    }
    let sha = sha256_hex(file.bytes());
    Ok(StudentFile {
        path: p.to_path_buf(),
        model,
        sha,
    })
}

/// A checkpoint to resume from.
enum Resume {
    Block(Checkpoint),
    Distill(DistillCheckpoint),
}

/// Starting points from [`Start`] for [`quantize_block_from`].
struct StartHooks<'a> {
    start: &'a Start,
    fq: FakeQuant,
}

impl Hooks for StartHooks<'_> {
    fn init(&mut self, _layer: usize, linear: &QLinear) -> EngineResult<LinearInit> {
        self.start.init(self.fq, linear)
    }
}

/// The distillation's callbacks: progress, evaluations, checkpoints.
struct DistillCli {
    pb: ProgressBar,
    terminal: bool,
    label: &'static str,
    t0: Instant,
    session_tokens: u64,
    /// Steps of the run before the distillation (the block stage's in
    /// `--stage all`).
    offset: usize,
    checkpoint_path: PathBuf,
    checkpoint_every: Option<usize>,
    max_steps: Option<usize>,
    fingerprint: String,
    notes: String,
    wrote_checkpoint: bool,
    quiet: bool,
}

impl DistillHooks for DistillCli {
    fn step(&mut self, p: &DistillProgress) -> Control {
        test_delay();
        self.session_tokens += p.tokens as u64;
        let global = self.offset + p.step;
        if self.terminal {
            let secs = self.t0.elapsed().as_secs_f64().max(1e-9);
            self.pb.set_length((self.offset + p.total_steps) as u64);
            self.pb.set_position(global as u64);
            self.pb.set_message(format!(
                "{} loss {:.4e} {:.0} tok/s",
                self.label,
                p.loss.total,
                self.session_tokens as f64 / secs
            ));
        }
        if let (Some(e), false) = (&p.heldout, self.quiet) {
            let line = format!(
                "step {:4}: held-out KL {:.4e}, NLL {:.4}, top-1 {:.3}",
                p.step, e.kl, e.nll, e.top1_agreement
            );
            self.pb.suspend(|| eprintln!("{line}"));
        }
        control(global, self.checkpoint_every, self.max_steps)
    }

    fn checkpoint(&mut self, ck: &DistillCheckpoint) -> EngineResult<()> {
        let ck = DistillCheckpoint {
            fingerprint: self.fingerprint.clone(),
            notes: self.notes.clone(),
            ..ck.clone()
        };
        write_checkpoint_file(&self.checkpoint_path, |w| ck.write(w))?;
        self.wrote_checkpoint = true;
        Ok(())
    }
}

/// Sets the student's token embedding and output matrix to what the output
/// file will hold (the plan's encoding of them, decoded), and makes the
/// plan write exactly those bytes: the distillation then sees the head the
/// file will have.
fn quantize_vocab_matrices(
    sm: &mut CandleModel,
    plan: &mut Plan,
    src: &gguftool_gguf::GgufFile,
) -> Result<(), CliError> {
    let seed =
        gguftool_quant::rows::seed(&plan.metadata).map_err(|e| Error::Other(e.to_string()))?;
    for name in ["token_embd.weight", "output.weight"] {
        let Some(i) = plan.tensors.iter().position(|p| p.spec.name == name) else {
            continue;
        };
        if matches!(plan.tensors[i].action, TensorAction::Copy) {
            continue;
        }
        let bytes = gguftool_convert::encode_planned(src, plan, i)?;
        let spec = &plan.tensors[i].spec;
        let f = gguftool_quant::registry::by_type_id(spec.ggml_type).ok_or_else(|| {
            Error::Other(format!("{name}: no decoder for type {}", spec.ggml_type))
        })?;
        let row_len = spec.dims.first().copied().unwrap_or(0) as usize;
        let n: u64 = spec.dims.iter().product();
        let mut v = vec![0f32; n as usize];
        gguftool_quant::rows::RowCodec::new(f, row_len, seed)
            .and_then(|c| c.decode(&bytes, &mut v))
            .map_err(|e| Error::Other(format!("{name}: {e}")))?;
        sm.set_vocab_matrix(name, v).map_err(engine)?;
        plan.tensors[i].action = TensorAction::Encoded(Arc::new(bytes));
    }
    Ok(())
}

/// Held-out statistics of `model` against `teacher` on `held`, batched and
/// chunked as the distillation's evaluations.
fn heldout_stats(
    model: &CandleModel,
    teacher: &CandleModel,
    held: &[Vec<u32>],
    d: &gguftool_qat::e2e::DistillConfig,
) -> Result<EvalStats, CliError> {
    let t = TeacherTargets::new(teacher, held, d.batch_size).map_err(engine)?;
    evaluate(model, teacher, &t, d.batch_size, d.loss.chunk_positions).map_err(engine)
}

/// Refuses a LoRA target pattern that matches no block matrix of a model
/// with hyperparameters `hp` (a usage error naming `lora.targets`), and a
/// rank above the smallest side of a block matrix (naming `lora.rank`).
fn check_targets(l: &LoraConfig, hp: &gguftool_model::Hparams) -> Result<(), CliError> {
    let n_layer = hp.n_layer;
    let smallest = (0..n_layer)
        .flat_map(|il| {
            [
                hp.n_embd,
                hp.n_ff[il],
                hp.n_head[il] * hp.head_dim_k,
                hp.n_head_kv[il] * hp.head_dim_k,
                hp.n_head_kv[il] * hp.head_dim_v,
            ]
        })
        .min()
        .unwrap_or(0);
    if l.rank > smallest {
        return Err(usage(format!(
            "QAT config: lora.rank: {} is above the smallest side of a block matrix ({smallest})",
            l.rank
        )));
    }
    let roles = gguftool_qat::candle_model::BLOCK_MATRICES;
    let names: Vec<String> = (0..n_layer)
        .flat_map(|il| roles.iter().map(move |r| format!("blk.{il}.{r}.weight")))
        .collect();
    for t in &l.targets {
        let one = LoraConfig {
            targets: vec![t.clone()],
            ..l.clone()
        };
        if !names.iter().any(|n| is_target(&one, n)) {
            return Err(usage(format!(
                "QAT config: lora.targets: {t:?} matches no block matrix (roles: {}; or names like blk.0.attn_q)",
                roles.join(", ")
            )));
        }
    }
    Ok(())
}

/// `gguftool qat --stage e2e | lora | all` (see the module documentation).
pub(crate) fn run_distill(
    a: QatArgs,
    cfg: QatConfig,
    format: &'static dyn Format,
) -> Result<ExitCode, CliError> {
    let e = |e: gguftool_qat::config::ConfigError| usage(e.to_string());
    let (bcfg, dcfg, lcfg) = match a.stage {
        Stage::E2e => (None, cfg.to_e2e().map_err(e)?, None),
        Stage::Lora => {
            let (d, l) = cfg.to_lora().map_err(e)?;
            (None, d, Some(l))
        }
        Stage::All => {
            let (b, d) = cfg.to_all().map_err(e)?;
            (Some(b), d, None)
        }
        s => {
            return Err(usage(format!(
                "--stage {}: not a distillation stage",
                s.name()
            )))
        }
    };
    let stage = a.stage.name();
    if a.student.is_some() && (a.calibration.is_some() || a.imatrix.is_some()) {
        return Err(usage(
            "--student starts from an already quantized file: --calibration and --imatrix do not apply",
        ));
    }
    if a.stage == Stage::Lora && !a.merge && a.student.is_none() {
        return Err(usage(
            "--stage lora writes adapters for a quantized base file: give it as --student QUANT.gguf, or write the merged model with --merge",
        ));
    }
    let fq = FakeQuant::new(format, cfg.ste)
        .map_err(|e| usage(format!("--format {}: {e}", format.name())))?;
    let run = prepare_text_run(&a)?;
    if let Some(l) = &lcfg {
        check_targets(l, run.model.hparams())?;
    }
    let (n_ctx, n_cal) = (run.n_ctx, run.calib.len());
    let imatrix = load_imatrix(a.imatrix.as_deref())?;
    let (start, calib_sha) = load_start(&a, &imatrix)?;
    let src = run.model.file();
    let (policy, provenance) = policy_for(&a, format, &imatrix)?;
    let mut plan = policy::plan(src, &policy, &provenance)?;
    if let Start::Gptq(cal) = &start {
        gguftool_convert::apply_calibration(&mut plan, src, cal)?;
    }
    let student = match &a.student {
        Some(p) => Some(open_student(p, &run, &plan, format)?),
        None => None,
    };
    let start_name = if student.is_some() {
        "student"
    } else {
        start.name()
    };
    let fingerprint = sha256_hex(
        format!(
            "qat {stage} v1\n{}\n{}\n{}\n{}\n{}\nctx {n_ctx} calib {n_cal} heldout {}\n{}\n{}\n{}",
            a.input.display(),
            src.bytes().len(),
            cfg.to_toml(),
            run.text_sha,
            calib_sha,
            a.heldout,
            imatrix.as_ref().map_or("", |(_, s)| s),
            start_name,
            student.as_ref().map_or("", |s| &s.sha),
        )
        .as_bytes(),
    );
    let resume = match &a.resume {
        None => None,
        Some(p) => {
            let f = open_checkpoint(p)?;
            let bad = |e: gguftool_qat::engine_error::EngineError| {
                Error::Other(format!("{}: {e}", p.display()))
            };
            let r = match gguftool_qat::checkpoint::kind(&f) {
                Some(gguftool_qat::checkpoint::GENERAL_TYPE) if a.stage == Stage::All => {
                    Resume::Block(Checkpoint::from_gguf(&f).map_err(bad)?)
                }
                Some(gguftool_qat::checkpoint::E2E_GENERAL_TYPE) => {
                    Resume::Distill(DistillCheckpoint::from_gguf(&f).map_err(bad)?)
                }
                Some(_) => {
                    return Err(Error::Other(format!(
                        "{}: a block-stage checkpoint, not one of --stage {}",
                        p.display(),
                        a.stage.name()
                    ))
                    .into())
                }
                None => return Err(not_a_checkpoint(p).into()),
            };
            let fp = match &r {
                Resume::Block(c) => &c.fingerprint,
                Resume::Distill(c) => &c.fingerprint,
            };
            if *fp != fingerprint {
                return Err(another_run(p).into());
            }
            Some(r)
        }
    };

    let teacher = CandleModel::from_model_cpu(&run.model).map_err(engine)?;
    let terminal = std::io::stderr().is_terminal();
    let checkpoint_path = checkpoint_path(&a);
    let t_start = Instant::now();
    let mut wrote_checkpoint = false;
    let mut block_reports: Option<Vec<BlockReport>> = None;
    let mut block_steps = 0usize;
    let mut student_file_stats: Option<EvalStats> = None;
    if !a.json {
        eprintln!(
            "qat {stage}: {}, start {start_name}; {n_cal} x {n_ctx} training and {} x {n_ctx} held-out tokens{}",
            format.name(),
            a.heldout,
            match &resume {
                Some(Resume::Block(c)) =>
                    format!("; resuming at step {} (block {})", c.global_step, c.layer),
                Some(Resume::Distill(c)) => format!("; resuming after distillation step {}", c.step),
                None => String::new(),
            }
        );
    }
    signals::defer_interrupts(true);
    let mut sm = match &student {
        Some(st) => {
            let mut m = CandleModel::from_model_cpu(&st.model).map_err(engine)?;
            if a.stage == Stage::E2e {
                student_file_stats = Some(heldout_stats(&m, &teacher, &run.held, &dcfg)?);
                // The matrices stored in the format train, from scales
                // that reproduce the file (`quantize_decoded`); the others
                // (fallbacks) stay as the file decodes them.
                for b in m.blocks_mut() {
                    for l in b.linears_mut() {
                        if st.type_of(l.name()) != Some(format.type_id()) {
                            continue;
                        }
                        let stored = match st.matrix_bytes(l.name()) {
                            Some((bytes, rows, row_len)) => {
                                fq.stored_scales(bytes, rows, row_len).map_err(engine)?
                            }
                            None => None,
                        };
                        l.quantize_decoded(fq, stored, None, dcfg.learn_weights)
                            .map_err(engine)?;
                    }
                }
            }
            m
        }
        None => {
            let mut m = CandleModel::from_model_cpu(&run.model).map_err(engine)?;
            let mut first = 0;
            if let Some(bcfg) = &bcfg {
                let n_blocks = m.blocks().len().min(bcfg.max_blocks.unwrap_or(usize::MAX));
                block_steps = n_blocks * bcfg.epochs * bcfg.steps_per_epoch(n_cal);
                match &resume {
                    Some(Resume::Distill(c)) => {
                        block_reports = serde_json::from_str(&c.notes).ok();
                    }
                    r => {
                        let block_resume = match r {
                            Some(Resume::Block(c)) => Some(c),
                            _ => None,
                        };
                        let mut hooks = CliHooks::new(
                            &start,
                            fq,
                            terminal,
                            &a,
                            checkpoint_path.clone(),
                            fingerprint.clone(),
                        );
                        let outcome = train_blocks_checked(
                            &run.model,
                            &mut m,
                            fq,
                            (&run.calib, &run.held),
                            bcfg,
                            block_resume,
                            &mut hooks,
                        );
                        hooks.pb.finish_and_clear();
                        wrote_checkpoint |= hooks.wrote_checkpoint;
                        match outcome? {
                            Ok(c) => {
                                if !a.json {
                                    print_model_check(&c);
                                }
                                block_reports = Some(c.reports);
                                // The others start as --stage e2e starts.
                                first = n_blocks;
                            }
                            Err(global_step) => {
                                signals::defer_interrupts(false);
                                return Ok(stopped(global_step, &checkpoint_path, a.json));
                            }
                        }
                    }
                }
            }
            let mut sh = StartHooks { start: &start, fq };
            for il in first..m.blocks().len() {
                quantize_block_from(&mut m, il, fq, dcfg.learn_weights, &mut sh).map_err(engine)?;
            }
            quantize_vocab_matrices(&mut m, &mut plan, src)?;
            m
        }
    };
    if let Some(l) = &lcfg {
        attach_lora(&mut sm, l).map_err(engine)?;
    }
    let mut hooks = DistillCli {
        pb: step_bar(terminal),
        terminal,
        label: if a.stage == Stage::Lora {
            "lora"
        } else {
            "e2e"
        },
        t0: Instant::now(),
        session_tokens: 0,
        offset: block_steps,
        checkpoint_path: checkpoint_path.clone(),
        checkpoint_every: a.checkpoint_every,
        max_steps: a.max_steps,
        fingerprint,
        notes: block_reports
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok())
            .unwrap_or_default(),
        wrote_checkpoint: false,
        quiet: a.json,
    };
    let d_resume = match &resume {
        Some(Resume::Distill(c)) => Some(c),
        _ => None,
    };
    let outcome = distill_resumable(
        &mut sm, &teacher, &run.calib, &run.held, &dcfg, d_resume, &mut hooks,
    );
    signals::defer_interrupts(false);
    hooks.pb.finish_and_clear();
    wrote_checkpoint |= hooks.wrote_checkpoint;
    let report = match outcome.map_err(engine)? {
        DistillOutcome::Finished(r) => r,
        DistillOutcome::Stopped { step } => {
            return Ok(stopped(block_steps + step, &checkpoint_path, a.json))
        }
    };

    // What training produced, and its provenance.
    let cal_tokens = run.train_tokens();
    let mut md = Metadata::new();
    run.set_provenance(&mut md, stage, cfg.to_toml(), start_name);
    md.set(
        "gguftool.qat.heldout_kl",
        Value::Array(Array::F64(vec![report.initial.kl, report.best.kl])),
    );
    md.set(
        "gguftool.qat.best_step",
        Value::U64(report.best_step as u64),
    );
    if let Some(st) = &student {
        md.set("gguftool.qat.student", Value::String(st.file_name()));
        md.set("gguftool.qat.student_sha256", Value::String(st.sha.clone()));
    }
    if let Some(r) = &block_reports {
        md.set("gguftool.qat.blocks", Value::U32(r.len() as u32));
    }
    let mut adapters = None;
    let mut output_stats = None;
    if a.stage == Stage::Lora && !a.merge {
        let st = student
            .as_ref()
            .expect("checked: lora without --merge needs --student");
        md.set("gguftool.qat.lora.base", Value::String(st.file_name()));
        md.set(
            "gguftool.qat.lora.base_sha256",
            Value::String(st.sha.clone()),
        );
        let out = AtomicOutput::create(&a.output, a.force)?;
        let (mut w, n) = gguftool_qat::lora_gguf::write_lora_gguf_to(
            &sm,
            out.writer()?,
            Some("gguftool qat lora"),
            &md,
        )
        .map_err(engine)?;
        w.flush().map_err(|e| Error::io(&a.output, e))?;
        drop(w);
        out.commit()?;
        adapters = Some(n);
    } else {
        let mut exported = export_student(&sm).map_err(engine)?;
        if a.stage == Stage::Lora {
            // Merged: a fake-quantized matrix at its own (frozen) scales;
            // a --student matrix re-encoded in its own type.
            let by_type = |l: &QLinear| -> Option<&'static dyn Format> {
                let st = student.as_ref()?;
                gguftool_quant::registry::by_type_id(st.type_of(l.name())?)
            };
            exported.extend(merge_lora_each(&sm, &by_type).map_err(engine)?);
        }
        if let Some(st) = &student {
            // Everything not trained keeps the student's bytes.
            let trained: std::collections::HashSet<&str> =
                exported.iter().map(|t| t.name.as_str()).collect();
            let f = st.model.file();
            let index: HashMap<&str, usize> = f
                .header()
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.as_str(), i))
                .collect();
            for pt in &mut plan.tensors {
                if trained.contains(pt.spec.name.as_str()) {
                    continue;
                }
                let i = index[pt.spec.name.as_str()];
                pt.action = TensorAction::Encoded(Arc::new(f.tensor_data(i).to_vec()));
                pt.note = Some("from --student".into());
            }
        }
        let note = match a.stage {
            Stage::Lora => "LoRA-QAT, merged",
            Stage::All => "block-wise and end-to-end QAT",
            _ => "end-to-end QAT",
        };
        apply_exported(&mut plan, exported, note)?;
        for (k, v) in md.entries() {
            plan.metadata.set(k, v.clone());
        }
        write_output(&a, src, &plan)?;
        // The file as written (export rounds scales; a merge re-encodes).
        drop(sm);
        let written = open_model(&a.output, run.threads)?;
        let cm = CandleModel::from_model_cpu(&written).map_err(engine)?;
        output_stats = Some(heldout_stats(&cm, &teacher, &run.held, &dcfg)?);
    }
    if wrote_checkpoint || resume.is_some() {
        let _ = std::fs::remove_file(&checkpoint_path);
    }
    let seconds = t_start.elapsed().as_secs_f64();
    print_report(
        &a,
        &cfg,
        start_name,
        &report,
        block_reports.as_deref(),
        student_file_stats,
        output_stats,
        adapters,
        lcfg.as_ref(),
        cal_tokens,
        seconds,
    );
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn print_report(
    a: &QatArgs,
    cfg: &QatConfig,
    start_name: &str,
    r: &DistillReport,
    blocks: Option<&[BlockReport]>,
    student_file: Option<EvalStats>,
    output_file: Option<EvalStats>,
    adapters: Option<usize>,
    lora: Option<&LoraConfig>,
    cal_tokens: u64,
    seconds: f64,
) {
    let tps = r.tokens as f64 / r.train_seconds.max(1e-9);
    if a.json {
        let out = json!({
            "stage": a.stage.name(), "start": start_name,
            "student": a.student.as_ref().map(|p| p.display().to_string()),
            "student_file": student_file,
            "output_file": output_file,
            "blocks": blocks,
            "initial": r.initial, "best": r.best, "best_step": r.best_step,
            "evals": r.evals, "steps": r.train_loss.len(), "train_loss": r.train_loss,
            "tokens": r.tokens, "train_seconds": r.train_seconds, "tokens_per_second": tps,
            "seconds": seconds,
            "trained_tensors": r.trained_tensors, "trained_elements": r.trained_elements,
            "calibration_tokens": cal_tokens, "heldout_tokens": r.best.positions,
            "output": if adapters.is_some() { "adapter" } else if a.merge { "merged" } else { "model" },
            "adapters": adapters,
            "lora": lora.map(|l| json!({"rank": l.rank, "alpha": l.alpha, "targets": l.targets})),
            "config": cfg,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        if let Some(b) = blocks {
            print_block_reports(b);
            println!();
        }
        if let Some(s) = student_file {
            println!(
                "student file: held-out KL {:.4e}, NLL {:.4} (at the start's scales: KL {:.4e})",
                s.kl, s.nll, r.initial.kl
            );
        }
        println!(
            "held-out KL {:.4e} -> {:.4e} (kept step {} of {}); NLL {:.4} -> {:.4} (PPL {:.2} -> {:.2}); top-1 agreement {:.3} -> {:.3}",
            r.initial.kl,
            r.best.kl,
            r.best_step,
            r.train_loss.len(),
            r.initial.nll,
            r.best.nll,
            r.initial.nll.exp(),
            r.best.nll.exp(),
            r.initial.top1_agreement,
            r.best.top1_agreement
        );
        if let Some(o) = output_file {
            println!(
                "output file: held-out KL {:.4e}, NLL {:.4} (PPL {:.2}), top-1 agreement {:.3}{}",
                o.kl,
                o.nll,
                o.nll.exp(),
                o.top1_agreement,
                if a.merge {
                    " (adapters merged and re-encoded)"
                } else {
                    ""
                }
            );
        }
        println!(
            "{} steps, {} tokens in {:.1} s of steps ({tps:.0} tokens/s), {seconds:.1} s in all; {} tensors ({} elements) trained",
            r.train_loss.len(),
            r.tokens,
            r.train_seconds,
            r.trained_tensors,
            r.trained_elements
        );
    }
    match (adapters, &a.student) {
        (Some(n), Some(base)) => eprintln!(
            "wrote {}: {n} LoRA adapters for the base {} (gguftool perplexity {} --lora {}; llama.cpp -m {} --lora {})",
            a.output.display(),
            base.display(),
            base.display(),
            a.output.display(),
            base.display(),
            a.output.display()
        ),
        _ => eprintln!("wrote {}", a.output.display()),
    }
}
