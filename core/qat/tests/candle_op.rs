//! The fake-quant candle op: forward equals the format's `forward`, the
//! backward equals the format's `backward` under the STE on the gradient
//! candle propagates to the op's output (itself checked against central
//! finite differences of a smooth loss), and LSQ's scale gradients equal
//! the true derivative (times LSQ's 1/sqrt(group * reach)) where every
//! weight is clamped, the region where LSQ defines them as such. For a
//! row-transformed format (`q2_quip`) the format's functions apply to the
//! rotated rows `R w` and the op is `R^T q(R w)`.

use candle_core::{Device, Tensor, Var};
use gguftool_formats as _;
use gguftool_qat::candle_op::FakeQuant;
use gguftool_quant::format::Ste;
use gguftool_quant::hadamard::SplitMix64;

fn normal(n: usize, sd: f32, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| r.next_normal() as f32 * sd).collect()
}

fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

fn vec2(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

const STES: [Ste; 4] = [
    Ste::Standard,
    Ste::Clipped { clip: 0.9 },
    Ste::LearnedStepSize,
    Ste::Ewgs { lambda: 0.3 },
];

#[test]
fn every_differentiable_format_runs_through_the_op() {
    let dev = Device::Cpu;
    let mut ran = Vec::new();
    for f in gguftool_quant::registry::all() {
        let Some(dq) = f.differentiable() else {
            continue;
        };
        let fq = FakeQuant::new(*f, Ste::LearnedStepSize).unwrap();
        let row_len = lcm(lcm(dq.group_size(), f.block_size()), 64) * 2;
        let rows = 6;
        let w = normal(rows * row_len, 0.05, 7);
        let wt = Tensor::from_vec(w.clone(), (rows, row_len), &dev).unwrap();
        let st = fq.init_scales(&wt, None).unwrap();
        assert_eq!(st.dims(), &[rows, row_len / dq.group_size()]);
        let s = vec2(&st);
        // The basis the format's functions work in.
        let rt = f.row_transform().map(|t| {
            t.prepare(row_len, gguftool_quant::rows::DEFAULT_SEED)
                .unwrap()
        });
        let rotate = |v: &[f32]| -> Vec<f32> {
            let mut v = v.to_vec();
            if let Some(rt) = &rt {
                v.chunks_exact_mut(row_len).for_each(|r| rt.forward(r));
            }
            v
        };
        let unrotate = |v: &mut [f32]| {
            if let Some(rt) = &rt {
                v.chunks_exact_mut(row_len).for_each(|r| rt.inverse(r));
            }
        };
        let wr = rotate(&w);
        let mut want = vec![0f32; w.len()];
        for r in 0..rows {
            let per = row_len / dq.group_size();
            dq.forward(
                &wr[r * row_len..(r + 1) * row_len],
                &s[r * per..(r + 1) * per],
                &mut want[r * row_len..(r + 1) * row_len],
            );
        }
        unrotate(&mut want);
        let wv = Var::from_tensor(&wt).unwrap();
        let sv = Var::from_tensor(&st).unwrap();
        let q = fq.apply(wv.as_tensor(), sv.as_tensor()).unwrap();
        assert_eq!(vec2(&q), want, "{}: forward", f.name());
        assert!(want.iter().any(|&v| v != 0.0), "{}", f.name());

        // Backward with dL/dq = c.
        let c = normal(w.len(), 1.0, 8);
        let ct = Tensor::from_vec(c.clone(), (rows, row_len), &dev).unwrap();
        let loss = (q * ct).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let gw = vec2(grads.get(wv.as_tensor()).unwrap());
        let gs = vec2(grads.get(sv.as_tensor()).unwrap());
        let mut ew = vec![0f32; w.len()];
        let mut es = vec![0f32; s.len()];
        let per = row_len / dq.group_size();
        let cr = rotate(&c);
        for r in 0..rows {
            dq.backward(
                &wr[r * row_len..(r + 1) * row_len],
                &s[r * per..(r + 1) * per],
                &cr[r * row_len..(r + 1) * row_len],
                Ste::LearnedStepSize,
                &mut ew[r * row_len..(r + 1) * row_len],
                &mut es[r * per..(r + 1) * per],
            );
        }
        unrotate(&mut ew);
        assert_eq!(gw, ew, "{}: weight gradient", f.name());
        assert_eq!(gs, es, "{}: scale gradient", f.name());
        assert!(gs.iter().any(|&v| v != 0.0), "{}", f.name());
        if rt.is_some() {
            // Its export stores steps its own way (tests/row_transform.rs).
            ran.push(f.name());
            continue;
        }

        // Export decodes to the forward at the f16-rounded scales.
        let s16: Vec<f32> = s.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let s16t = Tensor::from_vec(s16, st.dims(), &dev).unwrap();
        let bytes = fq.export(&wt, &s16t).unwrap();
        let mut dec = vec![0f32; w.len()];
        f.dequantize(&bytes, &mut dec).unwrap();
        let fwd = vec2(&fq.apply(&wt, &s16t).unwrap());
        assert!(max_rel(&dec, &fwd) < 1e-6, "{}: export", f.name());
        ran.push(f.name());
    }
    for name in [
        "piq2",
        "piq3",
        "ternary",
        "ternary_mse",
        "q2_quip",
        "q2_quip_lite",
    ] {
        assert!(ran.contains(&name), "{name} did not run: {ran:?}");
    }
}

/// `sum(tanh(x q^T) * r)` for `q` `[rows, row_len]`.
fn smooth_loss(x: &Tensor, r: &Tensor, q: &Tensor) -> Tensor {
    x.matmul(&q.t().unwrap())
        .unwrap()
        .tanh()
        .unwrap()
        .mul(r)
        .unwrap()
        .sum_all()
        .unwrap()
}

struct Case {
    fq: FakeQuant,
    x: Tensor,
    r: Tensor,
    w: Vec<f32>,
    rows: usize,
    row_len: usize,
}

fn case(name: &str, ste: Ste) -> Case {
    let dev = Device::Cpu;
    let fq = FakeQuant::by_name(name, ste).unwrap();
    let (rows, row_len, n) = (4, 128, 5);
    Case {
        fq,
        x: Tensor::from_vec(normal(n * row_len, 0.3, 1), (n, row_len), &dev).unwrap(),
        r: Tensor::from_vec(normal(n * rows, 1.0, 2), (n, rows), &dev).unwrap(),
        w: normal(rows * row_len, 0.1, 3),
        rows,
        row_len,
    }
}

#[test]
fn op_gradients_follow_the_ste_through_a_graph() {
    let dev = Device::Cpu;
    for name in ["piq2", "piq3", "ternary"] {
        for ste in STES {
            let c = case(name, ste);
            let wt = Tensor::from_vec(c.w.clone(), (c.rows, c.row_len), &dev).unwrap();
            let st = c.fq.init_scales(&wt, None).unwrap();
            let wv = Var::from_tensor(&wt).unwrap();
            let sv = Var::from_tensor(&st).unwrap();
            let q = c.fq.apply(wv.as_tensor(), sv.as_tensor()).unwrap();
            let grads = smooth_loss(&c.x, &c.r, &q).backward().unwrap();
            let gw = vec2(grads.get(wv.as_tensor()).unwrap());
            let gs = vec2(grads.get(sv.as_tensor()).unwrap());

            // The gradient reaching the op's output, from a leaf at q.
            let qv = Var::from_tensor(&q.detach()).unwrap();
            let g0 = smooth_loss(&c.x, &c.r, qv.as_tensor()).backward().unwrap();
            let gq = vec2(g0.get(qv.as_tensor()).unwrap());
            // ... which is the true derivative of the smooth loss in q.
            let qs = vec2(&q);
            let loss_at = |qq: &[f32]| -> f64 {
                let t = Tensor::from_vec(qq.to_vec(), (c.rows, c.row_len), &dev).unwrap();
                smooth_loss(&c.x, &c.r, &t).to_scalar::<f32>().unwrap() as f64
            };
            for j in [0usize, 77, 200, 511] {
                let h = 1e-2f32;
                let mut p = qs.clone();
                p[j] += h;
                let mut m = qs.clone();
                m[j] -= h;
                let fd = ((loss_at(&p) - loss_at(&m)) / (2.0 * h as f64)) as f32;
                assert!(
                    (fd - gq[j]).abs() < 2e-3 + 2e-2 * gq[j].abs(),
                    "{name}: dL/dq[{j}] {} vs fd {fd}",
                    gq[j]
                );
            }
            // The op's gradients are the format's backward of it.
            let dq = c.fq.format().differentiable().unwrap();
            let s = vec2(&st);
            let mut ew = vec![0f32; c.w.len()];
            let mut es = vec![0f32; s.len()];
            let per = c.row_len / dq.group_size();
            for r in 0..c.rows {
                let rr = r * c.row_len..(r + 1) * c.row_len;
                let sr = r * per..(r + 1) * per;
                dq.backward(
                    &c.w[rr.clone()],
                    &s[sr.clone()],
                    &gq[rr.clone()],
                    ste,
                    &mut ew[rr],
                    &mut es[sr],
                );
            }
            assert!(max_rel(&gw, &ew) < 1e-5, "{name} {ste:?}: weights");
            match ste {
                Ste::Standard | Ste::Clipped { .. } => {
                    assert!(gs.iter().all(|&v| v == 0.0), "{name} {ste:?}")
                }
                _ => assert!(max_rel(&gs, &es) < 1e-5, "{name} {ste:?}: scales"),
            }
            if ste == Ste::Standard {
                // The plain STE passes dL/dq through unchanged.
                assert_eq!(gw, gq, "{name}");
            }
        }
    }
}

#[test]
fn lsq_scale_gradients_match_finite_differences_where_clamped() {
    let dev = Device::Cpu;
    // The largest level magnitude of each grid (LSQ's Qp).
    for (name, reach) in [("piq2", 2.0f32), ("piq3", 4.0), ("ternary", 1.0)] {
        let mut c = case(name, Ste::LearnedStepSize);
        // Weights of magnitude 0.5..1 with steps a tenth of the encoder's:
        // every weight is clamped to the grid's end, where q = step * level
        // is linear in the scale and LSQ's gradient is the true one.
        let mut rng = SplitMix64::new(11);
        for v in c.w.iter_mut() {
            *v = v.signum() * (0.5 + 0.5 * rng.next_f32());
        }
        let wt = Tensor::from_vec(c.w.clone(), (c.rows, c.row_len), &dev).unwrap();
        let st = (c.fq.init_scales(&wt, None).unwrap() * 0.1).unwrap();
        let sv = Var::from_tensor(&st).unwrap();
        let q = c.fq.apply(&wt, sv.as_tensor()).unwrap();
        let grads = smooth_loss(&c.x, &c.r, &q).backward().unwrap();
        let gs = vec2(grads.get(sv.as_tensor()).unwrap());
        let s = vec2(&st);
        let g = c.fq.group_size() as f32;
        let lsq = 1.0 / (g * reach).sqrt();
        let loss_at = |ss: &[f32]| -> f64 {
            let t = Tensor::from_vec(ss.to_vec(), st.dims(), &dev).unwrap();
            smooth_loss(&c.x, &c.r, &c.fq.apply(&wt, &t).unwrap())
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let fd: Vec<f32> = (0..s.len())
            .map(|i| {
                let h = 1e-2 * s[i].abs();
                let mut p = s.clone();
                p[i] += h;
                let mut m = s.clone();
                m[i] -= h;
                ((loss_at(&p) - loss_at(&m)) / (2.0 * h as f64)) as f32 * lsq
            })
            .collect();
        assert!(fd.iter().any(|v| v.abs() > 1e-3), "{name}: {fd:?}");
        assert!(max_rel(&gs, &fd) < 2e-2, "{name}: {gs:?} vs {fd:?}");
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let dev = Device::Cpu;
    assert!(FakeQuant::by_name("nope", Ste::Standard).is_err());
    // q8_0 has no differentiable quantizer.
    assert!(FakeQuant::by_name("q8_0", Ste::Standard).is_err());
    let fq = FakeQuant::by_name("piq2", Ste::Standard).unwrap();
    let w = Tensor::zeros((2, 48), candle_core::DType::F32, &dev).unwrap();
    let s = Tensor::ones((2, 1), candle_core::DType::F32, &dev).unwrap();
    assert!(fq.apply(&w, &s).is_err(), "48 is not a multiple of 32");
    assert!(fq.init_scales(&w, None).is_err());
    let w = Tensor::zeros((2, 64), candle_core::DType::F32, &dev).unwrap();
    assert!(fq.apply(&w, &s).is_err(), "two scales per row needed");
    let s2 = Tensor::ones((2, 2), candle_core::DType::F64, &dev).unwrap();
    assert!(fq.apply(&w, &s2).is_err(), "f64 scales");
    assert!(fq.init_scales(&w, Some(&[1.0; 3])).is_err());
    let s = Tensor::ones((2, 2), candle_core::DType::F32, &dev).unwrap();
    assert_eq!(fq.apply(&w, &s).unwrap().dims(), &[2, 64]);
}

/// With the latent weights frozen (detached, as `Parameter::tensor` gives
/// them) the op's backward takes its scratch path (no weight gradient
/// kept); the scales' gradient is the one it computes when the weights are
/// trained too, bit for bit.
#[test]
fn frozen_weights_get_no_gradient_and_the_same_scale_gradient() {
    let dev = Device::Cpu;
    for name in ["piq2", "ternary", "q2_quip"] {
        let fq = FakeQuant::by_name(name, Ste::LearnedStepSize).unwrap();
        let (rows, row_len) = (3, 256);
        let w = Tensor::from_vec(normal(rows * row_len, 0.05, 7), (rows, row_len), &dev).unwrap();
        let s = Var::from_tensor(&fq.init_scales(&w, None).unwrap()).unwrap();
        let target =
            Tensor::from_vec(normal(rows * row_len, 0.05, 8), (rows, row_len), &dev).unwrap();
        let loss = |w: &Tensor| {
            (fq.apply(w, s.as_tensor()).unwrap() - &target)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let wv = Var::from_tensor(&w).unwrap();
        let trained = loss(wv.as_tensor()).backward().unwrap();
        let frozen = loss(&w.detach()).backward().unwrap();
        assert!(trained.get(wv.as_tensor()).is_some(), "{name}");
        let (a, b) = (
            vec2(trained.get(s.as_tensor()).unwrap()),
            vec2(frozen.get(s.as_tensor()).unwrap()),
        );
        assert!(a.iter().any(|g| *g != 0.0), "{name}: zero scale gradient");
        assert_eq!(a, b, "{name}");
    }
}
