//! Minimum-cost assignment (Hungarian method, shortest augmenting paths), for matching tracks to
//! detections. Sizes here are tens, so the O(n^2 m) algorithm is plenty.

/// `cost[r][c]` for `rows` x `cols`; returns, for each row, the column assigned to it (if any). Every row
/// gets a column when `rows <= cols`, otherwise every column gets a row. Callers gate the result.
pub fn assign(cost: &[Vec<f64>], cols: usize) -> Vec<Option<usize>> {
    let rows = cost.len();
    if rows == 0 || cols == 0 {
        return vec![None; rows];
    }
    if rows > cols {
        // Solve the transpose so that the side being assigned is the smaller one.
        let t: Vec<Vec<f64>> = (0..cols).map(|c| (0..rows).map(|r| cost[r][c]).collect()).collect();
        let by_col = assign(&t, rows);
        let mut out = vec![None; rows];
        for (c, r) in by_col.into_iter().enumerate() {
            if let Some(r) = r {
                out[r] = Some(c);
            }
        }
        return out;
    }
    // 1-based potentials formulation; column 0 is a virtual start.
    let n = rows;
    let m = cols;
    let mut u = vec![0.0f64; n + 1];
    let mut v = vec![0.0f64; m + 1];
    let mut p = vec![0usize; m + 1]; // p[col] = row matched to col (1-based), 0 = none
    let mut way = vec![0usize; m + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![f64::INFINITY; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0usize;
            for j in 1..=m {
                if used[j] {
                    continue;
                }
                let cur = cost[i0 - 1][j - 1] - u[i0] - v[j];
                if cur < minv[j] {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if minv[j] < delta {
                    delta = minv[j];
                    j1 = j;
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut out = vec![None; n];
    for j in 1..=m {
        if p[j] != 0 {
            out[p[j] - 1] = Some(j - 1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn total(cost: &[Vec<f64>], a: &[Option<usize>]) -> f64 {
        a.iter().enumerate().filter_map(|(r, c)| c.map(|c| cost[r][c])).sum()
    }

    /// Every injective assignment, for comparing against on small matrices.
    fn brute_force(cost: &[Vec<f64>], cols: usize) -> f64 {
        fn go(cost: &[Vec<f64>], r: usize, used: &mut Vec<bool>, need: usize) -> f64 {
            if r == cost.len() {
                return if used.iter().filter(|u| **u).count() == need {
                    0.0
                } else {
                    f64::INFINITY
                };
            }
            let mut best = f64::INFINITY;
            // A row may stay unassigned only when there are more rows than columns.
            if cost.len() > used.len() {
                best = go(cost, r + 1, used, need);
            }
            for c in 0..used.len() {
                if !used[c] {
                    used[c] = true;
                    best = best.min(cost[r][c] + go(cost, r + 1, used, need));
                    used[c] = false;
                }
            }
            best
        }
        let need = cost.len().min(cols);
        go(cost, 0, &mut vec![false; cols], need)
    }

    #[test]
    fn picks_the_cheaper_crossing() {
        let cost = vec![vec![1.0, 2.0], vec![2.0, 10.0]];
        // Greedy would take (0,0) then (1,1) = 11; optimal is (0,1) + (1,0) = 4.
        assert_eq!(assign(&cost, 2), vec![Some(1), Some(0)]);
    }

    #[test]
    fn empty_and_rectangular() {
        assert_eq!(assign(&[], 3), Vec::<Option<usize>>::new());
        assert_eq!(assign(&[vec![], vec![]], 0), vec![None, None]);
        let tall = vec![vec![5.0], vec![1.0], vec![3.0]];
        assert_eq!(assign(&tall, 1), vec![None, Some(0), None]);
    }

    proptest! {
        #[test]
        fn optimal_against_brute_force(rows in 1usize..5, cols in 1usize..5, seed in prop::collection::vec(0u32..100, 25)) {
            let cost: Vec<Vec<f64>> = (0..rows).map(|r| (0..cols).map(|c| seed[r * 5 + c] as f64).collect()).collect();
            let a = assign(&cost, cols);
            // Injective, and as many pairs as the smaller side.
            let mut seen = std::collections::HashSet::new();
            for c in a.iter().flatten() { prop_assert!(seen.insert(*c)); }
            prop_assert_eq!(seen.len(), rows.min(cols));
            prop_assert!((total(&cost, &a) - brute_force(&cost, cols)).abs() < 1e-9);
        }
    }
}
