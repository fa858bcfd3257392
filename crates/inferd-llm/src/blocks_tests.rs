use super::*;

fn toks(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| i * 7 + salt).collect()
}

#[test]
fn a_sequence_grows_a_block_at_a_time_and_frees_everything() {
    let mut m = BlockManager::new(8, 4);
    assert_eq!(m.allocate(1, &toks(6, 0)).unwrap(), 0);
    assert_eq!(m.blocks(1).unwrap().len(), 2);
    m.append(1, 6).unwrap();
    assert_eq!(m.len(1), Some(6));
    // Two more tokens fit in block 2; the third needs block 3.
    m.append(1, 2).unwrap();
    assert_eq!(m.blocks(1).unwrap().len(), 2);
    m.append(1, 1).unwrap();
    assert_eq!(m.blocks(1).unwrap().len(), 3);
    assert!((m.usage() - 3.0 / 8.0).abs() < 1e-12);
    assert!((m.waste() - 3.0 / 12.0).abs() < 1e-12, "{}", m.waste());
    m.free(1);
    assert_eq!(m.available(), 8);
    assert_eq!(m.usage(), 0.0);
    m.check().unwrap();
}

#[test]
fn out_of_blocks_refuses_and_changes_nothing() {
    let mut m = BlockManager::new(3, 4);
    m.allocate(1, &toks(8, 0)).unwrap();
    let before = (m.available(), m.usage());
    let e = m.allocate(2, &toks(9, 1)).unwrap_err();
    assert_eq!(
        e,
        BlockError::OutOfBlocks {
            needed: 3,
            available: 1
        }
    );
    assert!(!m.contains(2));
    m.append(1, 8).unwrap();
    assert!(matches!(
        m.append(1, 5),
        Err(BlockError::OutOfBlocks { .. })
    ));
    assert_eq!(m.len(1), Some(8));
    assert_eq!((m.available(), m.usage()), before);
    m.check().unwrap();
}

#[test]
fn a_shared_prompt_prefix_is_computed_once() {
    let mut m = BlockManager::new(16, 4);
    let system = toks(12, 3);
    let mut a = system.clone();
    a.extend([900, 901, 902]);
    let mut b = system.clone();
    b.extend([800, 801]);
    assert_eq!(m.allocate(1, &a).unwrap(), 0);
    m.append(1, a.len()).unwrap();
    m.commit(1, &a);
    // b's first three blocks are a's.
    assert_eq!(m.allocate(2, &b).unwrap(), 12);
    assert_eq!(m.blocks(2).unwrap()[..3], m.blocks(1).unwrap()[..3]);
    assert_eq!(m.len(2), Some(12));
    m.append(2, 2).unwrap();
    // After both finish, a third sequence still finds the prefix cached.
    m.free(1);
    m.free(2);
    assert_eq!(m.allocate(3, &b).unwrap(), 12);
    assert!(m.prefix_hit_rate() > 0.5, "{}", m.prefix_hit_rate());
    m.check().unwrap();
}

#[test]
fn a_prompt_that_is_all_cached_still_computes_its_last_token() {
    let mut m = BlockManager::new(8, 4);
    let p = toks(8, 0);
    m.allocate(1, &p).unwrap();
    m.append(1, 8).unwrap();
    m.commit(1, &p);
    m.free(1);
    assert_eq!(
        m.allocate(2, &p).unwrap(),
        4,
        "the last block is recomputed for its logits"
    );
}

#[test]
fn unused_cached_blocks_are_evicted_oldest_first_when_memory_is_needed() {
    // Six blocks of two. Each 5-token prompt takes three blocks and fills two.
    let mut m = BlockManager::new(6, 2);
    for (seq, salt) in [(1, 10), (2, 20)] {
        let p = toks(5, salt);
        m.allocate(seq, &p).unwrap();
        m.append(seq, 4).unwrap();
        m.commit(seq, &p);
        m.free(seq);
    }
    // Two free blocks, four cached ones nobody uses.
    assert_eq!(m.available(), 6);
    m.allocate(3, &toks(4, 99)).unwrap(); // the two free blocks
    // Seq 2's two cached blocks plus one more: evicts the least recently released, which is
    // seq 1's tail (a sequence's blocks are released tail first, so heads stay longest).
    assert_eq!(
        m.allocate(4, &toks(5, 20)).unwrap(),
        4,
        "seq 2's blocks survived"
    );
    m.free(4);
    m.free(3);
    assert_eq!(
        m.allocate(5, &toks(5, 10)).unwrap(),
        2,
        "seq 1's head block survived, its tail did not"
    );
    m.check().unwrap();
}

#[test]
fn forked_sequences_share_blocks_until_one_writes() {
    let mut m = BlockManager::new(8, 4);
    m.allocate(1, &toks(6, 0)).unwrap();
    m.append(1, 6).unwrap();
    m.fork(1, 2).unwrap();
    assert_eq!(m.blocks(1), m.blocks(2));
    // Block 1 (slots 4..8) is shared and half full: the first write copies it.
    let copies = m.append(2, 1).unwrap();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].from, m.blocks(1).unwrap()[1]);
    assert_eq!(copies[0].to, m.blocks(2).unwrap()[1]);
    assert_eq!(
        m.blocks(1).unwrap()[0],
        m.blocks(2).unwrap()[0],
        "the full block stays shared"
    );
    assert!(
        m.append(1, 1).unwrap().is_empty(),
        "the parent now owns its block alone"
    );
    m.check().unwrap();
    m.free(1);
    m.free(2);
    assert_eq!(m.available(), 8);
    m.check().unwrap();
}

#[test]
fn no_block_is_leaked_or_double_freed_over_random_schedules() {
    for seed in 0..200 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut m = BlockManager::new(rng.usize(4..40), rng.usize(1..6));
        let mut live: Vec<(SeqId, Vec<u32>)> = Vec::new();
        let mut next: SeqId = 0;
        for _ in 0..300 {
            match rng.u8(0..10) {
                0..=2 => {
                    // A prompt drawn from a few shared prefixes, so the cache is exercised.
                    let mut p = toks(rng.usize(0..12), rng.u32(0..3));
                    p.extend((0..rng.usize(1..6)).map(|_| rng.u32(0..50)));
                    next += 1;
                    if let Ok(done) = m.allocate(next, &p) {
                        assert!(done < p.len());
                        m.append(next, p.len() - done).unwrap();
                        m.commit(next, &p);
                        live.push((next, p));
                    }
                }
                3..=5 if !live.is_empty() => {
                    let i = rng.usize(..live.len());
                    let (seq, toks) = &mut live[i];
                    let n = rng.usize(1..4);
                    if m.append(*seq, n).is_ok() {
                        toks.extend((0..n).map(|_| rng.u32(0..50)));
                        m.commit(*seq, toks);
                    }
                }
                6 if !live.is_empty() => {
                    let (parent, toks) = live[rng.usize(..live.len())].clone();
                    next += 1;
                    m.fork(parent, next).unwrap();
                    live.push((next, toks));
                }
                7..=9 if !live.is_empty() => {
                    let (seq, _) = live.swap_remove(rng.usize(..live.len()));
                    m.free(seq);
                }
                _ => {}
            }
            if let Err(e) = m.check() {
                panic!("seed {seed}: {e}");
            }
        }
        for (seq, _) in live {
            m.free(seq);
        }
        m.check().unwrap();
        assert_eq!(m.available(), m.num_blocks(), "seed {seed}");
    }
}
