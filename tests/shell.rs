//! Shell integration: the completion scripts and man pages both programs
//! print, loaded by the real shells and rendered by the real groff.

use std::fs;
use std::path::Path;
use std::process::Command;

use rexpect::session::{spawn_with_options, Options};

use crate::util::{example, expect_all, run};

/// What `program args...` prints on stdout; it must succeed, silently.
fn printed(program: &str, args: &[&str]) -> String {
    let mut command = Command::new(example(program));
    command.args(args);
    let (status, stdout, stderr) = run(command);
    assert!(status.success(), "{program} {args:?}: {status}\n{stderr}");
    assert_eq!(stderr, "", "{program} {args:?}");
    stdout
}

/// Bash with `script` loaded, then `commands`: its stdout.
fn bash(script: &Path, commands: &str) -> String {
    let mut command = Command::new("bash");
    command
        .args(["--norc", "--noprofile", "-c"])
        .arg(format!("set -e\nsource {}\n{commands}", script.display()));
    let (status, stdout, stderr) = run(command);
    assert!(status.success(), "bash: {status}\n{stderr}");
    stdout
}

/// The words bash's completion function for `program` offers for `line`
/// (completing its last word), as the shell calls it on Tab.
fn bash_completes(script: &Path, program: &str, line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let out = bash(
        script,
        &format!(
            // The function `complete -p` names: the script's registration.
            "spec=$(complete -p {program})\n\
             function=$(sed -E 's/.* -F ([^ ]+) .*/\\1/' <<<\"$spec\")\n\
             COMP_WORDS=({words})\n\
             COMP_CWORD={cword}\n\
             COMP_LINE='{line}'\n\
             COMP_POINT=${{#COMP_LINE}}\n\
             \"$function\" {program} '{current}' '{previous}'\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            words = quoted.join(" "),
            cword = words.len() - 1,
            current = words[words.len() - 1],
            previous = words[words.len() - 2],
        ),
    );
    out.lines().map(str::to_owned).collect()
}

fn saved(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn bash_completes_the_clients_subcommands_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let script = saved(
        dir.path(),
        "client.bash",
        &printed("client", &["completions", "bash"]),
    );
    assert_eq!(bash_completes(&script, "client", "client att"), ["attach"]);
    assert_eq!(
        bash_completes(&script, "client", "client attach --fo"),
        ["--force", "--for"]
    );
    assert_eq!(
        bash_completes(&script, "client", "client attach --forc"),
        ["--force"]
    );
    let after_st = bash_completes(&script, "client", "client st");
    assert_eq!(after_st, ["status", "stack"]);
    // The client's own subcommands, and its options.
    assert_eq!(
        bash_completes(&script, "client", "client com"),
        ["completions"]
    );
    assert_eq!(
        bash_completes(&script, "client", "client completions f"),
        ["fish"]
    );
    assert_eq!(bash_completes(&script, "client", "client --li"), ["--list"]);
}

#[test]
fn bash_completes_client_att_on_tab_in_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let script = saved(
        dir.path(),
        "client.bash",
        &printed("client", &["completions", "bash"]),
    );
    // rexpect turns the terminal's echo off, and readline then shows
    // nothing typed: `stty echo` first, as in a real terminal.
    let rc = saved(
        dir.path(),
        "rc",
        &format!(
            "stty echo\nPS1='ready$ '\nbind 'set bell-style none'\n\
             bind 'set enable-bracketed-paste off'\nsource {}\n",
            script.display()
        ),
    );
    let mut bash = Command::new("bash");
    bash.args(["--noprofile", "--rcfile"])
        .arg(&rc)
        .arg("-i")
        .env("TERM", "dumb");
    let options = Options::new()
        .timeout_ms(Some(20_000))
        .strip_ansi_escape_codes(true);
    let mut session = spawn_with_options(bash, options).unwrap();
    expect_all(&mut session, &["ready$ "]);
    // Tab completes the word: the shell shows it whole, a space after.
    session.send("client att\t").unwrap();
    session.flush().unwrap();
    expect_all(&mut session, &["client attach "]);
    session.send("--forc\t").unwrap();
    session.flush().unwrap();
    expect_all(&mut session, &["--force "]);
    // Abandon the line, then leave.
    session.send_control('c').unwrap();
    expect_all(&mut session, &["ready$ "]);
    session.send_line("exit").unwrap();
    session.exp_eof().unwrap();
}

#[test]
fn bash_completes_the_controllers_options() {
    let dir = tempfile::tempdir().unwrap();
    let script = saved(
        dir.path(),
        "controller.bash",
        &printed("controller", &["--completions", "bash"]),
    );
    assert_eq!(
        bash_completes(&script, "controller", "controller --gra"),
        ["--granter", "--grant-method", "--grace"]
    );
    assert_eq!(
        bash_completes(&script, "controller", "controller --completions z"),
        ["zsh"]
    );
    assert_eq!(
        bash_completes(&script, "controller", "controller --agent al"),
        ["always"]
    );
    assert_eq!(
        bash_completes(&script, "controller", "controller --restart on"),
        ["on-failure"]
    );
    assert_eq!(
        bash_completes(&script, "controller", "controller --granter y"),
        ["yama"]
    );
    assert_eq!(
        bash_completes(&script, "controller", "controller --grant-method r"),
        ["remote-exec"]
    );
}

