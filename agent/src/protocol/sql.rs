//! SQL statements reduced for spans: `db.query.text` with every literal replaced by `?` (never a
//! value from the application's data), `db.operation.name` (the statement's keyword) and
//! `db.collection.name` (its table, when it names exactly one).
//!
//! A small tokenizer, not a parser: it understands quoting, comments and parentheses, which is
//! what it takes to find literals and the top-level keywords reliably.

/// The dialect decides what double quotes mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: `"x"` is an identifier, `$tag$...$tag$` a string.
    Postgres,
    /// MySQL and MariaDB: `"x"` is a string (default SQL mode), `` `x` `` an identifier.
    Mysql,
}

/// Longest query text kept, in bytes.
pub const MAX_QUERY_TEXT: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    /// A quoted identifier, kept with its quotes.
    Quoted(String),
    /// A string, number or other literal value.
    Literal,
    /// `$1`, `?`, `:name`: a bind parameter.
    Param(String),
    Punct(char),
}

fn tokens(sql: &str, dialect: Dialect) -> Vec<Token> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            _ if c.is_ascii_whitespace() => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'#' if dialect == Dialect::Mysql => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i = (i + 2).min(b.len());
            }
            b'\'' => {
                i = skip_quoted(b, i, b'\'', true);
                out.push(Token::Literal);
            }
            b'"' if dialect == Dialect::Mysql => {
                i = skip_quoted(b, i, b'"', true);
                out.push(Token::Literal);
            }
            b'"' | b'`' => {
                let end = skip_quoted(b, i, c, false);
                out.push(Token::Quoted(sql[i..end].to_string()));
                i = end;
            }
            b'$' if dialect == Dialect::Postgres => {
                // $1 is a parameter; $tag$...$tag$ (or $$...$$) a string.
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                if j > i + 1 {
                    out.push(Token::Param(sql[i..j].to_string()));
                    i = j;
                    continue;
                }
                let mut k = i + 1;
                while k < b.len() && (b[k].is_ascii_alphanumeric() || b[k] == b'_') {
                    k += 1;
                }
                if k < b.len() && b[k] == b'$' {
                    let tag = &b[i..=k];
                    let body = k + 1;
                    let end = b[body..]
                        .windows(tag.len())
                        .position(|w| w == tag)
                        .map_or(b.len(), |p| body + p + tag.len());
                    out.push(Token::Literal);
                    i = end;
                } else {
                    out.push(Token::Punct('$'));
                    i += 1;
                }
            }
            b'?' => {
                out.push(Token::Param("?".into()));
                i += 1;
            }
            b'0'..=b'9' | b'.' if c != b'.' || b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let start = i;
                let hex = matches!(b.get(i + 1), Some(b'x' | b'X')) && c == b'0';
                i += 1;
                while i < b.len() {
                    let d = b[i];
                    let exponent_sign = (d == b'+' || d == b'-')
                        && matches!(b.get(i - 1), Some(b'e' | b'E'))
                        && !hex
                        && i > start;
                    if d.is_ascii_alphanumeric() || d == b'.' || exponent_sign {
                        i += 1;
                    } else {
                        break;
                    }
                }
                out.push(Token::Literal);
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                // A string with a prefix: E'..', N'..', B'..', X'..', U&'..'.
                let word = &sql[start..i];
                if b.get(i) == Some(&b'\'') && word.len() <= 2 {
                    i = skip_quoted(b, i, b'\'', word.eq_ignore_ascii_case("e"));
                    out.push(Token::Literal);
                } else {
                    out.push(Token::Word(word.to_string()));
                }
            }
            _ => {
                // Keep multi-byte characters whole.
                let ch = sql[i..].chars().next().unwrap_or(' ');
                out.push(Token::Punct(ch));
                i += ch.len_utf8();
            }
        }
    }
    out
}

