//! Splits a kernel command line into `key[=value]` tokens.
//!
//! Follows the kernel's own rules (`lib/cmdline.c` `next_arg`): whitespace
//! separates tokens, double quotes may wrap a value or a whole token and are
//! removed, and everything after a lone `--` belongs to init, not to us.

/// The tokens of `text` as (key, value) pairs.
pub fn tokens(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut token = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.peek() {
            if c == '"' {
                quoted = !quoted;
            } else if c.is_whitespace() && !quoted {
                break;
            } else {
                token.push(c);
            }
            chars.next();
        }
        if token == "--" {
            break;
        }
        match token.split_once('=') {
            Some((k, v)) => out.push((k.to_owned(), Some(v.to_owned()))),
            None => out.push((token, None)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: Option<&str>) -> (String, Option<String>) {
        (k.to_owned(), v.map(str::to_owned))
    }

    #[test]
    fn splits_quotes_and_stops_at_double_dash() {
        let t = tokens(
            "  quiet farmer_id=12 grove.dns=\"1.1.1.1,9.9.9.9\" \"a=b c\" -- grove.farm=9\n",
        );
        assert_eq!(
            t,
            vec![
                kv("quiet", None),
                kv("farmer_id", Some("12")),
                kv("grove.dns", Some("1.1.1.1,9.9.9.9")),
                kv("a", Some("b c")),
            ]
        );
    }

    #[test]
    fn empty_line() {
        assert!(tokens("").is_empty());
        assert!(tokens(" \n\t").is_empty());
    }
}
