//! Command-line arguments. Every flag also reads a `TRACKWIRE_…` environment
//! variable, so containers and systemd units configure the same way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use trackwire_core::limits::ServerLimits;

#[derive(Debug, Parser)]
#[command(
    name = "trackwire",
    version,
    about = "Shared, quorum-checked backend health for a fleet of TCP load balancers"
)]
pub struct Cli {
    /// Log filter (tracing-subscriber syntax), e.g. `info` or `trackwire=debug`.
    #[arg(long, env = "TRACKWIRE_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log lines as plain text or as one JSON object each (for log shippers).
    #[arg(
        long,
        env = "TRACKWIRE_LOG_FORMAT",
        value_enum,
        default_value = "plain",
        global = true
    )]
    pub log_format: LogFormat,
    /// Output of get, describe and watch: an aligned table or JSON.
    #[arg(
        short = 'o',
        long,
        env = "TRACKWIRE_OUTPUT",
        value_enum,
        default_value = "table",
        global = true
    )]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a control-plane replica (etcd with --etcd, else the embedded store).
    ControlPlane(Box<ControlPlaneArgs>),
    /// Run a probe agent that checks the backends the control plane assigns it.
    ProbeAgent(ProbeAgentArgs),
    /// Run a TCP proxy serving the config's listeners on the streamed health map.
    DataPlane(DataPlaneArgs),
    /// Run everything in one process: control plane, agent, proxy and demo backends.
    Dev(DevArgs),
    /// Store the pools of a config file in the control plane.
    Apply(ApplyArgs),
    /// List pools, backends or agents.
    Get(GetArgs),
    /// Drain a backend: no new connections, open sessions continue, checks keep running.
    Drain(StateArgs),
    /// Put a backend in maintenance: no traffic and no checks.
    Maint(StateArgs),
    /// Validate a config file offline (exit 0 when valid, 2 naming the field when not).
    Check(CheckArgs),
    /// Show one backend in detail: state, admin state, every agent's vote.
    Describe(DescribeArgs),
    /// Stream health transitions and admin changes as they happen.
    Watch(WatchArgs),
    /// Translate another load balancer's configuration into a trackwire document (stdout).
    Import(ImportArgs),
    /// Print the stored pools as another load balancer's configuration (stdout).
    Export(ExportArgs),
    /// Return a backend to service (overrides the pool spec until `--clear`).
    Ready(StateArgs),
    /// Make a CA and certificates for mutual TLS between trackwire processes.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Serve a demo HTTP backend (`/readyz` flipped by POST /down, /up, /toggle).
    DemoBackend(DemoBackendArgs),
    /// Exit 0 when this host's trackwire process answers /healthz with 200
    /// (for container HEALTHCHECKs), else 1.
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Args)]
pub struct DemoBackendArgs {
    /// Where to serve HTTP.
    #[arg(long, env = "TRACKWIRE_DEMO_BIND", default_value = "0.0.0.0:8080")]
    pub bind: std::net::SocketAddr,
    /// The name it answers `hello from NAME` with.
    #[arg(long, env = "TRACKWIRE_DEMO_NAME", default_value = "demo")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The process's HTTP port, as given to it (an unspecified address such
    /// as 0.0.0.0 is reached on loopback). The same variable the process
    /// reads, so a container's HEALTHCHECK needs no flags.
    #[arg(long, env = "TRACKWIRE_HTTP_BIND", default_value = "127.0.0.1:7401")]
    pub http_bind: std::net::SocketAddr,
    /// Give up after this long.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write DIR/ca.crt and DIR/ca.key: a new CA for one trust domain.
    Init(CertsInitArgs),
    /// Write DIR/ROLE-NAME.crt and DIR/ROLE-NAME.key, signed by DIR's CA.
    Issue(CertsIssueArgs),
}

#[derive(Debug, Args)]
pub struct CertsInitArgs {
    /// Directory for the CA's files (created when missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// The SPIFFE trust domain every identity of this CA belongs to.
    #[arg(long, default_value = trackwire_transport::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Lifetime of the CA certificate, in days.
    #[arg(long, default_value_t = trackwire_transport::pki::CA_DAYS)]
    pub days: u32,
}

