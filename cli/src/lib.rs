//! The `trackwire` command. `main.rs` parses arguments and starts tracing;
//! everything else lives here so end-to-end tests can reuse the pieces
//! (the demo backends in particular).
//!
//! Exit codes: 0 success; 1 an operational failure (a control plane or etcd
//! unreachable, a port in use); 2 invalid input (flags, config file, or a
//! request the control plane rejected as `InvalidArgument`).

pub mod admin;
pub mod args;
pub mod certs;
pub mod demo;
pub mod dev;
pub mod export;
pub mod import;
pub mod run;

use std::fmt;

/// An error caused by the user's input: exits with code 2.
#[derive(Debug)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

/// The exit code for an error returned by a command.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Invalid>().is_some() {
        2
    } else {
        1
    }
}

/// Reads and validates a config document; every failure is [`Invalid`].
pub fn load_document(path: &std::path::Path) -> anyhow::Result<trackwire_core::config::Document> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Invalid(format!("{}: {e}", path.display())))?;
    trackwire_core::config::Document::parse(&text)
        .map_err(|e| Invalid(format!("{}: {e}", path.display())).into())
}

/// `trackwire check FILE`: validates a config document offline.
pub fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let doc = load_document(path)?;
    // TLS files must exist where the check runs; `check` on an agent host
    // verifies that (the control plane cannot: it runs elsewhere).
    for (i, p) in doc.pools.iter().enumerate() {
        let Some(c) = &p.check else { continue };
        for (field, file) in [
            ("tls_ca_file", &c.tls.ca_file),
            ("tls_client_cert", &c.tls.client_cert),
            ("tls_client_key", &c.tls.client_key),
        ] {
            if let Some(f) = file
                && !f.is_file()
            {
                return Err(Invalid(format!(
                    "{}: pool[{i}].check.{field}: {} does not exist or is not a file",
                    path.display(),
                    f.display()
                ))
                .into());
            }
        }
    }
    let backends: usize = doc.pools.iter().map(|p| p.backends.len()).sum();
    println!(
        "{}: valid ({} pools, {} backends, {} listeners)",
        path.display(),
        doc.pools.len(),
        backends,
        doc.listeners.len()
    );
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
