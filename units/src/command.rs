//! `ExecStart=` and friends (systemd.service(5) "COMMAND LINES"): prefixes, word splitting,
//! `;`-separated commands, specifiers at load time; and `$VAR`/`${VAR}` expansion at run time.

use super::env::valid_name;
use super::syntax::{Split, WHITESPACE, extract_word, split_words};

/// The special prefixes of a command line. systemd 252 knows `@ - : + ! !!`; each may appear
/// once, in any order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecFlags {
    /// `-`: a failing exit status is recorded but does not fail the unit.
    pub ignore_failure: bool,
    /// `@`: the second word is argv[0], the first is the file to run.
    pub custom_argv0: bool,
    /// `:`: no environment variable expansion.
    pub no_env_expansion: bool,
    /// `+`: full privileges (no `User=`, `Group=`, sandboxing).
    pub full_privileges: bool,
    /// `!`: `User=`/`Group=`/`SupplementaryGroups=` are not applied; the program drops its
    /// privileges itself (chrony).
    pub no_user_switch: bool,
    /// `!!`: like `!`, but only where the kernel lacks ambient capabilities; on Linux ≥ 4.3
    /// the command runs as `User=` with `AmbientCapabilities=`.
    pub no_user_switch_without_ambient: bool,
}

/// One command of an `Exec*=` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCommand {
    /// The program: an absolute path, or a bare name the runtime looks up in
    /// `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`.
    pub path: String,
    /// The arguments including argv[0], with specifiers resolved and `$VAR`, `${VAR}`, `$$`
    /// still in place: run them through [`expand_argv`] (unless `no_env_expansion`).
    pub argv: Vec<String>,
    pub flags: ExecFlags,
    /// Where the command was written (for logs).
    pub line: usize,
}

impl ExecCommand {
    /// The argv to exec, with the variables of `env` expanded (see [`expand_argv`]).
    pub fn argv_with_env(&self, env: &[(String, String)]) -> Vec<String> {
        if self.flags.no_env_expansion {
            return self.argv.clone();
        }
        expand_argv(&self.argv, |name| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }
}

/// The directories searched for a bare program name (systemd 252's fixed path).
pub const EXEC_SEARCH_PATH: &[&str] = &["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// Parses the value of an `Exec*=` line into one or more commands (`;` alone separates them;
/// `\;` is a literal `;` argument). `expand` resolves specifiers in each unquoted word.
pub fn parse_exec(
    value: &str,
    line: usize,
    expand: impl Fn(&str) -> Result<String, String>,
) -> Result<Vec<ExecCommand>, String> {
    let mut commands = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches(WHITESPACE);
        if rest.is_empty() {
            break;
        }
        let (command, after) = parse_one(rest, line, &expand)?;
        commands.push(command);
        rest = after;
    }
    if commands.is_empty() {
        return Err("no command".into());
    }
    Ok(commands)
}

/// True when `text` starts with the standalone token `token`.
fn starts_with_token(text: &str, token: &str) -> bool {
    text.strip_prefix(token).is_some_and(|r| r.is_empty() || r.starts_with(WHITESPACE))
}

fn parse_one<'a>(
    text: &'a str,
    line: usize,
    expand: &impl Fn(&str) -> Result<String, String>,
) -> Result<(ExecCommand, &'a str), String> {
    let mut rest = text;
    let first = extract_word(&mut rest, Split::UNIT)?.ok_or("no command")?;
    let mut flags = ExecFlags::default();
    let mut program = first.as_str();
    loop {
        let seen = |b: bool| if b { Err(format!("prefix repeated in `{first}`")) } else { Ok(true) };
        if let Some(r) = program.strip_prefix("!!") {
            flags.no_user_switch_without_ambient = seen(flags.no_user_switch_without_ambient || flags.no_user_switch)?;
            program = r;
        } else if let Some(r) = program.strip_prefix('!') {
            flags.no_user_switch = seen(flags.no_user_switch || flags.no_user_switch_without_ambient)?;
            program = r;
        } else if let Some(r) = program.strip_prefix('-') {
            flags.ignore_failure = seen(flags.ignore_failure)?;
            program = r;
        } else if let Some(r) = program.strip_prefix('@') {
            flags.custom_argv0 = seen(flags.custom_argv0)?;
            program = r;
        } else if let Some(r) = program.strip_prefix(':') {
            flags.no_env_expansion = seen(flags.no_env_expansion)?;
            program = r;
        } else if let Some(r) = program.strip_prefix('+') {
            flags.full_privileges = seen(flags.full_privileges)?;
            program = r;
        } else {
            break;
        }
    }
    if flags.full_privileges && (flags.no_user_switch || flags.no_user_switch_without_ambient) {
        return Err("`+` and `!` cannot be combined".into());
    }
    if program.is_empty() {
        return Err(format!("no program after the prefixes in `{first}`"));
    }
    let path = expand(program)?;
    if path.contains('/') && !path.starts_with('/') {
        return Err(format!("`{path}` is neither an absolute path nor a bare program name"));
    }
    if path.ends_with('/') || path.split('/').any(|c| c == "." || c == "..") {
        return Err(format!("`{path}` is not a normalized path to a program"));
    }
    let mut argv = Vec::new();
    if !flags.custom_argv0 {
        argv.push(path.clone());
    }
    loop {
        let trimmed = rest.trim_start_matches(WHITESPACE);
        if starts_with_token(trimmed, ";") {
            rest = &trimmed[1..];
            break;
        }
        if starts_with_token(trimmed, "\\;") {
            argv.push(";".to_string());
            rest = &trimmed[2..];
            continue;
        }
        rest = trimmed;
        match extract_word(&mut rest, Split::UNIT)? {
            Some(word) => argv.push(expand(&word)?),
            None => break,
        }
    }
    if argv.is_empty() {
        return Err(format!("`@{path}` needs argv[0] as the next word"));
    }
    Ok((ExecCommand { path, argv, flags, line }, rest))
}

