use super::*;

const GOOD: &str = r#"
[pipeline]
name = "bank"
shards = 3
commit_interval = "50ms"

[[sources]]
name = "ledger"
type = "log"
path = "data/input"
load = "events.jsonl"

[key]
field = "account"
sequence = "seq"

[view]
topic = "balances"
emit = "per_event"

[view.fields]
balance = { op = "sum", field = "amount" }
entries = { op = "count" }
credits = { op = "count", when = { type = "credit" } }
types = { op = "set", field = "type" }
"#;

#[test]
fn parses_a_good_pipeline_with_defaults() {
    let p = Pipeline::parse(GOOD, Path::new("/base")).unwrap();
    assert_eq!(p.name, "bank");
    assert_eq!(p.shards, 3);
    assert_eq!(p.commit_interval, Duration::from_millis(50));
    assert_eq!(p.state_dir, PathBuf::from("/base/data/bank"));
    assert_eq!(p.sources[0].path, PathBuf::from("/base/data/input"));
    assert_eq!(p.sources[0].load, Some(PathBuf::from("/base/events.jsonl")));
    assert_eq!(p.sources[0].topic, "events");
    assert_eq!(p.view.emit, EmitMode::PerEvent);
    assert_eq!(p.view.fields.len(), 4);
    assert_eq!(p.view.fields[0].name, "balance");
    assert_eq!(
        p.view.fields[2].when,
        vec![(
            FieldPath::parse("type").unwrap(),
            serde_json::json!("credit")
        )]
    );
    assert_eq!(p.reorder.capacity, defaults::REORDER_CAPACITY);
    assert_eq!(p.dead_letter_topic, "dead_letters");
    let names: Vec<String> = p
        .referenced_fields()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(names, ["account", "seq", "amount", "type"]);
}

#[test]
fn reports_every_error_at_once_with_paths_and_lines() {
    let bad = r#"
[pipeline]
name = "bank"
shards = 0
commit_interval = "fast"
colour = "blue"

[[sources]]
name = "ledger"
type = "kafak"

[key]
feld = "account"

[view]
topic = "balances"
emit = "sometimes"

[view.fields]
balance = { op = "sum" }
total = { op = "average", field = "amount" }
"#;
    let errs = Pipeline::parse(bad, Path::new(".")).unwrap_err();
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let joined = text.join("\n");
    for needle in [
        "pipeline.shards (line 4): must be between 1 and 256, got 0",
        "pipeline.commit_interval (line 5): invalid duration \"fast\"",
        "pipeline.colour (line 6): unknown key",
        "sources[0].type (line 10): unknown value \"kafak\"",
        "sources[0].path",
        "key.feld (line 13): unknown key; did you mean \"field\"?",
        "key.field",
        "view.emit (line 17): unknown value \"sometimes\"",
        "view.fields.balance.field",
        "view.fields.total.op (line 21): unknown value \"average\"",
    ] {
        assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
    }
    assert!(errs.len() >= 10, "{joined}");
}

#[test]
fn syntax_errors_have_lines() {
    let errs = Pipeline::parse("[pipeline]\nname = \"x\nshards = 2\n", Path::new(".")).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.path == "(syntax)" && e.line == Some(2)),
        "{errs:?}"
    );
}

#[test]
fn wrong_types_are_named() {
    let src = GOOD.replace("shards = 3", "shards = \"three\"");
    let errs = Pipeline::parse(&src, Path::new(".")).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(
        errs[0].to_string(),
        "pipeline.shards (line 4): expected an integer, found a string"
    );
}

#[test]
fn reserved_and_duplicate_names() {
    let src = format!("{GOOD}\nversion = {{ op = \"count\" }}\n");
    let errs = Pipeline::parse(&src, Path::new(".")).unwrap_err();
    assert!(errs[0].message.contains("reserved"), "{errs:?}");
    let src = GOOD.replace(
        "[key]",
        "[[sources]]\nname = \"ledger\"\ntype = \"log\"\npath = \"x\"\n\n[key]",
    );
    let errs = Pipeline::parse(&src, Path::new(".")).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.message.contains("duplicate source name")),
        "{errs:?}"
    );
}

