//! `onceflow run` and `onceflow validate`.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use onceflow_core::config::Pipeline;
use onceflow_core::engine::{self, RunOptions, RunSummary};
use onceflow_core::stats::{DeadReason, Stats};

use crate::{micros, rate, thousands};

/// Reads a pipeline file with every check, the Kafka connector's included.
pub fn load(path: &Path) -> Result<Pipeline, onceflow_core::config::ConfigErrors> {
    Pipeline::load_with(path, Some(&onceflow_connectors::kafka::check_settings))
}

pub fn validate(path: &Path) -> ExitCode {
    match load(path) {
        Ok(p) => {
            let projections = |ps: &onceflow_core::config::ProjectionsConfig| {
                format!(
                    "{} projection{} ({})",
                    ps.list.len(),
                    plural(ps.list.len()),
                    ps.list
                        .iter()
                        .map(|x| x.topic.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let logic = match (&p.aggregate, &p.projections) {
                (None, Some(ps)) => projections(ps),
                (None, None) => format!(
                    "view '{}' with {} field{}",
                    p.view.topic,
                    p.view.fields.len(),
                    plural(p.view.fields.len())
                ),
                (Some(a), _) => format!(
                    "aggregate '{}' with {} command{} and {} event type{}, read model '{}'",
                    a.name,
                    a.commands.len(),
                    plural(a.commands.len()),
                    a.events.len(),
                    plural(a.events.len()),
                    p.view.topic
                ),
            };
            println!(
                "ok: pipeline '{}': {} source{}, {} shard{}, commit every {:?}, {logic}, state in {}",
                p.name,
                p.sources.len(),
                plural(p.sources.len()),
                p.shards,
                plural(p.shards),
                p.commit_interval,
                p.state_dir.display()
            );
            if let Some(k) = &p.kafka {
                println!(
                    "    kafka: brokers {}, group '{}', {}, reads {} ({} at start)",
                    k.brokers.join(","),
                    k.group,
                    match k.delivery {
                        onceflow_core::config::Delivery::ExactlyOnce =>
                            format!("exactly once (transactional.id '{}')", k.transactional_id()),
                        onceflow_core::config::Delivery::AtLeastOnce =>
                            "at least once (no transactions)".to_string(),
                    },
                    p.sources
                        .iter()
                        .map(|s| format!("'{}'", s.topic))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if k.create_topics {
                        "missing outputs created"
                    } else {
                        "outputs must exist"
                    }
                );
            }
            if let Some((_, read)) = p.sides()
                && let Some(ps) = &read.projections
            {
                println!(
                    "    read side: {} fed by the committed '{}', state in {}",
                    projections(ps),
                    read.sources[0].topic,
                    read.state_dir.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(2)
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

pub fn run(path: &Path, until_end: bool, quiet: bool, rebuild: bool) -> ExitCode {
    // A testing aid (docs/operations.md): a misspelt point must not pass for a run
    // that did not crash.
    match onceflow_core::fault::init() {
        Ok(None) => {}
        Ok(Some(f)) => eprintln!(
            "onceflow: {}={f}: this run SIGKILLs itself at that fault point",
            onceflow_core::fault::ENV
        ),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    let p = match load(path) {
        Ok(p) => p,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    for s in &p.sources {
        match onceflow_connectors::files::load_if_missing(s, p.key.field.as_ref()) {
            Ok(Some(r)) => eprintln!(
                "onceflow: loaded {} records from {} into {} (topic '{}')",
                thousands(r.records),
                s.load
                    .as_ref()
                    .map(|f| f.display().to_string())
                    .unwrap_or_default(),
                s.path.display(),
                s.topic
            ),
            Ok(None) => {}
            Err(e) => {
                eprintln!("error: source '{}': {e}", s.name);
                return ExitCode::FAILURE;
            }
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while finishing exits at once (nothing after the last commit is lost:
        // the next start recovers from it).
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone());
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let stats = Arc::new(Stats::default());
    let done = Arc::new(AtomicBool::new(false));
    let status = (!quiet).then(|| {
        let (stats, done) = (stats.clone(), done.clone());
        std::thread::Builder::new()
            .name("onceflow-status".into())
            .spawn(move || status_loop(&stats, &done))
            .expect("spawn status thread")
    });

    let opts = RunOptions {
        until_end,
        stop,
        stats: stats.clone(),
        rebuild,
        connect: Some(Arc::new(onceflow_connectors::kafka::KafkaConnect::default())),
        on_recovery: Some(Arc::new(|r: &engine::Recovery| {
            if r.attempt == 0 {
                eprintln!(
                    "onceflow: {}: {}; starting again from the last commit",
                    r.pipeline, r.error
                );
            } else {
                eprintln!(
                    "onceflow: {}: {}; recovering from the last commit in {} ms (attempt {})",
                    r.pipeline,
                    r.error,
                    r.wait.as_millis(),
                    r.attempt
                );
            }
        })),
        ..RunOptions::default()
    };
    let result = engine::run(&p, opts);
    done.store(true, Ordering::Relaxed);
    if let Some(h) = status {
        let _ = h.join();
    }
    match result {
        Ok(s) => {
            print_summary(&p, &s, until_end);
            if let (Some((_, read)), Some(r)) = (p.sides(), &s.read_side) {
                print_summary(&read, r, until_end);
            }
            ExitCode::SUCCESS
        }
        Err(e @ engine::EngineError::ForeignSnapshot { .. }) => {
            let msg = e
                .to_string()
                .replace("<pipeline>", &path.display().to_string());
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The summary of one stage (a pipeline with an aggregate and projections has two).
fn print_summary(p: &Pipeline, s: &RunSummary, until_end: bool) {
    let st = &s.stats;
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    println!("onceflow: pipeline '{}' stopped after {:.2}s", p.name, secs);
    if let Some(epoch) = s.restored.epoch {
        println!(
            "  snapshot  restored epoch {epoch}: {} keys{} in {}{}",
            thousands(s.restored.keys),
            if s.restored.held > 0 {
                format!(" and {} held records", thousands(s.restored.held))
            } else {
                String::new()
            },
            micros(s.restored.took.as_micros() as u64),
            if s.restored.lazy {
                " (mapped: keys are read from it on first use)"
            } else {
                ""
            }
        );
    }
    for from in &s.restored.partitions {
        println!("  snapshot  {from}");
    }
    for skipped in &s.restored.skipped {
        println!("  snapshot  not used: {skipped}");
    }
    // The held records a snapshot put back count as replayed (Stats::restored_held);
    // the line above names them.
    let replayed = st.replayed.saturating_sub(s.restored.held);
    if replayed > 0 {
        println!(
            "  recovery  replayed {} committed records in {:.2}s with outputs suppressed",
            thousands(replayed),
            s.recovery.as_secs_f64()
        );
    }
    println!(
        "  records   {} read = {} processed + {} duplicates + {} dead-lettered + {} held{}",
        thousands(st.read),
        thousands(st.processed),
        thousands(st.duplicates),
        thousands(st.dead_total()),
        thousands(st.held),
        if st.balanced() {
            ""
        } else {
            "  (UNBALANCED: please report this)"
        }
    );
    if st.delivery_errors > 0 {
        println!(
            "  errors    {} projection update{} failed and were dead-lettered (the records themselves were processed)",
            thousands(st.delivery_errors),
            plural(st.delivery_errors as usize)
        );
    }
    if st.split > 0 {
        println!(
            "  split     {} record{} split by [upcast] into {} parts (counted as records above)",
            thousands(st.split),
            plural(st.split as usize),
            thousands(st.split_parts)
        );
    }
    if st.part_errors > 0 {
        println!(
            "  errors    {} later part{} of split records failed and were dead-lettered (a split record's outcome is its first part's)",
            thousands(st.part_errors),
            plural(st.part_errors as usize)
        );
    }
    if st.rejected > 0 {
        println!(
            "  rejected  {} of the processed commands were rejected by a rule (see the rejections topic)",
            thousands(st.rejected)
        );
    }
    let reasons: Vec<String> = DeadReason::ALL
        .iter()
        .filter(|r| st.dead[**r as usize] > 0)
        .map(|r| format!("{} {}", r.name(), thousands(st.dead[*r as usize])))
        .collect();
    if !reasons.is_empty() {
        println!("  dead      {}", reasons.join(", "));
    }
    let new = s.new_records;
    let busy = (s.elapsed - s.recovery).as_secs_f64().max(1e-9);
    // With --until-end this is the processing rate; a tailing run also counts its idle time.
    let mut line = format!(
        "  speed     {} new records at {} records/s{}",
        thousands(new),
        rate(new as f64 / busy),
        if until_end {
            ""
        } else {
            " (averaged over the run, idle time included)"
        }
    );
    if let (Some(p50), Some(p99), Some(max)) =
        (st.latency_p50_us, st.latency_p99_us, st.latency_max_us)
    {
        line.push_str(&format!(
            "; append→commit latency p50 {}, p99 {}, max {}",
            micros(p50),
            micros(p99),
            micros(max)
        ));
    }
    println!("{line}");
    let topics = match (&p.aggregate, &p.projections) {
        (None, Some(ps)) => ps
            .list
            .iter()
            .map(|x| format!("'{}'", x.topic))
            .collect::<Vec<_>>()
            .join(", "),
        (None, None) => format!("'{}'", p.view.topic),
        (Some(a), _) => format!(
            "'{}', '{}' and '{}'",
            a.events_topic, a.rejections_topic, p.view.topic
        ),
    };
    println!(
        "  committed {} epoch{} this run: {} records to {topics}, {} dead letters to '{}'; {} keys in state",
        thousands(st.commits),
        plural(st.commits as usize),
        thousands(st.outputs),
        thousands(st.dead_letters),
        p.dead_letter_topic,
        thousands(s.keys as u64)
    );
    if s.snapshots_written > 0 {
        let last = s
            .last_snapshot
            .map(|w| {
                let secs = w.write_time.as_secs_f64().max(1e-9);
                format!(
                    "; the last (epoch {}): {} keys, {:.1} MiB, written in {:.2}s alongside processing ({:.0} MiB/s, {} keys/s), complete after {:.2}s",
                    w.epoch,
                    thousands(w.keys),
                    w.bytes as f64 / (1 << 20) as f64,
                    secs,
                    w.bytes as f64 / (1 << 20) as f64 / secs,
                    thousands((w.keys as f64 / secs) as u64),
                    w.complete_time.as_secs_f64()
                )
            })
            .unwrap_or_default();
        println!(
            "  snapshot  wrote {} snapshot{} of the state{last}",
            thousands(s.snapshots_written),
            plural(s.snapshots_written as usize)
        );
    }
    for e in &s.snapshot_errors {
        println!("  snapshot  FAILED (the pipeline went on without it): {e}");
    }
    if st.held > 0 {
        println!(
            "  held      {} records wait for a sequence gap to fill; they are dead-lettered once their partition moves {} records past them",
            thousands(st.held),
            thousands(p.reorder.window)
        );
    }
    let view_topic = match (&p.aggregate, &p.projections) {
        (None, Some(ps)) => ps.list.first().map_or("", |x| x.topic.as_str()),
        _ => p.view.topic.as_str(),
    };
    match &p.kafka {
        Some(k) => println!(
            "  kafka     offsets committed to group '{}' at {}; outputs in topic '{view_topic}' (read with isolation.level=read_committed){}",
            k.group,
            k.brokers.join(","),
            if st.recoveries > 0 {
                format!("; {} recoveries from transient failures", st.recoveries)
            } else {
                String::new()
            }
        ),
        None => println!(
            "  view      onceflow log read {} --topic {} --compact",
            p.state_dir.display(),
            view_topic
        ),
    }
}

fn status_loop(stats: &Stats, done: &AtomicBool) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let mut last_read = 0u64;
    let mut last = Instant::now();
    let mut printed = false;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() < every {
            continue;
        }
        let s = stats.snapshot();
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        let p99 = {
            let mut recent = stats.recent_latency_us.lock().expect("latency lock");
            let v = (!recent.is_empty()).then(|| recent.value_at_quantile(0.99));
            recent.reset();
            v
        };
        let line = format!(
            "epoch {} | {} rec/s | read {} | processed {} | dup {} | dead {} | held {} | lag {} | p99 {}",
            s.epoch,
            rate((s.read - last_read) as f64 / dt),
            thousands(s.read),
            thousands(s.processed),
            thousands(s.duplicates),
            thousands(s.dead_total()),
            thousands(s.held),
            thousands(s.lag),
            p99.map(micros).unwrap_or_else(|| "-".into())
        );
        last_read = s.read;
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("onceflow: {line}");
        }
        printed = true;
    }
    if tty && printed {
        eprintln!();
    }
}
