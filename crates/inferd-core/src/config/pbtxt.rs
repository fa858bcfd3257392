//! A parser for the protobuf text format (the syntax of Triton's `config.pbtxt`) into an untyped
//! tree that remembers where each field was written, so later checks can name line and column.
//!
//! Accepted: `name: value`, `name { ... }` / `name: { ... }` / `name < ... >`, lists written
//! `name: [ a, b ]` or `name [ { ... }, { ... } ]` (the colon-less list form common in Triton
//! repositories), repeated fields written several times, `#` comments, single- and double-quoted
//! strings with C escapes, adjacent string concatenation, and `,` or `;` between fields.

use std::fmt;

/// A position in the source text (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A scalar as written.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    /// A number, kept as its source text so conversions can report overflow precisely.
    Number(String),
    /// A quoted string (escapes resolved; may hold arbitrary bytes).
    Str(Vec<u8>),
    /// A bare identifier: an enum value, `true`/`false`, `inf`, `nan`.
    Ident(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Number(n) => f.write_str(n),
            Scalar::Str(s) => write!(f, "\"{}\"", String::from_utf8_lossy(s)),
            Scalar::Ident(i) => f.write_str(i),
        }
    }
}

/// A field's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A scalar.
    Scalar(Scalar),
    /// A nested message.
    Message(Message),
}

/// One occurrence of a field. List syntax yields one `Field` per element.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// Field name.
    pub name: String,
    /// Where the field name was written.
    pub pos: Pos,
    /// Where the value starts.
    pub value_pos: Pos,
    /// The value.
    pub value: Value,
}

/// A message: its fields in source order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Message {
    /// The fields.
    pub fields: Vec<Field>,
}

/// A syntax error with its position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct SyntaxError {
    /// Where it went wrong.
    pub pos: Pos,
    /// What was wrong.
    pub message: String,
}

/// Parses protobuf text into a [`Message`].
pub fn parse(text: &str) -> Result<Message, SyntaxError> {
    let mut p = Parser {
        src: text.as_bytes(),
        i: 0,
        line: 1,
        col: 1,
        depth: 0,
    };
    let msg = p.message(None)?;
    p.skip_ws();
    if p.i < p.src.len() {
        return Err(p.err("unexpected text after the end of the message"));
    }
    Ok(msg)
}

/// Nesting deeper than this is refused (a hostile file must not overflow the stack).
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    src: &'a [u8],
    i: usize,
    line: u32,
    col: u32,
    depth: usize,
}

