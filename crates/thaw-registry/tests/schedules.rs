//! Cron schedules in a real SQLite registry, on a clock the test moves:
//! one call per tick, none twice across a restart, the last missed tick
//! once after downtime, and schedules that follow `latest`.

mod common;

use common::{deploy_with, Db};
use thaw_bundle::ScheduleSpec;
use thaw_registry::{CallQuery, FunctionId, RegistryError};

const EVERY_MINUTE: &str =
    "[[schedule]]\nname = \"tick\"\ncron = \"* * * * *\"\npayload = { job = \"sweep\" }\n";
const MINUTE: i64 = 60_000;

fn scheduled_calls(reg: &thaw_registry::Registry, f: &FunctionId) -> Vec<i64> {
    let mut ticks: Vec<i64> = reg
        .calls(
            f,
            &CallQuery {
                limit: 1000,
                ..Default::default()
            },
        )
        .unwrap()
        .iter()
        .filter(|c| c.kind == "scheduled")
        .map(|c| {
            let full = reg.call(&f.namespace, &c.id).unwrap();
            full.payload.unwrap()["scheduled_time_ms"].as_i64().unwrap()
        })
        .collect();
    ticks.sort();
    ticks
}

fn a_schedule_fires_once_per_tick_across_restarts_and_once_after_downtime(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let f = FunctionId::new("default", "sweeper");
    let start = {
        let reg = db.open(dir.path());
        deploy_with(&reg, dir.path(), &f, "v1", Some(EVERY_MINUTE));
        let s = &reg.schedules(&f).unwrap()[0];
        assert_eq!((s.name.as_str(), s.origin.as_str()), ("tick", "toml"));
        let first = s.next_ms.unwrap();
        assert_eq!(first % MINUTE, 0, "ticks fall on the minute");
        // Nothing before the first tick.
        assert!(reg.fire_schedules(first - 1).unwrap().is_empty());
        // Five minutes, looked at several times a minute: one call each.
        for m in 0..5 {
            for seconds in [0, 10, 59] {
                let fired = reg
                    .fire_schedules(first + m * MINUTE + seconds * 1000)
                    .unwrap();
                if seconds == 0 {
                    assert_eq!(fired.len(), 1, "minute {m}");
                    assert_eq!(fired[0].tick_ms, first + m * MINUTE);
                    assert_eq!(fired[0].missed, 0);
                    assert!(fired[0].call.is_some());
                } else {
                    assert!(fired.is_empty(), "minute {m} fired twice");
                }
            }
        }
        first
    };
    // A restart at the same instant fires nothing again.
    let reg = db.open(dir.path());
    assert!(reg
        .fire_schedules(start + 4 * MINUTE + 30_000)
        .unwrap()
        .is_empty());
    // Down for ten minutes: the last missed tick runs once, nine are missed.
    let back = start + 14 * MINUTE + 5_000;
    let fired = reg.fire_schedules(back).unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].tick_ms, start + 14 * MINUTE);
    assert_eq!(fired[0].missed, 9);
    let ticks = scheduled_calls(&reg, &f);
    let expected: Vec<i64> = (0..5)
        .map(|m| start + m * MINUTE)
        .chain([start + 14 * MINUTE])
        .collect();
    assert_eq!(ticks, expected);
    let s = &reg.schedules(&f).unwrap()[0];
    assert_eq!((s.fired, s.missed), (6, 9));
    assert_eq!(s.next_ms, Some(start + 15 * MINUTE));
    // The tick's call carries the schedule's payload and targets its alias.
    let call = reg
        .calls(
            &f,
            &CallQuery {
                limit: 1,
                ..Default::default()
            },
        )
        .unwrap()
        .remove(0);
    let call = reg.call("default", &call.id).unwrap();
    assert_eq!(call.target, "latest");
    assert_eq!(call.origin, "schedule:tick");
    assert_eq!(call.payload.unwrap()["payload"]["job"], "sweep");
}

fn schedules_follow_latest_and_api_schedules_stay(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let reg = db.open(dir.path());
    let f = FunctionId::new("default", "sweeper");
    deploy_with(&reg, dir.path(), &f, "v1", Some(EVERY_MINUTE));
    let api = ScheduleSpec {
        name: Some("nightly".into()),
        cron: "0 3 * * *".into(),
        timezone: Some("Europe/Paris".into()),
        alias: None,
        method: None,
        payload: None,
    };
    reg.add_schedule(&f, &api).unwrap();
    assert!(matches!(
        reg.add_schedule(&f, &api),
        Err(RegistryError::Conflict(_))
    ));
    let bad = ScheduleSpec {
        cron: "61 * * * *".into(),
        name: Some("bad".into()),
        ..api.clone()
    };
    match reg.add_schedule(&f, &bad) {
        Err(RegistryError::Invalid(m)) => assert!(m.contains("out of range"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        reg.remove_schedule(&f, "tick"),
        Err(RegistryError::Conflict(_))
    ));
    let names = |reg: &thaw_registry::Registry| -> Vec<String> {
        reg.schedules(&f)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect()
    };
    assert_eq!(names(&reg), ["nightly", "tick"]);
    // A deploy without the [[schedule]] drops it; the API's stays.
    deploy_with(&reg, dir.path(), &f, "v2", None);
    assert_eq!(names(&reg), ["nightly"]);
    // Rolling latest back brings it back.
    reg.rollback(&f, "latest", Some(1)).unwrap();
    assert_eq!(names(&reg), ["nightly", "tick"]);
    reg.remove_schedule(&f, "nightly").unwrap();
    assert_eq!(names(&reg), ["tick"]);
    reg.remove(&f).unwrap();
    assert!(matches!(reg.schedules(&f), Err(RegistryError::NotFound(_))));
}

on_both_engines!(
    a_schedule_fires_once_per_tick_across_restarts_and_once_after_downtime,
    schedules_follow_latest_and_api_schedules_stay,
);
