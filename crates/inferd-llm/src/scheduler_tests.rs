use super::*;

fn sched(blocks: usize, block_size: usize, seqs: usize, budget: usize) -> Scheduler {
    Scheduler::new(
        Config {
            max_num_seqs: seqs,
            max_num_batched_tokens: budget,
            max_model_len: 1024,
        },
        BlockManager::new(blocks, block_size),
    )
}

fn seq(id: SeqId, prompt: usize, new: usize) -> NewSeq {
    NewSeq {
        id,
        prompt: (0..prompt as u32).map(|i| i + 1000 * id as u32).collect(),
        max_new_tokens: new,
        priority: 0,
        score_prompt: false,
    }
}

/// Runs a step with a fake model that samples token 7 wherever asked.
fn step(s: &mut Scheduler) -> Batch {
    let b = s.schedule();
    let sampled: Vec<(SeqId, u32)> = b
        .chunks
        .iter()
        .filter(|c| c.sample)
        .map(|c| (c.seq, 7))
        .collect();
    s.complete(&b, &sampled);
    b
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_while_others_decode() {
    let mut s = sched(64, 4, 8, 16);
    s.add(seq(1, 3, 10)).unwrap();
    let b = step(&mut s);
    assert_eq!(b.chunks.len(), 1);
    assert!(b.chunks[0].sample, "a 3-token prompt fits one step");
    s.add(seq(2, 40, 10)).unwrap();
    // Seq 1 decodes one token each step; seq 2's prompt takes the remaining 15, 15, then 10.
    let mut prefill = Vec::new();
    for _ in 0..3 {
        let b = step(&mut s);
        assert!(b.num_tokens() <= 16);
        let one = b.chunks.iter().find(|c| c.seq == 1).unwrap();
        assert_eq!(one.tokens.len(), 1, "seq 1 decodes every step");
        let two = b.chunks.iter().find(|c| c.seq == 2).unwrap();
        prefill.push((two.start, two.tokens.len(), two.sample));
    }
    assert_eq!(
        prefill,
        vec![(0, 15, false), (15, 15, false), (30, 10, true)]
    );
    assert_eq!(s.generated(2), Some(1));
}

#[test]
fn no_more_than_max_num_seqs_run_and_the_rest_wait_their_turn() {
    let mut s = sched(64, 4, 2, 64);
    for id in 1..=4 {
        s.add(seq(id, 4, 2)).unwrap();
    }
    let b = step(&mut s);
    let ids: Vec<SeqId> = b.chunks.iter().map(|c| c.seq).collect();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!((s.num_running(), s.num_waiting()), (2, 2));
    s.finish(1);
    let b = step(&mut s);
    let ids: Vec<SeqId> = b.chunks.iter().map(|c| c.seq).collect();
    assert_eq!(
        ids,
        vec![2, 3],
        "seq 3 joins the running batch between steps"
    );
}

#[test]
fn priority_goes_before_arrival() {
    let mut s = sched(64, 4, 1, 64);
    s.add(seq(1, 4, 2)).unwrap();
    let mut urgent = seq(2, 4, 2);
    urgent.priority = -1;
    s.add(urgent).unwrap();
    assert_eq!(step(&mut s).chunks[0].seq, 2);
}

#[test]
fn out_of_blocks_preempts_the_latest_and_recomputes_it_later() {
    // 4 blocks of 4: two sequences of 7-token prompts take 2 blocks each; the first decode
    // that crosses into a new block finds none and preempts seq 2.
    let mut s = sched(4, 4, 8, 64);
    s.add(seq(1, 7, 8)).unwrap();
    s.add(seq(2, 7, 8)).unwrap();
    step(&mut s); // both prefill, each samples its 8th token
    let b = step(&mut s); // position 7 fits block 2 of each
    assert_eq!(b.chunks.len(), 2);
    let b = step(&mut s); // position 8 needs a new block each: seq 2 gives way
    assert_eq!(b.preempted, vec![2]);
    assert_eq!(b.chunks.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![1]);
    assert_eq!(s.preemptions(), 1);
    let generated = s.generated(2).unwrap();
    assert_eq!(generated, 2, "its tokens are kept");
    // Once seq 1 is done, seq 2 is recomputed from all its tokens, prompt and generated,
    // except its first block, which it had committed to the prefix cache before it gave way.
    s.finish(1);
    let b = step(&mut s);
    let c = &b.chunks[0];
    assert_eq!((c.seq, c.start, c.tokens.len(), c.sample), (2, 4, 5, true));
    assert_eq!(
        s.tokens(2).unwrap().len(),
        10,
        "9 tokens recomputed or reused, 1 sampled"
    );
    s.blocks.check().unwrap();
}

#[test]
fn a_shared_prefix_is_not_recomputed() {
    let mut s = sched(64, 4, 8, 64);
    let system: Vec<u32> = (0..16).collect();
    let mut a = system.clone();
    a.push(100);
    let mut b = system.clone();
    b.push(200);
    s.add(NewSeq {
        id: 1,
        prompt: a,
        max_new_tokens: 4,
        priority: 0,
        score_prompt: false,
    })
    .unwrap();
    step(&mut s);
    s.add(NewSeq {
        id: 2,
        prompt: b,
        max_new_tokens: 4,
        priority: 0,
        score_prompt: false,
    })
    .unwrap();
    let batch = step(&mut s);
    let c = batch.chunks.iter().find(|c| c.seq == 2).unwrap();
    assert_eq!(
        (c.start, c.tokens.len()),
        (16, 1),
        "16 prompt tokens came from the cache"
    );
}

#[test]
fn cancelling_frees_the_blocks_at_once() {
    let mut s = sched(16, 4, 8, 64);
    for id in 1..=3 {
        s.add(seq(id, 10, 20)).unwrap();
    }
    step(&mut s);
    assert!(s.blocks.usage() > 0.0);
    for id in 1..=3 {
        s.finish(id);
    }
    assert_eq!(s.blocks.usage(), 0.0);
    assert_eq!((s.num_running(), s.num_waiting()), (0, 0));
    s.blocks.check().unwrap();
}

#[test]
fn requests_that_can_never_run_are_refused_at_once() {
    let mut s = Scheduler::new(
        Config {
            max_num_seqs: 4,
            max_num_batched_tokens: 64,
            max_model_len: 100,
        },
        BlockManager::new(8, 4),
    );
    assert_eq!(s.add(seq(1, 0, 4)), Err(AddError::EmptyPrompt));
    assert_eq!(
        s.add(seq(1, 90, 20)),
        Err(AddError::TooLong {
            prompt: 90,
            new: 20,
            context: 100
        })
    );
    assert_eq!(
        s.add(seq(1, 30, 10)),
        Err(AddError::NeverFits {
            needed: 10,
            total: 8
        })
    );
    s.add(seq(1, 4, 4)).unwrap();
    assert_eq!(s.add(seq(1, 4, 4)), Err(AddError::Duplicate(1)));
}

#[test]
fn random_workloads_finish_every_sequence_and_leak_no_block() {
    for seed in 0..50 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut s = sched(
            rng.usize(8..24),
            rng.usize(2..6),
            rng.usize(1..6),
            rng.usize(4..32),
        );
        let mut next = 0;
        let mut done = 0;
        for _ in 0..400 {
            if rng.u8(0..4) == 0 && next < 30 {
                next += 1;
                let _ = s.add(seq(next, rng.usize(1..12), rng.usize(1..8)));
            }
            let b = step(&mut s);
            for c in b.chunks.iter().filter(|c| c.sample) {
                if s.at_limit(c.seq) || rng.u8(0..20) == 0 {
                    s.finish(c.seq);
                    done += 1;
                }
            }
            if let Err(e) = s.blocks.check() {
                panic!("seed {seed}: {e}");
            }
        }
        while s.num_running() + s.num_waiting() > 0 {
            let b = step(&mut s);
            assert!(
                !b.chunks.is_empty() || !b.preempted.is_empty(),
                "seed {seed}: stalled"
            );
            for c in b.chunks.iter().filter(|c| c.sample) {
                if s.at_limit(c.seq) {
                    s.finish(c.seq);
                    done += 1;
                }
            }
        }
        assert!(done > 0);
        assert_eq!(s.blocks.usage(), 0.0, "seed {seed}");
        s.blocks.check().unwrap();
    }
}
