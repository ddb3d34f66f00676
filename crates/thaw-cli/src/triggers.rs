//! The CLI for calls without a waiting caller: async invocations, their
//! status, the dead-letter queue, and cron schedules.

use crate::client::Client;
use anyhow::bail;
use std::time::{Duration, Instant};
use thaw_api::{
    utc_time, CallAccepted, CallIds, CallList, CallView, DeadLetters, NewSchedule, Removed,
    ScheduleList, ScheduleView,
};

#[derive(clap::Subcommand)]
pub enum ScheduleCommand {
    /// Call NAME on a cron schedule: each tick is an async call through an
    /// alias, retried like any other.
    #[command(
        after_help = "Examples:\n  thaw schedule add reports --name nightly --cron '0 3 * * *' --timezone Europe/Paris\n  \
                      thaw schedule add api --name warm --cron '*/5 * * * *' --payload '{\"ping\":true}'\n  \
                      thaw schedule add billing --name close --cron '0 0 1 * *' --method Billing.closeMonth\n\n\
                      CRON is five fields (minute hour day-of-month month day-of-week) or six with a leading second; \
                      @hourly, @daily, @weekly, @monthly, @yearly also work. Schedules can also be declared in \
                      thaw.toml as [[schedule]] entries (see docs/triggers.md)."
    )]
    Add {
        /// The function to call.
        name: String,
        /// The schedule's name, unique among NAME's schedules.
        #[arg(long = "name", value_name = "SCHEDULE")]
        schedule: String,
        /// When it fires: a cron expression (see below).
        #[arg(long)]
        cron: String,
        /// IANA time zone the cron expression is read in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// The alias each tick calls.
        #[arg(long, default_value = "latest")]
        alias: String,
        /// For class services: the Class.method each tick calls.
        #[arg(long)]
        method: Option<String>,
        /// JSON given to the function with each tick.
        #[arg(long)]
        payload: Option<String>,
    },
    /// List NAME's schedules: when each fires next, how often it fired.
    Ls {
        /// The function.
        name: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a schedule made with `thaw schedule add` (those of thaw.toml
    /// go with the deploy that no longer declares them).
    Rm {
        /// The function.
        name: String,
        /// The schedule's name.
        schedule: String,
    },
}

pub fn schedule(c: &Client, cmd: ScheduleCommand) -> anyhow::Result<()> {
    match cmd {
        ScheduleCommand::Add {
            name,
            schedule,
            cron,
            timezone,
            alias,
            method,
            payload,
        } => {
            let payload = payload
                .map(|p| serde_json::from_str(&p))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--payload is not valid JSON: {e}"))?;
            let req = NewSchedule {
                name: schedule,
                cron,
                timezone: Some(timezone),
                alias: Some(alias),
                method,
                payload,
            };
            let s: ScheduleView = c.post(&format!("{}/schedules", c.function_path(&name)), &req)?;
            println!(
                "schedule {} of {name}: `{}` ({}), next at {}",
                s.name,
                s.cron,
                s.timezone,
                s.next_ms
                    .map(|t| format!("{} UTC", utc_time(t)))
                    .unwrap_or_else(|| "never".into())
            );
            Ok(())
        }
        ScheduleCommand::Ls { name, json } => {
            let list: ScheduleList = c.get(&format!("{}/schedules", c.function_path(&name)))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            if list.schedules.is_empty() {
                println!("{name} has no schedules");
                return Ok(());
            }
            println!("NAME             CRON                 TIME ZONE         ALIAS       NEXT (UTC)           FIRED  MISSED  FROM");
            for s in &list.schedules {
                println!(
                    "{:<16} {:<20} {:<17} {:<11} {:<20} {:>5}  {:>6}  {}",
                    s.name,
                    s.cron,
                    s.timezone,
                    s.alias,
                    s.next_ms.map(utc_time).unwrap_or_else(|| "never".into()),
                    s.fired,
                    s.missed,
                    s.origin
                );
            }
            Ok(())
        }
        ScheduleCommand::Rm { name, schedule } => {
            let _: Removed =
                c.delete(&format!("{}/schedules/{schedule}", c.function_path(&name)))?;
            println!("schedule {schedule} of {name} removed");
            Ok(())
        }
    }
}

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// List NAME's dead letters: async calls whose every attempt failed.
    Ls {
        /// The function.
        name: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: its input, each attempt's error and console lines.
    Show {
        /// The function.
        name: String,
        /// The call's id.
        id: String,
    },
    /// Run dead letters again (those named, or every one), their retries
    /// renewed, on the version their alias points at now.
    #[command(
        after_help = "Examples:\n  thaw dlq replay api                 # every dead letter of api\n  \
                      thaw dlq replay api 3f2a9c0e1b7d4a5f6e8c9b0a\n\n\
                      Fix the bug first (`thaw deploy`): a replay runs the code `latest` (or the call's alias) points at now."
    )]
    Replay {
        /// The function.
        name: String,
        /// Calls to replay; none: every dead letter.
        ids: Vec<String>,
    },
    /// Forget dead letters: those named, or every one with --all.
    Purge {
        /// The function.
        name: String,
        /// Calls to forget.
        ids: Vec<String>,
        /// Purge every dead letter of NAME.
        #[arg(long)]
        all: bool,
    },
}

