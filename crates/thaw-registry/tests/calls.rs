//! Async calls in a real SQLite registry: accepted durably, retried,
//! dead-lettered, replayed, recovered after a stop, and kept apart by
//! namespace.

mod common;

use common::{deploy, Db};
use serde_json::json;
use thaw_registry::{
    backoff_ms, Attempt, AttemptEnd, CallQuery, CallState, Claimed, Destination, FunctionId,
    NamespaceLimits, NewCall, Registry, RegistryError,
};

fn call(f: &FunctionId, n: u32) -> NewCall {
    NewCall {
        function: f.clone(),
        target: "latest".into(),
        kind: "event".into(),
        payload: json!({ "n": n }),
        origin: "api".into(),
        max_attempts: 3,
        dedup: None,
    }
}

fn attempt(c: &Claimed, outcome: &str, now: i64) -> Attempt {
    Attempt {
        number: c.attempt,
        version: Some(1),
        run_id: Some(7),
        started_ms: c.started_ms,
        finished_ms: now,
        outcome: outcome.into(),
        error: None,
        logs: vec![format!("attempt {}", c.attempt)],
    }
}

fn fail(reg: &Registry, c: &Claimed, now: i64) -> CallState {
    let end = AttemptEnd::Failed {
        outcome: "handler_error".into(),
        error: format!("boom {}", c.attempt),
        retry: true,
    };
    reg.finish_attempt(c, &attempt(c, "handler_error", now), &end, None)
        .unwrap()
        .unwrap()
        .state
}

fn a_failing_call_is_retried_with_backoff_then_dead_lettered_and_replayed(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    let f = FunctionId::new("default", "job");
    deploy(&reg, dir.path(), &f, "v1");
    let id = reg.enqueue(&call(&f, 1)).unwrap();
    assert_eq!(reg.call("default", &id).unwrap().state, CallState::Queued);

    let mut now = thaw_registry::now_ms();
    for n in 1..=3u32 {
        let claimed = reg.claim_calls("w1", now, 10, 100).unwrap();
        assert_eq!(claimed.len(), 1, "attempt {n} is due");
        assert_eq!(claimed[0].attempt, n);
        assert_eq!(reg.call("default", &id).unwrap().state, CallState::Running);
        // Nothing more to take while it runs.
        assert!(reg.claim_calls("w1", now, 10, 100).unwrap().is_empty());
        let state = fail(&reg, &claimed[0], now);
        if n < 3 {
            assert_eq!(state, CallState::Failed);
            // Not before its backoff.
            assert!(reg
                .claim_calls("w1", now + backoff_ms(n) - 1, 10, 100)
                .unwrap()
                .is_empty());
            now += backoff_ms(n);
        } else {
            assert_eq!(state, CallState::Dead);
        }
    }
    let dead = reg.call("default", &id).unwrap();
    assert_eq!(dead.state, CallState::Dead);
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.history.len(), 3);
    assert_eq!(dead.history[2].error.as_deref(), Some("boom 3"));
    assert_eq!(dead.history[1].logs, vec!["attempt 2".to_string()]);
    assert_eq!(dead.payload, Some(json!({ "n": 1 })));
    assert!(reg
        .claim_calls("w1", now + 3_600_000, 10, 100)
        .unwrap()
        .is_empty());

    let listed = reg
        .calls(
            &f,
            &CallQuery {
                state: Some(CallState::Dead),
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);

    // Replaying puts it back with its retries renewed; its history stays.
    assert_eq!(reg.replay_dead(&f, None).unwrap(), 1);
    let c = reg
        .claim_calls("w1", thaw_registry::now_ms(), 10, 100)
        .unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].attempt, 1);
    let end = AttemptEnd::Succeeded {
        result: json!({ "ok": true }),
    };
    let done = reg
        .finish_attempt(&c[0], &attempt(&c[0], "ok", now), &end, None)
        .unwrap()
        .unwrap();
    assert_eq!(done.state, CallState::Succeeded);
    let ok = reg.call("default", &id).unwrap();
    assert_eq!(ok.result, Some(json!({ "ok": true })));
    assert_eq!(ok.history.len(), 4);
    // Replaying or purging a call that is not dead is refused by name.
    assert!(matches!(
        reg.replay_dead(&f, Some(std::slice::from_ref(&id))),
        Err(RegistryError::Conflict(_))
    ));
}

