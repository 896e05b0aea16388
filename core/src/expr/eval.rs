//! The compiled form (a resolved tree with constants folded and literal regexes
//! compiled) and its evaluator.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use smallvec::SmallVec;

use super::functions::{self, Func};
use super::value::{Val, map_get};
use super::{Env, EvalError, Slot, Span, char_column};

/// Most macro iterations (`all`, `map`, ...) in one evaluation.
pub(crate) const MAX_ITERATIONS: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
}

impl Op {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            Op::Add => "+",
            Op::Sub => "-",
            Op::Mul => "*",
            Op::Div => "/",
            Op::Rem => "%",
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::In => "in",
        }
    }
}

/// Static type shared by both operands of a binary operator, when it has a fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operands {
    Int,
    Str,
    Bool,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Macro {
    All,
    Exists,
    ExistsOne,
    Map,
    Filter,
}

/// A node of the compiled tree. Spans cover the source of the node (for messages).
#[derive(Debug)]
pub(crate) enum Node {
    Const(Val<'static>),
    /// A variable from the [`Env`]; the index names it in `Program::paths`.
    Load(Slot, u32),
    /// A macro's loop variable, by nesting depth.
    Local(u32),
    /// `has()` of a whole variable path.
    HasSlot(Slot),
    /// `has(x.f)`: whether map `x` has key `f` (false when `x` itself is absent).
    HasField(Box<Node>, Box<str>, Span),
    /// `x.f` on a map.
    Select(Box<Node>, Box<str>, Span),
    Index(Box<Node>, Box<Node>, Span),
    Not(Box<Node>, Span),
    Neg(Box<Node>, Span),
    /// The last field says which typed fast path the operands take (see `fast.rs`).
    Bin(Op, Box<Node>, Box<Node>, Span, Operands),
    And(Box<Node>, Box<Node>, Span),
    Or(Box<Node>, Box<Node>, Span),
    Cond(Box<Node>, Box<Node>, Box<Node>, Span),
    List(Box<[Node]>),
    Map(Box<[(Node, Node)]>, Span),
    Call(Func, Box<[Node]>, Span),
    /// `s.matches('literal')`, the regex compiled once.
    Matches(Box<Node>, Box<regex::Regex>, Span),
    /// `a + b + c ...` of static strings, built with one allocation. Each part after
    /// the first carries the span of the `+` that added it (for its errors).
    Concat(Box<[(Node, Span)]>),
    /// `string(x).substring(a)` or `string(x).substring(a, b)`: for a timestamp or an
    /// int, the text is written on the stack and only the substring is allocated. The
    /// spans are those of the `string()` call and of the `substring()` call.
    SubText(Box<Node>, Span, Box<[Node]>, Span),
    Loop(Box<Loop>),
}

#[derive(Debug)]
pub(crate) struct Loop {
    pub kind: Macro,
    /// Depth of the loop variable (index into the locals).
    pub var: u32,
    pub range: Node,
    /// Predicate (`all`, `exists`, `exists_one`, `filter`, and `map`'s optional filter).
    pub pred: Option<Node>,
    /// `map`'s transform.
    pub body: Option<Node>,
    pub span: Span,
}

/// Strings joined into one allocation of `total` bytes (or appended to the first one
/// when it is a computed string already).
fn join_strs<'a>(mut vals: SmallVec<[Val<'a>; 4]>, total: usize) -> Val<'a> {
    if vals.len() == 1 {
        return vals.pop().expect("one value");
    }
    let mut rest = vals.drain(..);
    let mut out = match rest.next() {
        Some(Val::Str(Cow::Owned(mut s))) => {
            s.reserve_exact(total - s.len());
            s
        }
        Some(Val::Str(first)) => {
            let mut s = String::with_capacity(total);
            s.push_str(&first);
            s
        }
        _ => String::new(),
    };
    for v in rest {
        if let Val::Str(s) = v {
            out.push_str(&s);
        }
    }
    Val::Str(Cow::Owned(out))
}

impl Node {
    pub(crate) fn as_const(&self) -> Option<&Val<'static>> {
        match self {
            Node::Const(v) => Some(v),
            _ => None,
        }
    }
}

