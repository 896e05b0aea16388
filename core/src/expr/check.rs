//! The checker: AST → compiled [`Node`] tree. Resolves variables through the
//! [`Scope`], expands macros, picks function overloads, checks static types, compiles
//! literal regexes and folds constants. Collects every error it finds.

use super::eval::{Cx, Loop, Macro, Node, Op, Operands};
use super::functions::{self, Func, Style};
use super::parser::{BinOp, Expr, Kind};
use super::value::{Type, Val};
use super::{Env, Scope, Slot, Span, char_column};

pub(crate) struct Checker<'s, S: Scope + ?Sized> {
    scope: &'s S,
    src: &'s str,
    pub errors: Vec<(Span, String)>,
    /// Macro variables in scope, innermost last.
    locals: Vec<String>,
    /// Names of the loaded variables (with their column), for "missing field" messages.
    pub paths: Vec<(Box<str>, usize)>,
}

/// An env with nothing in it, for constant folding.
struct NoEnv;

impl Env for NoEnv {
    fn get(&self, _: Slot) -> Option<Val<'_>> {
        None
    }
}

type Typed = (Node, Type);

fn is_num(t: Type) -> bool {
    matches!(t, Type::Int | Type::Double)
}

impl<'s, S: Scope + ?Sized> Checker<'s, S> {
    pub(crate) fn new(scope: &'s S, src: &'s str) -> Self {
        Checker {
            scope,
            src,
            errors: Vec::new(),
            locals: Vec::new(),
            paths: Vec::new(),
        }
    }

    /// Records an error; the returned placeholder keeps the checker going without
    /// follow-up errors (`dyn` fits everywhere).
    fn error(&mut self, span: Span, msg: String) -> Typed {
        self.errors.push((span, msg));
        (Node::Const(Val::Null), Type::Dyn)
    }

