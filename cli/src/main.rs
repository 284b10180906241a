//! `trackwire`: parse arguments, start tracing, run one command, exit with
//! its code (0 ok, 1 operational failure, 2 invalid input).

use std::process::ExitCode;

use clap::Parser;
use trackwire_cli::args::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --log {:?}: {e}", cli.log);
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Plain => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One object per line, with the span fields (pool, agent, …) of
        // the event's spans.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::ControlPlane(a) => trackwire_cli::run::control_plane(*a).await,
            Command::ProbeAgent(a) => trackwire_cli::run::probe_agent(a).await,
            Command::DataPlane(a) => trackwire_cli::run::data_plane(a).await,
            Command::Dev(a) => trackwire_cli::dev::dev(a).await,
            Command::Apply(a) => trackwire_cli::admin::apply(a).await,
            Command::Get(a) => trackwire_cli::admin::get(a, cli.output).await,
            Command::Describe(a) => trackwire_cli::admin::describe(a, cli.output).await,
            Command::Watch(a) => trackwire_cli::admin::watch(a, cli.output).await,
            Command::Drain(a) => trackwire_cli::admin::set_state(a, "drain").await,
            Command::Maint(a) => trackwire_cli::admin::set_state(a, "maint").await,
            Command::Ready(a) => trackwire_cli::admin::set_state(a, "ready").await,
            Command::Check(a) => trackwire_cli::check(&a.file),
            Command::Certs(c) => trackwire_cli::certs::run(c),
            Command::Export(a) => trackwire_cli::export::run(a).await,
            Command::DemoBackend(a) => trackwire_cli::demo::serve(a).await,
            Command::Healthcheck(a) => trackwire_cli::demo::healthcheck(a).await,
            Command::Import(a) => match a.from {
                trackwire_cli::args::ImportFrom::Haproxy => trackwire_cli::import::run(&a.file),
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(trackwire_cli::exit_code(&e))
        }
    }
}
