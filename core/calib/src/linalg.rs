//! Dense symmetric linear algebra in f64 for Hessian-aware rounding:
//! Cholesky factorization, the inverse from it, and the upper Cholesky
//! factor of the inverse that GPTQ feeds errors through.
//!
//! Matrices are `n x n`, row-major `Vec<f64>`. `O(n^3)` each; n is a
//! layer's input width (<= a few thousand here). Rows are updated in
//! parallel with rayon.

use rayon::prelude::*;

/// Cholesky factorization `A = L L^T` in place (lower triangle holds `L`,
/// the strict upper triangle is zeroed).
///
/// # Errors
/// Returns the index of the first non-positive pivot when `A` is not
/// positive definite.
pub fn cholesky_in_place(a: &mut [f64], n: usize) -> Result<(), usize> {
    debug_assert_eq!(a.len(), n * n);
    for j in 0..n {
        let d = a[j * n + j] - dot(&a[j * n..j * n + j], &a[j * n..j * n + j]);
        if !(d > 0.0 && d.is_finite()) {
            return Err(j);
        }
        let ljj = d.sqrt();
        a[j * n + j] = ljj;
        a[j * n + j + 1..(j + 1) * n]
            .iter_mut()
            .for_each(|v| *v = 0.0);
        let (head, tail) = a.split_at_mut((j + 1) * n);
        let row_j = &head[j * n..j * n + j];
        tail.par_chunks_mut(n).for_each(|row_i| {
            let s = row_i[j] - dot(&row_i[..j], row_j);
            row_i[j] = s / ljj;
        });
    }
    Ok(())
}

/// Dot product in four independent lanes (vectorizes; f64 sums do not
/// reassociate on their own).
fn dot(x: &[f64], y: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (cx, cy) = (x.chunks_exact(4), y.chunks_exact(4));
    let (rx, ry) = (cx.remainder(), cy.remainder());
    for (a, b) in cx.zip(cy) {
        for k in 0..4 {
            acc[k] += a[k] * b[k];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (a, b) in rx.iter().zip(ry) {
        s += a * b;
    }
    s
}

/// `A^{-1}` from its Cholesky factor `L` (lower, as left by
/// [`cholesky_in_place`]): the columns of `L^{-1}` by forward substitution
/// (stored as rows, so every step is a contiguous dot product), then
/// `A^{-1} = L^{-T} L^{-1}`, entry `(i, j)` the dot of two of those rows.
pub fn inverse_from_cholesky(l: &[f64], n: usize) -> Vec<f64> {
    // Row c of `lt` is column c of L^{-1} (zero before index c).
    let mut lt = vec![0f64; n * n];
    lt.par_chunks_mut(n).enumerate().for_each(|(c, y)| {
        y[c] = 1.0 / l[c * n + c];
        for i in c + 1..n {
            let s = dot(&l[i * n + c..i * n + i], &y[c..i]);
            y[i] = -s / l[i * n + i];
        }
    });
    // (i, j) = dot(lt_i, lt_j); the zeros before each row's start add
    // nothing, so this is one product of `lt` with its transpose.
    let mut inv = matmul_nt(&lt, &lt, n, n, n);
    // Exactly symmetric, as the callers factor it again.
    for i in 1..n {
        for j in 0..i {
            inv[i * n + j] = inv[j * n + i];
        }
    }
    inv
}

/// The upper Cholesky factor `U` of a symmetric positive definite `A`
/// (`A = U^T U`), row-major with zeros below the diagonal.
///
/// # Errors
/// The first non-positive pivot, as [`cholesky_in_place`].
pub fn upper_cholesky(a: &[f64], n: usize) -> Result<Vec<f64>, usize> {
    let mut l = a.to_vec();
    cholesky_in_place(&mut l, n)?;
    // U = L^T.
    let mut u = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = l[i * n + j];
        }
    }
    Ok(u)
}

/// `A B^T` for row-major `a` (`m x k`) and `b` (`n x k`): the `m x n`
/// product, row-major, computed by the `gemm` crate on rayon's threads.
///
/// # Panics
/// When `a.len() != m * k` or `b.len() != n * k` (a caller's bug).
pub fn matmul_nt(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    assert_eq!(a.len(), m * k, "lhs of matmul_nt");
    assert_eq!(b.len(), n * k, "rhs of matmul_nt");
    let mut c = vec![0f64; m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the lengths were checked above; with these strides every
    // index the kernel touches is `i * k + p` (< m k) in `a`,
    // `j * k + p` (< n k) in `b` and `i * n + j` (< m n) in `c`, and `c`
    // is borrowed mutably and disjoint from the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize) -> Vec<f64> {
        let mut x = vec![0f64; n * n];
        let mut s = 1u64;
        for v in x.iter_mut() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *v = ((s >> 11) as f64 / (1u64 << 53) as f64) - 0.5;
        }
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| x[i * n + k] * x[j * n + k]).sum::<f64>()
                    + if i == j { 0.1 } else { 0.0 };
            }
        }
        a
    }

    #[test]
    fn inverse_and_factors_reconstruct() {
        let n = 9;
        let a = spd(n);
        let mut l = a.clone();
        cholesky_in_place(&mut l, n).unwrap();
        let inv = inverse_from_cholesky(&l, n);
        for i in 0..n {
            for j in 0..n {
                let p: f64 = (0..n).map(|k| a[i * n + k] * inv[k * n + j]).sum();
                assert!(
                    (p - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9,
                    "{i},{j}: {p}"
                );
            }
        }
        let u = upper_cholesky(&inv, n).unwrap();
        for i in 0..n {
            for j in 0..n {
                let p: f64 = (0..n).map(|k| u[k * n + i] * u[k * n + j]).sum();
                assert!((p - inv[i * n + j]).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn matmul_nt_matches_the_naive_product() {
        let (m, k, n) = (7, 13, 5);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.91).cos()).collect();
        let c = matmul_nt(&a, &b, m, k, n);
        for i in 0..m {
            for j in 0..n {
                let p: f64 = (0..k).map(|x| a[i * k + x] * b[j * k + x]).sum();
                assert!((c[i * n + j] - p).abs() < 1e-12, "{i},{j}");
            }
        }
    }

    #[test]
    fn indefinite_matrix_reports_the_pivot() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(cholesky_in_place(&mut a, 2), Err(1));
    }
}