    pub(crate) fn check(&mut self, e: &Expr) -> Typed {
        let span = e.span;
        match &e.kind {
            Kind::Null => (Node::Const(Val::Null), Type::Null),
            Kind::Bool(b) => (Node::Const(Val::Bool(*b)), Type::Bool),
            Kind::Int(i) => (Node::Const(Val::Int(*i)), Type::Int),
            Kind::Double(d) => (Node::Const(Val::Double(*d)), Type::Double),
            Kind::Str(s) => (Node::Const(Val::string(s.clone())), Type::String),
            Kind::Ident(_) | Kind::Select(..) => match path_of(e) {
                Some(parts) => self.path(&parts),
                None => {
                    let Kind::Select(target, field) = &e.kind else {
                        unreachable!("an identifier is a path")
                    };
                    let t = self.check(target);
                    self.select(t, field, span)
                }
            },
            Kind::Index(target, index) => {
                let (t, tt) = self.check(target);
                let (i, it) = self.check(index);
                match tt {
                    Type::List if !it.fits(Type::Int) => self.error(
                        index.span,
                        format!("a list index must be an int, found {it}"),
                    ),
                    Type::List | Type::Map | Type::Dyn => {
                        self.fold(Node::Index(Box::new(t), Box::new(i), span), Type::Dyn)
                    }
                    other => self.error(span, format!("cannot index {other}")),
                }
            }
            Kind::Call(target, name, name_span, args) => {
                self.call(target.as_deref(), name, *name_span, args, span)
            }
            Kind::Not(x) => {
                let (n, t) = self.check(x);
                if !t.fits(Type::Bool) {
                    return self.error(x.span, format!("'!' needs a bool, found {t}"));
                }
                self.fold(Node::Not(Box::new(n), span), Type::Bool)
            }
            Kind::Neg(x) => {
                let (n, t) = self.check(x);
                if !matches!(t, Type::Int | Type::Double | Type::Duration | Type::Dyn) {
                    return self.error(x.span, format!("'-' cannot negate {t}"));
                }
                self.fold(Node::Neg(Box::new(n), span), t)
            }
            Kind::Binary(op, op_span, a, b) => self.binary(*op, *op_span, a, b, span),
            Kind::Cond(c, a, b) => {
                let (cn, ct) = self.check(c);
                let (an, at) = self.check(a);
                let (bn, bt) = self.check(b);
                if !ct.fits(Type::Bool) {
                    return self.error(
                        c.span,
                        format!("the condition of '?:' must be a bool, found {ct}"),
                    );
                }
                let t = if at == bt { at } else { Type::Dyn };
                self.fold(
                    Node::Cond(Box::new(cn), Box::new(an), Box::new(bn), span),
                    t,
                )
            }
            Kind::List(items) => {
                let nodes: Vec<Node> = items.iter().map(|i| self.check(i).0).collect();
                self.fold(Node::List(nodes.into_boxed_slice()), Type::List)
            }
            Kind::Map(entries) => {
                let mut nodes = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let (kn, kt) = self.check(k);
                    if !matches!(kt, Type::String | Type::Int | Type::Bool | Type::Dyn) {
                        self.error(
                            k.span,
                            format!("map keys must be string, int or bool, found {kt}"),
                        );
                    }
                    nodes.push((kn, self.check(v).0));
                }
                self.fold(Node::Map(nodes.into_boxed_slice(), span), Type::Map)
            }
        }
    }

    /// A variable path `a.b.c`: a macro variable, or the longest prefix the scope
    /// knows, followed by map selections.
    fn path(&mut self, parts: &[(&str, Span)]) -> Typed {
        let root = parts[0].0;
        if let Some(depth) = self.locals.iter().rposition(|l| l == root) {
            let mut t = (Node::Local(depth as u32), Type::Dyn);
            for (field, span) in &parts[1..] {
                t = self.select(t, field, *span);
            }
            return t;
        }
        let names: Vec<&str> = parts.iter().map(|p| p.0).collect();
        let Some((k, slot, ty)) = self.resolve_longest(&names) else {
            return self.unknown_variable(&names, parts[parts.len() - 1].1);
        };
        let span = parts[k - 1].1;
        let mut t = (self.load(slot, &names[..k], span), ty);
        for (field, span) in &parts[k..] {
            t = self.select(t, field, *span);
        }
        t
    }

    fn resolve_longest(&self, names: &[&str]) -> Option<(usize, Slot, Type)> {
        (1..=names.len())
            .rev()
            .find_map(|k| self.scope.resolve(&names[..k]).map(|(s, t)| (k, s, t)))
    }

    fn load(&mut self, slot: Slot, names: &[&str], span: Span) -> Node {
        let name = names.join(".");
        let idx = match self.paths.iter().position(|(p, _)| **p == *name) {
            Some(i) => i,
            None => {
                self.paths
                    .push((name.into_boxed_str(), char_column(self.src, span.start)));
                self.paths.len() - 1
            }
        };
        Node::Load(slot, idx as u32)
    }

    fn unknown_variable(&mut self, names: &[&str], span: Span) -> Typed {
        let full = names.join(".");
        let mut msg = format!("unknown variable '{full}'");
        // Compare each known name with as many leading segments of the path, and
        // suggest it followed by the rest: `cmd.dta.x` → `cmd.data.x`.
        let mut best: Option<(usize, String)> = None;
        let known = self.scope.names();
        for cand in self.locals.iter().rev().chain(&known) {
            let k = cand.split('.').count();
            if k > names.len() {
                continue;
            }
            let prefix = names[..k].join(".");
            let d = edit_distance(&prefix, cand);
            if d <= (prefix.chars().count() / 3).max(1) && best.as_ref().is_none_or(|b| d < b.0) {
                let mut full_cand = cand.clone();
                for rest in &names[k..] {
                    full_cand.push('.');
                    full_cand.push_str(rest);
                }
                best = Some((d, full_cand));
            }
        }
        if let Some((_, s)) = best {
            msg.push_str(&format!("; did you mean '{s}'?"));
        }
        self.error(span, msg)
    }

    fn select(&mut self, (node, ty): Typed, field: &str, span: Span) -> Typed {
        if !matches!(ty, Type::Map | Type::Dyn) {
            return self.error(span, format!("cannot select field '{field}' of {ty}"));
        }
        self.fold(Node::Select(Box::new(node), field.into(), span), Type::Dyn)
    }

    fn binary(&mut self, op: BinOp, op_span: Span, a: &Expr, b: &Expr, span: Span) -> Typed {
        let (an, at) = self.check(a);
        let (bn, bt) = self.check(b);
        let sym = op.symbol();
        let logic = |ck: &mut Self, x: &Expr, t: Type| {
            if !t.fits(Type::Bool) {
                ck.error(x.span, format!("'{sym}' needs bool operands, found {t}"));
            }
        };
        let op = match op {
            BinOp::And | BinOp::Or => {
                logic(self, a, at);
                logic(self, b, bt);
                let node = if op == BinOp::And {
                    Node::And(Box::new(an), Box::new(bn), span)
                } else {
                    Node::Or(Box::new(an), Box::new(bn), span)
                };
                return self.fold(node, Type::Bool);
            }
            BinOp::Add => Op::Add,
            BinOp::Sub => Op::Sub,
            BinOp::Mul => Op::Mul,
            BinOp::Div => Op::Div,
            BinOp::Rem => Op::Rem,
            BinOp::Eq => Op::Eq,
            BinOp::Ne => Op::Ne,
            BinOp::Lt => Op::Lt,
            BinOp::Le => Op::Le,
            BinOp::Gt => Op::Gt,
            BinOp::Ge => Op::Ge,
            BinOp::In => Op::In,
        };
        match binary_type(op, at, bt) {
            Ok(t) => {
                let operands = match (at, bt) {
                    (Type::Int, Type::Int) => Operands::Int,
                    (Type::String, Type::String) => Operands::Str,
                    (Type::Bool, Type::Bool) => Operands::Bool,
                    _ => Operands::Other,
                };
                let (node, t) =
                    self.fold(Node::Bin(op, Box::new(an), Box::new(bn), span, operands), t);
                (concat(node), t)
            }
            Err(msg) => self.error(op_span, msg),
        }
    }

    fn call(
        &mut self,
        target: Option<&Expr>,
        name: &str,
        name_span: Span,
        args: &[Expr],
        span: Span,
    ) -> Typed {
        if functions::MACROS.contains(&name) {
            return self.macro_call(target, name, name_span, args, span);
        }
        let Some(spec) = functions::lookup(name) else {
            let mut msg = format!("unknown function '{name}'");
            let names = functions::SPECS
                .iter()
                .map(|s| s.name)
                .chain(functions::MACROS.iter().copied());
            if let Some(s) = suggest(name, names) {
                msg.push_str(&format!("; did you mean '{s}'?"));
            }
            return self.error(name_span, msg);
        };
        match (spec.style, target.is_some()) {
            (Style::Global, true) => {
                return self.error(
                    name_span,
                    format!("'{name}' is a function, not a method: write {name}(x)"),
                );
            }
            (Style::Method, false) => {
                return self.error(
                    name_span,
                    format!("'{name}' is a method: write x.{name}(...)"),
                );
            }
            _ => {}
        }
        let mut nodes = Vec::with_capacity(args.len() + 1);
        let mut types = Vec::with_capacity(args.len() + 1);
        for e in target.into_iter().chain(args) {
            let (n, t) = self.check(e);
            nodes.push(n);
            types.push(t);
        }
        // Arity, as the user counts it (without the receiver).
        let receiver = usize::from(target.is_some());
        let arities: Vec<usize> = {
            let mut a: Vec<usize> = spec
                .overloads
                .iter()
                .map(|o| o.0.len() - receiver)
                .collect();
            a.dedup();
            a
        };
        if !arities.contains(&args.len()) {
            let want = match arities.as_slice() {
                [n] => format!("{n} argument{}", if *n == 1 { "" } else { "s" }),
                [a, b] => format!("{a} or {b} arguments"),
                _ => "a different number of arguments".into(),
            };
            return self.error(
                name_span,
                format!("'{name}' takes {want}, found {}", args.len()),
            );
        }
        let fitting: Vec<Type> = spec
            .overloads
            .iter()
            .filter(|(params, _)| {
                params.len() == types.len() && params.iter().zip(&types).all(|(p, t)| t.fits(*p))
            })
            .map(|o| o.1)
            .collect();
        let ty = match fitting.as_slice() {
            [] => {
                let expected: Vec<String> = spec
                    .overloads
                    .iter()
                    .filter(|o| o.0.len() == types.len())
                    .map(|o| functions::type_list(o.0.iter().copied()))
                    .collect();
                return self.error(
                    name_span,
                    format!(
                        "no overload of '{name}' for {}; expected {}",
                        functions::type_list(types.iter().copied()),
                        expected.join(" or ")
                    ),
                );
            }
            [t, rest @ ..] if rest.iter().all(|r| r == t) => *t,
            _ => Type::Dyn,
        };
        if spec.func == Func::Matches
            && let Some(Val::Str(pattern)) = nodes[1].as_const()
        {
            let re = match functions::compile_regex(pattern) {
                Ok(re) => re,
                Err(msg) => {
                    let at = args.last().map_or(span, |a| a.span);
                    return self.error(at, msg);
                }
            };
            let target = nodes.swap_remove(0);
            return self.fold(
                Node::Matches(Box::new(target), Box::new(re), span),
                Type::Bool,
            );
        }
        let (node, ty) = self.fold(Node::Call(spec.func, nodes.into_boxed_slice(), span), ty);
        (sub_text(node), ty)
    }

    fn macro_call(
        &mut self,
        target: Option<&Expr>,
        name: &str,
        name_span: Span,
        args: &[Expr],
        span: Span,
    ) -> Typed {
        if name == "has" {
            if target.is_some() {
                return self.error(name_span, "'has' is a macro: write has(x.field)".into());
            }
            return match args {
                [
                    arg @ Expr {
                        kind: Kind::Select(inner, field),
                        ..
                    },
                ] => self.has(arg, inner, field),
                [other] => self.error(
                    other.span,
                    "has() needs a field selection, e.g. has(cmd.data.amount)".into(),
                ),
                _ => self.error(
                    name_span,
                    format!("'has' takes 1 argument, found {}", args.len()),
                ),
            };
        }
        let Some(target) = target else {
            return self.error(
                name_span,
                format!("'{name}' is a macro: write list.{name}(x, ...)"),
            );
        };
        let kind = match name {
            "all" => Macro::All,
            "exists" => Macro::Exists,
            "exists_one" => Macro::ExistsOne,
            "map" => Macro::Map,
            _ => Macro::Filter,
        };
        let ok_arity = if kind == Macro::Map {
            matches!(args.len(), 2 | 3)
        } else {
            args.len() == 2
        };
        if !ok_arity {
            let want = if kind == Macro::Map {
                "2 or 3 arguments"
            } else {
                "2 arguments"
            };
            return self.error(
                name_span,
                format!("'{name}' takes {want}, found {}", args.len()),
            );
        }
        let Kind::Ident(var) = &args[0].kind else {
            return self.error(
                args[0].span,
                format!(
                    "the first argument of '{name}' must be a variable name, e.g. {name}(x, ...)"
                ),
            );
        };
        let (range, rt) = self.check(target);
        if !matches!(rt, Type::List | Type::Map | Type::Dyn) {
            return self.error(
                target.span,
                format!("'{name}' needs a list or a map, found {rt}"),
            );
        }
        self.locals.push(var.clone());
        let depth = (self.locals.len() - 1) as u32;
        let mut pred = None;
        let mut body = None;
        let pred_expr = match (kind, args.len()) {
            (Macro::Map, 2) => None,
            _ => Some(&args[1]),
        };
        if let Some(p) = pred_expr {
            let (n, t) = self.check(p);
            if !t.fits(Type::Bool) {
                self.error(
                    p.span,
                    format!("the predicate of '{name}' must be a bool, found {t}"),
                );
            }
            pred = Some(n);
        }
        if kind == Macro::Map {
            body = Some(self.check(&args[args.len() - 1]).0);
        }
        self.locals.pop();
        let ty = if matches!(kind, Macro::Map | Macro::Filter) {
            Type::List
        } else {
            Type::Bool
        };
        let l = Loop {
            kind,
            var: depth,
            range,
            pred,
            body,
            span,
        };
        (Node::Loop(Box::new(l)), ty)
    }

    /// `has(inner.field)`.
    fn has(&mut self, arg: &Expr, inner: &Expr, field: &str) -> Typed {
        if let Some(parts) = path_of(arg)
            && !self.locals.iter().any(|l| l == parts[0].0)
        {
            let names: Vec<&str> = parts.iter().map(|p| p.0).collect();
            match self.resolve_longest(&names) {
                None => return self.unknown_variable(&names, arg.span),
                Some((k, slot, _)) if k == names.len() => {
                    return (Node::HasSlot(slot), Type::Bool);
                }
                Some(_) => {}
            }
        }
        let (node, t) = self.check(inner);
        if !matches!(t, Type::Map | Type::Dyn) {
            return self.error(inner.span, format!("has() needs a map, found {t}"));
        }
        (
            Node::HasField(Box::new(node), field.into(), arg.span),
            Type::Bool,
        )
    }

    /// Evaluates `node` now if all its inputs are constants (and it does not fail).
    fn fold(&mut self, node: Node, ty: Type) -> Typed {
        if !inputs_const(&node) {
            return (node, ty);
        }
        let folded = {
            let mut cx = Cx {
                env: &NoEnv,
                src: self.src,
                paths: &[],
                locals: Vec::new(),
                iterations: 0,
            };
            cx.eval(&node).map(Val::into_owned)
        };
        match folded {
            Ok(v) => (Node::Const(v), ty),
            // Fails at run time, unless an `&&`, `||` or `?:` around it decides first.
            Err(_) => (node, ty),
        }
    }
}

