//! Adam (Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization",
//! Algorithm 1) on candle variables, each variable with its own step size,
//! with optional global-norm gradient clipping (Pascanu et al. 2013), a
//! per-step scale of the step sizes (warm-up) and decoupled weight decay
//! (AdamW, Loshchilov & Hutter 2019) on chosen variables. The
//! gradients come as a list in variable order, so callers that assemble
//! gradients from several backward passes (chunked losses) can use it.

use crate::engine_error::{EngineError, EngineResult};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// Adam state over a list of variables.
#[derive(Debug)]
pub struct CandleAdam {
    vars: Vec<(Var, f64)>,
    decay: Vec<bool>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: i32,
    clip: Option<f64>,
}

impl CandleAdam {
    /// First-moment decay.
    pub const B1: f64 = 0.9;
    /// Second-moment decay.
    pub const B2: f64 = 0.999;
    /// Denominator guard.
    pub const EPS: f64 = 1e-8;

    /// State for `vars`, each with its step size (in the variable's units:
    /// Adam's first step moves every element by about the step size).
    /// `clip`: scale the gradients so their global L2 norm is at most this
    /// (`None`: no clipping).
    ///
    /// # Errors
    /// [`EngineError::BadInput`] for a negative or non-finite step size or
    /// clip norm; candle errors.
    pub fn new(vars: Vec<(Var, f64)>, clip: Option<f64>) -> EngineResult<Self> {
        if vars.iter().any(|(_, lr)| !(lr.is_finite() && *lr >= 0.0))
            || clip.is_some_and(|c| !(c.is_finite() && c > 0.0))
        {
            return Err(EngineError::BadInput(
                "Adam: step sizes must be finite and >= 0, the clip norm finite and > 0".into(),
            ));
        }
        let m = vars
            .iter()
            .map(|(v, _)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            v: m.clone(),
            m,
            decay: vec![false; vars.len()],
            vars,
            t: 0,
            clip,
        })
    }

    /// Chooses the variables that [`CandleAdam::step_scaled`]'s weight
    /// decay applies to (`mask[i]` for variable `i`; none by default).
    ///
    /// # Errors
    /// [`EngineError::BadInput`] for a mask of another length.
    pub fn with_weight_decay(mut self, mask: Vec<bool>) -> EngineResult<Self> {
        if mask.len() != self.vars.len() {
            return Err(EngineError::BadInput(format!(
                "Adam: weight-decay mask of {} for {} variables",
                mask.len(),
                self.vars.len()
            )));
        }
        self.decay = mask;
        Ok(self)
    }

    /// The variables, in order.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.vars.iter().map(|(v, _)| v)
    }

    /// Steps taken.
    pub fn steps(&self) -> usize {
        self.t as usize
    }

    /// The step size of each variable, in order.
    pub fn step_sizes(&self) -> Vec<f64> {
        self.vars.iter().map(|(_, lr)| *lr).collect()
    }

    /// The first and second moment estimates, one tensor per variable.
    pub fn moments(&self) -> (&[Tensor], &[Tensor]) {
        (&self.m, &self.v)
    }

    /// Restores a saved state: `t` steps taken and the moments `m`, `v`
    /// (one per variable, of its shape), so that the next [`CandleAdam::step`]
    /// continues exactly as the saved optimizer would have.
    ///
    /// # Errors
    /// [`EngineError::BadInput`] for lists of another length, moments of
    /// another shape or a step count beyond `i32::MAX`.
    pub fn restore(&mut self, t: u64, m: Vec<Tensor>, v: Vec<Tensor>) -> EngineResult<()> {
        let n = self.vars.len();
        if m.len() != n || v.len() != n {
            return Err(EngineError::BadInput(format!(
                "Adam: {} and {} moments for {n} variables",
                m.len(),
                v.len()
            )));
        }
        for (i, (var, _)) in self.vars.iter().enumerate() {
            if m[i].dims() != var.dims() || v[i].dims() != var.dims() {
                return Err(EngineError::BadInput(format!(
                    "Adam: moments of shapes {:?}, {:?} for a variable of {:?}",
                    m[i].dims(),
                    v[i].dims(),
                    var.dims()
                )));
            }
        }
        self.t = i32::try_from(t).map_err(|_| EngineError::BadInput(format!("Adam: {t} steps")))?;
        self.m = m;
        self.v = v;
        Ok(())
    }

    /// One step with `grads[i]` the gradient of variable `i` (`None`: no
    /// gradient; the variable and its moments are left unchanged). Returns
    /// the global gradient norm before clipping.
    ///
    /// # Errors
    /// [`EngineError::BadInput`] when the list length differs from the
    /// variables'; candle errors (shape mismatch).
    pub fn step(&mut self, grads: &[Option<Tensor>]) -> EngineResult<f64> {
        self.step_scaled(grads, 1.0, 0.0)
    }

    /// [`CandleAdam::step`] with every step size times `lr_scale` (a
    /// warm-up factor) and, on the variables chosen by
    /// [`CandleAdam::with_weight_decay`], decoupled weight decay: the
    /// variable also shrinks by `lr * weight_decay` of itself (AdamW).
    ///
    /// # Errors
    /// As [`CandleAdam::step`].
    pub fn step_scaled(
        &mut self,
        grads: &[Option<Tensor>],
        lr_scale: f64,
        weight_decay: f64,
    ) -> EngineResult<f64> {
        if grads.len() != self.vars.len() {
            return Err(EngineError::BadInput(format!(
                "Adam: {} gradients for {} variables",
                grads.len(),
                self.vars.len()
            )));
        }
        let mut sq = 0f64;
        for g in grads.iter().flatten() {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let norm = sq.sqrt();
        let k = match self.clip {
            Some(c) if norm > c => c / norm,
            _ => 1.0,
        };
        self.t += 1;
        let c1 = 1.0 - Self::B1.powi(self.t);
        let c2 = 1.0 - Self::B2.powi(self.t);
        for (i, (var, lr)) in self.vars.iter().enumerate() {
            let Some(g) = &grads[i] else {
                continue;
            };
            let g = (g.detach() * k)?;
            self.m[i] = ((&self.m[i] * Self::B1)? + (&g * (1.0 - Self::B1))?)?;
            self.v[i] = ((&self.v[i] * Self::B2)? + (g.sqr()? * (1.0 - Self::B2))?)?;
            let upd = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + Self::EPS)?)?;
            let lr = *lr * lr_scale;
            let mut new = (var.as_tensor().detach() - (upd * lr)?)?;
            if self.decay[i] && weight_decay > 0.0 {
                new = (&new - (var.as_tensor().detach() * (lr * weight_decay))?)?;
            }
            var.set(&new)?;
        }
        Ok(norm)
    }

    /// [`CandleAdam::step`] with the gradients looked up in a backward
    /// pass's store.
    ///
    /// # Errors
    /// As [`CandleAdam::step`].
    pub fn step_store(&mut self, grads: &GradStore) -> EngineResult<f64> {
        let g: Vec<Option<Tensor>> = self
            .vars
            .iter()
            .map(|(v, _)| grads.get(v.as_tensor()).cloned())
            .collect();
        self.step(&g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn first_step_moves_by_the_step_size_against_the_gradient() {
        let v = Var::from_vec(vec![1f32, -1.0], 2, &Device::Cpu).unwrap();
        let mut a = CandleAdam::new(vec![(v.clone(), 0.1)], None).unwrap();
        let g = Tensor::from_vec(vec![0.5f32, -3.0], 2, &Device::Cpu).unwrap();
        a.step(&[Some(g)]).unwrap();
        let p = v.as_tensor().to_vec1::<f32>().unwrap();
        assert!(
            (p[0] - 0.9).abs() < 1e-5 && (p[1] + 0.9).abs() < 1e-5,
            "{p:?}"
        );
    }

    #[test]
    fn minimizes_a_quadratic_and_reports_the_norm() {
        let v = Var::from_vec(vec![0f32; 3], 3, &Device::Cpu).unwrap();
        let target = Tensor::from_vec(vec![3f32, -1.0, 0.5], 3, &Device::Cpu).unwrap();
        let mut a = CandleAdam::new(vec![(v.clone(), 0.01)], Some(1.0)).unwrap();
        for _ in 0..2000 {
            let loss = (v.as_tensor() - &target)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            a.step_store(&loss.backward().unwrap()).unwrap();
        }
        let p = v.as_tensor().to_vec1::<f32>().unwrap();
        for (x, y) in p.iter().zip([3f32, -1.0, 0.5]) {
            assert!((x - y).abs() < 1e-2, "{p:?}");
        }
        assert!(a.step(&[]).is_err());
        assert!(CandleAdam::new(vec![(v, f64::NAN)], None).is_err());
    }
}
