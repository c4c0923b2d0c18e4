//! Glob patterns for the `rooms` claim: `*` matches any run of characters
//! (including `:`), `?` matches one character; everything else is literal.

pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently matching up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((star_p, star_t)) = star {
            pi = star_p + 1;
            ti = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn stars_and_question_marks_match_as_in_shell_globs() {
        assert!(glob_match("chat:*", "chat:lobby"));
        assert!(glob_match("*", "anything:at:all"));
        assert!(glob_match("chat:room-?", "chat:room-1"));
        assert!(glob_match("*:lobby", "chat:lobby"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("chat:*", "news:lobby"));
        assert!(!glob_match("chat:lobby", "chat:lobby2"));
        assert!(!glob_match("chat:room-?", "chat:room-10"));
        assert!(!glob_match("", "x"));
        assert!(glob_match("", ""));
    }
}