/// `a.b.c` as names with the span of each prefix, if `e` is a plain dotted path.
fn path_of(e: &Expr) -> Option<Vec<(&str, Span)>> {
    match &e.kind {
        Kind::Ident(name) => Some(vec![(name.as_str(), e.span)]),
        Kind::Select(target, field) => {
            let mut p = path_of(target)?;
            p.push((field.as_str(), e.span));
            Some(p)
        }
        _ => None,
    }
}

/// `a + b` of two static strings (left unfolded) as a [`Node::Concat`], joined with the
/// parts of `a` when `a` is one already: `a + b + c` builds its result once.
fn concat(node: Node) -> Node {
    match node {
        Node::Bin(Op::Add, a, b, span, Operands::Str) => {
            let mut parts = match *a {
                Node::Concat(parts) => parts.into_vec(),
                // The first part's span is never used.
                a => vec![(a, span)],
            };
            parts.push((*b, span));
            Node::Concat(parts.into_boxed_slice())
        }
        other => other,
    }
}

/// `string(x).substring(...)` (left unfolded) as a [`Node::SubText`].
fn sub_text(node: Node) -> Node {
    match node {
        Node::Call(Func::Substring, args, span) if is_string_call(args.first()) => {
            let mut args = args.into_vec();
            let Node::Call(_, inner, inner_span) = args.remove(0) else {
                unreachable!("matched above")
            };
            let inner = inner.into_vec().pop().expect("one argument");
            Node::SubText(Box::new(inner), inner_span, args.into_boxed_slice(), span)
        }
        other => other,
    }
}

