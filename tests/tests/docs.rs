//! Every error message the binaries can print is documented, with its fix, in
//! `docs/operations.md` (issue 7).
//!
//! The check reads the sources of `release-manifest`, `updater` and `agent` and collects the
//! literal strings of
//!
//! - `#[error("…")]` attributes (thiserror), with `{CONST}` placeholders that name a
//!   `const CONST: &str` of the same file filled in;
//! - `bail!("…")`, `anyhow!("…")`, `.context("…")`, `.context(format!("…"))` and
//!   `.with_context(|| format!("…"))`;
//! - the `tracing` macros of [`LOG_MACROS`] (`error!("…")`, logged by the agent above all);
//! - `format!("…")` handed straight to an error: an argument of one of [`ERROR_CALLS`]
//!   (`Err(…)`, `RepoError::Invalid(…)`, `.map_err(|e| format!(…))`, clap value parsers'
//!   `Err(format!(…))`, …) or the value of one of [`ERROR_FIELDS`] (`detail: format!(…)`).
//!
//! Each message is cut at its `{…}` placeholders, and every literal piece of it that says
//! something (at least [`MIN_FRAGMENT`] characters) must occur in the operations guide, where
//! the placeholders are written as `<path>`, `<version>` and so on. Backticks, `\|` and runs of
//! whitespace are normalised on both sides.
//!
//! The sources are scanned by a small tokenizer (comments, string, raw-string and char
//! literals), so multi-line attributes, `\` line continuations and raw strings are read as the
//! compiler reads them, and braces inside strings do not confuse the skipping of test code.
//! Messages built some other way (a `write!` in a `Display` impl, a `let reason = format!(…)`)
//! are not seen; the guide lists them too, by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The source trees of the libraries and the three binaries, relative to the workspace root.
const SOURCES: [&str; 4] = ["crates", "release-manifest/src", "updater/src", "agent/src"];

/// The document that must list every message.
const GUIDE: &str = "docs/operations.md";

/// Literal pieces shorter than this (after trimming) are too generic to look for
/// (`"cannot "`, `" failed"`, `": "`).
const MIN_FRAGMENT: usize = 12;

/// Messages that no operator can see, so the guide need not list them. Test code is skipped
/// anyway (files named `tests.rs`, `mod tests { … }` and items under `#[cfg(test)]`); this
/// list is for what remains. Each entry is the message's literal text as written in the
/// source, with the reason it is internal.
const INTERNAL: &[(&str, &str)] = &[(
    "molt never writes keys back to {}",
    "tough's KeySource::write, which tough calls only to store keys it generates; molt never asks it to",
)];

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Punct(char),
    Str(String),
    /// Numbers, char literals and lifetimes: nothing the scan looks at.
    Other,
}

#[derive(Debug)]
struct Lexed {
    token: Token,
    line: usize,
}

/// One message found in the sources.
#[derive(Debug)]
struct Message {
    /// The format string, as the compiler reads it (escapes resolved).
    text: String,
    /// `file:line`, relative to the workspace root.
    at: String,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_owned()
}

/// Splits Rust source into the tokens the scan needs.
fn tokenize(src: &str) -> Vec<Lexed> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    while i < chars.len() {
        let c = chars[i];
        let start_line = line;
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            // Block comments nest.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' {
            let text = cooked_string(&chars, &mut i, &mut line);
            out.push(Lexed {
                token: Token::Str(text),
                line: start_line,
            });
        } else if c == '\'' {
            char_or_lifetime(&chars, &mut i);
            out.push(Lexed {
                token: Token::Other,
                line: start_line,
            });
        } else if c.is_alphabetic() || c == '_' {
            let begin = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let ident: String = chars[begin..i].iter().collect();
            let next = chars.get(i).copied();
            if matches!(ident.as_str(), "r" | "br" | "cr")
                && let Some(text) = raw_string(&chars, &mut i, &mut line)
            {
                out.push(Lexed {
                    token: Token::Str(text),
                    line: start_line,
                });
            } else if ident == "r" && next == Some('#') {
                // A raw identifier, `r#type`.
                i += 1;
                let begin = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push(Lexed {
                    token: Token::Ident(chars[begin..i].iter().collect()),
                    line: start_line,
                });
            } else if matches!(ident.as_str(), "b" | "c") && next == Some('"') {
                let text = cooked_string(&chars, &mut i, &mut line);
                out.push(Lexed {
                    token: Token::Str(text),
                    line: start_line,
                });
            } else if ident == "b" && next == Some('\'') {
                char_or_lifetime(&chars, &mut i);
                out.push(Lexed {
                    token: Token::Other,
                    line: start_line,
                });
            } else {
                out.push(Lexed {
                    token: Token::Ident(ident),
                    line: start_line,
                });
            }
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Lexed {
                token: Token::Other,
                line: start_line,
            });
        } else {
            out.push(Lexed {
                token: Token::Punct(c),
                line: start_line,
            });
            i += 1;
        }
    }
    out
}