/// `thaw invoke --async`: accepted, with the id to follow it by.
pub fn invoke_async(c: &Client, name: &str, event: Vec<u8>) -> anyhow::Result<()> {
    let accepted: CallAccepted =
        c.post_async(&format!("{}/invoke", c.function_path(name)), event)?;
    println!("{}", accepted.id);
    eprintln!(
        "accepted: call {} of {} is queued (follow it with `thaw invocation {}`; status at {})",
        accepted.id, accepted.function, accepted.id, accepted.status_url
    );
    Ok(())
}

/// `thaw invocation ID`: one call; with `wait`, polls until it has finished.
pub fn show(c: &Client, id: &str, wait: bool, json: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last_state = String::new();
    let call = loop {
        let call: CallView = c.get(&c.call_path(id))?;
        let finished = matches!(call.state.as_str(), "succeeded" | "dead");
        if !wait || finished {
            break call;
        }
        if call.state != last_state {
            eprintln!(
                "{}: {} (attempt {} of {})",
                call.id, call.state, call.attempts, call.max_attempts
            );
            last_state = call.state.clone();
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!(
                "call {id} has not finished within an hour; it is {}",
                call.state
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&call)?);
    } else {
        print_call(&call);
    }
    if wait && call.state == "dead" {
        bail!(
            "call {id} failed every attempt and is in {}'s dead-letter queue",
            call.function
        );
    }
    Ok(())
}