/// `shell -n` reads `script` without running it. The shell must be here
/// (scripts/test.sh installs zsh and fish): missing, the test fails.
fn syntax_checked(shell: &str, flag: &str, script: &Path) {
    let out = Command::new(shell)
        .arg(flag)
        .arg(script)
        .output()
        .unwrap_or_else(|err| panic!("{shell} (scripts/test.sh installs it): {err}"));
    assert!(
        out.status.success(),
        "{shell} {flag} {}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn zsh_and_fish_scripts_parse_and_name_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    for program in ["client", "controller"] {
        let asked = |shell| match program {
            "client" => printed(program, &["completions", shell]),
            _ => printed(program, &["--completions", shell]),
        };
        let zsh = asked("zsh");
        assert!(zsh.starts_with(&format!("#compdef {program}\n")), "{zsh}");
        let fish = asked("fish");
        assert!(fish.contains(&format!("complete -c {program} ")), "{fish}");
        syntax_checked("zsh", "-n", &saved(dir.path(), "_zsh", &zsh));
        syntax_checked("fish", "--no-execute", &saved(dir.path(), "x.fish", &fish));
        if program == "client" {
            for sub in [
                "attach",
                "status",
                "stack",
                "tasks",
                "top",
                "completions",
                "man",
            ] {
                assert!(zsh.contains(&format!("'{sub}:")), "zsh lacks {sub}");
                assert!(fish.contains(&format!("-a \"{sub}\"")), "fish lacks {sub}");
            }
        }
    }
    // In fish itself: `client att` completes to attach.
    let script = saved(
        dir.path(),
        "client.fish",
        &printed("client", &["completions", "fish"]),
    );
    let out = Command::new("fish")
        .arg("--no-config")
        .arg("-c")
        .arg(format!(
            "source {}; complete -C 'client att'",
            script.display()
        ))
        .output()
        .expect("fish (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fish: {text}");
    assert!(text.starts_with("attach\t"), "{text}");
}

/// `page` rendered by groff as man(1) would: the text, with no warning.
fn rendered(page: &Path) -> String {
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P", "-cbou"])
        .arg(page)
        .output()
        .expect("groff (apt-get install groff-base)");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && warnings.is_empty(),
        "{}: {warnings}",
        page.display()
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn man_pages_render_with_their_options() {
    let dir = tempfile::tempdir().unwrap();
    let controller = rendered(&saved(
        dir.path(),
        "controller.1",
        &printed("controller", &["--man"]),
    ));
    for text in [
        "NAME",
        "SYNOPSIS",
        "OPTIONS",
        "--grant-method",
        "--completions",
        "--man",
    ] {
        assert!(controller.contains(text), "no {text} in:\n{controller}");
    }
    let client = rendered(&saved(dir.path(), "client.1", &printed("client", &["man"])));
    for text in [
        "NAME",
        "SUBCOMMANDS",
        "client-attach(1)",
        "--session",
        "completions",
    ] {
        assert!(client.contains(text), "no {text} in:\n{client}");
    }

    // --dir: a page per subcommand, the paths on stdout.
    let man1 = dir.path().join("share/man/man1");
    let listed = printed("client", &["man", "--dir", man1.to_str().unwrap()]);
    let files: Vec<&str> = listed.lines().collect();
    assert_eq!(
        files.first(),
        Some(&man1.join("client.1").to_str().unwrap())
    );
    let attach = man1.join("client-attach.1");
    assert!(files.contains(&attach.to_str().unwrap()), "{listed}");
    assert_eq!(files.len(), fs::read_dir(&man1).unwrap().count());
    let attach = rendered(&attach);
    for text in ["client-attach", "--force", "--with"] {
        assert!(attach.contains(text), "no {text} in:\n{attach}");
    }
    // man(1) finds them through MANPATH, as it would in ~/.local/share/man.
    let out = Command::new("man")
        .env("MANPATH", dir.path().join("share/man"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .args(["client-attach"])
        .output()
        .expect("man (scripts/test.sh installs man-db)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("--force"),
        "man: {text}"
    );
}

#[test]
fn an_unknown_shell_is_a_usage_error_naming_the_known_ones() {
    for (program, args) in [
        ("client", &["completions", "tcsh"][..]),
        ("controller", &["--completions", "tcsh"]),
    ] {
        let mut command = Command::new(example(program));
        command.args(args);
        let (status, stdout, stderr) = run(command);
        assert_eq!(status.code(), Some(2), "{program}: {stderr}");
        assert_eq!(stdout, "");
        assert!(stderr.contains("invalid value 'tcsh'"), "{stderr}");
        assert!(
            stderr.contains("[possible values: bash, elvish, fish, powershell, zsh]"),
            "{stderr}"
        );
    }
    // The controller's are options: with a target they are the target's.
    let mut command = Command::new(example("controller"));
    command.args(["--man", "target.py"]);
    let (status, _, stderr) = run(command);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'--man' cannot be used with"), "{stderr}");
}