/// Reads `"…"` starting at the opening quote and resolves its escapes.
fn cooked_string(chars: &[char], i: &mut usize, line: &mut usize) -> String {
    let mut text = String::new();
    *i += 1;
    while *i < chars.len() {
        let c = chars[*i];
        *i += 1;
        match c {
            '"' => break,
            '\\' => {
                let e = chars.get(*i).copied().unwrap_or('\\');
                *i += 1;
                match e {
                    'n' => text.push('\n'),
                    'r' => text.push('\r'),
                    't' => text.push('\t'),
                    '0' => text.push('\0'),
                    'x' => {
                        let hex: String = chars[*i..(*i + 2).min(chars.len())].iter().collect();
                        *i += 2;
                        if let Some(c) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32)
                        {
                            text.push(c);
                        }
                    }
                    'u' => {
                        // \u{…}
                        let begin = *i + 1;
                        while *i < chars.len() && chars[*i] != '}' {
                            *i += 1;
                        }
                        let hex: String = chars[begin.min(*i)..*i].iter().collect();
                        *i += 1;
                        if let Some(c) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32)
                        {
                            text.push(c);
                        }
                    }
                    '\n' => {
                        // A line continuation: the newline and the next line's indentation go.
                        *line += 1;
                        while *i < chars.len() && chars[*i].is_whitespace() {
                            if chars[*i] == '\n' {
                                *line += 1;
                            }
                            *i += 1;
                        }
                    }
                    other => text.push(other),
                }
            }
            '\n' => {
                *line += 1;
                text.push('\n');
            }
            other => text.push(other),
        }
    }
    text
}

/// Reads `r"…"` / `r#"…"#` with `i` just after the `r` (or `br`, `cr`). Returns `None`, and
/// moves nothing, when no raw string starts there.
fn raw_string(chars: &[char], i: &mut usize, line: &mut usize) -> Option<String> {
    let mut j = *i;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if chars.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    let begin = j;
    loop {
        if j >= chars.len() {
            break;
        }
        if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
            let text: String = chars[begin..j].iter().collect();
            *line += text.matches('\n').count();
            *i = j + 1 + hashes;
            return Some(text);
        }
        j += 1;
    }
    let text: String = chars[begin..].iter().collect();
    *line += text.matches('\n').count();
    *i = chars.len();
    Some(text)
}

/// Skips a char literal (`'a'`, `'\n'`, `'\u{1F600}'`) or a lifetime or label (`'a`,
/// `'static`), with `i` at the quote (or at the `b` of `b'x'`).
fn char_or_lifetime(chars: &[char], i: &mut usize) {
    if chars[*i] == 'b' {
        *i += 1;
    }
    *i += 1;
    if chars.get(*i) == Some(&'\\') {
        *i += 2;
        while *i < chars.len() && chars[*i] != '\'' {
            *i += 1;
        }
        *i += 1;
    } else if chars.get(*i + 1) == Some(&'\'') {
        *i += 2;
    }
    // Otherwise a lifetime: its name is read as an identifier next, which is harmless.
}

fn is_punct(tokens: &[Lexed], at: usize, c: char) -> bool {
    matches!(tokens.get(at), Some(Lexed { token: Token::Punct(p), .. }) if *p == c)
}

fn is_ident(tokens: &[Lexed], at: usize, name: &str) -> bool {
    matches!(tokens.get(at), Some(Lexed { token: Token::Ident(id), .. }) if id == name)
}