#[test]
fn upcast_split_parts_are_read_and_every_error_has_its_path() {
    let good = format!(
        r#"{GOOD}
[upcast]
[[upcast.rules]]
type = "TransferMade"
from = 1
compute = {{ amount = "event.cents" }}
split = [
  {{ set = {{ type = "'debit'" }} }},
  {{ set = {{ type = "'credit'", account = "event.to", seq = "event.to_seq" }}, remove = ["to"] }},
]
"#
    );
    let p = Pipeline::parse(&good, Path::new(".")).unwrap();
    let u = p.upcast.as_ref().unwrap();
    assert!(u.splits());
    let rule = &u.rules[0];
    assert_eq!(rule.split.len(), 2);
    assert_eq!(rule.split[1].set.len(), 3);
    assert_eq!(rule.split[1].remove, [FieldPath::parse("to").unwrap()]);
    let fields: Vec<String> = p
        .referenced_fields()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(fields.contains(&"to".to_string()), "{fields:?}");

    let bad = format!(
        r#"{GOOD}
[upcast]
[[upcast.rules]]
from = 1
split = [{{ set = {{ type = "'a'" }} }}]

[[upcast.rules]]
from = 2
split = [
  {{ set = {{ amount = "event.cents + (1 - 'x')" }} }},
  {{ set = {{ schema_version = "3" }}, remove = ["a..b", 7] }},
  {{ sett = {{ a = "1" }} }},
]

[[upcast.rules]]
from = 3
split = "both"

[[upcast.rules]]
from = 4
split = [{{ set = {{ a = "1" }}, remove = ["a"] }}, {{ set = {{ account = "event.to" }} }}]
"#
    );
    let errs = Pipeline::parse(&bad, Path::new(".")).unwrap_err();
    let joined = errs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let base = GOOD.lines().count();
    for needle in [
        format!(
            "upcast.rules[0].split (line {}): needs at least two parts, got 1",
            base + 5
        ),
        format!(
            "upcast.rules[1].split[0].set.amount (line {}): column 18: '-' cannot apply to int and string",
            base + 10
        ),
        format!(
            "upcast.rules[1].split[1].set.schema_version (line {}): sets the version field: every part goes on at version 3",
            base + 11
        ),
        format!(
            "upcast.rules[1].split[1].remove[0] (line {}): invalid field path \"a..b\"",
            base + 11
        ),
        format!(
            "upcast.rules[1].split[1].remove[1] (line {}): expected a field path (a string)",
            base + 11
        ),
        format!(
            "upcast.rules[1].split[2].sett (line {}): unknown key; did you mean \"set\"?",
            base + 12
        ),
        format!(
            "upcast.rules[2].split (line {}): expected an array of tables",
            base + 17
        ),
        format!(
            "upcast.rules[3].split[0].remove (line {}): removes \"a\", a field this part also sets",
            base + 21
        ),
        format!(
            "upcast.rules[3].split[1].set.account (line {}): sets the key field \"account\" but not the sequence field \"seq\"",
            base + 21
        ),
    ] {
        assert!(joined.contains(&needle), "missing {needle:?} in:\n{joined}");
    }
    assert_eq!(errs.len(), 9, "{joined}");
}

const KAFKA: &str = r#"
[pipeline]
name = "payments"

[kafka]
brokers = ["127.0.0.1:9092"]
properties = { "linger.ms" = 5, "enable.ssl.certificate.verification" = false, "compression.type" = "lz4" }

[[sources]]
name = "payments"
type = "kafka"
topic = "payments"

[key]
field = "account"

[view]
topic = "balances"
fields.balance = { op = "sum", field = "amount" }
"#;

#[test]
fn a_kafka_pipeline_has_its_defaults() {
    let p = Pipeline::parse(KAFKA, Path::new("/base")).unwrap();
    let k = p.kafka.as_ref().unwrap();
    assert_eq!(k.brokers, ["127.0.0.1:9092"]);
    assert_eq!(k.group, "onceflow.payments");
    assert_eq!(k.transactional_id(), "onceflow.payments.0");
    assert_eq!(k.delivery, Delivery::ExactlyOnce);
    assert!(k.create_topics);
    assert_eq!(k.connect_timeout, Duration::from_secs(10));
    assert_eq!(k.properties["linger.ms"], "5");
    assert_eq!(k.properties["enable.ssl.certificate.verification"], "false");
    assert_eq!(p.sources[0].kind, SourceKind::Kafka);
    assert_eq!(p.sources[0].path, PathBuf::new());
}

