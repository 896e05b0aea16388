//! Expressions: a subset of CEL (Common Expression Language), compiled once at
//! configuration time and evaluated per record.
//!
//! [`compile`] parses, resolves variables through a [`Scope`] (dotted paths such as
//! `cmd.data.amount` become [`Slot`]s), checks static types, expands macros, compiles
//! literal regexes and folds constants. [`Program::eval`] then walks the compiled tree
//! against an [`Env`] that hands out the slot values of one record: no parsing, and no
//! allocation unless the result is a computed string, list or map.
//!
//! The supported language, its deviations from CEL and the function table are in
//! `docs/expressions.md`. In short: `int` is i64 with checked overflow (there is no
//! `uint`); `int` and `double` never mix in arithmetic, but compare by value
//! (`1 == 1.0`, `2 < 2.5`); `&&` and `||` absorb an error when the other side decides;
//! timestamps are UTC nanoseconds (1677 to 2262).
//!
//! # Examples
//!
//! ```
//! use onceflow_core::expr::{MapEnv, MapScope, Type, Val, compile};
//!
//! let mut scope = MapScope::new();
//! let balance = scope.declare("state.balance", Type::Int);
//! let status = scope.declare("state.status", Type::String);
//! let amount = scope.declare("cmd.data.amount", Type::Int);
//!
//! let guard = compile("state.balance >= cmd.data.amount && state.status == 'open'", &scope)
//!     .unwrap();
//! let mut env = MapEnv::new();
//! env.set(balance, Val::Int(100))
//!     .set(status, Val::str("open"))
//!     .set(amount, Val::Int(30));
//! assert!(guard.eval_bool(&env).unwrap());
//!
//! let next = compile("state.balance - cmd.data.amount", &scope).unwrap();
//! assert_eq!(next.eval(&env).unwrap(), Val::Int(70));
//!
//! let errors = compile("sise(state.status) > 'x'", &scope).unwrap_err();
//! assert_eq!(errors[0].to_string(), "column 1: unknown function 'sise'; did you mean 'size'?");
//! ```

mod cell;
mod check;
mod eval;
mod fast;
mod functions;
mod lexer;
mod parser;
mod time;
mod value;

#[cfg(test)]
mod tests;

use std::fmt;

pub use cell::Cell;
pub use value::{Type, Val};

/// RFC 3339 text in UTC (`2026-05-01T00:00:00Z`) of seconds since the Unix epoch, as
/// `string(timestamp)` writes it; for tools that print times.
pub fn rfc3339_from_unix_secs(secs: i64) -> String {
    let mut out = String::with_capacity(20);
    time::format_timestamp(secs.saturating_mul(1_000_000_000), &mut out);
    out
}

/// Parses an RFC 3339 timestamp to nanoseconds since the Unix epoch (UTC).
pub(crate) use time::parse_timestamp;

/// Where a variable's value lives in an [`Env`]; assigned by the [`Scope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u32);

/// Compile-time view of the variables: which dotted paths exist, their slots and types.
///
/// The compiler asks for the longest prefix of a path first (`cmd.data.amount`, then
/// `cmd.data`, then `cmd`); whatever follows the known prefix is a map lookup at run
/// time. A scope may assign slots on demand (through interior mutability) when the set
/// of variables is open, e.g. any field of a JSON record.
pub trait Scope {
    /// The slot and static type of the variable at `path`, if there is one.
    fn resolve(&self, path: &[&str]) -> Option<(Slot, Type)>;

    /// Known dotted names, for "did you mean" suggestions.
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Run-time values of the variables of one evaluation.
pub trait Env {
    /// The value in `slot`; `None` when the field is absent from the record (reading it
    /// is an error, `has()` is false).
    fn get(&self, slot: Slot) -> Option<Val<'_>>;
}

/// A compile error, located by character column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// 1-based column of the first character at fault, counted in characters.
    pub column: usize,
    /// Number of characters at fault (at least 1).
    pub len: usize,
    /// What is wrong.
    pub message: String,
}

impl ExprError {
    fn at(src: &str, span: Span, message: String) -> Self {
        let len = src
            .get(span.start..span.end)
            .map_or(0, |s| s.chars().count())
            .max(1);
        ExprError {
            column: char_column(src, span.start),
            len,
            message,
        }
    }
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ExprError {}

/// An evaluation failure: the reason a record is rejected or dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    /// 1-based character column of the sub-expression that failed.
    pub column: usize,
    /// What happened, e.g. `integer overflow in state.balance + cmd.data.amount`.
    pub message: String,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EvalError {}

/// A byte range of the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    /// From the start of `self` to the end of `other`.
    pub(crate) fn to(self, other: Span) -> Span {
        Span::new(self.start, other.end.max(self.start))
    }
}

/// 1-based character column of byte offset `byte`.
pub(crate) fn char_column(src: &str, byte: usize) -> usize {
    let byte = byte.min(src.len());
    src.get(..byte).map_or(byte, |s| s.chars().count()) + 1
}