fn no_retry_and_purge(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    let f = FunctionId::new("default", "job");
    deploy(&reg, dir.path(), &f, "v1");
    let id = reg.enqueue(&call(&f, 1)).unwrap();
    let c = reg
        .claim_calls("w1", thaw_registry::now_ms(), 1, 100)
        .unwrap();
    let end = AttemptEnd::Failed {
        outcome: "handler_error".into(),
        error: "do not retry me".into(),
        retry: false,
    };
    let state = reg
        .finish_attempt(&c[0], &attempt(&c[0], "handler_error", 0), &end, None)
        .unwrap()
        .unwrap()
        .state;
    assert_eq!(state, CallState::Dead);
    assert!(matches!(
        reg.purge_dead(&f, Some(&["nope".to_string()])),
        Err(RegistryError::NoSuch(_))
    ));
    assert_eq!(
        reg.purge_dead(&f, Some(std::slice::from_ref(&id))).unwrap(),
        1
    );
    assert!(matches!(
        reg.call("default", &id),
        Err(RegistryError::NoSuch(_))
    ));
}

fn a_call_on_a_worker_whose_lease_lapsed_is_taken_over_and_its_late_end_ignored(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    let f = FunctionId::new("default", "job");
    deploy(&reg, dir.path(), &f, "v1");
    let id = reg.enqueue(&call(&f, 1)).unwrap();
    let now = thaw_registry::now_ms();
    let worker = |id: &str, until: i64| thaw_registry::Worker {
        id: id.into(),
        address: format!("http://{id}:8787"),
        capacity: 10,
        busy: 0,
        started_ms: now,
        lease_until_ms: until,
    };
    reg.renew_worker(&worker("wa", now + 5_000)).unwrap();
    reg.renew_worker(&worker("wb", now + 60_000)).unwrap();
    let on_a = reg.claim_calls("wa", now, 10, 100).unwrap().remove(0);
    assert_eq!(on_a.worker, "wa");
    assert_eq!(reg.recover_calls(now + 1_000).unwrap(), 0, "wa is alive");
    let live: Vec<String> = reg
        .live_workers(now + 1_000)
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(live, vec!["wa", "wb"]);
    // wa's lease lapses: its call is queued again, not counted.
    assert_eq!(reg.recover_calls(now + 6_000).unwrap(), 1);
    let live = reg.live_workers(now + 6_000).unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, "wb");
    let on_b = reg
        .claim_calls("wb", now + 6_000, 10, 100)
        .unwrap()
        .remove(0);
    assert_eq!(on_b.attempt, 1, "the interrupted attempt did not count");
    let succeed = |claimed: &thaw_registry::Claimed, answer: &str| {
        reg.finish_attempt(
            claimed,
            &attempt(claimed, "ok", now + 7_000),
            &AttemptEnd::Succeeded {
                result: json!(answer),
            },
            None,
        )
        .unwrap()
    };
    // wa comes back with its answer: too late, it decides nothing.
    assert_eq!(succeed(&on_a, "from wa"), None);
    let done = succeed(&on_b, "from wb").unwrap();
    assert_eq!(done.state, CallState::Succeeded);
    let record = reg.call("default", &id).unwrap();
    assert_eq!(record.result, Some(json!("from wb")));
    assert_eq!(record.history.len(), 2, "interrupted, then ok");
    // A worker leaving gives its lease up at once.
    reg.leave("wb", now + 8_000).unwrap();
    assert!(reg.live_workers(now + 8_000).unwrap().is_empty());
}