fn is_string_call(node: Option<&Node>) -> bool {
    matches!(node, Some(Node::Call(Func::String, inner, _)) if inner.len() == 1)
}

fn inputs_const(node: &Node) -> bool {
    let c = |n: &Node| n.as_const().is_some();
    match node {
        Node::Not(a, _) | Node::Neg(a, _) | Node::Select(a, _, _) | Node::Matches(a, _, _) => c(a),
        Node::Index(a, b, _)
        | Node::Bin(_, a, b, _, _)
        | Node::And(a, b, _)
        | Node::Or(a, b, _) => c(a) && c(b),
        Node::Cond(a, b, d, _) => c(a) && c(b) && c(d),
        Node::List(items) | Node::Call(_, items, _) => items.iter().all(c),
        Node::Map(entries, _) => entries.iter().all(|(k, v)| c(k) && c(v)),
        _ => false,
    }
}

/// The static type of `a op b`, or why it is wrong.
fn binary_type(op: Op, a: Type, b: Type) -> Result<Type, String> {
    use Type::*;
    let sym = op.symbol();
    let dyn_ = a == Dyn || b == Dyn;
    match op {
        Op::Eq | Op::Ne => {
            if dyn_ || a == b || a == Null || b == Null || (is_num(a) && is_num(b)) {
                return Ok(Bool);
            }
            Err(format!("'{sym}' cannot compare {a} and {b}"))
        }
        Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            let orderable =
                |t: Type| matches!(t, Bool | Int | Double | String | Timestamp | Duration | Dyn);
            if orderable(a) && orderable(b) && (dyn_ || a == b || (is_num(a) && is_num(b))) {
                return Ok(Bool);
            }
            Err(format!("'{sym}' cannot compare {a} and {b}"))
        }
        Op::In => {
            if matches!(b, List | Map | Dyn) {
                return Ok(Bool);
            }
            Err(format!(
                "'in' needs a list or a map on the right, found {b}"
            ))
        }
        _ => {
            let result = match (op, a, b) {
                (_, Dyn, _) | (_, _, Dyn) => Some(Dyn),
                (Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Rem, Int, Int) => Some(Int),
                (Op::Add | Op::Sub | Op::Mul | Op::Div, Double, Double) => Some(Double),
                (Op::Add, String, String) => Some(String),
                (Op::Add, List, List) => Some(List),
                (Op::Add, Timestamp, Duration) | (Op::Add, Duration, Timestamp) => Some(Timestamp),
                (Op::Add | Op::Sub, Duration, Duration) => Some(Duration),
                (Op::Sub, Timestamp, Duration) => Some(Timestamp),
                (Op::Sub, Timestamp, Timestamp) => Some(Duration),
                _ => None,
            };
            result.ok_or_else(|| {
                let hint = if is_num(a) && is_num(b) {
                    "; convert one side with int() or double()"
                } else {
                    ""
                };
                format!("'{sym}' cannot apply to {a} and {b}{hint}")
            })
        }
    }
}

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let max = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= max)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}