#[derive(Debug, Args)]
pub struct CertsIssueArgs {
    /// Directory holding ca.crt and ca.key; the certificate is written there.
    #[arg(long)]
    pub dir: PathBuf,
    /// admin, agent, proxy or control-plane.
    #[arg(long)]
    pub role: trackwire_transport::Role,
    /// The identity's name (an agent's id, a proxy's id, an operator, a replica).
    #[arg(long)]
    pub name: String,
    /// A DNS name or IP address the certificate serves as (repeatable;
    /// control-plane replicas need the names clients dial).
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// Lifetime in days.
    #[arg(long, default_value_t = trackwire_transport::pki::DEFAULT_LEAF_DAYS)]
    pub days: u32,
}

/// `--tls-ca`, `--tls-cert`, `--tls-key`: mutual TLS on gRPC links.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// CA bundle (PEM) that peers' certificates must chain to (several CAs
    /// during a rollover). With --tls-cert and --tls-key: mutual TLS.
    #[arg(long, env = "TRACKWIRE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM; its URI SAN is its identity).
    #[arg(long, env = "TRACKWIRE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This process's private key (PEM).
    #[arg(long, env = "TRACKWIRE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    pub fn files(&self) -> Result<Option<trackwire_transport::TlsFiles>, String> {
        trackwire_transport::TlsFiles::from_flags(
            self.tls_ca.clone(),
            self.tls_cert.clone(),
            self.tls_key.clone(),
        )
    }
}