fn a_call_running_when_thaw_stopped_is_run_again_without_losing_a_retry(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let f = FunctionId::new("default", "job");
    let id = {
        let reg = db.open(dir.path());
        deploy(&reg, dir.path(), &f, "v1");
        let id = reg.enqueue(&call(&f, 1)).unwrap();
        let c = reg
            .claim_calls("w1", thaw_registry::now_ms(), 10, 100)
            .unwrap();
        assert_eq!(c.len(), 1);
        id
        // Dropped mid-attempt, as a kill would leave it.
    };
    let reg = db.open(dir.path());
    assert_eq!(reg.recover_calls(thaw_registry::now_ms()).unwrap(), 1);
    let again = reg.call("default", &id).unwrap();
    assert_eq!(again.state, CallState::Queued);
    assert_eq!(again.attempts, 0);
    assert_eq!(again.history[0].outcome, "interrupted");
    let c = reg
        .claim_calls("w1", thaw_registry::now_ms(), 10, 100)
        .unwrap();
    assert_eq!(c[0].attempt, 1, "the interrupted attempt did not count");
}

fn a_deferred_attempt_does_not_count(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    let f = FunctionId::new("default", "job");
    deploy(&reg, dir.path(), &f, "v1");
    let id = reg.enqueue(&call(&f, 1)).unwrap();
    let now = thaw_registry::now_ms();
    let c = reg.claim_calls("w1", now, 10, 100).unwrap();
    let end = AttemptEnd::Deferred {
        reason: "no room".into(),
        after_ms: 500,
    };
    reg.finish_attempt(&c[0], &attempt(&c[0], "deferred", now), &end, None)
        .unwrap();
    assert!(reg
        .claim_calls("w1", now + 499, 10, 100)
        .unwrap()
        .is_empty());
    let c = reg.claim_calls("w1", now + 500, 10, 100).unwrap();
    assert_eq!(c[0].attempt, 1);
    assert_eq!(reg.call("default", &id).unwrap().history.len(), 1);
}

fn namespaces_bound_their_queue_and_see_only_their_calls(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    let mut limits = NamespaceLimits::tenant();
    limits.max_queued = 2;
    reg.create_namespace("team-a", limits).unwrap();
    reg.create_namespace("team-b", NamespaceLimits::tenant())
        .unwrap();
    let a = FunctionId::new("team-a", "job");
    let b = FunctionId::new("team-b", "job");
    deploy(&reg, dir.path(), &a, "a");
    deploy(&reg, dir.path(), &b, "b");
    let first = reg.enqueue(&call(&a, 1)).unwrap();
    reg.enqueue(&call(&a, 2)).unwrap();
    assert!(matches!(
        reg.enqueue(&call(&a, 3)),
        Err(RegistryError::LimitReached(_))
    ));
    // The other namespace is not held back by it.
    reg.enqueue(&call(&b, 1)).unwrap();
    // An unknown function is refused at once.
    assert!(matches!(
        reg.enqueue(&call(&FunctionId::new("team-a", "nope"), 1)),
        Err(RegistryError::NotFound(_))
    ));
    // team-b cannot read, replay or purge team-a's call by its id.
    assert!(reg.call("team-b", &first).is_err());
    assert!(reg
        .replay_dead(&b, Some(std::slice::from_ref(&first)))
        .is_err());
    assert!(reg
        .purge_dead(&b, Some(std::slice::from_ref(&first)))
        .is_err());
    assert!(reg.call("team-a", &first).is_ok());
    let depths = reg.queue_depths().unwrap();
    let of = |ns: &str| depths.iter().find(|d| d.namespace == ns).unwrap().pending;
    assert_eq!((of("team-a"), of("team-b")), (2, 1));
    // Removing the function takes its calls with it.
    reg.remove(&a).unwrap();
    assert!(reg.call("team-a", &first).is_err());
}

