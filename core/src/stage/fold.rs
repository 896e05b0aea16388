//! The built-in per-key fold: count, sum, min, max, last value and set of values, each
//! optionally restricted by equality filters (`when`).

use std::cmp::Ordering;
use std::collections::BTreeSet;

use super::{Applied, Emit, EventView, Refused, Stage};
use crate::batch::{write_int, write_json_str, write_uint};
use crate::config::{FieldPath, Reducer, ReducerOp};
use crate::decode::Value;

/// A scalar kept in state (owned).
#[derive(Debug, Clone)]
pub enum Scalar {
    /// JSON null.
    Null,
    /// Boolean.
    Bool(bool),
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// String.
    /// String (boxed twice so that a scalar stays 16 bytes: strings are the rare case).
    Str(Box<String>),
}

impl Scalar {
    fn rank(&self) -> u8 {
        match self {
            Scalar::Null => 0,
            Scalar::Bool(_) => 1,
            Scalar::Int(_) | Scalar::Float(_) => 2,
            Scalar::Str(_) => 3,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Scalar::Null => out.extend_from_slice(b"null"),
            Scalar::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Scalar::Int(i) => write_int(out, *i),
            Scalar::Float(f) => write_f64(out, *f),
            Scalar::Str(s) => write_json_str(out, s.as_bytes()),
        }
    }
}