/// `--control-plane` and a bearer token, for the admin commands.
#[derive(Debug, Args)]
pub struct AdminTarget {
    #[command(flatten)]
    pub control_plane: ControlPlane,
    /// A file holding the admin bearer token (sent as `authorization:
    /// Bearer …`), for control planes started with --admin-token-file.
    #[arg(long, env = "TRACKWIRE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// What to describe (only `backend`).
    pub kind: DescribeKind,
    /// The backend, as POOL/NAME.
    pub backend: String,
    #[command(flatten)]
    pub control_plane: AdminTarget,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DescribeKind {
    Backend,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only these pools (repeatable; default all).
    #[arg(long = "pool")]
    pub pools: Vec<String>,
    /// Replay the changes since this revision first, when the server still has it.
    #[arg(long, default_value_t = 0)]
    pub from_revision: u64,
    /// Stop after this many events (0: until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: usize,
    #[command(flatten)]
    pub control_plane: AdminTarget,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ImportFrom {
    Haproxy,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The configuration's format.
    pub from: ImportFrom,
    /// The configuration file (e.g. haproxy.cfg).
    pub file: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportTo {
    /// HAProxy `backend` sections whose servers follow the map through agent-check.
    Haproxy,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The configuration's format.
    pub to: ExportTo,
    /// Where HAProxy reaches a control plane's --agent-check-bind (HOST:PORT).
    #[arg(long, env = "TRACKWIRE_AGENT_CHECK_ADDR")]
    pub agent_check_addr: String,
    /// HAProxy's agent-inter: how often it asks trackwire.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub agent_inter: Duration,
    /// HAProxy's own TCP check interval (`check inter`).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub check_inter: Duration,
    #[command(flatten)]
    pub control_plane: AdminTarget,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config document to validate.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// The backend, as POOL/NAME.
    pub backend: String,
    /// Why (kept with the state, shown to other operators).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Remove the override instead: the pool spec's admin state applies again.
    #[arg(long)]
    pub clear: bool,
    #[command(flatten)]
    pub control_plane: AdminTarget,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    trackwire_core::duration::parse(s)
}

/// A comma-separated endpoint list, parsed as one flag value.
#[derive(Debug, Clone)]
pub struct Urls(pub Vec<String>);

/// `--control-plane`, for every command that talks to the control plane.
#[derive(Debug, Args)]
pub struct ControlPlane {
    /// Control-plane endpoints, comma-separated (http://host:port,...).
    #[arg(
        long = "control-plane",
        env = "TRACKWIRE_CONTROL_PLANE",
        value_parser = parse_urls
    )]
    pub urls: Urls,
    #[command(flatten)]
    pub tls: TlsArgs,
}

fn parse_urls(s: &str) -> Result<Urls, String> {
    trackwire_core::urls::parse_urls(s).map(Urls)
}

#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    /// etcd endpoints, comma-separated (http://host:port,...). Without it the embedded store is used.
    #[arg(long, env = "TRACKWIRE_ETCD", value_parser = parse_urls)]
    pub etcd: Option<Urls>,
    /// gRPC address for agents, proxies and admin clients.
    #[arg(long, env = "TRACKWIRE_GRPC_BIND", default_value = "0.0.0.0:7400")]
    pub grpc_bind: SocketAddr,
    /// HTTP address for /metrics, /healthz, /readyz and the status page.
    #[arg(long, env = "TRACKWIRE_HTTP_BIND", default_value = "0.0.0.0:7401")]
    pub http_bind: SocketAddr,
    /// Serve HAProxy's agent-check protocol here (`agent-send "<pool>/<backend>\n"`): off unless given.
    #[arg(long, env = "TRACKWIRE_AGENT_CHECK_BIND")]
    pub agent_check_bind: Option<SocketAddr>,
    /// A config document whose [[pool]] sections are applied at start.
    #[arg(long, env = "TRACKWIRE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Store key prefix.
    #[arg(long, env = "TRACKWIRE_PREFIX", default_value = "/trackwire/")]
    pub prefix: String,
    /// How long an agent's verdicts count after it was last heard from.
    #[arg(long, env = "TRACKWIRE_AGENT_TTL", default_value = "10s", value_parser = parse_duration)]
    pub agent_ttl: Duration,
    /// How long a backend keeps its last decided state (marked stale) once
    /// no live verdict backs it; then the pool's initial_state applies.
    /// 0 trusts stale states without bound.
    #[arg(long, env = "TRACKWIRE_STALE_MAX", default_value = "15m", value_parser = parse_duration)]
    pub stale_max: Duration,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// A file holding a bearer token that grants the admin role to clients
    /// without a certificate (compared in constant time, never logged).
    #[arg(long, env = "TRACKWIRE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub etcd_tls: EtcdTlsArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// TLS to etcd (`--etcd https://…`), with a client certificate.
#[derive(Debug, Args)]
pub struct EtcdTlsArgs {
    /// CA bundle (PEM) etcd's server certificate must chain to.
    #[arg(long, env = "TRACKWIRE_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth.
    #[arg(long, env = "TRACKWIRE_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "TRACKWIRE_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
}

/// The gRPC port's limits (see `trackwire_core::limits::ServerLimits`).
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Open connections on the gRPC port; at the cap new ones wait in the backlog.
    #[arg(long, env = "TRACKWIRE_MAX_CONNECTIONS", default_value_t = ServerLimits::default().max_connections)]
    pub max_connections: usize,
    /// Connections still in their TLS handshake or before their HTTP/2 preface.
    #[arg(long, env = "TRACKWIRE_MAX_PENDING_HANDSHAKES", default_value_t = ServerLimits::default().max_pending_handshakes)]
    pub max_pending_handshakes: usize,
    /// Deadline for a TLS handshake.
    #[arg(long, env = "TRACKWIRE_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Deadline for the HTTP/2 client preface.
    #[arg(long, env = "TRACKWIRE_PREFACE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub preface_timeout: Duration,
    /// Largest gRPC message, in bytes.
    #[arg(long, env = "TRACKWIRE_MAX_MESSAGE_BYTES", default_value_t = ServerLimits::default().max_message_bytes)]
    pub max_message_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, env = "TRACKWIRE_MAX_CONCURRENT_STREAMS", default_value_t = ServerLimits::default().max_concurrent_streams)]
    pub max_concurrent_streams: u32,
    /// HTTP/2 keep-alive ping interval (and the wait for its answer).
    #[arg(long, env = "TRACKWIRE_KEEPALIVE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,
    /// Messages one agent session may send per second (bursts of 10 s worth).
    #[arg(long, env = "TRACKWIRE_AGENT_REPORTS_PER_SECOND", default_value_t = ServerLimits::default().agent_reports_per_second)]
    pub agent_reports_per_second: u32,
}

impl LimitArgs {
    pub fn limits(&self) -> Result<ServerLimits, String> {
        let l = ServerLimits {
            max_connections: self.max_connections,
            max_pending_handshakes: self.max_pending_handshakes,
            handshake_timeout: self.handshake_timeout,
            preface_timeout: self.preface_timeout,
            max_message_bytes: self.max_message_bytes,
            max_concurrent_streams: self.max_concurrent_streams,
            keepalive_interval: self.keepalive_interval,
            agent_reports_per_second: self.agent_reports_per_second,
        };
        l.validate()?;
        Ok(l)
    }
}

