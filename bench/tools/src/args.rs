//! A minimal command-line parser for the two tools: positional words plus `--name value`
//! options and bare `--switch`es, each declared up front so that a typo is an error
//! rather than a silently ignored option (the driver must never measure the wrong thing).

use std::collections::HashMap;
use std::str::FromStr;

pub struct Args {
    pub positional: Vec<String>,
    options: HashMap<String, String>,
    switches: Vec<String>,
}

impl Args {
    /// Parses `argv` (without the program name). `options` take a value, `switches` do not.
    pub fn parse<I: IntoIterator<Item = String>>(argv: I, options: &[&str], switches: &[&str]) -> Result<Args, String> {
        let mut args = Args { positional: Vec::new(), options: HashMap::new(), switches: Vec::new() };
        let mut it = argv.into_iter();
        while let Some(word) = it.next() {
            if let Some(name) = word.strip_prefix("--") {
                if switches.contains(&name) {
                    args.switches.push(name.to_string());
                } else if options.contains(&name) {
                    let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                    args.options.insert(name.to_string(), value);
                } else {
                    return Err(format!("unknown option --{name}"));
                }
            } else {
                args.positional.push(word);
            }
        }
        Ok(args)
    }

    /// The value of `--name` parsed as `T`, or `default` when the option is absent.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        Ok(self.get_opt(name)?.unwrap_or(default))
    }

    pub fn get_opt<T: FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        match self.options.get(name) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| format!("bad value for --{name}: {v:?}")),
        }
    }

    pub fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<Args, String> {
        Args::parse(words.iter().map(|s| s.to_string()), &["conns", "duration"], &["ping"])
    }

    #[test]
    fn options_switches_and_positionals() {
        let a = parse(&["tcp", "--conns", "10", "--ping"]).unwrap();
        assert_eq!(a.positional, vec!["tcp"]);
        assert_eq!(a.get("conns", 1usize).unwrap(), 10);
        assert_eq!(a.get("duration", 5.0f64).unwrap(), 5.0);
        assert!(a.switch("ping"));
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(parse(&["--con", "3"]).is_err());
        assert!(parse(&["--conns"]).is_err());
        assert!(parse(&["--conns", "x"]).unwrap().get("conns", 1usize).is_err());
    }
}
