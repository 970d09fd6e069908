//! Graph connectivity (Luecken et al. 2022).
//!
//! For each label, take the directed k-NN graph (scib uses k = 15, self
//! included) restricted to that label's rows, find its *strongly* connected
//! components (as scib-metrics calls scipy with `connection="strong"`), and
//! score the largest component's share of the label's rows. The metric is the
//! mean over labels; 1 means every label forms one connected neighbourhood.

use super::knn::Neighbors;
use super::labels::Codes;
use anyhow::{bail, Result};

/// Sizes of the strongly connected components of a directed graph given as
/// adjacency lists (iterative Tarjan, no recursion).
pub(crate) fn strong_component_sizes(adj: &[Vec<usize>]) -> Vec<usize> {
    let n = adj.len();
    const UNSEEN: usize = usize::MAX;
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut sizes = Vec::new();
    let mut next = 0;
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        // call stack of (node, next edge position)
        let mut call: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut pos)) = call.last_mut() {
            if *pos < adj[v].len() {
                let w = adj[v][*pos];
                *pos += 1;
                if index[w] == UNSEEN {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    call.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
            } else {
                call.pop();
                if let Some(&(parent, _)) = call.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut size = 0;
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        size += 1;
                        if w == v {
                            break;
                        }
                    }
                    sizes.push(size);
                }
            }
        }
    }
    sizes
}

/// Graph connectivity of `labels` on the neighbour graph `nn`.
pub fn graph_connectivity(nn: &Neighbors, labels: &Codes) -> Result<f64> {
    if labels.codes.len() != nn.n {
        bail!(
            "graph connectivity: {} labels for {} rows",
            labels.codes.len(),
            nn.n
        );
    }
    let members = labels.members();
    if members.is_empty() {
        bail!("graph connectivity: no rows");
    }
    let mut local = vec![usize::MAX; nn.n];
    let mut scores = Vec::with_capacity(members.len());
    for rows in &members {
        for (li, &i) in rows.iter().enumerate() {
            local[i] = li;
        }
        let adj: Vec<Vec<usize>> = rows
            .iter()
            .map(|&i| {
                nn.row(i)
                    .iter()
                    .filter(|&&j| labels.codes[j] == labels.codes[i])
                    .map(|&j| local[j])
                    .collect()
            })
            .collect();
        let sizes = strong_component_sizes(&adj);
        let largest = sizes.iter().copied().max().unwrap_or(0);
        scores.push(largest as f64 / rows.len() as f64);
    }
    Ok(scores.iter().sum::<f64>() / scores.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Oracle: v and w share a component iff each reaches the other.
    fn oracle_sizes(adj: &[Vec<usize>]) -> Vec<usize> {
        let n = adj.len();
        let reach: Vec<Vec<bool>> = (0..n)
            .map(|s| {
                let mut seen = vec![false; n];
                let mut st = vec![s];
                seen[s] = true;
                while let Some(v) = st.pop() {
                    for &w in &adj[v] {
                        if !seen[w] {
                            seen[w] = true;
                            st.push(w);
                        }
                    }
                }
                seen
            })
            .collect();
        let mut done = vec![false; n];
        let mut sizes = Vec::new();
        for v in 0..n {
            if done[v] {
                continue;
            }
            let comp: Vec<usize> = (0..n).filter(|&w| reach[v][w] && reach[w][v]).collect();
            for &w in &comp {
                done[w] = true;
            }
            sizes.push(comp.len());
        }
        sizes
    }

    #[test]
    fn directed_chain_is_not_strongly_connected() {
        let adj = vec![vec![1], vec![2], vec![]];
        let mut s = strong_component_sizes(&adj);
        s.sort();
        assert_eq!(s, vec![1, 1, 1]);
        let cycle = vec![vec![1], vec![2], vec![0]];
        assert_eq!(strong_component_sizes(&cycle), vec![3]);
    }

    #[test]
    fn two_label_example() {
        // label a: rows 0,1 mutual; label b: rows 2,3,4 where 4 is unreachable.
        let nn = Neighbors {
            n: 5,
            k: 2,
            indices: vec![0, 1, 1, 0, 2, 3, 3, 2, 4, 2],
            distances: vec![0.0; 10],
        };
        let labels = Codes::new(&["a", "a", "b", "b", "b"]);
        let g = graph_connectivity(&nn, &labels).unwrap();
        assert!((g - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn tarjan_matches_reachability_oracle(edges in proptest::collection::vec((0usize..12, 0usize..12), 0..40)) {
            let mut adj = vec![Vec::new(); 12];
            for (a, b) in edges { adj[a].push(b); }
            let mut s = strong_component_sizes(&adj);
            let mut o = oracle_sizes(&adj);
            s.sort(); o.sort();
            prop_assert_eq!(s, o);
        }
    }
}