#[derive(Debug, Args)]
pub struct ProbeAgentArgs {
    #[command(flatten)]
    pub control_plane: ControlPlane,
    /// Zone label of this agent (e.g. a datacenter or availability zone).
    #[arg(long, env = "TRACKWIRE_ZONE", default_value = "")]
    pub zone: String,
    /// Directory holding the agent's stable identity.
    #[arg(long, env = "TRACKWIRE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// HTTP address for /metrics, /healthz, /readyz.
    #[arg(long, env = "TRACKWIRE_HTTP_BIND", default_value = "0.0.0.0:7402")]
    pub http_bind: SocketAddr,
    /// Heartbeat interval on the control-plane session (keep it well below the agent TTL).
    #[arg(long, env = "TRACKWIRE_HEARTBEAT", default_value = "2s", value_parser = parse_duration)]
    pub heartbeat: Duration,
}

#[derive(Debug, Args)]
pub struct DataPlaneArgs {
    #[command(flatten)]
    pub control_plane: ControlPlane,
    /// Config document whose [[listener]] sections this proxy serves.
    #[arg(long, env = "TRACKWIRE_CONFIG")]
    pub config: PathBuf,
    /// Directory where the last health map is kept (fail static across restarts).
    #[arg(long, env = "TRACKWIRE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// HTTP address for /metrics, /healthz, /readyz.
    #[arg(long, env = "TRACKWIRE_HTTP_BIND", default_value = "0.0.0.0:7403")]
    pub http_bind: SocketAddr,
    /// Identity shown to the control plane (default: a random UUID).
    #[arg(long, env = "TRACKWIRE_PROXY_ID")]
    pub proxy_id: Option<String>,
    /// How long open sessions may continue after SIGTERM.
    #[arg(long, env = "TRACKWIRE_DRAIN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub drain_grace: Duration,
    /// Worker threads serving connections, each with its own socket per
    /// listener (SO_REUSEPORT); 0: one per CPU.
    #[arg(long, env = "TRACKWIRE_WORKERS", default_value_t = 0)]
    pub workers: usize,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Config document (pools and listeners). Without it: three demo backends and one listener.
    #[arg(long, env = "TRACKWIRE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Proxy address of the demo listener (ignored with --config, whose listeners say where).
    #[arg(long, env = "TRACKWIRE_PROXY_BIND", default_value = "127.0.0.1:8080")]
    pub proxy_bind: SocketAddr,
    /// Control-plane gRPC address.
    #[arg(long, env = "TRACKWIRE_GRPC_BIND", default_value = "127.0.0.1:7400")]
    pub grpc_bind: SocketAddr,
    /// Control-plane HTTP address (status page, /metrics).
    #[arg(long, env = "TRACKWIRE_HTTP_BIND", default_value = "127.0.0.1:7401")]
    pub http_bind: SocketAddr,
    /// Serve HAProxy's agent-check protocol here (off unless given).
    #[arg(long, env = "TRACKWIRE_AGENT_CHECK_BIND")]
    pub agent_check_bind: Option<SocketAddr>,
    /// Mutual TLS on every gRPC link, with a dev CA kept in --state-dir.
    #[arg(long)]
    pub tls: bool,
    /// Where `--tls` keeps its CA and certificates.
    #[arg(long, env = "TRACKWIRE_STATE_DIR", default_value = ".trackwire-dev")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Config document whose [[pool]] sections are applied.
    #[arg(short = 'f', long = "file", env = "TRACKWIRE_FILE")]
    pub file: PathBuf,
    /// Validate on the control plane and print what would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply only if no stored pool changed after this revision (e.g. the one
    /// a `--dry-run` printed); a stale revision writes nothing and exits 2.
    /// 0: apply whatever is stored.
    #[arg(long, env = "TRACKWIRE_EXPECTED_REVISION", default_value_t = 0)]
    pub expected_revision: u64,
    #[command(flatten)]
    pub control_plane: AdminTarget,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GetWhat {
    Pools,
    Backends,
    Agents,
    /// Data-plane proxies subscribed to this control-plane replica.
    Proxies,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to list.
    pub what: GetWhat,
    #[command(flatten)]
    pub control_plane: AdminTarget,
}
