//! Choosing the next token from logits: penalties first (repetition, presence, frequency, over
//! the tokens so far), then greedy when the temperature is 0, else temperature, top-k, top-p and
//! min-p filtering and a draw from a seeded generator (the same seed gives the same samples).

use std::collections::HashMap;

use crate::model::simd::exp_to_zero;

/// Sampling parameters (OpenAI's and vLLM's names and defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// 0 is greedy.
    pub temperature: f32,
    /// Keep the k most likely (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: all).
    pub top_p: f32,
    /// Drop tokens under min_p times the most likely one's probability (0: none).
    pub min_p: f32,
    /// Divides positive logits (multiplies negative ones) of tokens seen (1: none).
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of each token seen.
    pub presence_penalty: f32,
    /// Subtracted per occurrence of each token seen.
    pub frequency_penalty: f32,
    /// The generator's seed.
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

/// The chosen token and its log-probability under the (penalised, untempered) distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// The token.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
}

/// A sequence's sampler: parameters and its own random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: Params,
    state: u64,
}

/// log-softmax of `logits`.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let lse = log_sum_exp(logits);
    logits.iter().map(|&l| l - lse).collect()
}

crate::model::simd::multiversion! {
/// `ln Σ exp(l)` over `logits`: what a log-softmax subtracts. The exponentials are computed in
/// vector lanes ([`exp_to_zero`]): libm's `expf`, one value at a time over a 49k vocabulary, was
/// 3.6% of an eight-stream decode step on the engine's own thread while the compute threads
/// waited (perf on llm_generate).
pub fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let mut acc = [0f32; 16];
    let chunks = logits.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().map(|&l| exp_to_zero(l - max)).sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += exp_to_zero(c[i] - max);
        }
    }
    max + (acc.iter().sum::<f32>() + rest).ln()
}
}

/// The `n` most likely tokens with their log-probabilities, most likely first.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<Choice> {
    let lp = log_softmax(logits);
    let mut idx: Vec<usize> = (0..lp.len()).collect();
    idx.sort_unstable_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
    idx.into_iter()
        .take(n)
        .map(|i| Choice {
            token: i as u32,
            logprob: lp[i],
        })
        .collect()
}

impl Sampler {
    /// A sampler for `params`.
    pub fn new(params: Params) -> Sampler {
        // splitmix64 needs a non-degenerate start; mix the seed once.
        let state = params.seed ^ 0x9e37_79b9_7f4a_7c15;
        Sampler { params, state }
    }

