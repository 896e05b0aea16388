//! Tokens of a CEL expression, with byte spans into the source.

use super::Span;

/// One token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// Integer literal, before the sign is applied (so that `-9223372036854775808` fits).
    Int(u64),
    Double(f64),
    Str(String),
    Ident(String),
    True,
    False,
    Null,
    In,
    /// Operators and punctuation, as written (`>=`, `&&`, `(`, ...).
    Op(&'static str),
    Eof,
}

impl Tok {
    /// How the token is named in "expected X but found Y".
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Int(n) => format!("number {n}"),
            Tok::Double(d) => format!("number {d}"),
            Tok::Str(_) => "a string".into(),
            Tok::Ident(name) => format!("'{name}'"),
            Tok::True => "'true'".into(),
            Tok::False => "'false'".into(),
            Tok::Null => "'null'".into(),
            Tok::In => "'in'".into(),
            Tok::Op(op) => format!("'{op}'"),
            Tok::Eof => "the end of the expression".into(),
        }
    }
}

/// Words CEL reserves: not usable as identifiers.
const RESERVED: &[&str] = &[
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// Longest first, so that `>=` wins over `>`.
const OPS: &[&str] = &[
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "+", "-", "*", "/", "%", "!", "?", ":", ".", ",",
    "(", ")", "[", "]", "{", "}",
];

/// Splits `src` into tokens; the last one is `Eof`. Stops at the first error.
pub(crate) fn lex(src: &str) -> Result<Vec<(Tok, Span)>, (Span, String)> {
    let mut lx = Lexer { src, pos: 0 };
    let mut out = Vec::new();
    loop {
        lx.skip_blank();
        let start = lx.pos;
        let tok = lx.next()?;
        let end = lx.pos;
        let eof = tok == Tok::Eof;
        out.push((tok, Span::new(start, end)));
        if eof {
            return Ok(out);
        }
    }
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

impl Lexer<'_> {
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek2(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn err<T>(&self, start: usize, msg: impl Into<String>) -> Result<T, (Span, String)> {
        Err((Span::new(start, self.pos.max(start + 1)), msg.into()))
    }

    fn skip_blank(&mut self) {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('/') if self.peek2() == Some('/') => {
                    while !matches!(self.bump(), None | Some('\n')) {}
                }
                _ => return,
            }
        }
    }

    fn next(&mut self) -> Result<Tok, (Span, String)> {
        let start = self.pos;
        let Some(c) = self.peek() else {
            return Ok(Tok::Eof);
        };
        if c.is_ascii_digit() {
            return self.number();
        }
        if (c == 'r' || c == 'R') && matches!(self.peek2(), Some('\'' | '"')) {
            self.bump();
            return self.string(true);
        }
        if (c == 'b' || c == 'B') && matches!(self.peek2(), Some('\'' | '"')) {
            self.bump();
            return self.err(start, "bytes literals (b'...') are not supported");
        }
        if c == '\'' || c == '"' {
            return self.string(false);
        }
        if c == '_' || c.is_ascii_alphabetic() {
            while matches!(self.peek(), Some(c) if c == '_' || c.is_ascii_alphanumeric()) {
                self.bump();
            }
            let word = &self.src[start..self.pos];
            return Ok(match word {
                "true" => Tok::True,
                "false" => Tok::False,
                "null" => Tok::Null,
                "in" => Tok::In,
                w if RESERVED.contains(&w) => {
                    return self.err(start, format!("'{w}' is a reserved word"));
                }
                w => Tok::Ident(w.to_string()),
            });
        }
        for op in OPS {
            if self.rest().starts_with(op) {
                self.pos += op.len();
                return Ok(Tok::Op(op));
            }
        }
        self.bump();
        match c {
            '=' => self.err(start, "unexpected '='; did you mean '=='?"),
            '&' => self.err(start, "unexpected '&'; did you mean '&&'?"),
            '|' => self.err(start, "unexpected '|'; did you mean '||'?"),
            _ => self.err(
                start,
                format!("unexpected character '{}'", c.escape_debug()),
            ),
        }
    }

    fn number(&mut self) -> Result<Tok, (Span, String)> {
        let start = self.pos;
        let hex = self.rest().starts_with("0x") || self.rest().starts_with("0X");
        if hex {
            self.pos += 2;
            while matches!(self.peek(), Some(c) if c.is_ascii_hexdigit()) {
                self.bump();
            }
            let digits = &self.src[start + 2..self.pos];
            return match u64::from_str_radix(digits, 16) {
                Ok(n) => self.int_suffix(start, n),
                Err(_) if digits.is_empty() => self.err(start, "expected hex digits after '0x'"),
                Err(_) => self.err(start, "integer literal does not fit in 64 bits"),
            };
        }
        self.digits();
        let mut float = false;
        if self.peek() == Some('.') && matches!(self.peek2(), Some(c) if c.is_ascii_digit()) {
            float = true;
            self.bump();
            self.digits();
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            let save = self.pos;
            self.bump();
            if matches!(self.peek(), Some('+' | '-')) {
                self.bump();
            }
            if matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                float = true;
                self.digits();
            } else {
                self.pos = save;
            }
        }
        let text = &self.src[start..self.pos];
        if float {
            return match text.parse::<f64>() {
                Ok(d) => Ok(Tok::Double(d)),
                Err(_) => self.err(start, format!("invalid number '{text}'")),
            };
        }
        match text.parse::<u64>() {
            Ok(n) => self.int_suffix(start, n),
            Err(_) => self.err(start, "integer literal does not fit in 64 bits"),
        }
    }

    fn int_suffix(&mut self, start: usize, n: u64) -> Result<Tok, (Span, String)> {
        if matches!(self.peek(), Some('u' | 'U')) {
            self.bump();
            return self.err(start, "unsigned integers (1u) are not supported; use int");
        }
        Ok(Tok::Int(n))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
            self.bump();
        }
    }

    /// A quoted string; `self.pos` is at the opening quote.
    fn string(&mut self, raw: bool) -> Result<Tok, (Span, String)> {
        let start = self.pos;
        let q = self.bump().expect("caller saw a quote");
        let triple = self
            .rest()
            .starts_with(if q == '"' { "\"\"" } else { "''" });
        if triple {
            self.pos += 2;
        }
        let mut out = String::new();
        loop {
            let at = self.pos;
            let Some(c) = self.bump() else {
                return self.err(start, "unterminated string");
            };
            if c == q {
                if !triple {
                    return Ok(Tok::Str(out));
                }
                let close = if q == '"' { "\"\"" } else { "''" };
                if self.rest().starts_with(close) {
                    self.pos += 2;
                    return Ok(Tok::Str(out));
                }
                out.push(c);
            } else if (c == '\n' || c == '\r') && !triple {
                return self.err(start, "unterminated string (newline in a '...' string)");
            } else if c == '\\' && !raw {
                out.push(self.escape(at)?);
            } else {
                out.push(c);
            }
        }
    }

    /// After a backslash at byte `at`.
    fn escape(&mut self, at: usize) -> Result<char, (Span, String)> {
        let Some(c) = self.bump() else {
            return self.err(at, "unterminated string");
        };
        Ok(match c {
            '\\' => '\\',
            '\'' => '\'',
            '"' => '"',
            '`' => '`',
            '?' => '?',
            'a' => '\x07',
            'b' => '\x08',
            'f' => '\x0c',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\x0b',
            'x' | 'X' => self.hex_escape(at, 2)?,
            'u' => self.hex_escape(at, 4)?,
            'U' => self.hex_escape(at, 8)?,
            '0'..='3' => {
                let mut n = c as u32 - '0' as u32;
                for _ in 0..2 {
                    match self.bump() {
                        Some(d @ '0'..='7') => n = n * 8 + (d as u32 - '0' as u32),
                        _ => {
                            return self
                                .err(at, "octal escape needs three digits (\\000 to \\377)");
                        }
                    }
                }
                char::from_u32(n).expect("at most 0o377")
            }
            other => {
                return self.err(at, format!("unknown escape '\\{}'", other.escape_debug()));
            }
        })
    }

    fn hex_escape(&mut self, at: usize, n: usize) -> Result<char, (Span, String)> {
        let mut v = 0u32;
        for _ in 0..n {
            match self.bump().and_then(|c| c.to_digit(16)) {
                Some(d) => v = v * 16 + d,
                None => return self.err(at, format!("escape needs {n} hex digits")),
            }
        }
        match char::from_u32(v) {
            Some(c) => Ok(c),
            None => self.err(at, format!("escape \\u{{{v:x}}} is not a valid code point")),
        }
    }
}