fn a_dedup_key_is_accepted_once_and_a_destination_hears_the_end(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    let f = FunctionId::new("default", "job");
    let audit = FunctionId::new("default", "audit");
    deploy(&reg, dir.path(), &f, "v1");
    deploy(&reg, dir.path(), &audit, "audit");
    let mut tick = call(&f, 1);
    tick.dedup = Some("schedule:1:1000".into());
    let id = reg.enqueue(&tick).unwrap();
    assert_eq!(reg.enqueue(&tick).unwrap(), id);
    let c = reg
        .claim_calls("w1", thaw_registry::now_ms(), 10, 100)
        .unwrap();
    assert_eq!(c.len(), 1);
    let destination = Destination {
        function: "audit".into(),
        max_attempts: 3,
        on_success: json!({ "condition": "Success", "id": id }),
        on_failure: json!({ "condition": "RetriesExhausted" }),
    };
    let end = AttemptEnd::Succeeded { result: json!(1) };
    let done = reg
        .finish_attempt(&c[0], &attempt(&c[0], "ok", 0), &end, Some(&destination))
        .unwrap()
        .unwrap();
    assert!(done.destination_sent);
    let sent = reg
        .claim_calls("w1", thaw_registry::now_ms(), 10, 100)
        .unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].function, audit);
    assert_eq!(sent[0].origin, "destination");
    assert_eq!(sent[0].payload["condition"], "Success");
    // A destination's own call sends nothing further.
    let again = reg
        .finish_attempt(
            &sent[0],
            &attempt(&sent[0], "ok", 0),
            &end,
            Some(&destination),
        )
        .unwrap()
        .unwrap();
    assert!(!again.destination_sent);
}

fn one_namespace_backlog_does_not_take_every_attempt(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    reg.create_namespace("busy", NamespaceLimits::tenant())
        .unwrap();
    reg.create_namespace("quiet", NamespaceLimits::tenant())
        .unwrap();
    let busy = FunctionId::new("busy", "job");
    let quiet = FunctionId::new("quiet", "job");
    deploy(&reg, dir.path(), &busy, "busy");
    deploy(&reg, dir.path(), &quiet, "quiet");
    for n in 0..50 {
        reg.enqueue(&call(&busy, n)).unwrap();
    }
    reg.enqueue(&call(&quiet, 0)).unwrap();
    let now = thaw_registry::now_ms();
    let first = reg.claim_calls("w1", now, 10, 4).unwrap();
    let of = |c: &[Claimed], ns: &str| c.iter().filter(|c| c.function.namespace == ns).count();
    assert_eq!((of(&first, "busy"), of(&first, "quiet")), (4, 1));
    // The busy namespace's four still run: nothing more for it.
    let second = reg.claim_calls("w1", now, 10, 4).unwrap();
    assert!(second.is_empty(), "{}", second.len());
    let end = AttemptEnd::Succeeded {
        result: json!(null),
    };
    reg.finish_attempt(&first[0], &attempt(&first[0], "ok", now), &end, None)
        .unwrap();
    let third = reg.claim_calls("w1", now, 10, 4).unwrap();
    assert_eq!(third.len(), 1, "one more once one ended");
}

on_both_engines!(
    a_call_on_a_worker_whose_lease_lapsed_is_taken_over_and_its_late_end_ignored,
    a_failing_call_is_retried_with_backoff_then_dead_lettered_and_replayed,
    no_retry_and_purge,
    a_call_running_when_thaw_stopped_is_run_again_without_losing_a_retry,
    a_deferred_attempt_does_not_count,
    namespaces_bound_their_queue_and_see_only_their_calls,
    a_dedup_key_is_accepted_once_and_a_destination_hears_the_end,
    one_namespace_backlog_does_not_take_every_attempt,
);