/// A compiled expression. Cheap to share between threads (`Send + Sync`).
#[derive(Debug)]
pub struct Program {
    src: Box<str>,
    root: eval::Node,
    ty: Type,
    paths: Vec<(Box<str>, usize)>,
}

/// Parses and checks `src` against `scope`. Returns every error found (a syntax error
/// stops at the first one; name and type errors are all reported).
pub fn compile<S: Scope + ?Sized>(src: &str, scope: &S) -> Result<Program, Vec<ExprError>> {
    let ast = parser::parse(src).map_err(|(span, msg)| vec![ExprError::at(src, span, msg)])?;
    let mut ck = check::Checker::new(scope, src);
    let (root, ty) = ck.check(&ast);
    if !ck.errors.is_empty() {
        return Err(ck
            .errors
            .into_iter()
            .map(|(span, msg)| ExprError::at(src, span, msg))
            .collect());
    }
    Ok(Program {
        src: src.into(),
        root,
        ty,
        paths: ck.paths,
    })
}

impl Program {
    /// Evaluates against one record's variables. Strings from `env` (and from the
    /// program's literals) are borrowed, not copied.
    pub fn eval<'a, E: Env + ?Sized>(&'a self, env: &'a E) -> Result<Val<'a>, EvalError> {
        // hot path
        let mut cx = self.cx(env);
        let fast = match self.ty {
            Type::Bool => cx.fast_bool(&self.root).map(Val::Bool),
            Type::Int => cx.fast_int(&self.root).map(Val::Int),
            _ => None,
        };
        match fast {
            Some(v) => Ok(v),
            None => cx.eval(&self.root),
        }
    }

    /// Evaluates a guard or filter: a result other than a bool is an error.
    pub fn eval_bool<E: Env + ?Sized>(&self, env: &E) -> Result<bool, EvalError> {
        // hot path
        if let Some(b) = self.cx(env).fast_bool(&self.root) {
            return Ok(b);
        }
        match self.cx(env).eval(&self.root)? {
            Val::Bool(b) => Ok(b),
            other => Err(EvalError {
                column: 1,
                message: format!(
                    "expected the expression to be a bool, but it is {}: {}",
                    other.type_of(),
                    self.src
                ),
            }),
        }
    }

    fn cx<'a, E: Env + ?Sized>(&'a self, env: &'a E) -> eval::Cx<'a, E> {
        eval::Cx {
            env,
            src: &self.src,
            paths: &self.paths,
            locals: Vec::new(),
            iterations: 0,
        }
    }

    /// The static type of the result (`Dyn` when only evaluation can tell).
    pub fn result_type(&self) -> Type {
        self.ty
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// The value, if the whole expression folded to a constant.
    pub fn constant(&self) -> Option<&Val<'static>> {
        self.root.as_const()
    }
}

/// A [`Scope`] from a list of declared dotted names; slot `i` is the `i`-th declared.
#[derive(Debug, Clone, Default)]
pub struct MapScope {
    vars: Vec<(String, Type)>,
}

impl MapScope {
    /// An empty scope.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares `path` (e.g. `cmd.data.amount`) with a static type; returns its slot.
    /// Declaring the same path again changes its type and keeps its slot.
    pub fn declare(&mut self, path: &str, ty: Type) -> Slot {
        if let Some(i) = self.vars.iter().position(|(p, _)| p == path) {
            self.vars[i].1 = ty;
            return Slot(i as u32);
        }
        self.vars.push((path.to_string(), ty));
        Slot((self.vars.len() - 1) as u32)
    }

    /// The slot of a declared path.
    pub fn slot(&self, path: &str) -> Option<Slot> {
        self.vars
            .iter()
            .position(|(p, _)| p == path)
            .map(|i| Slot(i as u32))
    }
}

impl Scope for MapScope {
    fn resolve(&self, path: &[&str]) -> Option<(Slot, Type)> {
        self.vars
            .iter()
            .position(|(p, _)| p.split('.').eq(path.iter().copied()))
            .map(|i| (Slot(i as u32), self.vars[i].1))
    }

    fn names(&self) -> Vec<String> {
        self.vars.iter().map(|(p, _)| p.clone()).collect()
    }
}

/// An [`Env`] holding owned values by slot (for tests and simple uses).
#[derive(Debug, Clone, Default)]
pub struct MapEnv {
    vals: Vec<Option<Val<'static>>>,
}

impl MapEnv {
    /// An env where every variable is absent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a variable.
    pub fn set(&mut self, slot: Slot, v: Val<'_>) -> &mut Self {
        let i = slot.0 as usize;
        if self.vals.len() <= i {
            self.vals.resize(i + 1, None);
        }
        self.vals[i] = Some(v.into_owned());
        self
    }

    /// Makes a variable absent.
    pub fn unset(&mut self, slot: Slot) -> &mut Self {
        if let Some(v) = self.vals.get_mut(slot.0 as usize) {
            *v = None;
        }
        self
    }
}

impl Env for MapEnv {
    fn get(&self, slot: Slot) -> Option<Val<'_>> {
        self.vals.get(slot.0 as usize)?.as_ref().map(Val::reborrow)
    }
}
