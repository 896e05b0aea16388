//! Recursive-descent parser: tokens → AST with spans, following CEL's grammar and
//! precedence (loosest first): `?:`, `||`, `&&`, relations (`== != < <= > >= in`),
//! `+ -`, `* / %`, unary `! -`, member access (`.f`, `.f()`, `[i]`).

use super::Span;
use super::lexer::{Tok, lex};

/// Deepest nesting accepted (parentheses, operator chains, calls). Bounds the recursion
/// of the checker and the evaluator.
pub(crate) const MAX_HEIGHT: u32 = 100;

#[derive(Debug, Clone)]
pub(crate) struct Expr {
    pub kind: Kind,
    /// The whole expression.
    pub span: Span,
    /// Height of the tree below (a leaf is 1).
    pub height: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
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
    And,
    Or,
}

impl BinOp {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::In => "in",
            BinOp::And => "&&",
            BinOp::Or => "||",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
    Ident(String),
    /// `target.field`
    Select(Box<Expr>, String),
    /// `target[index]`
    Index(Box<Expr>, Box<Expr>),
    /// `name(args)` or `target.name(args)`; the span is the name's.
    Call(Option<Box<Expr>>, String, Span, Vec<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    /// The span is the operator's.
    Binary(BinOp, Span, Box<Expr>, Box<Expr>),
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    List(Vec<Expr>),
    Map(Vec<(Expr, Expr)>),
}

impl Expr {
    fn new(kind: Kind, span: Span) -> Expr {
        let h = |e: &Expr| e.height;
        let below = match &kind {
            Kind::Select(a, _) | Kind::Not(a) | Kind::Neg(a) => h(a),
            Kind::Index(a, b) | Kind::Binary(_, _, a, b) => h(a).max(h(b)),
            Kind::Cond(a, b, c) => h(a).max(h(b)).max(h(c)),
            Kind::Call(t, _, _, args) => args
                .iter()
                .map(h)
                .chain(t.as_deref().map(h))
                .max()
                .unwrap_or(0),
            Kind::List(items) => items.iter().map(h).max().unwrap_or(0),
            Kind::Map(entries) => entries
                .iter()
                .map(|(k, v)| h(k).max(h(v)))
                .max()
                .unwrap_or(0),
            _ => 0,
        };
        Expr {
            kind,
            span,
            height: below + 1,
        }
    }
}

type PResult<T> = Result<T, (Span, String)>;

/// Parses a whole expression; syntax errors stop at the first one.
pub(crate) fn parse(src: &str) -> PResult<Expr> {
    let toks = lex(src)?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let e = p.expr()?;
    if p.peek() != &Tok::Eof {
        return Err(p.unexpected("an operator or the end of the expression"));
    }
    Ok(e)
}

struct Parser {
    toks: Vec<(Tok, Span)>,
    pos: usize,
    depth: u32,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }

    fn span(&self) -> Span {
        self.toks[self.pos].1
    }

