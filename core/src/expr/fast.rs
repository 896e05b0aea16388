//! Typed fast paths of the evaluator for the shapes guards and computed fields take:
//! int arithmetic and comparisons, string equality, a string `in` a constant list,
//! `has()` of a variable, `&&` `||` `!` `?:` over those.
//!
//! Each returns `None` for anything else, and also whenever something goes wrong
//! (a missing field, an overflow, a value of another type than declared): the caller
//! then evaluates the whole expression again on the general path, which gives the
//! precise error or the exact CEL semantics. Evaluation is pure, so the second run
//! sees what the first did. Fast paths call only fast paths, so an expression is
//! evaluated at most twice.
//!
//! Why: the general path returns a 40-byte `Result<Val, EvalError>` through memory at
//! every node; these return an `Option` of a register-sized value.

use super::Env;
use super::eval::{Cx, Node, Op, Operands};
use super::value::Val;

impl<'a, E: Env + ?Sized> Cx<'a, E> {
    pub(crate) fn fast_bool(&mut self, node: &'a Node) -> Option<bool> {
        // hot path
        match node {
            Node::Const(Val::Bool(b)) => Some(*b),
            Node::Load(slot, _) => match self.env.get(*slot)? {
                Val::Bool(b) => Some(b),
                _ => None,
            },
            Node::And(a, b, _) => {
                if self.fast_bool(a)? {
                    self.fast_bool(b)
                } else {
                    Some(false)
                }
            }
            Node::Or(a, b, _) => {
                if self.fast_bool(a)? {
                    Some(true)
                } else {
                    self.fast_bool(b)
                }
            }
            Node::Not(a, _) => self.fast_bool(a).map(|b| !b),
            Node::Cond(c, a, b, _) => {
                if self.fast_bool(c)? {
                    self.fast_bool(a)
                } else {
                    self.fast_bool(b)
                }
            }
            Node::Bin(op, a, b, _, Operands::Int) => {
                let (x, y) = (self.fast_int(a)?, self.fast_int(b)?);
                Some(match op {
                    Op::Lt => x < y,
                    Op::Le => x <= y,
                    Op::Gt => x > y,
                    Op::Ge => x >= y,
                    Op::Eq => x == y,
                    Op::Ne => x != y,
                    _ => return None,
                })
            }
            Node::Bin(op @ (Op::Eq | Op::Ne), a, b, _, Operands::Str) => {
                let eq = self.fast_str(a)? == self.fast_str(b)?;
                Some(eq == (*op == Op::Eq))
            }
            Node::HasSlot(slot) => Some(self.env.get(*slot).is_some()),
            // `x in ['a', 'b']`: a string in a constant list (CEL equality of a string
            // with anything is string equality, or false for another type).
            Node::Bin(Op::In, a, b, _, _) => match b.as_const()? {
                Val::List(items) => {
                    let s = self.fast_str(a)?;
                    Some(items.iter().any(|x| matches!(x, Val::Str(y) if y == s)))
                }
                _ => None,
            },
            Node::Bin(op @ (Op::Eq | Op::Ne), a, b, _, Operands::Bool) => {
                let eq = self.fast_bool(a)? == self.fast_bool(b)?;
                Some(eq == (*op == Op::Eq))
            }
            _ => None,
        }
    }

    pub(crate) fn fast_int(&mut self, node: &'a Node) -> Option<i64> {
        // hot path
        match node {
            Node::Const(Val::Int(i)) => Some(*i),
            Node::Load(slot, _) => match self.env.get(*slot)? {
                Val::Int(i) => Some(i),
                _ => None,
            },
            Node::Bin(op, a, b, _, Operands::Int) => {
                let (x, y) = (self.fast_int(a)?, self.fast_int(b)?);
                match op {
                    Op::Add => x.checked_add(y),
                    Op::Sub => x.checked_sub(y),
                    Op::Mul => x.checked_mul(y),
                    Op::Div => x.checked_div(y),
                    Op::Rem => x.checked_rem(y),
                    _ => None,
                }
            }
            Node::Neg(a, _) => self.fast_int(a)?.checked_neg(),
            Node::Cond(c, a, b, _) => {
                if self.fast_bool(c)? {
                    self.fast_int(a)
                } else {
                    self.fast_int(b)
                }
            }
            _ => None,
        }
    }

    /// Strings that are borrowed already (from the env or the program).
    fn fast_str(&mut self, node: &'a Node) -> Option<&'a str> {
        match node {
            Node::Const(Val::Str(s)) => Some(s),
            Node::Load(slot, _) => match self.env.get(*slot)? {
                Val::Str(std::borrow::Cow::Borrowed(s)) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }
}
