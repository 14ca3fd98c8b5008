//! README.md's shell examples, read by the tests that run them
//! (`grpcurl.rs`, `admin_cli.rs`), so the documented commands keep working.

/// README.md at the time of the build.
pub const README: &str = include_str!("../../../README.md");

/// The commands of `program` in the first ```sh block of README's section
/// `heading` (the heading line, e.g. `## Using it with grpcurl`), split into words like a shell would (quotes, `\` line
/// continuations, comments), without the program name. Other lines of the
/// block (comments, `read`, `export`) are skipped.
pub fn commands(heading: &str, program: &str) -> Vec<Vec<String>> {
    let section = README
        .split(&format!("\n{heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README has a {heading:?} section"));
    let block = section
        .split("```sh")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .unwrap_or_else(|| panic!("README's {heading:?} has a ```sh block"));
    block
        .replace("\\\n", " ")
        .lines()
        .filter(|line| line.trim_start().starts_with(&format!("{program} ")))
        .map(shell_words)
        .map(|words| words[1..].to_vec())
        .collect()
}

/// The words of one shell line. `$NAME` stays as it is (tests replace it).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '#' if word.is_none() => break,
            '\'' => {
                let word = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => panic!("unclosed ' in README line: {line}"),
                    }
                }
            }
            '"' => {
                let word = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => word.extend(chars.next()),
                        Some(c) => word.push(c),
                        None => panic!("unclosed \" in README line: {line}"),
                    }
                }
            }
            '\\' | '`' | '|' | ';' | '&' | '<' | '>' | '(' | ')' => {
                panic!("the tests read no {c:?} in README's commands: {line}")
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}
