use super::*;
use onceflow_core::config::FieldPath;
use onceflow_core::log::{LogOptions, LogReader, RecordBuf};

#[test]
fn appends_partitioned_by_key_and_keeps_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = "{\"k\":\"a\",\"n\":1}\n\n{\"k\":\"b\",\"n\":2}\nnot json\n{\"k\":\"a\",\"n\":3}\n";
    let opts = AppendOptions {
        topic: "events".into(),
        partitions: 4,
        key: Some(FieldPath::parse("k").unwrap()),
        batch: 2,
        log: LogOptions::default(),
    };
    let r = append_lines(dir.path(), input.as_bytes(), "test", &opts).unwrap();
    assert_eq!(
        r,
        AppendReport {
            records: 4,
            commits: 2,
            unkeyed: 1
        }
    );
    let reader = LogReader::open(dir.path(), "events").unwrap();
    let mut all = Vec::new();
    for p in 0..reader.partitions() {
        let mut c = reader.cursor(p, 0).unwrap();
        let mut buf = RecordBuf::new();
        c.read(&reader, 100, &mut buf).unwrap();
        for rec in buf.iter() {
            all.push((p, String::from_utf8(rec.value.to_vec()).unwrap()));
        }
    }
    assert_eq!(all.len(), 4);
    let pa: Vec<u32> = all
        .iter()
        .filter(|(_, v)| v.contains("\"a\""))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(pa.len(), 2);
    assert_eq!(pa[0], pa[1], "one key, one partition");
    assert!(all.iter().any(|(p, v)| *p == 0 && v == "not json"));
}