impl PartialEq for Scalar {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scalar {}
impl PartialOrd for Scalar {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scalar {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Scalar::Bool(a), Scalar::Bool(b)) => a.cmp(b),
            (Scalar::Int(a), Scalar::Int(b)) => a.cmp(b),
            (Scalar::Float(a), Scalar::Float(b)) => a.total_cmp(b),
            (Scalar::Int(a), Scalar::Float(b)) => (*a as f64).total_cmp(b).then(Ordering::Less),
            (Scalar::Float(a), Scalar::Int(b)) => a.total_cmp(&(*b as f64)).then(Ordering::Greater),
            (Scalar::Str(a), Scalar::Str(b)) => a.as_str().cmp(b.as_str()),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

fn put_scalar(out: &mut Vec<u8>, v: &Scalar) {
    use crate::snapshot::codec::Put;
    match v {
        Scalar::Null => out.put_u8(0),
        Scalar::Bool(b) => out.put_u8(1 + u8::from(*b)),
        Scalar::Int(i) => {
            out.put_u8(3);
            out.put_i64(*i);
        }
        Scalar::Float(f) => {
            out.put_u8(4);
            out.put_f64(*f);
        }
        Scalar::Str(s) => {
            out.put_u8(5);
            out.put_bytes(s.as_bytes());
        }
    }
}

fn take_scalar(t: &mut crate::snapshot::codec::Take<'_>) -> Result<Scalar, String> {
    Ok(match t.u8("a scalar's tag")? {
        0 => Scalar::Null,
        1 => Scalar::Bool(false),
        2 => Scalar::Bool(true),
        3 => Scalar::Int(t.i64("an int")?),
        4 => Scalar::Float(t.f64("a float")?),
        5 => Scalar::Str(Box::new(t.str("a string")?.to_string())),
        other => return Err(format!("unknown scalar tag {other}")),
    })
}

fn write_f64(out: &mut Vec<u8>, f: f64) {
    if f.is_finite() {
        serde_json::to_writer(&mut *out, &f).expect("vec write");
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Accumulator of one reducer.
#[derive(Debug, Clone)]
pub enum Acc {
    /// Count.
    Count(u64),
    /// Integer sum (switches to `SumF` when a float arrives).
    SumI(i64),
    /// Float sum.
    SumF(f64),
    /// Min/max/last (None until a value arrives).
    One(Option<Scalar>),
    /// Set of values.
    Set(Box<BTreeSet<Scalar>>),
}

#[derive(Debug, Clone)]
enum Op {
    Count,
    Sum(usize),
    Min(usize),
    Max(usize),
    Last(usize),
    Set(usize),
}

#[derive(Debug, Clone)]
enum Want {
    Str(Box<[u8]>),
    Int(i64),
    Float(f64),
    Bool(bool),
}

#[derive(Debug, Clone)]
struct Compiled {
    name: String,
    /// `"name":` rendered once.
    prefix: Box<[u8]>,
    field: String,
    op: Op,
    when: Vec<(usize, Want)>,
}

/// The fold stage, compiled against the slot order of the decoder.
#[derive(Debug, Clone)]
pub struct Fold {
    reducers: Vec<Compiled>,
}

impl Fold {
    /// Compiles `reducers`; `slots` is the decoder's field order
    /// (`Pipeline::referenced_fields()`), which must contain every field they use.
    pub fn new(reducers: &[Reducer], slots: &[FieldPath]) -> Self {
        let slot = |p: &FieldPath| {
            slots
                .iter()
                .position(|s| s == p)
                .expect("referenced_fields covers every reducer field")
        };
        let reducers = reducers
            .iter()
            .map(|r| {
                let (op, field) = match &r.op {
                    ReducerOp::Count => (Op::Count, String::new()),
                    ReducerOp::Sum(p) => (Op::Sum(slot(p)), p.to_string()),
                    ReducerOp::Min(p) => (Op::Min(slot(p)), p.to_string()),
                    ReducerOp::Max(p) => (Op::Max(slot(p)), p.to_string()),
                    ReducerOp::Last(p) => (Op::Last(slot(p)), p.to_string()),
                    ReducerOp::Set(p) => (Op::Set(slot(p)), p.to_string()),
                };
                let when = r
                    .when
                    .iter()
                    .map(|(p, v)| {
                        let want = match v {
                            serde_json::Value::String(s) => Want::Str(s.as_bytes().into()),
                            serde_json::Value::Bool(b) => Want::Bool(*b),
                            serde_json::Value::Number(n) => match n.as_i64() {
                                Some(i) => Want::Int(i),
                                None => Want::Float(n.as_f64().unwrap_or(f64::NAN)),
                            },
                            _ => Want::Bool(false),
                        };
                        (slot(p), want)
                    })
                    .collect();
                let mut prefix = Vec::new();
                write_json_str(&mut prefix, r.name.as_bytes());
                prefix.push(b':');
                Compiled {
                    name: r.name.clone(),
                    prefix: prefix.into(),
                    field,
                    op,
                    when,
                }
            })
            .collect();
        Fold { reducers }
    }
}

fn matches(ev: &EventView<'_>, when: &[(usize, Want)]) -> bool {
    when.iter().all(|(slot, want)| {
        let v = ev.values[*slot];
        match (want, v) {
            (Want::Str(w), Value::Str(s, l)) => ev.arena[s as usize..(s + l) as usize] == **w,
            (Want::Int(w), Value::Int(i)) => *w == i,
            (Want::Int(w), Value::Float(f)) => *w as f64 == f,
            (Want::Float(w), Value::Float(f)) => *w == f,
            (Want::Float(w), Value::Int(i)) => *w == i as f64,
            (Want::Bool(w), Value::Bool(b)) => *w == b,
            _ => false,
        }
    })
}

fn scalar(ev: &EventView<'_>, v: Value) -> Option<Scalar> {
    Some(match v {
        Value::Missing | Value::Composite => return None,
        Value::Null => Scalar::Null,
        Value::Bool(b) => Scalar::Bool(b),
        Value::Int(i) => Scalar::Int(i),
        Value::Float(f) => Scalar::Float(f),
        Value::Str(..) => Scalar::Str(Box::new(ev.str(v).unwrap_or_default().to_string())),
    })
}

fn numeric(v: Value, field: &str) -> Result<Option<Scalar>, String> {
    match v {
        Value::Missing | Value::Null => Ok(None),
        Value::Int(i) => Ok(Some(Scalar::Int(i))),
        Value::Float(f) => Ok(Some(Scalar::Float(f))),
        other => Err(format!(
            "field '{field}' must be a number, got {}",
            other.kind()
        )),
    }
}

/// Accumulators of one key, inline in the shard's key entry up to this many reducers
/// (one cache miss per record instead of two; measured in `docs/benchmarks.md`).
pub const INLINE_REDUCERS: usize = 8;

/// Accumulators of one key.
pub type FoldState = smallvec::SmallVec<[Acc; INLINE_REDUCERS]>;

impl Stage for Fold {
    type State = FoldState;

    fn new_state(&self, _key: &[u8]) -> Self::State {
        self.reducers
            .iter()
            .map(|r| match r.op {
                Op::Count => Acc::Count(0),
                Op::Sum(_) => Acc::SumI(0),
                Op::Min(_) | Op::Max(_) | Op::Last(_) => Acc::One(None),
                Op::Set(_) => Acc::Set(Box::default()),
            })
            .collect()
    }

    fn apply(
        &self,
        state: &mut Self::State,
        ev: EventView<'_>,
        _emit: &mut Emit<'_>,
    ) -> Result<Applied, Refused> {
        // hot path
        // Check first (everything that can fail), then apply: all or nothing. Filters
        // are evaluated once; `active` remembers which reducers take this record.
        let mut active: u64 = 0;
        for (i, (r, acc)) in self.reducers.iter().zip(state.iter()).enumerate() {
            if !r.when.is_empty() && !matches(&ev, &r.when) {
                continue;
            }
            active |= 1 << i;
            match (&r.op, acc) {
                (Op::Sum(s), Acc::SumI(cur)) => {
                    if let Some(Scalar::Int(i)) = numeric(ev.values[*s], &r.field)?
                        && cur.checked_add(i).is_none()
                    {
                        return Err(format!(
                            "'{}' (sum of '{}') would overflow: {cur} + {i}",
                            r.name, r.field
                        )
                        .into());
                    }
                }
                (Op::Sum(s) | Op::Min(s) | Op::Max(s), _) => {
                    numeric(ev.values[*s], &r.field)?;
                }
                _ => {}
            }
        }
        for (i, (r, acc)) in self.reducers.iter().zip(state.iter_mut()).enumerate() {
            if active & (1 << i) == 0 {
                continue;
            }
            match (&r.op, acc) {
                (Op::Count, Acc::Count(n)) => *n += 1,
                (Op::Sum(s), acc) => match (numeric(ev.values[*s], &r.field)?, &mut *acc) {
                    (Some(Scalar::Int(i)), Acc::SumI(cur)) => *cur += i,
                    (Some(Scalar::Float(f)), Acc::SumI(cur)) => *acc = Acc::SumF(*cur as f64 + f),
                    (Some(Scalar::Int(i)), Acc::SumF(cur)) => *cur += i as f64,
                    (Some(Scalar::Float(f)), Acc::SumF(cur)) => *cur += f,
                    _ => {}
                },
                (Op::Min(s), Acc::One(cur)) => {
                    if let Some(v) = numeric(ev.values[*s], &r.field)?
                        && cur.as_ref().is_none_or(|c| v < *c)
                    {
                        *cur = Some(v);
                    }
                }
                (Op::Max(s), Acc::One(cur)) => {
                    if let Some(v) = numeric(ev.values[*s], &r.field)?
                        && cur.as_ref().is_none_or(|c| v > *c)
                    {
                        *cur = Some(v);
                    }
                }
                (Op::Last(s), Acc::One(cur)) => {
                    if let Some(v) = scalar(&ev, ev.values[*s]) {
                        *cur = Some(v);
                    }
                }
                (Op::Set(s), Acc::Set(set)) => {
                    if let Some(v) = scalar(&ev, ev.values[*s])
                        && !set.contains(&v)
                    {
                        set.insert(v);
                    }
                }
                (op, acc) => unreachable!("accumulator {acc:?} does not belong to {op:?}"),
            }
        }
        Ok(Applied::Changed)
    }

    fn encode_state(&self, state: &FoldState, out: &mut Vec<u8>) -> bool {
        use crate::snapshot::codec::Put;
        out.put_u64(state.len() as u64);
        for acc in state {
            match acc {
                Acc::Count(n) => {
                    out.put_u8(0);
                    out.put_u64(*n);
                }
                Acc::SumI(i) => {
                    out.put_u8(1);
                    out.put_i64(*i);
                }
                Acc::SumF(f) => {
                    out.put_u8(2);
                    out.put_f64(*f);
                }
                Acc::One(None) => out.put_u8(3),
                Acc::One(Some(v)) => {
                    out.put_u8(4);
                    put_scalar(out, v);
                }
                Acc::Set(set) => {
                    out.put_u8(5);
                    out.put_u64(set.len() as u64);
                    for v in set.iter() {
                        put_scalar(out, v);
                    }
                }
            }
        }
        true
    }

    fn decode_state(&self, _key: &[u8], bytes: &[u8]) -> Result<FoldState, String> {
        let mut t = crate::snapshot::codec::Take(bytes);
        let n = t.count(1, "the number of reducers")?;
        if n != self.reducers.len() {
            return Err(format!(
                "the state has {n} reducers, the pipeline declares {}",
                self.reducers.len()
            ));
        }
        let mut state = FoldState::with_capacity(n);
        for r in &self.reducers {
            let acc = match (t.u8("a reducer's tag")?, &r.op) {
                (0, Op::Count) => Acc::Count(t.u64("a count")?),
                (1, Op::Sum(_)) => Acc::SumI(t.i64("a sum")?),
                (2, Op::Sum(_)) => Acc::SumF(t.f64("a sum")?),
                (3, Op::Min(_) | Op::Max(_) | Op::Last(_)) => Acc::One(None),
                (4, Op::Min(_) | Op::Max(_) | Op::Last(_)) => Acc::One(Some(take_scalar(&mut t)?)),
                (5, Op::Set(_)) => {
                    let len = t.count(1, "a set's size")?;
                    let mut set = BTreeSet::new();
                    for _ in 0..len {
                        set.insert(take_scalar(&mut t)?);
                    }
                    Acc::Set(Box::new(set))
                }
                (tag, _) => {
                    return Err(format!(
                        "reducer '{}': stored kind {tag} does not match the pipeline's",
                        r.name
                    ));
                }
            };
            state.push(acc);
        }
        t.end()?;
        Ok(state)
    }

    fn render(&self, state: &Self::State, out: &mut Vec<u8>) {
        for (i, (r, acc)) in self.reducers.iter().zip(state.iter()).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&r.prefix);
            match acc {
                Acc::Count(n) => write_uint(out, *n),
                Acc::SumI(n) => write_int(out, *n),
                Acc::SumF(f) => write_f64(out, *f),
                Acc::One(None) => out.extend_from_slice(b"null"),
                Acc::One(Some(v)) => v.write(out),
                Acc::Set(set) => {
                    out.push(b'[');
                    for (j, v) in set.iter().enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        v.write(out);
                    }
                    out.push(b']');
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pipeline;
    use crate::decode::Extractor;
    use std::path::Path;

    fn setup(fields: &str) -> (Fold, Extractor) {
        let src = format!(
            "[pipeline]\nname='t'\n[[sources]]\nname='s'\ntype='log'\npath='x'\n[key]\nfield='k'\n[view]\ntopic='v'\n[view.fields]\n{fields}"
        );
        let p = Pipeline::parse(&src, Path::new(".")).unwrap();
        let slots = p.referenced_fields();
        (Fold::new(&p.view.fields, &slots), Extractor::new(&slots))
    }

    fn run(fold: &Fold, ex: &Extractor, records: &[&str]) -> (String, Vec<String>) {
        let mut st = fold.new_state(b"k");
        let mut errs = Vec::new();
        for r in records {
            let mut arena = Vec::new();
            let mut vals = vec![Value::Missing; ex.slots()];
            ex.extract(r.as_bytes(), &mut arena, &mut vals).unwrap();
            if let Err(e) = fold.apply(
                &mut st,
                EventView {
                    values: &vals,
                    arena: &arena,
                },
                &mut Emit::new(b"k", "s", 0, 0, &mut [], &[]),
            ) {
                errs.push(e.detail);
            }
        }
        let mut out = Vec::new();
        fold.render(&st, &mut out);
        (String::from_utf8(out).unwrap(), errs)
    }

    #[test]
    fn accumulators_stay_small() {
        // Per-key state is the memory (and cache) cost of a view: keep it at 16 bytes a field.
        assert!(
            std::mem::size_of::<Acc>() <= 16,
            "{}",
            std::mem::size_of::<Acc>()
        );
    }

    #[test]
    fn all_reducers() {
        let (f, ex) = setup(
            "n={op='count'}\ncredits={op='count',when={t='c'}}\nbal={op='sum',field='a'}\nlo={op='min',field='a'}\nhi={op='max',field='a'}\nlast={op='last',field='t'}\nts={op='set',field='t'}\n",
        );
        let (out, errs) = run(
            &f,
            &ex,
            &[
                r#"{"k":1,"t":"c","a":10}"#,
                r#"{"k":1,"t":"d","a":-3}"#,
                r#"{"k":1,"t":"c","a":2.5}"#,
            ],
        );
        assert!(errs.is_empty());
        assert_eq!(
            out,
            r#""n":3,"credits":2,"bal":9.5,"lo":-3,"hi":10,"last":"c","ts":["c","d"]"#
        );
    }

    #[test]
    fn overflow_and_type_errors_leave_state_unchanged() {
        let (f, ex) = setup("n={op='count'}\nbal={op='sum',field='a'}\n");
        let big = format!(r#"{{"k":1,"a":{}}}"#, i64::MAX);
        let (out, errs) = run(&f, &ex, &[&big, r#"{"k":1,"a":1}"#, r#"{"k":1,"a":"x"}"#]);
        assert_eq!(out, format!(r#""n":1,"bal":{}"#, i64::MAX));
        assert_eq!(errs.len(), 2);
        assert!(errs[0].contains("would overflow"), "{errs:?}");
        assert!(
            errs[1].contains("must be a number, got a string"),
            "{errs:?}"
        );
    }
}
