//! `ironbridge`: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use ironbridge::cli::{Cli, Command, ModelSubcommand, ModelTarget};
use ironbridge::config::GatewayConfig;
use ironbridge::model_cli::{ModelAction, ModelCommandError};
use tokio_util::sync::CancellationToken;

/// Exit status for a configuration that does not validate.
const EXIT_INVALID_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // Before any thread starts: it sets an environment variable.
    ironbridge_models::turn_off_onednn_jit_profiling();
    let cli = Cli::parse();
    // A one-shot command reports through its own output and exit status;
    // the OPC UA library's connection chatter would bury it.
    match cli.command {
        Command::Run { .. } => ironbridge::telemetry::init_logging(),
        _ => ironbridge::telemetry::init_logging_at("error"),
    }
    match cli.command {
        Command::Validate { config } => match GatewayConfig::load(&config) {
            Ok(c) => {
                println!(
                    "{}: valid ({} machine(s), {} model(s))",
                    config.display(),
                    c.machines.len(),
                    c.models.len()
                );
                if let Some(server) = &c.modbus_server {
                    // The addresses an HMI needs, before anything runs.
                    match ironbridge::modbus_server::register_map(&c) {
                        Ok(map) => {
                            print!("Modbus server on {}\n{}", server.address, map.describe())
                        }
                        Err(e) => {
                            eprintln!("{e}");
                            return ExitCode::from(EXIT_INVALID_CONFIG);
                        }
                    }
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprint!("{errors}");
                ExitCode::from(EXIT_INVALID_CONFIG)
            }
        },
        Command::Discover {
            endpoint,
            security,
            mode,
            username,
            password_env,
            trust_server_cert,
            pki_dir,
            max_nodes,
        } => {
            let request = ironbridge::discover::DiscoverRequest {
                client: ironbridge::discover::OpcUaClientArgs {
                    endpoint,
                    security,
                    mode,
                    username,
                    password_env,
                    trust_server_cert,
                    pki_dir,
                },
                max_nodes,
            };
            match ironbridge::discover::run(request) {
                Ok(block) => {
                    print!("{block}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ironbridge discover: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Model { action } => match action {
            ModelSubcommand::Verify {
                dir,
                data,
                label,
                against,
                margin,
                json,
            } => run_verify(
                ironbridge::model_verify::VerifyRequest {
                    dir,
                    data,
                    label,
                    against,
                    margin,
                },
                json,
            ),
            ModelSubcommand::Activate { target, version } => {
                run_model_command(target, ModelAction::Activate { version })
            }
            ModelSubcommand::Rollback { target } => {
                run_model_command(target, ModelAction::Rollback)
            }
            ModelSubcommand::Shadow { target, version } => {
                run_model_command(target, ModelAction::StartShadow { version })
            }
            ModelSubcommand::Unshadow { target } => {
                run_model_command(target, ModelAction::StopShadow)
            }
        },
        Command::Run { config } => {
            let config = match GatewayConfig::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprint!("{errors}");
                    return ExitCode::from(EXIT_INVALID_CONFIG);
                }
            };
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ironbridge: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(config: GatewayConfig) -> anyhow::Result<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    let tokio_env = std::env::var("TOKIO_WORKER_THREADS").ok();
    if let Some(threads) = config.runtime.worker_threads_for(tokio_env.as_deref()) {
        runtime.worker_threads(threads);
    }
    let runtime = runtime.build()?;
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        let gateway = ironbridge::Gateway::start(config, cancel.clone()).await?;
        ironbridge::shutdown::wait_for_signal().await?;
        tracing::info!("shutting down");
        cancel.cancel();
        gateway.stopped().await;
        Ok(())
    })
}

/// `ironbridge model ...`: 0 done, 1 refused or failed (the active version
/// keeps serving), 2 unusable arguments or no connection.
fn run_model_command(target: ModelTarget, action: ModelAction) -> ExitCode {
    let client = ironbridge::discover::OpcUaClientArgs {
        endpoint: target.endpoint,
        security: target.security,
        mode: "SignAndEncrypt".to_string(),
        username: Some(target.username),
        password_env: target.password_env,
        trust_server_cert: target.trust_server_cert,
        pki_dir: target.pki_dir,
    };
    match ironbridge::model_cli::run(&client, &target.model, &action) {
        Ok(outcome) => {
            match &outcome.shadow {
                Some(shadow) => println!(
                    "model {}: {} serves (was {}), {shadow} runs as shadow",
                    outcome.model, outcome.after, outcome.before
                ),
                None => println!(
                    "model {}: {} serves (was {}), no shadow",
                    outcome.model, outcome.after, outcome.before
                ),
            }
            ExitCode::SUCCESS
        }
        Err(ModelCommandError::Refused(message)) => {
            eprintln!("ironbridge model: {message}");
            ExitCode::FAILURE
        }
        Err(ModelCommandError::Unusable(message)) => {
            eprintln!("ironbridge model: {message}");
            ExitCode::from(2)
        }
    }
}

/// `ironbridge model verify`: 0 pass, 1 a check failed, 2 unusable input.
fn run_verify(request: ironbridge::model_verify::VerifyRequest, json: bool) -> ExitCode {
    match ironbridge::model_verify::run(&request) {
        Ok(report) => {
            if json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(message) => {
            eprintln!("ironbridge model verify: {message}");
            ExitCode::from(2)
        }
    }
}
