//! The `keyward` binary: parse the command line, set up logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use keyward::config::{AuditCommand, Cli, Command, DatabaseArgs};
use keyward::{Application, bootstrap, cli, open_store, telemetry};
use keyward_core::{KeyName, LookupHasher, OrganizationId};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    // Boxed: each command's future (the server's above all) is deeply
    // nested, and inlined into `main`'s they passed the compiler's type
    // depth limit in release builds.
    match Box::pin(run(cli.command)).await {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match command {
        Command::Serve(settings) => {
            let app = Box::pin(Application::build(*settings)).await?;
            Box::pin(app.run_until(shutdown_signal())).await?;
        }
        Command::Migrate(args) => {
            open(&args).await?;
            eprintln!("migrations applied");
        }
        Command::Bootstrap(args) => {
            let organization = OrganizationId::parse(&args.organization)
                .map_err(|e| format!("--organization {e}"))?;
            let name = KeyName::parse(&args.name).map_err(|e| format!("--name {e}"))?;
            let (store, hasher) = open(&args.database).await?;
            let secret = bootstrap(&store, &hasher, organization, name).await?;
            // The only line on stdout, so scripts can capture it.
            println!("{}", secret.expose());
        }
        // The admin CLI prints its own errors and picks its exit codes.
        Command::Keys(args) => return Ok(Box::pin(cli::run_keys(*args)).await),
        Command::Events(args) => return Ok(Box::pin(cli::run_events(args)).await),
        Command::Audit(AuditCommand::Verify(args)) => {
            let (store, _) = open(&args.database).await?;
            let report = store.verify_audit(args.organization.as_deref()).await?;
            println!(
                "checked {} events in {} organizations",
                report.events_checked, report.organizations_checked
            );
            for link in &report.broken {
                println!(
                    "organization {}: chain broken at event seq {}: {}",
                    link.organization_id, link.seq, link.reason
                );
            }
            if !report.broken.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
            println!("audit log intact");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn open(
    args: &DatabaseArgs,
) -> Result<(keyward_store::Store, LookupHasher), Box<dyn std::error::Error>> {
    let hasher = args.hasher()?;
    let store = open_store(args, &hasher).await?;
    Ok((store, hasher))
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