    fn bump(&mut self) -> (Tok, Span) {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Tok::Op(o) if *o == op)
    }

    fn eat_op(&mut self, op: &str) -> Option<Span> {
        if self.is_op(op) {
            Some(self.bump().1)
        } else {
            None
        }
    }

    fn unexpected(&self, expected: &str) -> (Span, String) {
        (
            self.span(),
            format!("expected {expected} but found {}", self.peek().describe()),
        )
    }

    fn expect_op(&mut self, op: &str) -> PResult<Span> {
        self.eat_op(op)
            .ok_or_else(|| self.unexpected(&format!("'{op}'")))
    }

    fn checked(&self, e: Expr) -> PResult<Expr> {
        if e.height > MAX_HEIGHT {
            return Err((
                e.span,
                format!("expression is nested too deeply (more than {MAX_HEIGHT} levels)"),
            ));
        }
        Ok(e)
    }

    /// Runs `f` one nesting level deeper, refusing to go beyond [`MAX_HEIGHT`].
    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> PResult<T>) -> PResult<T> {
        if self.depth >= MAX_HEIGHT {
            return Err((
                self.span(),
                format!("expression is nested too deeply (more than {MAX_HEIGHT} levels)"),
            ));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn expr(&mut self) -> PResult<Expr> {
        self.nested(Self::conditional)
    }

    fn conditional(&mut self) -> PResult<Expr> {
        let c = self.binary(0)?;
        if self.eat_op("?").is_none() {
            return Ok(c);
        }
        let a = self.binary(0)?;
        self.expect_op(":")?;
        let b = self.expr()?;
        let span = c.span.to(b.span);
        self.checked(Expr::new(
            Kind::Cond(Box::new(c), Box::new(a), Box::new(b)),
            span,
        ))
    }

    /// The binary operator at the cursor and its precedence level (0 `||`, 1 `&&`,
    /// 2 relations, 3 `+ -`, 4 `* / %`).
    fn binop(&self) -> Option<(BinOp, u8)> {
        let op = match self.peek() {
            Tok::In => return Some((BinOp::In, 2)),
            Tok::Op(o) => *o,
            _ => return None,
        };
        Some(match op {
            "||" => (BinOp::Or, 0),
            "&&" => (BinOp::And, 1),
            "==" => (BinOp::Eq, 2),
            "!=" => (BinOp::Ne, 2),
            "<" => (BinOp::Lt, 2),
            "<=" => (BinOp::Le, 2),
            ">" => (BinOp::Gt, 2),
            ">=" => (BinOp::Ge, 2),
            "+" => (BinOp::Add, 3),
            "-" => (BinOp::Sub, 3),
            "*" => (BinOp::Mul, 4),
            "/" => (BinOp::Div, 4),
            "%" => (BinOp::Rem, 4),
            _ => return None,
        })
    }

    /// Precedence climbing: operators of level `min_level` and tighter, all
    /// left-associative.
    fn binary(&mut self, min_level: u8) -> PResult<Expr> {
        let mut left = self.unary()?;
        while let Some((op, level)) = self.binop() {
            if level < min_level {
                break;
            }
            let op_span = self.bump().1;
            let right = self.binary(level + 1)?;
            let span = left.span.to(right.span);
            left = self.checked(Expr::new(
                Kind::Binary(op, op_span, Box::new(left), Box::new(right)),
                span,
            ))?;
        }
        Ok(left)
    }

    fn unary(&mut self) -> PResult<Expr> {
        if let Some(s) = self.eat_op("!") {
            let e = self.nested(Self::unary)?;
            let span = s.to(e.span);
            return self.checked(Expr::new(Kind::Not(Box::new(e)), span));
        }
        if let Some(s) = self.eat_op("-") {
            // A negative literal is a literal: `-9223372036854775808` is valid.
            if let Tok::Int(n) = *self.peek()
                && !self.followed_by_member()
            {
                let lit = self.bump().1;
                let span = s.to(lit);
                return match 0i64.checked_sub_unsigned(n) {
                    Some(v) => Ok(Expr::new(Kind::Int(v), span)),
                    None => Err((span, "integer literal does not fit in 64 bits".into())),
                };
            }
            let e = self.nested(Self::unary)?;
            let span = s.to(e.span);
            return self.checked(Expr::new(Kind::Neg(Box::new(e)), span));
        }
        self.member()
    }

    /// Whether the token after the cursor starts a member access (`-1.size()` is `-(1.size())`).
    fn followed_by_member(&self) -> bool {
        matches!(self.toks.get(self.pos + 1), Some((Tok::Op("." | "["), _)))
    }

    fn member(&mut self) -> PResult<Expr> {
        let mut e = self.primary()?;
        loop {
            if self.eat_op(".").is_some() {
                let Tok::Ident(name) = self.peek().clone() else {
                    return Err(self.unexpected("a field or method name after '.'"));
                };
                let name_span = self.bump().1;
                if self.eat_op("(").is_some() {
                    let args = self.args(")")?;
                    let end = self.toks[self.pos - 1].1;
                    let span = e.span.to(end);
                    e = Expr::new(Kind::Call(Some(Box::new(e)), name, name_span, args), span);
                } else {
                    let span = e.span.to(name_span);
                    e = Expr::new(Kind::Select(Box::new(e), name), span);
                }
            } else if self.eat_op("[").is_some() {
                let i = self.expr()?;
                let end = self.expect_op("]")?;
                let span = e.span.to(end);
                e = Expr::new(Kind::Index(Box::new(e), Box::new(i)), span);
            } else {
                return Ok(e);
            }
            e = self.checked(e)?;
        }
    }

    /// Comma-separated expressions up to `close` (a trailing comma is allowed).
    fn args(&mut self, close: &str) -> PResult<Vec<Expr>> {
        let mut out = Vec::new();
        loop {
            if self.eat_op(close).is_some() {
                return Ok(out);
            }
            out.push(self.expr()?);
            if self.eat_op(",").is_none() {
                self.expect_op(close)?;
                return Ok(out);
            }
        }
    }

    fn primary(&mut self) -> PResult<Expr> {
        let (tok, span) = self.bump();
        let kind = match tok {
            Tok::Int(n) => match i64::try_from(n) {
                Ok(v) => Kind::Int(v),
                Err(_) => return Err((span, "integer literal does not fit in 64 bits".into())),
            },
            Tok::Double(d) => Kind::Double(d),
            Tok::Str(s) => Kind::Str(s),
            Tok::True => Kind::Bool(true),
            Tok::False => Kind::Bool(false),
            Tok::Null => Kind::Null,
            Tok::Ident(name) => {
                if self.eat_op("(").is_some() {
                    let args = self.args(")")?;
                    let end = self.toks[self.pos - 1].1;
                    return self
                        .checked(Expr::new(Kind::Call(None, name, span, args), span.to(end)));
                }
                if self.is_op("{") {
                    return Err((
                        span,
                        "message construction (Type{...}) is not supported".into(),
                    ));
                }
                Kind::Ident(name)
            }
            Tok::Op("(") => {
                let e = self.expr()?;
                let end = self.expect_op(")")?;
                return Ok(Expr {
                    span: span.to(end),
                    ..e
                });
            }
            Tok::Op("[") => {
                let items = self.args("]")?;
                let end = self.toks[self.pos - 1].1;
                return self.checked(Expr::new(Kind::List(items), span.to(end)));
            }
            Tok::Op("{") => {
                let entries = self.map_entries()?;
                let end = self.toks[self.pos - 1].1;
                return self.checked(Expr::new(Kind::Map(entries), span.to(end)));
            }
            Tok::Op(".") => {
                return Err((
                    span,
                    "leading '.' (root namespace) is not supported; write the name alone".into(),
                ));
            }
            _ => {
                return Err((
                    span,
                    format!("expected an expression but found {}", tok.describe()),
                ));
            }
        };
        Ok(Expr::new(kind, span))
    }

    fn map_entries(&mut self) -> PResult<Vec<(Expr, Expr)>> {
        let mut out = Vec::new();
        loop {
            if self.eat_op("}").is_some() {
                return Ok(out);
            }
            let k = self.expr()?;
            self.expect_op(":")?;
            let v = self.expr()?;
            out.push((k, v));
            if self.eat_op(",").is_none() {
                self.expect_op("}")?;
                return Ok(out);
            }
        }
    }
}
