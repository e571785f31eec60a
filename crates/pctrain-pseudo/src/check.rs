//! The local check of a teacher's pseudo-code: its call line (`>>> f(...)`) removed, the text
//! parses as Python (ruff's parser, as published by the RustPython project), it defines the
//! entry-point function at the top level with a docstring, and the call names that function.

use rustpython_ruff_python_ast::{Expr, Stmt};
use rustpython_ruff_python_parser::{parse_expression, parse_module};

/// Pseudo-code that passed the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The cleaned text: code fences and surrounding blank lines removed.
    pub text: String,
    /// The entry-point function the call names.
    pub entry: String,
}

/// Checks a teacher's answer; `Err` says what is wrong, for the repair prompt.
pub fn check_structure(answer: &str) -> Result<Checked, String> {
    let text = extract_code(answer);
    let mut calls = Vec::new();
    let mut code = String::with_capacity(text.len());
    for line in text.lines() {
        // At column 0: an indented `>>>` is a doctest line inside a docstring.
        match line.strip_prefix(">>>") {
            Some(call) => {
                calls.push(call.trim().to_string());
                code.push('\n'); // keep line numbers
            }
            None => {
                code.push_str(line);
                code.push('\n');
            }
        }
    }
    let module = parse_module(&code).map_err(|e| {
        let line = code[..usize::from(e.location.start()).min(code.len())]
            .matches('\n')
            .count()
            + 1;
        format!("the code is not valid Python: {} (line {line})", e.error)
    })?;
    let call = match calls.as_slice() {
        [one] => one,
        [] => {
            return Err(
                "there is no call line (`>>> function_name(...)`) that runs the entry function"
                    .into(),
            )
        }
        _ => {
            return Err(format!(
                "there are {} call lines; write exactly one",
                calls.len()
            ))
        }
    };
    let mut functions = Vec::new();
    for stmt in &module.syntax().body {
        match stmt {
            Stmt::FunctionDef(f) => functions.push(f),
            Stmt::Import(_) | Stmt::ImportFrom(_) => {}
            Stmt::Expr(e) if matches!(*e.value, Expr::StringLiteral(_)) => {}
            _ => {
                return Err(
                    "there is a top-level statement outside a function; put every step inside the entry function".into(),
                )
            }
        }
    }
    if functions.is_empty() {
        return Err("there is no function definition; write one entry-point function".into());
    }
    let parsed = parse_expression(call).map_err(|e| {
        format!(
            "the call line `>>> {call}` is not a Python expression: {}",
            e.error
        )
    })?;
    let Expr::Call(c) = &*parsed.syntax().body else {
        return Err(format!("the line `>>> {call}` is not a function call"));
    };
    let Expr::Name(name) = &*c.func else {
        return Err(format!(
            "the call `>>> {call}` does not call a function by its name"
        ));
    };
    let entry = name.id.as_str();
    let Some(f) = functions.iter().find(|f| f.name.as_str() == entry) else {
        return Err(format!(
            "the call runs `{entry}`, which the code does not define"
        ));
    };
    let documented =
        matches!(f.body.first(), Some(Stmt::Expr(e)) if matches!(*e.value, Expr::StringLiteral(_)));
    if !documented {
        return Err(format!("the entry function `{entry}` has no docstring"));
    }
    Ok(Checked {
        text: text.to_string(),
        entry: entry.to_string(),
    })
}

/// The code of a teacher's answer: the first fenced block wherever it stands (``` or ~~~, with
/// any language tag or none; to the end of the answer when the fence is never closed), or else
/// the whole answer; without blank lines around it.
fn extract_code(answer: &str) -> &str {
    let mut offset = 0;
    // The opening fence's character and length, and where the code starts.
    let mut open: Option<(char, usize, usize)> = None;
    for line in answer.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let unindented = line.trim_start_matches(' ');
        if line.len() - unindented.len() > 3 {
            continue;
        }
        let body = unindented.trim_end();
        match open {
            None => open = opening_fence(body).map(|(c, n)| (c, n, offset)),
            Some((c, n, code)) if is_closing_fence(body, c, n) => {
                return trim_blank_lines(&answer[code..start]);
            }
            Some(_) => {}
        }
    }
    match open {
        Some((_, _, code)) => trim_blank_lines(&answer[code..]),
        None => trim_blank_lines(answer),
    }
}

/// A line that opens a fence: three or more backticks (whose info string has none) or tildes.
fn opening_fence(line: &str) -> Option<(char, usize)> {
    let c = line.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let n = line.chars().take_while(|&x| x == c).count();
    let info = &line[n..];
    (n >= 3 && !(c == '`' && info.contains('`'))).then_some((c, n))
}

