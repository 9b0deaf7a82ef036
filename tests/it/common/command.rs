//! Running external programs with a deadline and failing with everything they said.

use std::process::Output;
use std::time::Duration;

/// Runs `cmd` with stdin closed, kills it after `timeout`, and panics unless it exits 0. The
/// panic message carries the command line, the exit status, stdout and stderr.
pub fn run_ok(cmd: &mut assert_cmd::Command, timeout: Duration) -> Output {
    let output = run(cmd, timeout);
    if !output.status.success() {
        panic!("{}", describe_failure(cmd, &output, timeout));
    }
    output
}

/// Runs `cmd` with stdin closed and kills it after `timeout`; the caller judges the outcome.
pub fn run(cmd: &mut assert_cmd::Command, timeout: Duration) -> Output {
    cmd.timeout(timeout)
        .output()
        .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", command_line(cmd)))
}

/// `program arg…`, for messages.
pub fn command_line(cmd: &assert_cmd::Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn describe_failure(cmd: &assert_cmd::Command, output: &Output, timeout: Duration) -> String {
    // A kill on timeout shows up as "signal: 9"; say so rather than leave the reader guessing.
    let status = match output.status.code() {
        Some(code) => format!("exit code {code}"),
        None => format!("killed ({}; timeout was {timeout:?})", output.status),
    };
    format!(
        "`{}` failed: {status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        command_line(cmd),
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end(),
    )
}