fn print_call(call: &CallView) {
    println!(
        "call {} of {} (namespace {})",
        call.id, call.function, call.namespace
    );
    println!(
        "state     {} after {} of {} attempts",
        call.state, call.attempts, call.max_attempts
    );
    println!(
        "asked by  {}   kind {}   target {}",
        call.origin, call.kind, call.target
    );
    println!("accepted  {} UTC", utc_time(call.created_ms));
    if let Some(worker) = &call.worker {
        println!("running   on worker {worker}");
    }
    if let Some(next) = call.next_attempt_ms {
        println!("next try  {} UTC", utc_time(next));
    }
    if let Some(done) = call.finished_ms {
        println!(
            "finished  {} UTC ({} ms after it was accepted)",
            utc_time(done),
            done - call.created_ms
        );
    }
    if let Some(payload) = &call.payload {
        println!("input     {}", cut(&payload.to_string(), 2000));
    }
    if let Some(result) = &call.result {
        println!("result    {}", cut(&result.to_string(), 4000));
    }
    if let Some(error) = &call.error {
        println!("error     {error}");
    }
    for a in &call.history {
        println!(
            "attempt {:<2} {:<14} {} ({} ms){}{}",
            a.number,
            a.outcome,
            utc_time(a.started_ms),
            a.finished_ms - a.started_ms,
            a.version
                .map(|v| format!(" version {v}"))
                .unwrap_or_default(),
            a.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        for line in &a.logs {
            println!("    {line}");
        }
    }
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    format!(
        "{}… ({} bytes)",
        thaw_bundle::text_prefix(text, max),
        text.len()
    )
}

/// `thaw logs NAME --invocation ID` for an async call: each attempt's
/// console lines, under a line saying which attempt.
pub fn call_logs(c: &Client, name: &str, id: &str) -> anyhow::Result<()> {
    let call: CallView = c.get(&c.call_path(id))?;
    if call.function != name {
        bail!(
            "call {id} is a call of `{}`, not of `{name}`",
            call.function
        );
    }
    if call.history.is_empty() {
        eprintln!("call {id} is {}: no attempt has ended yet", call.state);
    }
    for a in &call.history {
        eprintln!(
            "--- attempt {} ({}{}) at {} UTC",
            a.number,
            a.outcome,
            a.version
                .map(|v| format!(", version {v}"))
                .unwrap_or_default(),
            utc_time(a.started_ms)
        );
        for line in &a.logs {
            println!("{line}");
        }
    }
    Ok(())
}

/// `thaw invocations NAME`: its calls, newest first.
pub fn list(
    c: &Client,
    name: &str,
    state: Option<&str>,
    limit: u32,
    json: bool,
) -> anyhow::Result<()> {
    let mut path = format!("{}/invocations?limit={limit}", c.function_path(name));
    if let Some(state) = state {
        path.push_str(&format!("&state={state}"));
    }
    let list: CallList = c.get(&path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.calls.is_empty() {
        println!(
            "{name} has no {}async calls",
            state.map(|s| format!("{s} ")).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "ID                        STATE      ATTEMPTS  ACCEPTED (UTC)       ORIGIN        ERROR"
    );
    for call in &list.calls {
        println!(
            "{:<25} {:<10} {:>3}/{:<5} {:<20} {:<13} {}",
            call.id,
            call.state,
            call.attempts,
            call.max_attempts,
            utc_time(call.created_ms),
            call.origin,
            cut(call.error.as_deref().unwrap_or(""), 60)
        );
    }
    if list.next.is_some() {
        println!("(more: newest {limit} shown; pass --limit)");
    }
    Ok(())
}

pub fn dlq(c: &Client, cmd: DlqCommand) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::Ls { name, json } => list(c, &name, Some("dead"), 1000, json),
        DlqCommand::Show { name, id } => {
            let call: CallView = c.get(&c.call_path(&id))?;
            if call.function != name {
                bail!(
                    "call {id} is a call of `{}`, not of `{name}`",
                    call.function
                );
            }
            print_call(&call);
            Ok(())
        }
        DlqCommand::Replay { name, ids } => {
            let ids = CallIds {
                ids: (!ids.is_empty()).then_some(ids),
            };
            let done: DeadLetters =
                c.post(&format!("{}/dlq/replay", c.function_path(&name)), &ids)?;
            println!(
                "{} dead letters of {} queued again (`thaw invocations {}` follows them)",
                done.count, done.function, done.function
            );
            Ok(())
        }
        DlqCommand::Purge { name, ids, all } => {
            if ids.is_empty() && !all {
                bail!(
                    "name the calls to purge, or pass --all to purge every dead letter of {name}"
                );
            }
            if !ids.is_empty() && all {
                bail!("pass either call ids or --all, not both");
            }
            let ids = CallIds {
                ids: (!ids.is_empty()).then_some(ids),
            };
            let done: DeadLetters =
                c.post(&format!("{}/dlq/purge", c.function_path(&name)), &ids)?;
            println!("{} dead letters of {} purged", done.count, done.function);
            Ok(())
        }
    }
}
