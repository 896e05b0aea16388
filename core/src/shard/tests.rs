//! Sequence checks, reordering and dead letters, driven through the router like the engine does.

use super::*;
use crate::config::Pipeline;
use crate::router::Router;
use crate::stage::Fold;
use std::path::Path;

struct Harness {
    router: Router,
    shard: ShardCore<Fold>,
    batches: Vec<EventBatch>,
    dead: OutBuf,
    o: Outcomes,
    offset: u64,
}

fn harness(extra: &str) -> Harness {
    harness_emit(extra, "per_event")
}

fn harness_emit(extra: &str, emit: &str) -> Harness {
    let src = format!(
        "[pipeline]\nname='t'\nshards=1\n[[sources]]\nname='s'\ntype='log'\npath='x'\n[key]\nfield='k'\nsequence='seq'\n{extra}\n[view]\ntopic='v'\nemit='{emit}'\n[view.fields]\nsum={{op='sum',field='n'}}\n"
    );
    let p = Pipeline::parse(&src, Path::new(".")).unwrap();
    let names: InputNames = Arc::new(vec![("s".into(), 0)]);
    let stage = Arc::new(Fold::new(&p.view.fields, &p.referenced_fields()));
    Harness {
        router: Router::new(&p, names.clone()),
        shard: ShardCore::new(stage, ShardSettings::new(&p), names),
        batches: vec![EventBatch::default()],
        dead: OutBuf::default(),
        o: Outcomes::default(),
        offset: 0,
    }
}

impl Harness {
    fn feed(&mut self, recs: &[&str]) {
        let recs: Vec<(&str, &[u8])> = recs.iter().map(|r| (*r, &[][..])).collect();
        self.feed_headed(&recs);
    }

    /// Feeds records with their encoded headers.
    fn feed_headed(&mut self, recs: &[(&str, &[u8])]) {
        for (r, headers) in recs {
            self.o.read += 1;
            self.router.route(
                0,
                self.offset,
                0,
                r.as_bytes(),
                headers,
                &mut self.batches,
                &mut self.dead,
                true,
                &mut self.o,
            );
            self.offset += 1;
        }
        let o = self.shard.process(&self.batches[0]);
        self.batches[0].clear();
        self.o.processed += o.processed;
        self.o.duplicates += o.duplicates;
        self.o.held_delta += o.held_delta;
        self.o.part_errors += o.part_errors;
        for i in 0..crate::stats::DEAD_REASONS {
            self.o.dead[i] += o.dead[i];
        }
    }

    fn epoch(&mut self) -> (Vec<String>, Vec<serde_json::Value>) {
        let part = self.shard.barrier(1, None);
        let outs = part
            .outputs
            .iter()
            .map(|(_, _, v)| String::from_utf8(v.to_vec()).unwrap())
            .collect();
        let dead = part
            .dead
            .iter()
            .chain(self.dead.iter())
            .map(|(_, _, v)| serde_json::from_slice(v).unwrap())
            .collect();
        self.dead = OutBuf::default();
        (outs, dead)
    }

    fn balanced(&self) -> bool {
        self.o.read
            == self.o.processed + self.o.duplicates + self.o.dead_total() + self.o.held_delta as u64
    }
}

#[test]
fn in_order_duplicates_and_reordering() {
    let mut h = harness("");
    h.feed(&[
        r#"{"k":"a","seq":1,"n":10}"#,
        r#"{"k":"a","seq":1,"n":10}"#,   // duplicate
        r#"{"k":"a","seq":3,"n":1000}"#, // early: held
        r#"{"k":"a","seq":3,"n":1000}"#, // duplicate of a held record
        r#"{"k":"a","seq":2,"n":100}"#,  // fills the gap: 2 then 3 apply
    ]);
    let (outs, dead) = h.epoch();
    assert_eq!(
        outs,
        [
            r#"{"key":"a","version":1,"sum":10}"#,
            r#"{"key":"a","version":2,"sum":110}"#,
            r#"{"key":"a","version":3,"sum":1110}"#
        ]
    );
    assert!(dead.is_empty());
    assert_eq!((h.o.processed, h.o.duplicates, h.o.held_delta), (3, 2, 0));
    assert!(h.balanced());
}

