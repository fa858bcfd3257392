//! Tests of [`super`]: queues, batch formation, priorities, timeouts, and batch assembly.

use super::*;
use crate::assembly::{merge_inputs, split_outputs};
use crate::config::{DynamicBatching, QueuePolicy};
use crate::tensor::Tensor;

fn cfg(db: DynamicBatching) -> ModelConfig {
    ModelConfig {
        name: "m".into(),
        max_batch_size: 8,
        dynamic_batching: Some(db),
        ..Default::default()
    }
}

fn req(rows: usize, priority: u32, timeout: Option<Duration>, tag: f32) -> PreparedRequest {
    let t = Tensor::from_f32(vec![rows, 1], &vec![tag; rows]).unwrap();
    PreparedRequest {
        meta: Default::default(),
        inputs: vec![NamedTensor {
            name: "x".into(),
            tensor: t,
        }],
        outputs: vec!["y".into()],
        batch: rows,
        priority,
        timeout,
        shape_key: 1,
    }
}

fn tag(j: &Job) -> f32 {
    j.req.inputs[0].tensor.to_f32_vec().unwrap()[0]
}

fn settings(db: DynamicBatching, queue: usize) -> SchedulerSettings {
    SchedulerSettings::from_config(&cfg(db), queue)
}

#[test]
fn full_queue_is_refused_at_once_naming_model_and_limit() {
    let s = Scheduler::new("m", settings(DynamicBatching::default(), 2));
    let _a = s.submit(req(1, 0, None, 0.0)).unwrap();
    let _b = s.submit(req(1, 0, None, 0.0)).unwrap();
    let err = s.submit(req(1, 0, None, 0.0)).unwrap_err();
    match err {
        Error::Overloaded {
            message,
            retry_after_secs,
        } => {
            assert!(
                message.contains("model 'm'") && message.contains("2 requests"),
                "{message}"
            );
            assert_eq!(retry_after_secs, 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.depth(), 2);
}

#[test]
fn batches_queued_requests_up_to_max_rows() {
    let s = Scheduler::new("m", settings(DynamicBatching::default(), 16));
    let mut rx = Vec::new();
    for (rows, t) in [(3, 1.0), (4, 2.0), (2, 3.0)] {
        rx.push(s.submit(req(rows, 0, None, t)).unwrap());
    }
    let batch = s.next_batch().unwrap();
    // 3 + 4 fit in 8, the third (2 rows) would not.
    assert_eq!(batch.iter().map(tag).collect::<Vec<_>>(), vec![1.0, 2.0]);
    let mut batch = batch;
    let (merged, rows) = merge_inputs(&mut batch).unwrap();
    assert_eq!(rows, 7);
    assert_eq!(
        merged[0].tensor.to_f32_vec().unwrap(),
        vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    );
    let out = NamedTensor {
        name: "y".into(),
        tensor: merged[0].tensor.clone(),
    };
    let split = split_outputs("m", vec![out], &[3, 4]).unwrap();
    assert_eq!(split[0][0].tensor.to_f32_vec().unwrap(), vec![1.0; 3]);
    assert_eq!(split[1][0].tensor.shape(), &[4, 1]);
    assert_eq!(s.next_batch().unwrap().len(), 1);
}

/// `req` with a feature width other than 1, under the same (forced) shape key.
fn wide_req(rows: usize, width: usize, tag: f32) -> PreparedRequest {
    let mut r = req(rows, 0, None, tag);
    r.inputs[0].tensor = Tensor::from_f32(vec![rows, width], &vec![tag; rows * width]).unwrap();
    r
}

#[test]
fn requests_whose_keys_collide_but_whose_shapes_differ_never_share_a_batch() {
    let s = Scheduler::new("m", settings(DynamicBatching::default(), 16));
    let _a = s.submit(req(2, 0, None, 1.0)).unwrap();
    let _b = s.submit(wide_req(2, 3, 2.0)).unwrap();
    let _c = s.submit(wide_req(1, 3, 3.0)).unwrap();
    let first = s.next_batch().unwrap();
    assert_eq!(first.iter().map(tag).collect::<Vec<_>>(), vec![1.0]);
    let second = s.next_batch().unwrap();
    assert_eq!(second.iter().map(tag).collect::<Vec<_>>(), vec![2.0, 3.0]);
}

#[test]
fn merging_refuses_requests_of_different_shapes_naming_the_request() {
    let s = Scheduler::new("m", settings(DynamicBatching::default(), 16));
    let _a = s.submit(req(1, 0, None, 1.0)).unwrap();
    let _b = s.submit(wide_req(1, 2, 2.0)).unwrap();
    let mut both = s.next_batch().unwrap();
    both.extend(s.next_batch().unwrap());
    let err = merge_inputs(&mut both).unwrap_err();
    assert!(err.to_string().contains("request 1"), "{err}");
}

#[test]
fn merging_refuses_an_input_whose_rows_are_not_its_batch() {
    let s = Scheduler::new("m", settings(DynamicBatching::default(), 16));
    let mut bad = req(2, 0, None, 1.0);
    bad.batch = 1;
    let _a = s.submit(req(1, 0, None, 0.0)).unwrap();
    let _b = s.submit(bad).unwrap();
    let mut both = s.next_batch().unwrap();
    assert_eq!(both.len(), 2);
    let err = merge_inputs(&mut both).unwrap_err();
    assert!(err.to_string().contains("input 'x' of request 1"), "{err}");
}

#[test]
fn cancel_queued_fails_every_waiting_request_and_closes_the_queue() {
    let s = Scheduler::new("m", settings(DynamicBatching::default(), 16));
    let a = s.submit(req(1, 0, None, 1.0)).unwrap();
    let b = s.submit(req(1, 0, None, 2.0)).unwrap();
    let n = s.cancel_queued(&Error::Unavailable("unloaded".into()));
    assert_eq!(n, 2);
    assert_eq!(s.depth(), 0);
    for rx in [a, b] {
        let got = rx.blocking_recv().unwrap();
        assert_eq!(got.unwrap_err(), Error::Unavailable("unloaded".into()));
    }
    assert!(s.next_batch().is_none(), "closed and empty");
    assert!(
        s.submit(req(1, 0, None, 3.0)).is_err(),
        "closed to new requests"
    );
}

#[test]
fn split_refuses_outputs_that_lost_the_batch_dimension() {
    let out = NamedTensor {
        name: "y".into(),
        tensor: Tensor::from_f32(vec![1], &[0.0]).unwrap(),
    };
    let err = split_outputs("m", vec![out], &[1, 1]).unwrap_err();
    assert!(err.to_string().contains("output 'y'"), "{err}");
}

#[test]
fn higher_priority_is_served_first() {
    let db = DynamicBatching {
        priority_levels: 2,
        default_priority_level: 2,
        ..Default::default()
    };
    let s = Scheduler::new(
        "m",
        SchedulerSettings {
            batching: false,
            ..settings(db, 16)
        },
    );
    let _low = s.submit(req(1, 2, None, 2.0)).unwrap();
    let _high = s.submit(req(1, 1, None, 1.0)).unwrap();
    assert_eq!(tag(&s.next_batch().unwrap()[0]), 1.0);
    assert_eq!(tag(&s.next_batch().unwrap()[0]), 2.0);
}

#[test]
fn timed_out_request_is_rejected_with_deadline_exceeded() {
    let db = DynamicBatching {
        default_queue_policy: Some(QueuePolicy {
            default_timeout_microseconds: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let s = Scheduler::new("m", settings(db, 16));
    let mut rx = s.submit(req(1, 0, None, 1.0)).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let _other = s
        .submit(req(1, 0, Some(Duration::from_secs(60)), 2.0))
        .unwrap();
    let batch = s.next_batch().unwrap();
    assert_eq!(batch.iter().map(tag).collect::<Vec<_>>(), vec![2.0]);
    match rx.try_recv().unwrap() {
        Err(Error::DeadlineExceeded(m)) => assert!(m.contains("timed out"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn delayed_request_runs_after_the_others() {
    let db = DynamicBatching {
        default_queue_policy: Some(QueuePolicy {
            default_timeout_microseconds: 1,
            timeout_action: TimeoutAction::Delay,
            allow_timeout_override: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let s = Scheduler::new(
        "m",
        SchedulerSettings {
            batching: false,
            ..settings(db, 16)
        },
    );
    let _late = s.submit(req(1, 0, None, 1.0)).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let _fresh = s
        .submit(req(1, 0, Some(Duration::from_secs(60)), 2.0))
        .unwrap();
    assert_eq!(tag(&s.next_batch().unwrap()[0]), 2.0);
    assert_eq!(tag(&s.next_batch().unwrap()[0]), 1.0);
}

#[test]
fn cancelled_request_never_reaches_the_model() {
    let s = Scheduler::new("m", settings(DynamicBatching::default(), 16));
    let gone = s.submit(req(1, 0, None, 1.0)).unwrap();
    let _kept = s.submit(req(1, 0, None, 2.0)).unwrap();
    drop(gone);
    let batch = s.next_batch().unwrap();
    assert_eq!(batch.iter().map(tag).collect::<Vec<_>>(), vec![2.0]);
}

#[test]
fn preserve_ordering_releases_responses_in_request_order() {
    let db = DynamicBatching {
        preserve_ordering: true,
        ..Default::default()
    };
    let s = Scheduler::new(
        "m",
        SchedulerSettings {
            batching: false,
            ..settings(db, 16)
        },
    );
    let mut rx: Vec<_> = (0..3)
        .map(|i| s.submit(req(1, 0, None, i as f32)).unwrap())
        .collect();
    let jobs: Vec<Job> = (0..3).map(|_| s.next_batch().unwrap().remove(0)).collect();
    let mut jobs = jobs.into_iter().rev();
    s.complete(jobs.next().unwrap(), Ok(vec![]));
    s.complete(jobs.next().unwrap(), Ok(vec![]));
    assert!(
        rx[0].try_recv().is_err() && rx[1].try_recv().is_err(),
        "later responses must wait"
    );
    s.complete(jobs.next().unwrap(), Ok(vec![]));
    for r in rx.iter_mut() {
        assert!(r.try_recv().unwrap().is_ok());
    }
}

#[test]
fn close_drains_then_ends() {
    let s = Scheduler::new(
        "m",
        settings(
            DynamicBatching {
                max_queue_delay_microseconds: 10_000_000,
                ..Default::default()
            },
            16,
        ),
    );
    let _a = s.submit(req(1, 0, None, 1.0)).unwrap();
    s.close();
    assert_eq!(
        s.next_batch().unwrap().len(),
        1,
        "queued work still runs, without waiting for the delay"
    );
    assert!(s.next_batch().is_none());
    assert!(matches!(
        s.submit(req(1, 0, None, 1.0)),
        Err(Error::Unavailable(_))
    ));
}

#[test]
fn delayed_requests_count_against_the_queue_limit() {
    let db = DynamicBatching {
        default_queue_policy: Some(QueuePolicy {
            default_timeout_microseconds: 1,
            timeout_action: TimeoutAction::Delay,
            max_queue_size: 2,
            ..Default::default()
        }),
        ..Default::default()
    };
    let s = Scheduler::new("m", settings(db, 16));
    let _a = s.submit(req(1, 0, None, 1.0)).unwrap();
    let _b = s.submit(req(1, 0, None, 2.0)).unwrap();
    std::thread::sleep(Duration::from_millis(2));
    // Expire both into the delayed queue; they still hold their slots.
    s.expire(&mut s.lock(), Instant::now());
    assert!(matches!(
        s.submit(req(1, 0, None, 3.0)),
        Err(Error::Overloaded { .. })
    ));
}

#[test]
fn cancelled_requests_free_their_slots_when_the_queue_is_full() {
    let s = Scheduler::new("m", settings(DynamicBatching::default(), 1));
    let gone = s.submit(req(1, 0, None, 1.0)).unwrap();
    drop(gone);
    let _kept = s.submit(req(1, 0, None, 2.0)).unwrap();
    assert_eq!(tag(&s.next_batch().unwrap()[0]), 2.0);
}

#[test]
fn preserve_ordering_serves_priorities_in_arrival_order() {
    let db = DynamicBatching {
        preserve_ordering: true,
        priority_levels: 2,
        default_priority_level: 2,
        ..Default::default()
    };
    let s = Scheduler::new(
        "m",
        SchedulerSettings {
            batching: false,
            ..settings(db, 16)
        },
    );
    let _low = s.submit(req(1, 2, None, 2.0)).unwrap();
    let _high = s.submit(req(1, 1, None, 1.0)).unwrap();
    // A later high-priority request cannot overtake: its response would wait anyway.
    assert_eq!(tag(&s.next_batch().unwrap()[0]), 2.0);
    assert_eq!(tag(&s.next_batch().unwrap()[0]), 1.0);
}

#[test]
fn submit_wakes_an_executor_asleep_on_an_empty_queue() {
    // `submit` skips the condvar when no executor sleeps; each round here lets the executor
    // pass its idle spin and fall asleep first, so a lost wake-up would hang the round.
    let s = std::sync::Arc::new(Scheduler::new(
        "m",
        settings(DynamicBatching::default(), 16),
    ));
    let (tx, rx) = std::sync::mpsc::channel();
    let exec = {
        let s = s.clone();
        std::thread::spawn(move || {
            while let Some(batch) = s.next_batch() {
                tx.send(batch.iter().map(tag).collect::<Vec<_>>()).unwrap();
            }
        })
    };
    for round in 0..20 {
        std::thread::sleep(IDLE_SPIN * 20);
        let _reply = s.submit(req(1, 0, None, round as f32)).unwrap();
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("round {round}: the sleeping executor was not woken"));
        assert_eq!(got, vec![round as f32]);
    }
    s.close();
    exec.join().unwrap();
}

#[test]
fn compute_budget_caps_concurrent_executions() {
    let b = std::sync::Arc::new(ComputeBudget::new(2));
    let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (b, running, peak) = (b.clone(), running.clone(), peak.clone());
            std::thread::spawn(move || {
                let _p = b.acquire();
                let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
}