fn string_at(tokens: &[Lexed], at: usize) -> Option<&str> {
    match tokens.get(at) {
        Some(Lexed {
            token: Token::Str(s),
            ..
        }) => Some(s),
        _ => None,
    }
}

/// The index just past the item that starts at `at`: up to its `;`, or its `{ … }` block.
fn skip_item(tokens: &[Lexed], mut at: usize) -> usize {
    let mut depth = 0usize;
    while at < tokens.len() {
        match tokens[at].token {
            Token::Punct('{') | Token::Punct('(') | Token::Punct('[') => depth += 1,
            Token::Punct('}') | Token::Punct(')') | Token::Punct(']') => {
                depth = depth.saturating_sub(1);
                if depth == 0 && tokens[at].token == Token::Punct('}') {
                    return at + 1;
                }
            }
            Token::Punct(';') if depth == 0 => return at + 1,
            _ => {}
        }
        at += 1;
    }
    at
}

/// A string argument at `at`: `"…"`, or `format!("…")`.
fn message_arg(tokens: &[Lexed], at: usize) -> Option<&str> {
    string_at(tokens, at).or_else(|| {
        if is_ident(tokens, at, "format")
            && is_punct(tokens, at + 1, '!')
            && is_punct(tokens, at + 2, '(')
        {
            string_at(tokens, at + 3)
        } else {
            None
        }
    })
}

/// Calls whose `format!("…")` argument is an error message: error constructors and the
/// closures of `map_err` / `ok_or_else` that turn a failure into text.
const ERROR_CALLS: &[&str] = &[
    "Err",
    "Invalid",
    "Other",
    "other",
    "custom",
    "invalid",
    "fail",
    "failed",
    "bad",
    "err",
    "repo_failure",
    "map_err",
    "ok_or_else",
];

/// Fields of error values that are filled with `format!("…")`: the detail shown after the
/// message.
const ERROR_FIELDS: &[&str] = &["detail", "reason"];

/// The `tracing` macros whose messages count. Warnings are listed in the guide too, but are not
/// checked: add `"warn"` here to hold them to the same rule.
const LOG_MACROS: &[&str] = &["error"];

/// The first string among the arguments of the macro whose `(` is at `open`:
/// `error!("…")` or `error!(field = %x, "…")`.
fn first_string_arg(tokens: &[Lexed], open: usize) -> Option<&str> {
    let mut depth = 0usize;
    for (at, t) in tokens.iter().enumerate().skip(open) {
        match t.token {
            Token::Punct('(') | Token::Punct('[') | Token::Punct('{') => depth += 1,
            Token::Punct(')') | Token::Punct(']') | Token::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return None;
                }
            }
            Token::Str(_) if depth == 1 => return string_at(tokens, at),
            _ => {}
        }
    }
    None
}

/// The file's `const NAME: &str = "…";` strings, which messages may name as `{NAME}`.
fn string_consts(tokens: &[Lexed]) -> Vec<(String, String)> {
    let mut consts = Vec::new();
    for i in 0..tokens.len() {
        if is_ident(tokens, i, "const")
            && is_punct(tokens, i + 2, ':')
            && is_punct(tokens, i + 3, '&')
            && is_ident(tokens, i + 4, "str")
            && is_punct(tokens, i + 5, '=')
            && let (
                Some(Lexed {
                    token: Token::Ident(name),
                    ..
                }),
                Some(value),
            ) = (tokens.get(i + 1), string_at(tokens, i + 6))
        {
            // As it would read inside a format string.
            consts.push((
                format!("{{{name}}}"),
                value.replace('{', "{{").replace('}', "}}"),
            ));
        }
    }
    consts
}