#[test]
fn every_bad_record_gets_a_reason_and_the_counts_add_up() {
    let mut h = harness("");
    h.feed(&[
        "{not json",
        "[1,2]",
        r#"{"seq":1,"n":1}"#,
        r#"{"k":{"x":1},"seq":1,"n":1}"#,
        r#"{"k":"b","seq":"7","n":1}"#,
        r#"{"k":"b","seq":1.5,"n":1}"#,
        r#"{"k":"b","n":1}"#,
        r#"{"k":"b","seq":1,"n":"lots"}"#,
        r#"{"k":"b","seq":2,"n":5}"#,
        r#"{"k":7,"seq":1,"n":5}"#,
    ]);
    let (outs, dead) = h.epoch();
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons.iter().filter(|r| **r == "malformed_json").count(),
        1
    );
    assert_eq!(reasons.iter().filter(|r| **r == "not_an_object").count(), 1);
    assert_eq!(reasons.iter().filter(|r| **r == "missing_key").count(), 1);
    assert_eq!(reasons.iter().filter(|r| **r == "bad_key").count(), 1);
    assert_eq!(reasons.iter().filter(|r| **r == "bad_sequence").count(), 3);
    assert_eq!(reasons.iter().filter(|r| **r == "logic_error").count(), 1);
    let logic = dead.iter().find(|d| d["reason"] == "logic_error").unwrap();
    assert_eq!(logic["seq"], 1);
    assert_eq!(logic["offset"], 7);
    assert_eq!(logic["source"], "s");
    assert_eq!(logic["payload"], r#"{"k":"b","seq":1,"n":"lots"}"#);
    assert!(
        logic["detail"]
            .as_str()
            .unwrap()
            .contains("must be a number")
    );
    // seq 1 of "b" was dead-lettered but consumed its slot: seq 2 applies.
    assert_eq!(
        outs,
        [
            r#"{"key":"b","version":2,"sum":5}"#,
            r#"{"key":"7","version":1,"sum":5}"#
        ]
    );
    assert_eq!(h.o.dead_total(), 8);
    assert!(h.balanced());
}

