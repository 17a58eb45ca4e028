//! The chunked output head bounds memory by the chunk: a counting global
//! allocator measures the peak of live heap bytes during the head stage of
//! the distillation loss (the part that chunking changes; the blocks' graph
//! is the same for every chunk size). With the whole batch in one chunk the
//! peak holds several `[positions, n_vocab]` f32 tensors; with small chunks
//! it is a few chunk-sized tensors plus the `[positions, n_embd]`
//! hidden-state gradient. (A binary of its own: the allocator counts the
//! whole process, so no other test may run beside it.)

use candle_core::{Device, Var};
use gguftool_formats as _;
use gguftool_model::Model;
use gguftool_qat::candle_model::CandleModel;
use gguftool_qat::candle_op::FakeQuant;
use gguftool_qat::e2e::{head_stage, select_parameters, DistillConfig, LossConfig, TeacherTargets};
use gguftool_quant::format::Ste;
use gguftool_quant::hadamard::SplitMix64;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn peak_memory_is_bounded_by_the_chunk() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama-f32.gguf");
    let m = Model::open(p, 1).unwrap();
    let teacher = CandleModel::from_model(&m, &Device::Cpu).unwrap();
    let mut student = CandleModel::from_model(&m, &Device::Cpu).unwrap();
    let fq = FakeQuant::by_name("piq2", Ste::LearnedStepSize).unwrap();
    for b in student.blocks_mut() {
        b.quantize(fq, false).unwrap();
    }
    let vars: Vec<Var> = select_parameters(&mut student, &DistillConfig::default())
        .unwrap()
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    let nv = student.hparams().n_vocab;
    let mut r = SplitMix64::new(5);
    let (b, t) = (8, 64);
    let data: Vec<Vec<u32>> = (0..b)
        .map(|_| (0..t).map(|_| (r.next_u64() % nv as u64) as u32).collect())
        .collect();
    let targets = TeacherTargets::new(&teacher, &data, b).unwrap();
    let idx: Vec<usize> = (0..b).collect();
    let (tok, tn) = targets.select(&idx).unwrap();
    let rows = b * t;
    let d = student.hparams().n_embd;
    let hidden = student.hidden(&tok).unwrap().detach();
    let peak = |chunk: usize| -> usize {
        let cfg = LossConfig {
            temperature: 2.0,
            ce_weight: 0.5,
            chunk_positions: chunk,
            ..LossConfig::default()
        };
        let run = || head_stage(&student, &teacher, &hidden, &tok, &tn, &vars, &cfg).unwrap();
        // Warm-up (thread pools, lazily built tables), then measure.
        drop(run());
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let out = run();
        let p = PEAK.load(Ordering::Relaxed) - before;
        drop(out);
        p
    };
    let chunk = 8;
    let small = peak(chunk);
    let whole = peak(rows);
    let logits = rows * nv * 4;
    eprintln!(
        "head-stage peak: chunk {chunk} {small} B, whole batch {whole} B; one [{rows}, {nv}] f32 tensor is {logits} B"
    );
    // Chunked: a few chunk-sized vocabulary tensors, plus O(positions x
    // n_embd) for the hidden-state gradient (its chunks and their
    // concatenation) and O(positions) for labels and masks. Measured:
    // 0.47 MB chunked, 6.6 MB (12 logit tensors) for the whole batch.
    let bound = 16 * chunk * nv * 4 + 4 * rows * d * 4 + 128 * rows;
    assert!(small <= bound, "chunked peak {small} B above {bound} B");
    // The whole batch in one chunk holds at least three full logit tensors.
    assert!(whole >= 3 * logits, "{whole} B");
    assert!(
        whole.saturating_sub(small) >= 2 * logits,
        "{small} vs {whole}"
    );
}