/// The messages of one source file, test code left out.
fn messages_in(src: &str) -> Vec<(usize, String)> {
    let tokens = tokenize(src);
    let consts = string_consts(&tokens);
    let mut found = Vec::new();
    // For each open bracket, the function or macro it calls (`map_err`, `format!`), if any.
    let mut callees: Vec<Option<String>> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        // `#[cfg(test)] <item>`: test code.
        if is_punct(&tokens, i, '#')
            && is_punct(&tokens, i + 1, '[')
            && is_ident(&tokens, i + 2, "cfg")
            && is_punct(&tokens, i + 3, '(')
            && is_ident(&tokens, i + 4, "test")
            && is_punct(&tokens, i + 5, ')')
            && is_punct(&tokens, i + 6, ']')
        {
            i = skip_item(&tokens, i + 7);
            continue;
        }
        // `mod tests { … }`, whatever its cfg.
        if is_ident(&tokens, i, "mod") && is_ident(&tokens, i + 1, "tests") {
            i = skip_item(&tokens, i + 2);
            continue;
        }
        let line = tokens[i].line;
        let text = if is_punct(&tokens, i, '#')
            && is_punct(&tokens, i + 1, '[')
            && is_ident(&tokens, i + 2, "error")
            && is_punct(&tokens, i + 3, '(')
        {
            // thiserror: #[error("…", args)]
            string_at(&tokens, i + 4)
        } else if (is_ident(&tokens, i, "bail") || is_ident(&tokens, i, "anyhow"))
            && is_punct(&tokens, i + 1, '!')
            && is_punct(&tokens, i + 2, '(')
        {
            string_at(&tokens, i + 3)
        } else if LOG_MACROS.iter().any(|m| is_ident(&tokens, i, m))
            && is_punct(&tokens, i + 1, '!')
            && is_punct(&tokens, i + 2, '(')
        {
            // tracing::error!: logged, by the agent above all.
            first_string_arg(&tokens, i + 2)
        } else if is_ident(&tokens, i, "context") && is_punct(&tokens, i + 1, '(') {
            message_arg(&tokens, i + 2)
        } else if is_ident(&tokens, i, "with_context")
            && is_punct(&tokens, i + 1, '(')
            && is_punct(&tokens, i + 2, '|')
            && is_punct(&tokens, i + 3, '|')
        {
            message_arg(&tokens, i + 4)
        } else if is_ident(&tokens, i, "format")
            && is_punct(&tokens, i + 1, '!')
            && is_punct(&tokens, i + 2, '(')
        {
            let in_call =
                matches!(callees.last(), Some(Some(c)) if ERROR_CALLS.contains(&c.as_str()));
            let in_field = i >= 2
                && is_punct(&tokens, i - 1, ':')
                && !is_punct(&tokens, i - 2, ':')
                && ERROR_FIELDS.iter().any(|f| is_ident(&tokens, i - 2, f));
            if in_call || in_field {
                string_at(&tokens, i + 3)
            } else {
                None
            }
        } else {
            None
        };
        if let Some(text) = text {
            let text = consts.iter().fold(text.to_owned(), |text, (name, value)| {
                text.replace(name, value)
            });
            found.push((line, text));
        }
        match tokens[i].token {
            Token::Punct('(') | Token::Punct('[') | Token::Punct('{') => {
                let callee = match (
                    i.checked_sub(2).map(|b| &tokens[b].token),
                    i.checked_sub(1).map(|b| &tokens[b].token),
                ) {
                    (Some(Token::Ident(name)), Some(Token::Punct('!'))) => Some(format!("{name}!")),
                    (_, Some(Token::Ident(name))) => Some(name.clone()),
                    _ => None,
                };
                callees.push(callee);
            }
            Token::Punct(')') | Token::Punct(']') | Token::Punct('}') => {
                callees.pop();
            }
            _ => {}
        }
        i += 1;
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
    {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            // A file of tests, included by `#[cfg(test)] mod tests;`.
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

fn all_messages(root: &Path) -> Vec<Message> {
    let mut files = Vec::new();
    for dir in SOURCES {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    let mut messages = Vec::new();
    for file in files {
        let src = fs::read_to_string(&file).unwrap();
        let rel = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for (line, text) in messages_in(&src) {
            messages.push(Message {
                text,
                at: format!("{rel}:{line}"),
            });
        }
    }
    messages
}

/// The literal pieces of a format string between its `{…}` placeholders (`{{` and `}}` are
/// literal braces).
fn literal_pieces(format: &str) -> Vec<String> {
    let mut pieces = vec![String::new()];
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                pieces.last_mut().unwrap().push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                pieces.last_mut().unwrap().push('}');
            }
            '{' => {
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                }
                pieces.push(String::new());
            }
            other => pieces.last_mut().unwrap().push(other),
        }
    }
    pieces
}