/// A line that closes a fence of `n` characters `c`: at least as many, and nothing else.
fn is_closing_fence(line: &str, c: char, n: usize) -> bool {
    line.len() >= n && line.chars().all(|x| x == c)
}

/// `text` without the blank lines before and after it, and without trailing spaces.
fn trim_blank_lines(text: &str) -> &str {
    let text = text.trim_end();
    let first = text
        .split_inclusive('\n')
        .take_while(|l| l.trim().is_empty())
        .map(str::len)
        .sum::<usize>();
    &text[first..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"def answer_briefly(question: str, max_words: int) -> str:
    """Answer the question in at most max_words words.
    Parameters:
        question (str): what the user asks
        max_words (int): upper bound on the length
    Returns:
        str: the answer
    """
    # draft an answer
    answer = generate_answer(question)
    # keep it short
    return truncate_words(answer, max_words)

>>> answer_briefly("Why is the sky blue?", max_words=30)"#;

    #[test]
    fn well_formed_pseudo_code_passes_with_or_without_a_fence() {
        let c = check_structure(GOOD).unwrap();
        assert_eq!(c.entry, "answer_briefly");
        let fenced = format!("```python\n{GOOD}\n```\n");
        assert_eq!(check_structure(&fenced).unwrap().text, GOOD);
    }

    /// Answers as real models write them: the first fenced block is the code, wherever it
    /// stands and whatever its tag.
    #[test]
    fn the_first_fenced_block_is_taken_from_answers_shaped_like_real_models() {
        let answers = [
            format!("Here is the pseudo-code for the instruction:\n\n```python\n{GOOD}\n```\n"),
            format!("```python\n{GOOD}\n```\n\nThis function drafts an answer, then shortens it."),
            format!(
                "Sure!\n```python\n{GOOD}\n```\nExample:\n```python\nprint(answer_briefly('x', 3))\n```"
            ),
            format!("```py\n{GOOD}\n```"),
            format!("```python3\n{GOOD}\n```"),
            format!("```\n{GOOD}\n```"),
            format!("~~~python\n{GOOD}\n~~~"),
            format!("  ```python\n{GOOD}\n  ````\nDone."),
            format!("Sure, here you go:\n```python\n{GOOD}\n"),
            format!("\n\n{GOOD}\n\n"),
        ];
        for answer in answers {
            match check_structure(&answer) {
                Ok(c) => assert_eq!(c.text, GOOD, "from:\n{answer}"),
                Err(e) => panic!("{e}, from:\n{answer}"),
            }
        }
        // Code whose lines are all indented keeps its indentation (and so fails the check as
        // Python would), and prose outside any fence is not code.
        let indented = GOOD
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(check_structure(&format!("```python\n{indented}\n```")).is_err());
        let e = check_structure(&format!("Sure! Here it is:\n{GOOD}")).unwrap_err();
        assert!(e.contains("not valid Python"), "{e}");
    }

    #[test]
    fn each_fault_is_named() {
        let cases = [
            (GOOD.replace(">>> ", ""), "no call line"),
            (
                GOOD.replace("answer_briefly(\"Why", "other(\"Why"),
                "does not define",
            ),
            (
                GOOD.replace(":\n    \"\"\"", ":\n    x = 1\n    \"\"\""),
                "no docstring",
            ),
            (
                GOOD.replace(
                    "answer = generate_answer(question)",
                    "answer = generate_answer(question",
                ),
                "not valid Python",
            ),
            (format!("print('hi')\n{GOOD}"), "top-level statement"),
            (
                format!("{GOOD}\n>>> answer_briefly(\"again\", 3)"),
                "2 call lines",
            ),
            (
                GOOD.replace(
                    ">>> answer_briefly(\"Why is the sky blue?\", max_words=30)",
                    ">>> answer_briefly + 1",
                ),
                "not a function call",
            ),
            (
                "Sure! Here is the pseudo-code you asked for.".to_string(),
                "not valid Python",
            ),
        ];
        for (text, want) in cases {
            match check_structure(&text) {
                Ok(_) if want.is_empty() => {}
                Ok(_) => panic!("accepted, expected {want:?}:\n{text}"),
                Err(e) => assert!(
                    !want.is_empty() && e.contains(want),
                    "{e:?}, expected {want:?}"
                ),
            }
        }
    }

    #[test]
    fn a_syntax_error_gives_its_line() {
        let broken = GOOD.replace(
            "return truncate_words(answer, max_words)",
            "return truncate_words(answer,, max_words)",
        );
        let e = check_structure(&broken).unwrap_err();
        assert!(e.contains("line 12"), "{e}");
    }
}
