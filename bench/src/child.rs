//! The processes a harness starts: this binary re-executed in another role
//! (so the measured component's CPU and RSS are its own, apart from the
//! load generator's), or another program (HAProxy). Each is a [`Running`]
//! guard that kills and reaps it when dropped, so a harness that stops
//! half-way (an error, a panic) leaves no process behind.

use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::Context;

/// The role of the process a user starts.
pub const HARNESS: &str = "harness";

// The hidden arguments with which a harness re-executes itself as a child
// (`#[command(flatten)]` them into a benchmark's arguments). A plain comment,
// not a doc comment: clap would make that the benchmarks' `--help` text.
#[derive(clap::Args, Debug, Clone)]
pub struct ChildArgs {
    /// [`HARNESS`], or the part the child plays.
    #[arg(long, hide = true, default_value = HARNESS)]
    pub role: String,
    /// The address the child serves on.
    #[arg(long, hide = true, default_value = "")]
    pub bind: String,
    /// What the child connects to (a control plane, an etcd endpoint).
    #[arg(long, hide = true, default_value = "")]
    pub connect: String,
    #[arg(long, hide = true)]
    pub state_dir: Option<PathBuf>,
}

impl ChildArgs {
    /// A child playing `role`, serving on `bind`.
    pub fn new(role: &str, bind: &str) -> ChildArgs {
        ChildArgs {
            role: role.into(),
            bind: bind.into(),
            connect: String::new(),
            state_dir: None,
        }
    }

    /// This binary re-executed as this child (see [`command`]).
    pub fn command(&self, cpus: Option<&str>) -> anyhow::Result<Command> {
        Ok(command(&self.argv()?, cpus))
    }

    /// The arguments that start this child, this binary's path first (to
    /// run it under another program, such as `ip netns exec`).
    pub fn argv(&self) -> anyhow::Result<Vec<OsString>> {
        let mut argv: Vec<OsString> = vec![std::env::current_exe()?.into()];
        for (flag, value) in [
            ("--role", &self.role),
            ("--bind", &self.bind),
            ("--connect", &self.connect),
        ] {
            argv.extend([flag.into(), value.into()]);
        }
        if let Some(dir) = &self.state_dir {
            argv.extend(["--state-dir".into(), dir.into()]);
        }
        Ok(argv)
    }
}

/// A command running `argv` (the program first) with its output discarded,
/// errors on stderr and trackwire logging at `warn`; under `taskset -c
/// cpus` when `cpus` is given.
pub fn command(argv: &[impl AsRef<OsStr>], cpus: Option<&str>) -> Command {
    let mut c = match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).args(argv);
            c
        }
        None => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    c.env("TRACKWIRE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    c
}

/// A child process, killed and reaped when dropped.
pub struct Running(Child);

impl Running {
    pub fn spawn(mut command: Command) -> anyhow::Result<Running> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        Ok(Running(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Its exit status if it has exited (it is then reaped), else `None`.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.0.try_wait()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address that was free a moment ago, for a child to bind.
pub fn free_addr() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

/// Runs `main` (a harness, or a child's role) on a new tokio runtime.
pub fn block_on(main: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(main)
}