impl Parser<'_> {
    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            col: self.col,
        }
    }

    fn err(&self, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            pos: self.pos(),
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        if c == b'\n' {
            self.line += 1;
            self.col = 1;
        } else if c & 0xC0 != 0x80 {
            // Count characters, not UTF-8 continuation bytes.
            self.col += 1;
        }
        Some(c)
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_ascii_whitespace() {
                self.bump();
            } else if c == b'#' {
                while let Some(c) = self.peek() {
                    if c == b'\n' {
                        break;
                    }
                    self.bump();
                }
            } else {
                break;
            }
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn describe_next(&self) -> String {
        match self.peek() {
            None => "end of file".to_string(),
            Some(c) if c.is_ascii_graphic() => format!("'{}'", c as char),
            Some(c) => format!("byte 0x{c:02x}"),
        }
    }

    /// Parses fields until `close` (or end of input when `close` is `None`).
    fn message(&mut self, close: Option<u8>) -> Result<Message, SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!("messages nested more than {MAX_DEPTH} deep")));
        }
        let mut msg = Message::default();
        loop {
            self.skip_ws();
            match (self.peek(), close) {
                (None, None) => break,
                (None, Some(c)) => {
                    return Err(self.err(format!("expected '{}' before end of file", c as char)));
                }
                (Some(c), Some(cl)) if c == cl => {
                    self.bump();
                    break;
                }
                _ => {}
            }
            self.field(&mut msg)?;
            // Optional separator.
            if !self.eat(b',') {
                self.eat(b';');
            }
        }
        self.depth -= 1;
        Ok(msg)
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == b'_' || (c == b'.' && self.i > start) {
                self.bump();
            } else {
                break;
            }
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.src[start..self.i]).into_owned())
    }

    fn field(&mut self, msg: &mut Message) -> Result<(), SyntaxError> {
        self.skip_ws();
        let pos = self.pos();
        let name = match self.peek() {
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => self.ident().unwrap_or_default(),
            _ => {
                return Err(self.err(format!(
                    "expected a field name, found {}",
                    self.describe_next()
                )));
            }
        };
        let colon = self.eat(b':');
        self.skip_ws();
        match self.peek() {
            Some(b'[') => {
                self.bump();
                if self.eat(b']') {
                    return Ok(());
                }
                loop {
                    self.skip_ws();
                    let value_pos = self.pos();
                    let value = self.value(colon)?;
                    msg.fields.push(Field {
                        name: name.clone(),
                        pos,
                        value_pos,
                        value,
                    });
                    if self.eat(b',') {
                        continue;
                    }
                    if self.eat(b']') {
                        break;
                    }
                    return Err(self.err(format!(
                        "expected ',' or ']' in the list for '{name}', found {}",
                        self.describe_next()
                    )));
                }
            }
            Some(b'{') | Some(b'<') => {
                let value_pos = self.pos();
                let value = self.value(true)?;
                msg.fields.push(Field {
                    name,
                    pos,
                    value_pos,
                    value,
                });
            }
            _ if colon => {
                let value_pos = self.pos();
                let value = Value::Scalar(self.scalar()?);
                msg.fields.push(Field {
                    name,
                    pos,
                    value_pos,
                    value,
                });
            }
            _ => {
                return Err(self.err(format!(
                    "expected ':' or '{{' after field name '{name}', found {}",
                    self.describe_next()
                )));
            }
        }
        Ok(())
    }

    /// A list element or field value: a message in braces or a scalar.
    fn value(&mut self, allow_scalar: bool) -> Result<Value, SyntaxError> {
        self.skip_ws();
        match self.peek() {
            Some(b'{') => {
                self.bump();
                Ok(Value::Message(self.message(Some(b'}'))?))
            }
            Some(b'<') => {
                self.bump();
                Ok(Value::Message(self.message(Some(b'>'))?))
            }
            _ if allow_scalar => Ok(Value::Scalar(self.scalar()?)),
            _ => Err(self.err(format!("expected '{{', found {}", self.describe_next()))),
        }
    }

    fn scalar(&mut self) -> Result<Scalar, SyntaxError> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') | Some(b'\'') => {
                let mut out = Vec::new();
                // Adjacent strings concatenate.
                while matches!(self.peek(), Some(b'"') | Some(b'\'')) {
                    self.string(&mut out)?;
                    self.skip_ws();
                }
                Ok(Scalar::Str(out))
            }
            Some(c) if c == b'-' || c == b'+' || c == b'.' || c.is_ascii_digit() => {
                let start = self.i;
                self.bump();
                if c == b'-' || c == b'+' {
                    self.skip_ws();
                    if matches!(self.peek(), Some(c) if c.is_ascii_alphabetic()) {
                        // -inf, -nan
                        let id = self.ident().unwrap_or_default();
                        return Ok(Scalar::Number(format!("{}{}", c as char, id)));
                    }
                }
                while let Some(c) = self.peek() {
                    let exponent_sign = (c == b'-' || c == b'+')
                        && matches!(self.src.get(self.i - 1), Some(b'e') | Some(b'E'));
                    if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || exponent_sign {
                        self.bump();
                    } else {
                        break;
                    }
                }
                let text: String = String::from_utf8_lossy(&self.src[start..self.i])
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                Ok(Scalar::Number(text))
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                Ok(Scalar::Ident(self.ident().unwrap_or_default()))
            }
            _ => Err(self.err(format!("expected a value, found {}", self.describe_next()))),
        }
    }

    fn string(&mut self, out: &mut Vec<u8>) -> Result<(), SyntaxError> {
        let quote = self.bump().unwrap_or(b'"');
        loop {
            let Some(c) = self.bump() else {
                return Err(self.err("unterminated string"));
            };
            match c {
                b'\n' => return Err(self.err("newline inside a string")),
                c if c == quote => return Ok(()),
                b'\\' => {
                    let Some(e) = self.bump() else {
                        return Err(self.err("unterminated string"));
                    };
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'a' => out.push(7),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'v' => out.push(11),
                        b'\\' | b'\'' | b'"' | b'?' => out.push(e),
                        b'x' | b'X' => {
                            let mut v = 0u32;
                            let mut n = 0;
                            while n < 2 && matches!(self.peek(), Some(c) if c.is_ascii_hexdigit()) {
                                v = v * 16
                                    + (self.bump().unwrap_or(b'0') as char)
                                        .to_digit(16)
                                        .unwrap_or(0);
                                n += 1;
                            }
                            if n == 0 {
                                return Err(self.err("\\x escape without hex digits"));
                            }
                            out.push(v as u8);
                        }
                        b'0'..=b'7' => {
                            let mut v = (e - b'0') as u32;
                            let mut n = 1;
                            while n < 3 && matches!(self.peek(), Some(b'0'..=b'7')) {
                                v = v * 8 + (self.bump().unwrap_or(b'0') - b'0') as u32;
                                n += 1;
                            }
                            out.push((v & 0xff) as u8);
                        }
                        other => {
                            return Err(self.err(format!("unknown escape '\\{}'", other as char)));
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(m: &Message) -> Vec<&str> {
        m.fields.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn parses_triton_style_config() {
        let text = r#"
            name: "mlp"   # a comment
            platform: 'onnxruntime_onnx'
            max_batch_size: 8
            input [
              { name: "x", data_type: TYPE_FP32, dims: [ -1, 3 ] },
              { name: "y" data_type: TYPE_INT64 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } }
            ]
            version_policy: { latest { num_versions: 2 } }
            parameters { key: "a" value: { string_value: "b" } }
            dynamic_batching < max_queue_delay_microseconds: 100 >
        "#;
        let m = parse(text).unwrap();
        assert_eq!(
            names(&m),
            [
                "name",
                "platform",
                "max_batch_size",
                "input",
                "input",
                "version_policy",
                "parameters",
                "dynamic_batching"
            ]
        );
        let Value::Message(x) = &m.fields[3].value else {
            panic!()
        };
        assert_eq!(names(x), ["name", "data_type", "dims", "dims"]);
        assert_eq!(
            x.fields[2].value,
            Value::Scalar(Scalar::Number("-1".into()))
        );
        assert_eq!(
            m.fields[1].value,
            Value::Scalar(Scalar::Str(b"onnxruntime_onnx".to_vec()))
        );
        assert_eq!(m.fields[0].pos, Pos { line: 2, col: 13 });
    }

    #[test]
    fn empty_list_and_separators() {
        let m = parse("dims: [] ; a: 1, b: true").unwrap();
        assert_eq!(names(&m), ["a", "b"]);
    }

    #[test]
    fn string_escapes_and_concatenation() {
        let m = parse(r#"s: "a\n\x41\101" 'b\'c'"#).unwrap();
        assert_eq!(
            m.fields[0].value,
            Value::Scalar(Scalar::Str(b"a\nAAb'c".to_vec()))
        );
    }

    #[test]
    fn errors_name_line_and_column() {
        let err = parse("name: \"x\"\nmax_batch_size 8\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, col: 16 });
        assert!(err.message.contains("max_batch_size"), "{err}");
        let err = parse("input [ { name: \"x\" ").unwrap_err();
        assert!(err.message.contains("'}'"), "{err}");
        assert!(parse("a: \"unterminated").is_err());
        assert!(parse("}").is_err());
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let text = "a {".repeat(10_000);
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("nested"), "{err}");
    }

    #[test]
    fn negative_and_float_numbers() {
        let m = parse("a: -1.5e-3 b: - inf c: 0x10").unwrap();
        assert_eq!(
            m.fields[0].value,
            Value::Scalar(Scalar::Number("-1.5e-3".into()))
        );
        assert_eq!(
            m.fields[1].value,
            Value::Scalar(Scalar::Number("-inf".into()))
        );
        assert_eq!(
            m.fields[2].value,
            Value::Scalar(Scalar::Number("0x10".into()))
        );
    }
}