#[test]
fn gap_not_filled_within_window_is_dead_lettered() {
    let mut h = harness("[reorder]\nwindow=3\n");
    h.feed(&[r#"{"k":"a","seq":1,"n":1}"#, r#"{"k":"a","seq":3,"n":1}"#]);
    assert_eq!(h.shard.held(), 1);
    h.feed(&[
        r#"{"k":"x","seq":1,"n":1}"#,
        r#"{"k":"x","seq":2,"n":1}"#,
        r#"{"k":"x","seq":3,"n":1}"#,
    ]);
    assert_eq!(h.shard.held(), 1, "offset 4 is only 3 past offset 1");
    h.feed(&[r#"{"k":"x","seq":4,"n":1}"#]);
    assert_eq!(h.shard.held(), 0);
    let (_, dead) = h.epoch();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "gap_not_filled");
    assert_eq!(dead[0]["seq"], 3);
    assert!(
        dead[0]["detail"]
            .as_str()
            .unwrap()
            .contains("expected 2, got 3"),
        "{}",
        dead[0]
    );
    // The gap stays: a later seq 2 still applies, seq 3 is gone (dead-lettered, replayable).
    h.feed(&[r#"{"k":"a","seq":2,"n":1}"#]);
    assert!(h.balanced());
}

#[test]
fn full_reorder_buffer_dead_letters_the_newcomer() {
    let mut h = harness("[reorder]\ncapacity=1\n");
    h.feed(&[r#"{"k":"a","seq":5,"n":1}"#, r#"{"k":"b","seq":5,"n":1}"#]);
    let (_, dead) = h.epoch();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "reorder_buffer_full");
    assert_eq!(dead[0]["key"], "b");
    assert_eq!(h.shard.held(), 1);
    assert!(h.balanced());
}

#[test]
fn per_epoch_emits_latest_state_once_per_changed_key() {
    let mut h = harness("");
    // Switch to per-epoch emission through the settings.
    h.shard.cfg.emit = EmitMode::PerEpoch;
    h.feed(&[
        r#"{"k":"a","seq":1,"n":1}"#,
        r#"{"k":"a","seq":2,"n":2}"#,
        r#"{"k":"b","seq":1,"n":5}"#,
    ]);
    let (outs, _) = h.epoch();
    assert_eq!(
        outs,
        [
            r#"{"key":"a","version":2,"sum":3}"#,
            r#"{"key":"b","version":1,"sum":5}"#
        ]
    );
    let (outs, _) = h.epoch();
    assert!(outs.is_empty());
}

#[test]
fn replayed_records_change_state_but_emit_nothing() {
    let mut h = harness("");
    h.router.route(
        0,
        0,
        0,
        br#"{"k":"a","seq":1,"n":1}"#,
        &[],
        &mut h.batches,
        &mut h.dead,
        false,
        &mut h.o,
    );
    h.router.route(
        0,
        1,
        0,
        b"junk",
        &[],
        &mut h.batches,
        &mut h.dead,
        false,
        &mut h.o,
    );
    h.batches[0].replay = true;
    h.shard.process(&h.batches[0]);
    h.batches[0].clear();
    let (outs, dead) = h.epoch();
    assert!(outs.is_empty() && dead.is_empty());
    h.feed(&[r#"{"k":"a","seq":2,"n":1}"#]);
    let (outs, _) = h.epoch();
    assert_eq!(outs, [r#"{"key":"a","version":2,"sum":2}"#]);
}

#[test]
fn per_epoch_upserts_rendered_ahead_are_superseded_by_later_changes() {
    let mut h = harness_emit("", "per_epoch");
    h.feed(&[r#"{"k":"a","seq":1,"n":1}"#, r#"{"k":"b","seq":1,"n":10}"#]);
    // The shard was idle: both keys rendered before the barrier.
    assert_eq!(h.shard.render_pending(), 2);
    h.shard.render_ahead(64);
    assert_eq!(h.shard.render_pending(), 0);
    // `a` changes again: its early upsert is superseded, `b`'s stands.
    h.feed(&[r#"{"k":"a","seq":2,"n":2}"#]);
    assert_eq!(h.shard.render_pending(), 1);
    h.shard.render_ahead(1);
    h.feed(&[r#"{"k":"a","seq":3,"n":3}"#]);
    let (outs, _) = h.epoch();
    assert_eq!(
        outs,
        vec![
            r#"{"key":"b","version":1,"sum":10}"#.to_string(),
            r#"{"key":"a","version":3,"sum":6}"#.to_string(),
        ]
    );
    // Next epoch: nothing is carried over; a key's first change renders afresh.
    h.feed(&[r#"{"k":"b","seq":2,"n":5}"#]);
    h.shard.render_ahead(64);
    let (outs, _) = h.epoch();
    assert_eq!(
        outs,
        vec![r#"{"key":"b","version":2,"sum":15}"#.to_string()]
    );
    let (outs, _) = h.epoch();
    assert!(outs.is_empty());
}

/// `[upcast]` for the split tests: a v1 `double` record is two events of its own key and
/// number (n, then 2n); a v1 `move` record takes n from its key and gives it to `to`, at
/// that key's number `to_seq`.
const SPLITS: &str = r#"
[upcast]
[[upcast.rules]]
type = "double"
from = 1
split = [{ set = { type = "'one'" } }, { set = { type = "'two'", n = "event.n * 2" } }]

[[upcast.rules]]
type = "move"
from = 1
split = [
  { set = { n = "-event.n" } },
  { set = { k = "event.to", seq = "event.to_seq" } },
]
"#;

#[test]
fn parts_of_one_key_and_number_apply_in_turn_and_duplicate_together() {
    let mut h = harness(SPLITS);
    h.feed(&[
        r#"{"k":"a","seq":1,"n":1}"#,
        r#"{"k":"a","seq":2,"type":"double","n":10}"#,
        r#"{"k":"a","seq":2,"type":"double","n":10}"#, // redelivered: both parts duplicates
        r#"{"k":"a","seq":3,"n":100}"#,
    ]);
    let (outs, dead) = h.epoch();
    assert_eq!(
        outs,
        [
            r#"{"key":"a","version":1,"sum":1}"#,
            r#"{"key":"a","version":2,"sum":11}"#,
            r#"{"key":"a","version":2,"sum":31}"#,
            r#"{"key":"a","version":3,"sum":131}"#
        ]
    );
    assert!(dead.is_empty(), "{dead:?}");
    // Four records: three processed (the split one once), one duplicate.
    assert_eq!((h.o.read, h.o.processed, h.o.duplicates), (4, 3, 1));
    assert_eq!((h.o.split, h.o.split_parts), (2, 4));
    assert!(h.balanced());
}

#[test]
fn held_parts_wait_and_are_released_in_order() {
    let mut h = harness(SPLITS);
    h.feed(&[
        r#"{"k":"a","seq":2,"type":"double","n":10}"#, // early: both parts held
        r#"{"k":"a","seq":2,"type":"double","n":10}"#, // a duplicate of held parts
    ]);
    assert_eq!(h.shard.held(), 2);
    assert_eq!(
        (h.o.held_delta, h.o.duplicates),
        (1, 1),
        "counted as records"
    );
    h.feed(&[r#"{"k":"a","seq":1,"n":1}"#]);
    assert_eq!(h.shard.held(), 0);
    let (outs, dead) = h.epoch();
    assert_eq!(
        outs,
        [
            r#"{"key":"a","version":1,"sum":1}"#,
            r#"{"key":"a","version":2,"sum":11}"#,
            r#"{"key":"a","version":2,"sum":31}"#
        ]
    );
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!((h.o.processed, h.o.held_delta), (2, 0));
    assert!(h.balanced());
}

#[test]
fn a_part_for_another_key_carries_that_keys_number() {
    let mut h = harness(SPLITS);
    h.feed(&[
        r#"{"k":"a","seq":1,"n":50}"#,
        r#"{"k":"b","seq":1,"n":5}"#,
        r#"{"k":"a","seq":2,"type":"move","n":20,"to":"b","to_seq":2}"#,
        r#"{"k":"b","seq":3,"n":1}"#,
        // Its part for "b" is a duplicate by b's numbers: b is at 3 already.
        r#"{"k":"a","seq":3,"type":"move","n":7,"to":"b","to_seq":3}"#,
    ]);
    let (outs, dead) = h.epoch();
    assert_eq!(
        outs,
        [
            r#"{"key":"a","version":1,"sum":50}"#,
            r#"{"key":"b","version":1,"sum":5}"#,
            r#"{"key":"a","version":2,"sum":30}"#,
            r#"{"key":"b","version":2,"sum":25}"#,
            r#"{"key":"b","version":3,"sum":26}"#,
            r#"{"key":"a","version":3,"sum":23}"#
        ]
    );
    assert!(dead.is_empty(), "{dead:?}");
    // The last record's outcome is its part 0's (processed); its part 1's is not counted.
    assert_eq!((h.o.read, h.o.processed, h.o.duplicates), (5, 5, 0));
    assert!(h.balanced());
}

#[test]
fn a_later_part_that_fails_is_a_part_error_not_a_second_outcome() {
    // Part 1 keeps the record's string `n`, on another key: the fold refuses it.
    let mut h = harness(
        r#"
[upcast]
[[upcast.rules]]
from = 1
split = [{ set = { n = "1" } }, { set = { k = "event.k + '2'", seq = "event.seq" } }]
"#,
    );
    h.feed(&[r#"{"k":"a","seq":1,"n":"lots"}"#]);
    let (outs, dead) = h.epoch();
    assert_eq!(outs, [r#"{"key":"a","version":1,"sum":1}"#]);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "logic_error");
    assert_eq!(dead[0]["key"], "a2");
    assert_eq!(dead[0]["payload"], r#"{"k":"a","seq":1,"n":"lots"}"#);
    let detail = dead[0]["detail"].as_str().unwrap();
    assert!(
        detail.ends_with("(part 2 of 2 of a record split by [upcast])"),
        "{detail}"
    );
    assert_eq!(
        (h.o.processed, h.o.dead_total(), h.o.part_errors),
        (1, 0, 1)
    );
    assert!(h.balanced());
}

#[test]
fn a_part_that_cannot_be_upcast_or_routed_dead_letters_the_whole_record() {
    let mut h = harness(
        r#"
[upcast]
[[upcast.rules]]
type = "nokey"
from = 1
split = [{ set = { n = "1" } }, { remove = ["k"] }]

[[upcast.rules]]
type = "badseq"
from = 1
split = [{ set = { n = "1" } }, { set = { seq = "-1" } }]

[[upcast.rules]]
type = "fails"
from = 1
split = [{ set = { n = "1" } }, { set = { n = "event.n / 0" } }]
"#,
    );
    h.feed(&[
        r#"{"k":"a","seq":1,"type":"nokey","n":5}"#,
        r#"{"k":"a","seq":1,"type":"badseq","n":5}"#,
        r#"{"k":"a","seq":1,"type":"fails","n":5}"#,
    ]);
    let (outs, dead) = h.epoch();
    assert!(outs.is_empty(), "{outs:?}");
    let details: Vec<&str> = dead
        .iter()
        .map(|d| {
            assert_eq!(d["reason"], "upcast_failed");
            d["detail"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        details[0],
        "part 2 of 2 after upcasting: the key field 'k' is missing"
    );
    assert_eq!(
        details[1],
        "part 2 of 2 after upcasting: the sequence field 'seq' must be a non-negative integer, got -1"
    );
    assert!(
        details[2].starts_with("upcasting from version 1: `event.n / 0`")
            && details[2].ends_with("(part 2 of 2)"),
        "{}",
        details[2]
    );
    assert_eq!((h.o.dead_total(), h.o.split), (3, 0));
    assert!(h.balanced());
}

mod snapshots {
    //! Copy-on-write snapshot writing and lazy restore, shard by shard.

    use super::*;
    use crate::snapshot::{ShardSnapshot, SnapshotWriter, WriteOptions};

    fn rec(k: &str, seq: u64, n: i64) -> String {
        format!(r#"{{"k":"{k}","seq":{seq},"n":{n}}}"#)
    }

    fn feed(h: &mut Harness, recs: &[String]) {
        let refs: Vec<&str> = recs.iter().map(String::as_str).collect();
        h.feed(&refs);
    }

    /// Writes `h`'s snapshot copy-on-write while `during` is fed after the barrier,
    /// the sweep having done `swept` entries first. Returns the file.
    fn snapshot_while(
        h: &mut Harness,
        dir: &Path,
        epoch: u64,
        swept: usize,
        during: &[String],
    ) -> Arc<ShardSnapshot> {
        h.epoch();
        let set = SnapshotWriter::create(dir, epoch, 1, WriteOptions { fsync: false }).unwrap();
        h.shard.begin_snapshot(set.shard(0).unwrap());
        assert!(h.shard.snapshot_step(swept).is_none());
        feed(h, during);
        let job = h
            .shard
            .snapshot_step(usize::MAX)
            .expect("the sweep completes");
        assert!(!h.shard.snapshot_pending());
        let info = job.finish().unwrap();
        Arc::new(ShardSnapshot::open(&set.dir().join(info.file)).unwrap())
    }

    fn lazy_from(file: Arc<ShardSnapshot>) -> Harness {
        let mut h = harness("");
        h.shard.attach_base(file.clone());
        for x in file.extras() {
            h.shard.restore_held(&x).unwrap();
        }
        h.shard.finish_restore();
        h
    }

    fn rows(h: &Harness, keys: &[String]) -> Vec<Option<String>> {
        keys.iter()
            .map(|k| h.shard.render_key(k.as_bytes()))
            .collect()
    }

    #[test]
    fn a_snapshot_holds_the_state_at_its_barrier_whatever_changes_during_the_sweep() {
        let tmp = tempfile::tempdir().unwrap();
        let mut h = harness("");
        let mut first: Vec<String> = (0..100).map(|i| rec(&format!("k{i}"), 1, i)).collect();
        first.push(rec("k8", 3, 800)); // held: k8 waits for seq 2
        feed(&mut h, &first);
        let at_barrier: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let expected = rows(&h, &at_barrier);

        // The sweep did k0..k9; k5 changes behind it, k50 and k99 ahead of it (copied
        // first), `new` appears, k7 gets a held record: none of it is in the snapshot.
        let during = [
            rec("k5", 2, 1000),
            rec("k50", 2, 1000),
            rec("k99", 2, 1000),
            rec("k50", 3, 1000),
            rec("new", 1, 1),
            rec("k7", 5, 1),
        ];
        let file = snapshot_while(&mut h, tmp.path(), 1, 10, &during);
        assert_eq!((file.len(), file.extras().count()), (100, 1));

        let mut r = lazy_from(file);
        assert_eq!(r.shard.keys(), 100);
        assert_eq!(r.shard.held(), 1);
        assert_eq!(rows(&r, &at_barrier), expected);
        assert_eq!(r.shard.render_key(b"new"), None);
        // The held record came back: seq 2 releases it.
        feed(&mut r, &[rec("k8", 2, 20)]);
        assert_eq!(
            r.shard.render_key(b"k8").unwrap(),
            r#"{"key":"k8","version":3,"sum":828}"#
        );
        assert_eq!(r.shard.held(), 0);
    }

    #[test]
    fn a_lazily_restored_shard_goes_on_like_the_original_and_its_next_snapshot_keeps_every_key() {
        let tmp = tempfile::tempdir().unwrap();
        let mut h = harness("");
        feed(
            &mut h,
            &(0..300)
                .map(|i| rec(&format!("k{i}"), 1, i))
                .collect::<Vec<_>>(),
        );
        feed(&mut h, &[rec("k3", 3, 7)]); // held
        let file = snapshot_while(&mut h, tmp.path(), 1, 0, &[]);
        let mut r = lazy_from(file);

        // The same records to both: some keys change, one appears, a held one is released.
        let more: Vec<String> = [
            rec("k1", 2, 5),
            rec("k200", 2, 5),
            rec("k3", 2, 1),
            rec("fresh", 1, 9),
            rec("k200", 3, 5),
        ]
        .into();
        feed(&mut h, &more);
        feed(&mut r, &more);
        let mut keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
        keys.push("fresh".into());
        assert_eq!(rows(&r, &keys), rows(&h, &keys));
        assert_eq!((r.shard.keys(), r.shard.held()), (301, 0));
        assert_eq!(r.epoch().0.len(), 6, "one upsert per applied record");

        // Scan positions: every key once, restored ones first.
        let seen: Vec<String> = (0..r.shard.scan_len() as u32)
            .filter_map(|at| r.shard.at_position(at))
            .map(|e| String::from_utf8(e.key.as_bytes().to_vec()).unwrap())
            .collect();
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!((seen.len(), sorted.len()), (301, 301));

        // Its snapshot, taken while more changes come: restored keys it never used are
        // copied from the old file, the rest from its live map.
        let during = [rec("k250", 2, 1), rec("k1", 3, 1), rec("later", 1, 1)];
        let file2 = snapshot_while(&mut r, &tmp.path().join("b"), 2, 3, &during);
        assert_eq!(file2.len(), 301);
        let mut eager = harness("");
        for e in file2.iter() {
            eager
                .shard
                .restore_entry(crate::hash::stable_hash(e.key), e)
                .unwrap();
        }
        assert_eq!(rows(&eager, &keys), rows(&h, &keys));
    }
}

/// One header `trace: <value>`, encoded.
fn trace(value: &str) -> Vec<u8> {
    let mut h = Vec::new();
    crate::headers::push(&mut h, b"trace", Some(value.as_bytes()));
    h
}

/// `(value, trace header)` of each record of `buf`.
fn with_trace(buf: &OutBuf) -> Vec<(String, Option<String>)> {
    buf.iter_headed()
        .map(|(_, _, v, h)| {
            let t = crate::headers::iter(h)
                .find(|(k, _)| *k == b"trace")
                .map(|(_, v)| String::from_utf8(v.unwrap().to_vec()).unwrap());
            (String::from_utf8(v.to_vec()).unwrap(), t)
        })
        .collect()
}

#[test]
fn headers_follow_the_records_their_outputs_come_from() {
    let (h1, h2, h3, hj) = (trace("1"), trace("2"), trace("3"), trace("junk"));
    // Per event: each upsert carries its record's headers, a held record its own when
    // released, a dead letter its record's.
    let mut h = harness("");
    h.feed_headed(&[
        (r#"{"k":"a","seq":1,"n":1}"#, &h1),
        (r#"{"k":"a","seq":3,"n":1}"#, &h3), // early: held
        (r#"{"k":"a","seq":2,"n":1}"#, &h2), // releases 3
        ("junk", &hj),
        (r#"{"k":"b","seq":1,"n":1}"#, &[]),
    ]);
    let part = h.shard.barrier(1, None);
    let t = |s: &str| Some(s.to_string());
    assert_eq!(
        with_trace(&part.outputs),
        [
            (r#"{"key":"a","version":1,"sum":1}"#.to_string(), t("1")),
            (r#"{"key":"a","version":2,"sum":2}"#.to_string(), t("2")),
            (r#"{"key":"a","version":3,"sum":3}"#.to_string(), t("3")),
            (r#"{"key":"b","version":1,"sum":1}"#.to_string(), None),
        ]
    );
    let dead = with_trace(&h.dead);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1, t("junk"));

    // Per epoch: an upsert carries the headers of the key's last change in the epoch,
    // none if that change had none, also when the key was rendered ahead in between.
    let mut h = harness_emit("", "per_epoch");
    h.feed_headed(&[
        (r#"{"k":"a","seq":1,"n":1}"#, &h1),
        (r#"{"k":"a","seq":2,"n":1}"#, &h2),
        (r#"{"k":"b","seq":1,"n":1}"#, &h1),
        (r#"{"k":"c","seq":1,"n":1}"#, &h1),
    ]);
    h.shard.render_ahead(usize::MAX);
    h.feed_headed(&[
        (r#"{"k":"b","seq":2,"n":1}"#, &[]),
        (r#"{"k":"c","seq":2,"n":1}"#, &h3),
    ]);
    let part = h.shard.barrier(1, None);
    let mut got = with_trace(&part.outputs);
    got.sort();
    assert_eq!(
        got,
        [
            (r#"{"key":"a","version":2,"sum":2}"#.to_string(), t("2")),
            (r#"{"key":"b","version":2,"sum":2}"#.to_string(), None),
            (r#"{"key":"c","version":2,"sum":2}"#.to_string(), t("3")),
        ]
    );
    // The next epoch starts clean.
    h.feed_headed(&[(r#"{"k":"a","seq":3,"n":1}"#, &[])]);
    let part = h.shard.barrier(2, None);
    assert_eq!(with_trace(&part.outputs)[0].1, None);
}