/// The index just past a quoted run starting at `i` (an opening `q`); doubled quotes escape, and
/// so does a backslash when `backslash` is set. An unterminated quote runs to the end.
fn skip_quoted(b: &[u8], i: usize, q: u8, backslash: bool) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        if backslash && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == q {
            if b.get(j + 1) == Some(&q) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

/// The statement with every literal replaced by `?`, comments dropped, whitespace collapsed,
/// and `IN (?, ?, ...)` lists reduced to `IN (?)`; cut to [`MAX_QUERY_TEXT`].
pub fn sanitize(sql: &str, dialect: Dialect) -> String {
    let toks = tokens(sql, dialect);
    let mut out = String::with_capacity(sql.len().min(MAX_QUERY_TEXT));
    let mut prev: Option<&Token> = None;
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i];
        // IN ( literal, literal, ... ) → IN (?)
        if let Token::Word(w) = t
            && w.eq_ignore_ascii_case("in")
            && toks.get(i + 1) == Some(&Token::Punct('('))
        {
            let mut j = i + 2;
            let mut only_values = true;
            let mut n = 0;
            while j < toks.len() && toks[j] != Token::Punct(')') {
                match &toks[j] {
                    Token::Literal | Token::Param(_) => n += 1,
                    Token::Punct(',') => {}
                    _ => only_values = false,
                }
                j += 1;
            }
            if only_values && n > 0 && j < toks.len() {
                push_sep(&mut out, prev, t);
                out.push_str(w);
                out.push_str(" (?)");
                prev = toks.get(j);
                i = j + 1;
                continue;
            }
        }
        push_sep(&mut out, prev, t);
        match t {
            Token::Word(w) | Token::Quoted(w) => out.push_str(w),
            Token::Literal => out.push('?'),
            Token::Param(p) => out.push_str(p),
            Token::Punct(c) => out.push(*c),
        }
        prev = Some(t);
        i += 1;
        if out.len() > MAX_QUERY_TEXT {
            let mut cut = MAX_QUERY_TEXT;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            break;
        }
    }
    out
}

/// Whether to put a space between the previous token and this one.
fn push_sep(out: &mut String, prev: Option<&Token>, t: &Token) {
    let Some(prev) = prev else {
        return;
    };
    let tight_after = matches!(prev, Token::Punct('(' | '.'));
    let tight_before = matches!(t, Token::Punct(',' | ')' | '.' | ';'));
    let call = matches!((prev, t), (Token::Word(_), Token::Punct('(')));
    if !tight_after && !tight_before && !call {
        out.push(' ');
    }
}

/// The statement's operation (`SELECT`, `INSERT`, ...) and, when it names exactly one table,
/// that table.
pub fn describe(sql: &str, dialect: Dialect) -> (Option<String>, Option<String>) {
    let toks = tokens(sql, dialect);
    let word = |t: &Token| match t {
        Token::Word(w) => Some(w.to_ascii_uppercase()),
        _ => None,
    };
    // Skip leading parentheses; a WITH clause is looked through to its main statement.
    let mut depth = 0i32;
    let mut first: Option<(usize, String)> = None;
    for (i, t) in toks.iter().enumerate() {
        match t {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => depth -= 1,
            _ => {
                if let Some(w) = word(t) {
                    if first.is_none() {
                        first = Some((i, w.clone()));
                        if w != "WITH" {
                            break;
                        }
                    } else if depth <= 0
                        && matches!(
                            w.as_str(),
                            "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE"
                        )
                    {
                        first = Some((i, w));
                        break;
                    }
                }
            }
        }
    }
    let Some((at, op)) = first else {
        return (None, None);
    };
    let rest = &toks[at + 1..];
    let table = match op.as_str() {
        "SELECT" => table_after(rest, &["FROM"], true),
        "INSERT" | "REPLACE" | "MERGE" => table_after(rest, &["INTO"], false),
        "UPDATE" => table_at(rest, 0, false),
        "DELETE" => table_after(rest, &["FROM"], false),
        "TRUNCATE" | "CREATE" | "DROP" | "ALTER" => table_after(rest, &["TABLE"], false),
        _ => None,
    };
    (Some(op), table)
}

fn is_keyword(t: &Token, kw: &str) -> bool {
    matches!(t, Token::Word(w) if w.eq_ignore_ascii_case(kw))
}

/// The table named right after the first top-level `keyword`.
fn table_after(toks: &[Token], keywords: &[&str], single_source: bool) -> Option<String> {
    let mut depth = 0;
    for (i, t) in toks.iter().enumerate() {
        match t {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => depth -= 1,
            _ if depth == 0 && keywords.iter().any(|k| is_keyword(t, k)) => {
                return table_at(toks, i + 1, single_source);
            }
            _ => {}
        }
    }
    None
}