/// Backticks dropped, `\|` (a pipe in a Markdown table) made `|`, whitespace runs made one space.
fn normalise(text: &str) -> String {
    text.replace('`', "")
        .replace("\\|", "|")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The pieces of a message the guide must hold: long enough to say something, and not
/// punctuation alone.
fn pieces_to_find(message: &str) -> Vec<String> {
    literal_pieces(message)
        .iter()
        .map(|p| normalise(p))
        .filter(|p| {
            p.chars().count() >= MIN_FRAGMENT
                && p.chars().filter(|c| c.is_alphabetic()).count() >= 3
        })
        .collect()
}

#[test]
fn every_error_message_is_in_the_operations_guide() {
    let root = workspace_root();
    let guide = normalise(&fs::read_to_string(root.join(GUIDE)).unwrap());
    let messages = all_messages(&root);
    assert!(
        messages.len() > 100,
        "the scan found only {} messages; is the tokenizer broken?",
        messages.len()
    );

    // Message text → where it is written and the pieces the guide lacks.
    let mut missing: BTreeMap<&str, (Vec<&str>, Vec<String>)> = BTreeMap::new();
    let mut checked = 0;
    for message in &messages {
        if INTERNAL.iter().any(|(text, _)| *text == message.text) {
            continue;
        }
        let pieces = pieces_to_find(&message.text);
        if !pieces.is_empty() {
            checked += 1;
        }
        let absent: Vec<String> = pieces
            .into_iter()
            .filter(|p| !guide.contains(p.as_str()))
            .collect();
        if !absent.is_empty() {
            let entry = missing.entry(&message.text).or_default();
            entry.0.push(&message.at);
            entry.1 = absent;
        }
    }

    if !missing.is_empty() {
        let mut report = format!(
            "{} of {checked} error messages are not in {GUIDE}; add each to its Troubleshooting section \
             (the message with its placeholders written as <name>, what it means, and the fix):\n",
            missing.len()
        );
        for (text, (places, absent)) in &missing {
            report.push_str(&format!(
                "\n  {text:?}\n      at {}\n      missing: {}\n",
                places.join(", "),
                absent
                    .iter()
                    .map(|p| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        panic!("{report}");
    }
}

#[test]
fn the_scan_reads_strings_as_the_compiler_does() {
    let src = r####"
        #[derive(thiserror::Error)]
        enum E {
            #[error(
                "multi-line {path} attribute \
                 with a continuation"
            )]
            A,
            #[error(r#"raw "quoted" {x} text"#)]
            B,
        }
        fn f() -> anyhow::Result<()> {
            let _ = '{'; // a brace in a char literal
            let _: &'static str = "}";
            /* bail!("in a comment") */
            x.with_context(|| format!("with a closure {y}"))?;
            x.context("plain context")?;
            x.map_err(|e| RepoError::Invalid(format!("invalid {e}")))?;
            let _ = E::C { detail: format!("a detail {x}") };
            let _ = x.map(|v| format!("not an error {v}"));
            let _ = Some(format!("nor this"));
            tracing::error!(path = %p, "logged {e}");
            tracing::warn!("a warning");
            bail!("bailed {z:?} out")
        }
        #[cfg(test)]
        fn helper() { bail!("test helper") }
        #[cfg(unix)]
        mod tests {
            fn g() { bail!("in tests {") }
        }
        fn h() { anyhow!("after the tests") }
        const WHY: &str = "a {constant} reason";
        #[error("{WHY}: {0}")]
    "####;
    let found: Vec<String> = messages_in(src).into_iter().map(|(_, text)| text).collect();
    assert_eq!(
        found,
        [
            "multi-line {path} attribute with a continuation",
            r#"raw "quoted" {x} text"#,
            "with a closure {y}",
            "plain context",
            "invalid {e}",
            "a detail {x}",
            "logged {e}",
            "bailed {z:?} out",
            "after the tests",
            "a {{constant}} reason: {0}",
        ]
    );
    assert_eq!(
        literal_pieces("template {t:?} uses {{{name}}}; write {{{{"),
        ["template ", " uses {", "}; write {{"]
    );
    assert_eq!(
        pieces_to_find("{path} holds no repository (no `metadata/1.root.json`): {e}"),
        ["holds no repository (no metadata/1.root.json):"]
    );
}