/// Expands variables in a command's words, as systemd does when it runs the command:
/// - a word that is exactly `$NAME` becomes the variable's value split into words at
///   whitespace (quotes respected); unset or empty gives *zero* words;
/// - `${NAME}` anywhere in a word is replaced by the value verbatim (unset is ""), the word
///   stays one word; `${NAME:-default}` and `${NAME:+alternate}` work as in the shell;
/// - `$$` is a literal `$`; any other `$` (such as `$1` or `$NAME` inside a word) is kept.
pub fn expand_argv(words: &[String], lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(words.len());
    for word in words {
        if let Some(name) = word.strip_prefix('$').filter(|n| valid_name(n)) {
            if let Some(value) = lookup(name) {
                out.extend(split_words(&value, Split::RUNTIME).unwrap_or_default());
            }
            continue;
        }
        out.push(expand_word(word, &lookup));
    }
    out
}

/// Replaces `${NAME}` (and the `:-`/`:+` forms) and `$$` inside one word.
pub fn expand_word(word: &str, lookup: &impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some((inner, r)) = after.strip_prefix('{').and_then(|a| a.split_once('}')) {
            let value = match (inner.split_once(":-"), inner.split_once(":+")) {
                (Some((name, default)), _) if valid_name(name) => {
                    lookup(name).filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
                }
                (_, Some((name, alternate))) if valid_name(name) => {
                    if lookup(name).is_some_and(|v| !v.is_empty()) {
                        alternate.to_string()
                    } else {
                        String::new()
                    }
                }
                _ if valid_name(inner) => lookup(inner).unwrap_or_default(),
                // Not a variable reference: keep it as written.
                _ => format!("${{{inner}}}"),
            };
            out.push_str(&value);
            rest = r;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<Vec<ExecCommand>, String> {
        parse_exec(value, 7, |s| Ok(s.replace("%i", "inst").replace("%t", "/run")))
    }

    fn one(value: &str) -> ExecCommand {
        let mut v = parse(value).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn simple_and_quoted() {
        let c = one(r#"/usr/sbin/sshd -D $SSHD_OPTS"#);
        assert_eq!(c.path, "/usr/sbin/sshd");
        assert_eq!(c.argv, strings(&["/usr/sbin/sshd", "-D", "$SSHD_OPTS"]));
        assert_eq!(c.flags, ExecFlags::default());
        assert_eq!(c.line, 7);
        let c = one(r#"/bin/sh -c 'echo "a  b"; exit 0' "" \x41"#);
        assert_eq!(c.argv, strings(&["/bin/sh", "-c", "echo \"a  b\"; exit 0", "", "A"]));
    }

    #[test]
    fn prefixes() {
        let c = one("-/sbin/modprobe overlay");
        assert!(c.flags.ignore_failure);
        assert_eq!(c.argv, strings(&["/sbin/modprobe", "overlay"]));
        let c = one("!/usr/sbin/chronyd $DAEMON_OPTS");
        assert!(c.flags.no_user_switch && !c.flags.no_user_switch_without_ambient);
        let c = one("!!/lib/systemd/systemd-timesyncd");
        assert!(c.flags.no_user_switch_without_ambient && !c.flags.no_user_switch);
        let c = one("@-:/bin/busybox sh -c true");
        assert!(c.flags.custom_argv0 && c.flags.ignore_failure && c.flags.no_env_expansion);
        assert_eq!(c.path, "/bin/busybox");
        assert_eq!(c.argv, strings(&["sh", "-c", "true"]));
        assert!(one("+/bin/true").flags.full_privileges);
        assert!(parse("--/bin/true").is_err());
        assert!(parse("+!/bin/true").is_err());
        assert!(parse("-").is_err());
        assert!(parse("@/bin/true").is_err(), "@ needs an argv[0]");
    }

    #[test]
    fn paths() {
        assert_eq!(one("true").path, "true");
        assert!(parse("bin/true").is_err());
        assert!(parse("/bin/../true").is_err());
        assert!(parse("").is_err());
        assert_eq!(one("/usr/libexec/podman/%i-helper").path, "/usr/libexec/podman/inst-helper");
    }

    #[test]
    fn specifiers_after_unquoting() {
        let c = one(r#"/bin/echo "%t/a b" %i"#);
        assert_eq!(c.argv, strings(&["/bin/echo", "/run/a b", "inst"]));
    }

    #[test]
    fn semicolons() {
        let v = parse(r"/bin/a x ; /bin/b \; y;z").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].argv, strings(&["/bin/a", "x"]));
        assert_eq!(v[1].argv, strings(&["/bin/b", ";", "y;z"]));
        assert_eq!(parse("/bin/a ;").unwrap().len(), 1);
    }

    #[test]
    fn bad_quoting_is_an_error() {
        assert!(parse(r#"/bin/echo "open"#).is_err());
        assert!(parse(r"/bin/echo \q").is_err());
    }

    fn env(list: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let owned: Vec<(String, String)> = list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| owned.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn expansion() {
        let e = env(&[("SSHD_OPTS", ""), ("OPTS", "-a 'b c'  -d"), ("P", "/x y"), ("E", "")]);
        let words = strings(&["/usr/sbin/sshd", "-D", "$SSHD_OPTS"]);
        assert_eq!(expand_argv(&words, &e), strings(&["/usr/sbin/sshd", "-D"]), "empty $VAR is zero words");
        let words = strings(&["cmd", "$UNSET", "$OPTS", "--p=${P}", "${P}", "${UNSET}", "$$HOME", "a$P", "$1", "$"]);
        assert_eq!(
            expand_argv(&words, &e),
            strings(&["cmd", "-a", "b c", "-d", "--p=/x y", "/x y", "", "$HOME", "a$P", "$1", "$"])
        );
        let words = strings(&["${E:-dflt}", "${P:-dflt}", "${P:+alt}", "${E:+alt}", "${not valid}", "${open"]);
        assert_eq!(expand_argv(&words, &e), strings(&["dflt", "/x y", "alt", "", "${not valid}", "${open"]));
    }

    #[test]
    fn no_expansion_prefix() {
        let c = one(":/bin/echo $HOME ${HOME}");
        let env = vec![("HOME".to_string(), "/root".to_string())];
        assert_eq!(c.argv_with_env(&env), strings(&["/bin/echo", "$HOME", "${HOME}"]));
        let c = one("/bin/echo $HOME ${HOME}x");
        assert_eq!(c.argv_with_env(&env), strings(&["/bin/echo", "/root", "/rootx"]));
    }
}