/// A (possibly schema-qualified) table name at `i`, after `IF [NOT] EXISTS` / `ONLY`. With
/// `single_source`, none when a comma or a JOIN shows more than one table is read.
fn table_at(toks: &[Token], mut i: usize, single_source: bool) -> Option<String> {
    while toks.get(i).is_some_and(|t| {
        ["IF", "NOT", "EXISTS", "ONLY", "IGNORE", "LOW_PRIORITY"]
            .iter()
            .any(|k| is_keyword(t, k))
    }) {
        i += 1;
    }
    let mut name = String::new();
    loop {
        match toks.get(i)? {
            Token::Word(w) | Token::Quoted(w) => name.push_str(w),
            _ => return None,
        }
        if toks.get(i + 1) == Some(&Token::Punct('.')) {
            name.push('.');
            i += 2;
        } else {
            break;
        }
    }
    if single_source {
        let mut depth = 0;
        for t in &toks[i + 1..] {
            match t {
                Token::Punct('(') => depth += 1,
                Token::Punct(')') if depth == 0 => break,
                Token::Punct(')') => depth -= 1,
                Token::Punct(',') if depth == 0 => return None,
                _ if depth == 0 && is_keyword(t, "JOIN") => return None,
                _ if depth == 0
                    && ["WHERE", "GROUP", "ORDER", "LIMIT", "HAVING", "UNION", "FOR"]
                        .iter()
                        .any(|k| is_keyword(t, k)) =>
                {
                    break;
                }
                _ => {}
            }
        }
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(s: &str) -> String {
        sanitize(s, Dialect::Postgres)
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            pg("SELECT * FROM users WHERE id = 42 AND name = 'O''Brien'"),
            "SELECT * FROM users WHERE id = ? AND name = ?"
        );
        assert_eq!(
            pg("insert into t (a, b) values (1.5e-3, E'it\\'s'), (0x1F, $$dollar 'x'$$)"),
            "insert into t(a, b) values(?, ?), (?, ?)"
        );
        assert_eq!(
            pg("SELECT \"Weird Col\" FROM s.t WHERE x = $1 -- trailing 123\n AND y = $tag$v$tag$"),
            "SELECT \"Weird Col\" FROM s.t WHERE x = $1 AND y = ?"
        );
        assert_eq!(pg("SELECT 1 /* 2 */ + 3"), "SELECT ? + ?");
        assert_eq!(
            pg("SELECT * FROM t WHERE id IN (1, 2, 3, 4) AND c IN (SELECT x FROM u)"),
            "SELECT * FROM t WHERE id IN (?) AND c IN(SELECT x FROM u)"
        );
        assert_eq!(pg("SELECT count(*) FROM t1"), "SELECT count(*) FROM t1");
    }

    #[test]
    fn mysql_double_quotes_are_strings() {
        assert_eq!(
            sanitize(
                "SELECT `name` FROM `shop`.`items` WHERE a = \"secret\" # c",
                Dialect::Mysql
            ),
            "SELECT `name` FROM `shop`.`items` WHERE a = ?"
        );
        assert_eq!(
            sanitize("SELECT \"x\" FROM t", Dialect::Postgres),
            "SELECT \"x\" FROM t"
        );
    }

    #[test]
    fn operation_and_collection() {
        let d = |s| describe(s, Dialect::Postgres);
        let both = |op: &str, t: Option<&str>| (Some(op.to_string()), t.map(String::from));
        assert_eq!(
            d("select * from orders where id = 1"),
            both("SELECT", Some("orders"))
        );
        assert_eq!(
            d("SELECT a FROM s.orders o JOIN items i ON o.id = i.o"),
            both("SELECT", None)
        );
        assert_eq!(d("SELECT a FROM x, y"), both("SELECT", None));
        assert_eq!(d("SELECT 1"), both("SELECT", None));
        assert_eq!(d("INSERT INTO t(a) VALUES (1)"), both("INSERT", Some("t")));
        assert_eq!(
            d("UPDATE ONLY accounts SET a = 1"),
            both("UPDATE", Some("accounts"))
        );
        assert_eq!(
            d("DELETE FROM \"Items\" WHERE a"),
            both("DELETE", Some("\"Items\""))
        );
        assert_eq!(
            d("CREATE TABLE IF NOT EXISTS kv (k text)"),
            both("CREATE", Some("kv"))
        );
        assert_eq!(d("TRUNCATE TABLE logs"), both("TRUNCATE", Some("logs")));
        assert_eq!(
            d("WITH recent AS (SELECT * FROM o WHERE t > now()) SELECT * FROM recent"),
            both("SELECT", Some("recent"))
        );
        assert_eq!(d("(SELECT a FROM b)"), both("SELECT", Some("b")));
        assert_eq!(d("BEGIN"), both("BEGIN", None));
        assert_eq!(d("  "), (None, None));
        assert_eq!(
            describe("SELECT * FROM `db`.`t` WHERE x", Dialect::Mysql),
            both("SELECT", Some("`db`.`t`"))
        );
    }

    #[test]
    fn garbage_never_panics_and_stays_bounded() {
        let mut x = 0x1234_5678u64;
        let alphabet = "'\"`$-/*#?(),. 0123456789abcEeIN\\\n\té€";
        let chars: Vec<char> = alphabet.chars().collect();
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let s: String = (0..(x % 64))
                .map(|i| chars[((x >> (i % 50)) as usize + i as usize) % chars.len()])
                .collect();
            for d in [Dialect::Postgres, Dialect::Mysql] {
                let _ = sanitize(&s, d);
                let _ = describe(&s, d);
            }
        }
        let long = format!("SELECT {} FROM t", "a, ".repeat(2000));
        assert!(pg(&long).len() <= MAX_QUERY_TEXT);
    }
}
