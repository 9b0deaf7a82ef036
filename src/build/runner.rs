//! Running a builder stage: its own process group (so a timeout or Ctrl-C takes down
//! debootstrap, mksquashfs and the rest with it), stdout and stderr read concurrently line by
//! line (reading them one after the other deadlocks a noisy child), every line handed to the
//! caller, the last lines kept for the error message.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};

/// Lines kept for error messages.
const TAIL: usize = 25;
/// How long a stage gets to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// One program run.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// The program (a name on PATH or a path).
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables.
    pub env: Vec<(String, OsString)>,
}

impl Invocation {
    /// The command line, for messages.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// How a run ended, when it did not succeed.
#[derive(Debug)]
pub enum RunFailure {
    /// The program could not be started.
    Spawn(std::io::Error),
    /// It exited unsuccessfully.
    Exit {
        /// Its status.
        status: ExitStatus,
        /// Its last output lines.
        tail: Vec<String>,
    },
    /// It ran past the time limit and was killed.
    TimedOut {
        /// The limit.
        after: Duration,
        /// Its last output lines.
        tail: Vec<String>,
    },
    /// We were asked to stop (SIGINT/SIGTERM) and killed it.
    Interrupted {
        /// Its last output lines.
        tail: Vec<String>,
    },
}

fn pump(stream: impl Read, tail: &Mutex<VecDeque<String>>, line: &(dyn Fn(&str) + Sync)) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let text = text.trim_end_matches(['\n', '\r']);
                line(text);
                let mut t = tail
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if t.len() == TAIL {
                    t.pop_front();
                }
                t.push_back(text.to_owned());
            }
        }
    }
}

fn stop(child: &mut Child) {
    let Some(pid) = Pid::from_raw(child.id() as i32) else {
        let _ = child.kill();
        return;
    };
    let _ = kill_process_group(pid, Signal::TERM);
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            // The leader is gone; make sure its group is too.
            let _ = kill_process_group(pid, Signal::KILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill_process_group(pid, Signal::KILL);
    let _ = child.wait();
}

/// Runs `inv` to completion, handing each output line to `line`.
pub fn run(
    inv: &Invocation,
    timeout: Option<Duration>,
    interrupted: &AtomicBool,
    line: &(dyn Fn(&str) + Sync),
) -> Result<(), RunFailure> {
    let mut child = Command::new(&inv.program)
        .args(&inv.args)
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(RunFailure::Spawn)?;
    let started = Instant::now();
    let tail = Mutex::new(VecDeque::with_capacity(TAIL));
    let out = child.stdout.take();
    let err = child.stderr.take();
    let outcome = std::thread::scope(|scope| {
        if let Some(out) = out {
            scope.spawn(|| pump(out, &tail, line));
        }
        if let Some(err) = err {
            scope.spawn(|| pump(err, &tail, line));
        }
        loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) => {}
                Err(e) => {
                    stop(&mut child);
                    break Err(RunFailure::Spawn(e));
                }
            }
            if interrupted.load(Ordering::Relaxed) {
                stop(&mut child);
                break Err(RunFailure::Interrupted { tail: Vec::new() });
            }
            if let Some(limit) = timeout
                && started.elapsed() >= limit
            {
                stop(&mut child);
                break Err(RunFailure::TimedOut {
                    after: limit,
                    tail: Vec::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let tail: Vec<String> = tail
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into();
    match outcome {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(RunFailure::Exit { status, tail }),
        Err(RunFailure::TimedOut { after, .. }) => Err(RunFailure::TimedOut { after, tail }),
        Err(RunFailure::Interrupted { .. }) => Err(RunFailure::Interrupted { tail }),
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Invocation {
        Invocation {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("GREETING".into(), "hello".into())],
        }
    }

    #[test]
    fn streams_both_outputs_and_passes_the_environment() {
        let seen = Mutex::new(Vec::new());
        run(
            &sh("echo $GREETING; echo oops >&2"),
            None,
            &AtomicBool::new(false),
            &|l| seen.lock().unwrap().push(l.to_owned()),
        )
        .unwrap();
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, ["hello", "oops"]);
    }

    #[test]
    fn a_failure_keeps_the_last_lines() {
        let err = run(
            &sh("for i in $(seq 1 40); do echo line $i; done; exit 3"),
            None,
            &AtomicBool::new(false),
            &|_| {},
        )
        .unwrap_err();
        let RunFailure::Exit { status, tail } = err else {
            panic!("{err:?}")
        };
        assert_eq!(status.code(), Some(3));
        assert_eq!(tail.len(), TAIL);
        assert_eq!(tail.last().map(String::as_str), Some("line 40"));
    }

    #[test]
    fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        // The grandchild ignores nothing special; it must die with its group.
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let t0 = Instant::now();
        let err = run(
            &sh(&script),
            Some(Duration::from_millis(300)),
            &AtomicBool::new(false),
            &|_| {},
        )
        .unwrap_err();
        assert!(matches!(err, RunFailure::TimedOut { .. }), "{err:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "took {:?}",
            t0.elapsed()
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "grandchild {pid} survived"
        );
    }

    #[test]
    fn an_interrupt_stops_the_run() {
        let flag = AtomicBool::new(true);
        let err = run(&sh("sleep 30"), None, &flag, &|_| {}).unwrap_err();
        assert!(matches!(err, RunFailure::Interrupted { .. }), "{err:?}");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let inv = Invocation {
            program: "/nonexistent/distrobuilder".into(),
            args: vec![],
            env: vec![],
        };
        assert!(matches!(
            run(&inv, None, &AtomicBool::new(false), &|_| {}),
            Err(RunFailure::Spawn(_))
        ));
    }
}