    fn next_f32(&mut self) -> f32 {
        // splitmix64: small, fast, and the same sequence on every platform.
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    fn penalise(&self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0 {
            return;
        }
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in history {
            *counts.entry(t).or_default() += 1;
        }
        for (&t, &c) in &counts {
            let Some(l) = logits.get_mut(t as usize) else {
                continue;
            };
            if p.repetition_penalty != 1.0 {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
            *l -= p.presence_penalty + p.frequency_penalty * c as f32;
        }
    }

    /// Picks the next token from `logits` (changed in place by the penalties), given the
    /// sequence's tokens so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Choice {
        self.penalise(logits, history);
        let lse = log_sum_exp(logits);
        let lp = |t: usize| logits[t] - lse;
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                .map_or(0, |(i, _)| i)
        };
        let p = self.params.clone();
        if p.temperature <= 0.0 {
            let i = argmax(logits);
            return Choice {
                token: i as u32,
                logprob: lp(i),
            };
        }
        let mut cand: Vec<(usize, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i, l / p.temperature))
            .collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|&(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &x) in probs.iter().enumerate() {
                acc += x;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            keep = keep.min(probs.iter().take_while(|&&x| x >= floor).count().max(1));
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut r = self.next_f32() * total;
        for (i, &x) in probs[..keep].iter().enumerate() {
            if r < x {
                let t = cand[i].0;
                return Choice {
                    token: t as u32,
                    logprob: lp(t),
                };
            }
            r -= x;
        }
        let t = cand[keep - 1].0;
        Choice {
            token: t as u32,
            logprob: lp(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sum_exp_matches_the_exact_sum_in_f64() {
        let mut rng = fastrand::Rng::with_seed(11);
        for (len, spread) in [(5, 4.0), (49_152, 30.0), (1000, 200.0), (17, 0.0)] {
            let v: Vec<f32> = (0..len).map(|_| (rng.f32() - 0.5) * spread).collect();
            let max = v
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, |m, x| m.max(x as f64));
            let exact = max + v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            let got = log_sum_exp(&v) as f64;
            assert!(
                (got - exact).abs() < 1e-5 * (1.0 + exact.abs()),
                "{len}: {got} vs {exact}"
            );
        }
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY, 0.0]), 0.0);
        for x in [-0.0f32, -0.3, -1.0, -10.0, -50.0, -86.9, -87.5, -200.0] {
            let (got, want) = (exp_to_zero(x), if x < -87.0 { 0.0 } else { x.exp() });
            assert!(
                (got - want).abs() <= 4e-7 * want,
                "exp({x}): {got} vs {want}"
            );
        }
    }

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_takes_the_largest_logit_with_its_logprob() {
        let mut s = Sampler::new(Params {
            temperature: 0.0,
            ..Params::default()
        });
        let c = s.sample(&mut logits(), &[]);
        assert_eq!(c.token, 1);
        let want = log_softmax(&logits())[1];
        assert!((c.logprob - want).abs() < 1e-6);
    }

    #[test]
    fn the_same_seed_gives_the_same_samples_and_another_seed_others() {
        let draw = |seed| {
            let mut s = Sampler::new(Params {
                seed,
                ..Params::default()
            });
            (0..64)
                .map(|_| s.sample(&mut logits(), &[]).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn top_k_and_top_p_and_min_p_keep_only_the_likely_tokens() {
        for params in [
            Params {
                top_k: 2,
                ..Params::default()
            },
            Params {
                top_p: 0.5,
                ..Params::default()
            },
            Params {
                min_p: 0.8,
                ..Params::default()
            },
        ] {
            let mut s = Sampler::new(Params {
                seed: 7,
                ..params.clone()
            });
            for _ in 0..200 {
                let t = s.sample(&mut logits(), &[]).token;
                assert!(t == 1 || t == 4, "{params:?} drew {t}");
            }
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let mut s = Sampler::new(Params {
            seed: 1,
            ..Params::default()
        });
        let n = 20_000;
        let mut counts = [0u32; 5];
        for _ in 0..n {
            counts[s.sample(&mut logits(), &[]).token as usize] += 1;
        }
        let p: Vec<f32> = log_softmax(&logits()).iter().map(|l| l.exp()).collect();
        for (c, want) in counts.iter().zip(&p) {
            let got = *c as f32 / n as f32;
            assert!((got - want).abs() < 0.015, "{counts:?} vs {p:?}");
        }
    }

    #[test]
    fn penalties_push_seen_tokens_down() {
        let mut s = Sampler::new(Params {
            temperature: 0.0,
            repetition_penalty: 2.0,
            ..Params::default()
        });
        // Token 1 (3.0) halves to 1.5 once seen: token 4 (2.9) wins.
        assert_eq!(s.sample(&mut logits(), &[1]).token, 4);
        let mut s = Sampler::new(Params {
            temperature: 0.0,
            frequency_penalty: 0.1,
            ..Params::default()
        });
        // Seen twice: 3.0 - 0.2 = 2.8 < 2.9.
        assert_eq!(s.sample(&mut logits(), &[1, 1]).token, 4);
        assert_eq!(
            s.sample(&mut logits(), &[1]).token,
            1,
            "2.9 < 2.9 is false: still 1"
        );
    }

    #[test]
    fn top_logprobs_are_ordered() {
        let t = top_logprobs(&logits(), 3);
        assert_eq!(t.iter().map(|c| c.token).collect::<Vec<_>>(), vec![1, 4, 2]);
    }
}