#[test]
fn kafka_mistakes_are_reported_together_with_the_connector_checks() {
    let src = KAFKA
        .replace(
            "type = \"kafka\"\ntopic = \"payments\"",
            "type = \"kafka\"\npath = \"x\"",
        )
        .replace(
            "[kafka]\n",
            "[kafka]\ninstance = \"a b\"\ndelivery = \"twice\"\n",
        )
        + "\n[[sources]]\nname = \"old\"\ntype = \"log\"\npath = \"log\"\n";
    let check = |k: &KafkaSettings, interval: Duration| {
        assert_eq!(interval, defaults::COMMIT_INTERVAL);
        vec![ConfigError {
            path: "kafka.properties.\"linger.ms\"".into(),
            line: None,
            message: format!("checked {} brokers", k.brokers.len()),
        }]
    };
    let errs = Pipeline::parse_with(&src, Path::new("/b"), Some(&check)).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "kafka.instance",
        "kafka.delivery",
        "kafka.properties.\"linger.ms\"",
        "sources[0].path",
        "sources[0].topic",
        "sources[1].type",
    ] {
        assert!(paths.contains(&want), "{want} missing from {errs:#?}");
    }
}

#[test]
fn a_kafka_source_needs_the_kafka_section() {
    let src = KAFKA.replace(
        "[kafka]\nbrokers = [\"127.0.0.1:9092\"]\nproperties = { \"linger.ms\" = 5, \"enable.ssl.certificate.verification\" = false, \"compression.type\" = \"lz4\" }\n",
        "",
    );
    let errs = Pipeline::parse(&src, Path::new("/b")).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.path == "sources[0].type" && e.message.contains("[kafka]")),
        "{errs:#?}"
    );
}

#[test]
fn group_assignment_reads_one_topic_and_keeps_snapshots_per_instance() {
    let group = KAFKA.replace(
        "[kafka]\n",
        "[kafka]\nassignment = \"group\"\ninstance = \"east-1\"\n",
    );
    let src = group.clone() + "\n[snapshot]\nevery = \"10s\"\ndir = \"/shared/snaps\"\n";
    let p = Pipeline::parse(&src, Path::new("/b")).unwrap();
    assert!(p.homed_keys());
    assert_eq!(p.snapshot.as_ref().unwrap().dir, Path::new("/shared/snaps"));
    assert_eq!(
        p.snapshot_write_dir().unwrap(),
        Path::new("/shared/snaps/instance-east-1")
    );
    // Without group assignment, one directory; a relative one is the pipeline file's.
    let plain = Pipeline::parse(
        &(KAFKA.to_string() + "\n[snapshot]\nevery = \"10s\"\ndir = \"rel\"\n"),
        Path::new("/b"),
    )
    .unwrap();
    assert!(!plain.homed_keys());
    assert_eq!(plain.snapshot_write_dir().unwrap(), Path::new("/b/rel"));

    let two = group + "\n[[sources]]\nname = \"refunds\"\ntype = \"kafka\"\ntopic = \"refunds\"\n";
    let errs = Pipeline::parse(&two, Path::new("/b")).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.path == "kafka.assignment" && e.message.contains("2 sources")),
        "{errs:#?}"
    );
}

#[test]
fn cloudevents_binary_mode_needs_kafka() {
    let full = include_str!("../../../examples/bank/pipeline.toml");
    let write_side = &full[..full.find("# ====").expect("the read-side banner")];
    let bank = write_side.replace(
        "rejections_topic = \"account_rejections\"",
        "rejections_topic = \"account_rejections\"\nevents_format = \"cloudevents_binary\"\nevents_source = \"/bank/accounts\"",
    );
    assert!(bank.contains("cloudevents_binary"));
    let errs = Pipeline::parse(&bank, Path::new("/b")).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.path == "aggregate.events_format" && e.message.contains("[kafka]")),
        "{errs:#?}"
    );
    let on_kafka = bank
        .replace(
            "type = \"log\"\npath = \"data/input\"\ntopic = \"commands\"\nload = \"commands.jsonl\"",
            "type = \"kafka\"\ntopic = \"commands\"",
        )
        .replacen("[[sources]]", "[kafka]\nbrokers = [\"b:9092\"]\n\n[[sources]]", 1);
    let p = Pipeline::parse(&on_kafka, Path::new("/b")).unwrap();
    let a = p.aggregate.as_ref().unwrap();
    assert!(a.cloudevents_binary);
    assert_eq!(a.cloudevents_source.as_deref(), Some("/bank/accounts"));
}