/// Evaluation state of one `Program::eval`.
pub(crate) struct Cx<'a, E: ?Sized> {
    pub env: &'a E,
    pub src: &'a str,
    pub paths: &'a [(Box<str>, usize)],
    pub locals: Vec<Val<'a>>,
    pub iterations: u64,
}

type R<'a> = Result<Val<'a>, EvalError>;

impl<'a, E: Env + ?Sized> Cx<'a, E> {
    #[cold]
    fn fail(&self, span: Span, message: String) -> EvalError {
        EvalError {
            column: char_column(self.src, span.start),
            message,
        }
    }

    fn text(&self, span: Span) -> &'a str {
        self.src.get(span.start..span.end).unwrap_or("?")
    }

    /// The common nodes, kept small so that a recursive call is cheap; the rest is in
    /// [`Cx::eval_other`].
    #[inline]
    pub(crate) fn eval(&mut self, node: &'a Node) -> R<'a> {
        // hot path
        match node {
            Node::Const(v) => Ok(v.reborrow()),
            Node::Load(slot, path) => match self.env.get(*slot) {
                Some(v) => Ok(v),
                None => Err(self.missing(*path)),
            },
            Node::Bin(op, a, b, span, _) => {
                let a = self.eval(a)?;
                let b = self.eval(b)?;
                self.binary(*op, a, b, *span)
            }
            Node::And(a, b, span) => self.logic(a, b, false, *span),
            Node::Or(a, b, span) => self.logic(a, b, true, *span),
            _ => self.eval_other(node),
        }
    }

    #[cold]
    #[inline(never)]
    fn missing(&self, path: u32) -> EvalError {
        let (name, column) = &self.paths[path as usize];
        EvalError {
            column: *column,
            message: format!("missing field {name}"),
        }
    }

    #[inline(never)]
    fn eval_other(&mut self, node: &'a Node) -> R<'a> {
        match node {
            Node::Const(_) | Node::Load(..) | Node::Bin(..) | Node::And(..) | Node::Or(..) => {
                self.eval(node)
            }
            Node::Local(i) => Ok(self.locals[*i as usize].clone()),
            Node::HasSlot(slot) => Ok(Val::Bool(self.env.get(*slot).is_some())),
            Node::HasField(target, field, span) => match self.eval_present(target)? {
                None => Ok(Val::Bool(false)),
                Some(Val::Map(m)) => Ok(Val::Bool(map_get(&m, &Val::str(field)).is_some())),
                Some(other) => Err(self.fail(
                    *span,
                    format!(
                        "has() needs a map, but {} is {}",
                        self.text(*span),
                        other.type_of()
                    ),
                )),
            },
            Node::Select(target, field, span) => {
                let t = self.eval(target)?;
                self.select(t, field, *span)
            }
            Node::Index(target, index, span) => {
                let t = self.eval(target)?;
                let i = self.eval(index)?;
                self.index(t, i, *span)
            }
            Node::Not(e, span) => match self.eval(e)? {
                Val::Bool(b) => Ok(Val::Bool(!b)),
                other => Err(self.fail(
                    *span,
                    format!("'!' needs a bool, found {}", other.type_of()),
                )),
            },
            Node::Neg(e, span) => match self.eval(e)? {
                Val::Int(i) => i.checked_neg().map(Val::Int).ok_or_else(|| {
                    self.fail(*span, format!("integer overflow in {}", self.text(*span)))
                }),
                Val::Double(d) => Ok(Val::Double(-d)),
                Val::Duration(d) => d.checked_neg().map(Val::Duration).ok_or_else(|| {
                    self.fail(*span, format!("duration overflow in {}", self.text(*span)))
                }),
                other => Err(self.fail(*span, format!("'-' cannot negate {}", other.type_of()))),
            },
            Node::Cond(c, a, b, span) => match self.eval(c)? {
                Val::Bool(true) => self.eval(a),
                Val::Bool(false) => self.eval(b),
                other => Err(self.fail(
                    *span,
                    format!("'?:' needs a bool condition, found {}", other.type_of()),
                )),
            },
            Node::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for i in items.iter() {
                    out.push(self.eval(i)?);
                }
                Ok(Val::List(Arc::new(out)))
            }
            Node::Map(entries, span) => self.map(entries, *span),
            Node::Call(f, args, span) => {
                let mut vals: [Val<'a>; 4] = Default::default();
                for (slot, a) in vals.iter_mut().zip(args.iter()) {
                    *slot = self.eval(a)?;
                }
                let n = args.len().min(4);
                functions::call(*f, &mut vals[..n]).map_err(|m| self.fail(*span, m))
            }
            Node::Matches(target, re, span) => match self.eval(target)? {
                Val::Str(s) => Ok(Val::Bool(re.is_match(&s))),
                other => Err(self.fail(
                    *span,
                    format!("no overload of 'matches' for ({}, string)", other.type_of()),
                )),
            },
            Node::Loop(l) => self.comprehension(l),
            Node::Concat(parts) => self.concat(parts),
            Node::SubText(inner, inner_span, args, span) => {
                self.sub_text(inner, *inner_span, args, *span)
            }
        }
    }

    /// [`Node::Concat`]: the same result and the same errors as the chain of `+` it
    /// replaces, evaluated left to right.
    fn concat(&mut self, parts: &'a [(Node, Span)]) -> R<'a> {
        // hot path
        let mut vals: SmallVec<[Val<'a>; 4]> = SmallVec::new();
        let mut total = 0usize;
        for (i, (node, span)) in parts.iter().enumerate() {
            let v = self.eval(node)?;
            if let Val::Str(s) = &v {
                total += s.len();
                if i > 0 {
                    functions::check_built(total, "'+'").map_err(|m| self.fail(*span, m))?;
                }
                vals.push(v);
                continue;
            }
            // Not a string after all (a dynamic value): the rest goes pair by pair, as
            // the `+` nodes would have.
            let mut acc = if vals.is_empty() {
                v
            } else {
                let joined = join_strs(vals, total);
                self.binary(Op::Add, joined, v, *span)?
            };
            for (node, span) in &parts[i + 1..] {
                let v = self.eval(node)?;
                acc = self.binary(Op::Add, acc, v, *span)?;
            }
            return Ok(acc);
        }
        Ok(join_strs(vals, total))
    }

    /// [`Node::SubText`]: `string(x)` then `substring`, with the text of a timestamp or
    /// an int kept on the stack. Anything else, or an index out of range, takes the two
    /// calls as written (which give the result or the error).
    fn sub_text(
        &mut self,
        inner: &'a Node,
        inner_span: Span,
        args: &'a [Node],
        span: Span,
    ) -> R<'a> {
        // hot path
        let v = self.eval(inner)?;
        let (buf, len) = match v {
            Val::Timestamp(t) => super::time::timestamp_text(t),
            Val::Int(i) => {
                let mut buf = [0u8; 32];
                let mut ib = itoa::Buffer::new();
                let text = ib.format(i).as_bytes();
                buf[..text.len()].copy_from_slice(text);
                (buf, text.len())
            }
            other => {
                let s = functions::call(functions::Func::String, &mut [other])
                    .map_err(|m| self.fail(inner_span, m))?;
                return self.substring(s, args, span);
            }
        };
        // ASCII: character offsets are byte offsets.
        let text = &buf[..len];
        let mut vals: [Val<'a>; 3] = Default::default();
        for (slot, a) in vals[1..].iter_mut().zip(args.iter()) {
            *slot = self.eval(a)?;
        }
        let n = 1 + args.len().min(2);
        let len = len as i64;
        let (start, end) = match &vals[1..n] {
            [Val::Int(a)] => (*a, len),
            [Val::Int(a), Val::Int(b)] => (*a, *b),
            _ => (-1, -1),
        };
        let ascii = |b: &[u8]| std::str::from_utf8(b).expect("ASCII").to_owned();
        if 0 <= start && start <= end && end <= len {
            return Ok(Val::string(ascii(&text[start as usize..end as usize])));
        }
        vals[0] = Val::string(ascii(text));
        functions::call(functions::Func::Substring, &mut vals[..n]).map_err(|m| self.fail(span, m))
    }

    /// `s.substring(args...)` through the general call.
    fn substring(&mut self, s: Val<'a>, args: &'a [Node], span: Span) -> R<'a> {
        let mut vals: [Val<'a>; 3] = Default::default();
        vals[0] = s;
        for (slot, a) in vals[1..].iter_mut().zip(args.iter()) {
            *slot = self.eval(a)?;
        }
        let n = 1 + args.len().min(2);
        functions::call(functions::Func::Substring, &mut vals[..n]).map_err(|m| self.fail(span, m))
    }

    /// Like `eval`, but an absent variable or map key along a field path is `None`.
    fn eval_present(&mut self, node: &'a Node) -> Result<Option<Val<'a>>, EvalError> {
        match node {
            Node::Load(slot, _) => Ok(self.env.get(*slot)),
            Node::Select(target, field, span) => match self.eval_present(target)? {
                None => Ok(None),
                Some(Val::Map(m)) => Ok(map_get(&m, &Val::str(field)).cloned()),
                Some(other) => self.select(other, field, *span).map(Some),
            },
            other => self.eval(other).map(Some),
        }
    }

    fn select(&self, target: Val<'a>, field: &str, span: Span) -> R<'a> {
        match target {
            Val::Map(m) => match map_get(&m, &Val::str(field)) {
                Some(v) => Ok(v.clone()),
                None => Err(self.fail(
                    span,
                    format!("no such key '{field}' in {}", self.text(span)),
                )),
            },
            other => Err(self.fail(
                span,
                format!("cannot select field '{field}' of {}", other.type_of()),
            )),
        }
    }

    fn index(&self, target: Val<'a>, index: Val<'a>, span: Span) -> R<'a> {
        match (&target, &index) {
            (Val::List(l), Val::Int(i)) => usize::try_from(*i)
                .ok()
                .and_then(|i| l.get(i))
                .cloned()
                .ok_or_else(|| {
                    self.fail(
                        span,
                        format!("index {i} out of range for a list of {} elements", l.len()),
                    )
                }),
            (Val::List(_), other) => Err(self.fail(
                span,
                format!("a list index must be an int, found {}", other.type_of()),
            )),
            (Val::Map(m), key) => map_get(m, key).cloned().ok_or_else(|| {
                self.fail(span, format!("no such key {key} in {}", self.text(span)))
            }),
            (other, _) => Err(self.fail(span, format!("cannot index {}", other.type_of()))),
        }
    }

    fn map(&mut self, entries: &'a [(Node, Node)], span: Span) -> R<'a> {
        let mut out: Vec<(Val<'a>, Val<'a>)> = Vec::with_capacity(entries.len());
        for (k, v) in entries.iter() {
            let key = self.eval(k)?;
            if !matches!(key, Val::Str(_) | Val::Int(_) | Val::Bool(_)) {
                return Err(self.fail(
                    span,
                    format!(
                        "map keys must be string, int or bool, found {}",
                        key.type_of()
                    ),
                ));
            }
            if map_get(&out, &key).is_some() {
                return Err(self.fail(span, format!("duplicate map key {key}")));
            }
            let val = self.eval(v)?;
            out.push((key, val));
        }
        Ok(Val::Map(Arc::new(out)))
    }

    /// `&&` (`or` false) and `||` (`or` true), commutative over errors: a decisive
    /// operand wins over an error in the other one.
    fn logic(&mut self, a: &'a Node, b: &'a Node, or: bool, span: Span) -> R<'a> {
        let sym = if or { "||" } else { "&&" };
        let left = match self.eval(a) {
            Ok(Val::Bool(x)) if x == or => return Ok(Val::Bool(x)),
            Ok(Val::Bool(_)) => Ok(()),
            Ok(other) => Err(self.fail(
                span,
                format!("'{sym}' needs bools, found {}", other.type_of()),
            )),
            Err(e) => Err(e),
        };
        match self.eval(b) {
            Ok(Val::Bool(x)) if x == or => Ok(Val::Bool(x)),
            Ok(Val::Bool(x)) => left.map(|()| Val::Bool(x)),
            Ok(other) => {
                left?;
                Err(self.fail(
                    span,
                    format!("'{sym}' needs bools, found {}", other.type_of()),
                ))
            }
            Err(e) => {
                left?;
                Err(e)
            }
        }
    }

    /// `a op b`: ints and string equality inline, the rest in [`Cx::binary_slow`].
    #[inline]
    pub(crate) fn binary(&self, op: Op, a: Val<'a>, b: Val<'a>, span: Span) -> R<'a> {
        // hot path
        match (&a, &b) {
            (Val::Int(x), Val::Int(y)) => {
                let (x, y) = (*x, *y);
                let r = match op {
                    Op::Lt => Some(Val::Bool(x < y)),
                    Op::Le => Some(Val::Bool(x <= y)),
                    Op::Gt => Some(Val::Bool(x > y)),
                    Op::Ge => Some(Val::Bool(x >= y)),
                    Op::Eq => Some(Val::Bool(x == y)),
                    Op::Ne => Some(Val::Bool(x != y)),
                    Op::Add => x.checked_add(y).map(Val::Int),
                    Op::Sub => x.checked_sub(y).map(Val::Int),
                    Op::Mul => x.checked_mul(y).map(Val::Int),
                    _ => None,
                };
                if let Some(r) = r {
                    return Ok(r);
                }
            }
            (Val::Str(x), Val::Str(y)) if matches!(op, Op::Eq | Op::Ne) => {
                return Ok(Val::Bool((x == y) == (op == Op::Eq)));
            }
            _ => {}
        }
        self.binary_slow(op, a, b, span)
    }

    #[inline(never)]
    fn binary_slow(&self, op: Op, a: Val<'a>, b: Val<'a>, span: Span) -> R<'a> {
        use Val::*;
        if op == Op::Add
            && let (Str(x), Str(y)) = (&a, &b)
        {
            functions::check_built(x.len() + y.len(), "'+'").map_err(|m| self.fail(span, m))?;
            // Appends to the left string when it is a computed one (no new allocation
            // in a chain like `a + ':' + b`).
            let mut out = match a {
                Str(Cow::Owned(s)) => s,
                _ => {
                    let mut s = String::with_capacity(x.len() + y.len());
                    s.push_str(x);
                    s
                }
            };
            out.push_str(y);
            return Ok(Str(Cow::Owned(out)));
        }
        let overflow = || self.fail(span, format!("integer overflow in {}", self.text(span)));
        let mismatch = || {
            let verb = match op {
                Op::Lt | Op::Le | Op::Gt | Op::Ge | Op::Eq | Op::Ne => "compare",
                _ => "apply to",
            };
            self.fail(
                span,
                format!(
                    "'{}' cannot {verb} {} and {}",
                    op.symbol(),
                    a.type_of(),
                    b.type_of()
                ),
            )
        };
        let r = match op {
            Op::Eq => Bool(a.cel_eq(&b)),
            Op::Ne => Bool(!a.cel_eq(&b)),
            Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                let ord = a.cel_cmp(&b).map_err(|()| mismatch())?;
                Bool(match (op, ord) {
                    (_, None) => false,
                    (Op::Lt, Some(o)) => o == Ordering::Less,
                    (Op::Le, Some(o)) => o != Ordering::Greater,
                    (Op::Gt, Some(o)) => o == Ordering::Greater,
                    (_, Some(o)) => o != Ordering::Less,
                })
            }
            Op::In => match &b {
                List(l) => Bool(l.iter().any(|x| x.cel_eq(&a))),
                Map(m) => Bool(map_get(m, &a).is_some()),
                _ => {
                    return Err(self.fail(
                        span,
                        format!(
                            "'in' needs a list or a map on the right, found {}",
                            b.type_of()
                        ),
                    ));
                }
            },
            Op::Add => match (&a, &b) {
                (Int(x), Int(y)) => Int(x.checked_add(*y).ok_or_else(overflow)?),
                (Double(x), Double(y)) => Double(x + y),
                (List(x), List(y)) => {
                    functions::concat_lists(x, y).map_err(|m| self.fail(span, m))?
                }
                (Timestamp(t), Duration(d)) | (Duration(d), Timestamp(t)) => {
                    Timestamp(t.checked_add(*d).ok_or_else(|| self.time_overflow(span))?)
                }
                (Duration(x), Duration(y)) => {
                    Duration(x.checked_add(*y).ok_or_else(|| self.time_overflow(span))?)
                }
                _ => return Err(mismatch()),
            },
            Op::Sub => match (&a, &b) {
                (Int(x), Int(y)) => Int(x.checked_sub(*y).ok_or_else(overflow)?),
                (Double(x), Double(y)) => Double(x - y),
                (Timestamp(t), Duration(d)) => {
                    Timestamp(t.checked_sub(*d).ok_or_else(|| self.time_overflow(span))?)
                }
                (Timestamp(x), Timestamp(y)) | (Duration(x), Duration(y)) => {
                    Duration(x.checked_sub(*y).ok_or_else(|| self.time_overflow(span))?)
                }
                _ => return Err(mismatch()),
            },
            Op::Mul => match (&a, &b) {
                (Int(x), Int(y)) => Int(x.checked_mul(*y).ok_or_else(overflow)?),
                (Double(x), Double(y)) => Double(x * y),
                _ => return Err(mismatch()),
            },
            Op::Div => match (&a, &b) {
                (Int(_), Int(0)) => {
                    return Err(self.fail(span, format!("division by zero in {}", self.text(span))));
                }
                (Int(x), Int(y)) => Int(x.checked_div(*y).ok_or_else(overflow)?),
                (Double(x), Double(y)) => Double(x / y),
                _ => return Err(mismatch()),
            },
            Op::Rem => match (&a, &b) {
                (Int(_), Int(0)) => {
                    return Err(self.fail(span, format!("modulus by zero in {}", self.text(span))));
                }
                (Int(x), Int(y)) => Int(x.checked_rem(*y).ok_or_else(overflow)?),
                _ => return Err(mismatch()),
            },
        };
        Ok(r)
    }

    fn time_overflow(&self, span: Span) -> EvalError {
        self.fail(
            span,
            format!("timestamp or duration out of range in {}", self.text(span)),
        )
    }

    fn comprehension(&mut self, l: &'a Loop) -> R<'a> {
        let range = self.eval(&l.range)?;
        let items: Cow<'_, [Val<'a>]> = match &range {
            Val::List(items) => Cow::Borrowed(&items[..]),
            Val::Map(m) => Cow::Owned(m.iter().map(|(k, _)| k.clone()).collect()),
            other => {
                return Err(self.fail(
                    l.span,
                    format!("macros need a list or a map, found {}", other.type_of()),
                ));
            }
        };
        let var = l.var as usize;
        if self.locals.len() <= var {
            self.locals.resize(var + 1, Val::Null);
        }
        let mut count = 0usize;
        let mut out = Vec::new();
        let mut first_err = None;
        for item in items.iter() {
            self.iterations += 1;
            if self.iterations > MAX_ITERATIONS {
                return Err(self.fail(
                    l.span,
                    format!(
                        "evaluation too expensive (more than {MAX_ITERATIONS} macro iterations)"
                    ),
                ));
            }
            self.locals[var] = item.clone();
            let keep = match &l.pred {
                None => true,
                Some(p) => match self.eval(p) {
                    Ok(Val::Bool(b)) => b,
                    Ok(other) => {
                        let e = self.fail(
                            l.span,
                            format!("macro predicate must be a bool, found {}", other.type_of()),
                        );
                        if matches!(l.kind, Macro::All | Macro::Exists) {
                            first_err.get_or_insert(e);
                            continue;
                        }
                        return Err(e);
                    }
                    Err(e) if matches!(l.kind, Macro::All | Macro::Exists) => {
                        first_err.get_or_insert(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            match l.kind {
                Macro::All if !keep => return Ok(Val::Bool(false)),
                Macro::Exists if keep => return Ok(Val::Bool(true)),
                Macro::ExistsOne if keep => count += 1,
                Macro::Filter if keep => out.push(item.clone()),
                Macro::Map if keep => {
                    let body = l.body.as_ref().expect("map has a body");
                    out.push(self.eval(body)?);
                }
                _ => {}
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(match l.kind {
            Macro::All => Val::Bool(true),
            Macro::Exists => Val::Bool(false),
            Macro::ExistsOne => Val::Bool(count == 1),
            Macro::Map | Macro::Filter => Val::List(Arc::new(out)),
        })
    }
}
