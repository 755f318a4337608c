//! `carp`: the controller (`run`), config validation (`check`), the status
//! client (`status`) and the operator commands (`demote`, `maintenance`,
//! `disable`, `enable`, `sync resync`). Names and exit codes are part of the
//! interface.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use carp_user::{api, config, controller, metrics, operator, services, status};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "carp", version, about = "CARP failover with an XDP data path")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the controller in the foreground (logs via RUST_LOG, default info).
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config: exit 0, or exit 2 with one line per problem.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Ask the running controller for the role of each VHID.
    Status {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// State replication commands.
    Sync {
        #[command(subcommand)]
        cmd: SyncCmd,
    },
    /// Change the operator demotion (added to the node's demotion, 0..=240; not
    /// kept across restarts): +N, -N or reset.
    Demote {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// +N raises, -N lowers (not below 0), reset sets 0.
        #[arg(value_name = "+N|-N|reset", allow_hyphen_values = true)]
        change: carp_user::demotion::DemoteChange,
    },
    /// Persistent CARP maintenance mode: demotes the node by 240, so a peer that
    /// preempts takes its MASTER VHIDs over; kept across restarts and reboots.
    Maintenance {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        #[arg(value_enum)]
        mode: OnOff,
    },
    /// Temporarily disable CARP: MASTER VHIDs bow out (the peer takes over),
    /// every VHID stays INIT and silent until `carp enable`; not kept across restarts.
    Disable {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Enable CARP again after `carp disable`: every VHID is BACKUP and elects.
    Enable {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// How long an operator command may take end to end: the controller answers
/// within `api::OPERATOR_TIMEOUT` (3 s), or says why not.
const OPERATOR_CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one operator request and prints the controller's answer.
fn operator_command(config: &std::path::Path, request: api::Request, name: &str) -> ExitCode {
    let socket = match control_socket_of(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match api::request(&socket, &request, OPERATOR_CLIENT_TIMEOUT) {
        Ok(v) => {
            println!("{}", v.get("ok").and_then(|m| m.as_str()).unwrap_or("ok"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("carp {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Subcommand)]
enum SyncCmd {
    /// Ask the peers for their whole conntrack tables again (a bulk transfer).
    Resync {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn load_or_report(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    match config::load(path) {
        Ok(checked) => {
            for w in &checked.warnings {
                eprintln!("warning: {w}");
            }
            Ok(checked.config)
        }
        Err(problems) => {
            for p in &problems.0 {
                eprintln!("{p}");
            }
            Err(ExitCode::from(2))
        }
    }
}

/// Where `carp status` should ask. A file that no longer validates (being
/// edited for a reload, say) must not hide the running controller: its problems
/// are printed as warnings and the socket path is read from it if present.
fn control_socket_of(path: &std::path::Path) -> Result<PathBuf, ExitCode> {
    match config::load(path) {
        Ok(checked) => Ok(checked.config.node.control_socket),
        Err(problems) => {
            for p in &problems.0 {
                eprintln!("warning: {p}");
            }
            let text = std::fs::read_to_string(path).map_err(|_| ExitCode::from(2))?;
            let table: toml::Table = text.parse().map_err(|_| ExitCode::from(2))?;
            let socket = table
                .get("node")
                .and_then(|n| n.get("control_socket"))
                .and_then(|s| s.as_str())
                .unwrap_or(config::DEFAULT_CONTROL_SOCKET);
            Ok(PathBuf::from(socket))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config } => match load_or_report(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Sync {
            cmd: SyncCmd::Resync { config },
        } => {
            let socket = match control_socket_of(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            match api::request(&socket, &api::Request::SyncResync, Duration::from_secs(3)) {
                Ok(v) => {
                    println!("{}", v.get("ok").and_then(|m| m.as_str()).unwrap_or("ok"));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("carp sync resync: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Demote { config, change } => {
            let request = match change {
                carp_user::demotion::DemoteChange::By(by) => api::Request::Demote { by },
                carp_user::demotion::DemoteChange::Reset => api::Request::DemoteReset,
            };
            operator_command(&config, request, "demote")
        }
        Cmd::Maintenance { config, mode } => operator_command(
            &config,
            api::Request::Maintenance {
                on: matches!(mode, OnOff::On),
            },
            "maintenance",
        ),
        Cmd::Disable { config } => operator_command(&config, api::Request::Disable, "disable"),
        Cmd::Enable { config } => operator_command(&config, api::Request::Enable, "enable"),
        Cmd::Status { config, json } => {
            let socket = match control_socket_of(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            match api::request_status(&socket, Duration::from_secs(3)) {
                Ok(st) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&st).expect("status serializes")
                        );
                    } else {
                        print!("{}", status::render_table(&st));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("carp status: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Run { config } => {
            let cfg = match load_or_report(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                        tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error")
                    }),
                )
                .init();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("carp run: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // The election runs on this thread (docs/design.md, "Controller runtime").
            services::set_election_priority(cfg.node.rt_priority);
            match rt.block_on(run(cfg, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("carp run: {}", one_line(&e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the
/// message before it already carries (many of our messages embed their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

async fn run(cfg: config::Config, config_path: PathBuf) -> anyhow::Result<()> {
    // Before anything touches the system (the control socket included).
    carp_user::privileges::check_run()?;
    let metrics = Arc::new(metrics::Metrics::new());
    let initial = status::NodeStatus {
        node: cfg.node.name.clone(),
        demotion: 0,
        sync: None,
        vhids: Vec::new(),
        ..status::NodeStatus::default()
    };
    let (status_tx, status_rx) = tokio::sync::watch::channel(initial);
    let resync = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let has_sync = cfg.sync.is_some();
    let resync_flag = Arc::clone(&resync);
    // Operator commands go to the election's thread and are answered from
    // there once applied (api.rs); a few may wait, more are refused.
    let (operator_tx, operator_rx) = tokio::sync::mpsc::channel::<operator::Request>(8);
    let handlers = api::Handlers {
        status: Box::new(move || status_rx.borrow().clone()),
        sync_resync: Box::new(move || {
            if !has_sync {
                return Err("this controller has no [sync] section".into());
            }
            resync_flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok("resync requested: asking the peers for their tables".into())
        }),
        operator: Box::new(move |command| {
            let (reply, answer) = tokio::sync::oneshot::channel();
            operator_tx
                .try_send(operator::Request { command, reply })
                .map_err(|e| match e {
                    tokio::sync::mpsc::error::TrySendError::Full(_) => {
                        "the controller is busy with other operator commands; try again".to_owned()
                    }
                    tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                        "the controller is stopping".to_owned()
                    }
                })?;
            Ok(answer)
        }),
    };
    // The control socket and the metrics endpoint run on a runtime of their
    // own thread: a scrape or control-socket flood then competes for CPU
    // only, never for the election's event loop (docs/design.md, "Controller
    // runtime").
    let _services = services::Services::start(
        cfg.node.control_socket.clone(),
        handlers,
        cfg.node.metrics_listen,
        Arc::clone(&metrics),
    )?;
    // Absolute, so that a SIGHUP re-reads the same file whatever the working
    // directory becomes.
    let config_path = std::path::absolute(&config_path).unwrap_or(config_path);
    controller::run(cfg, config_path, metrics, status_tx, resync, operator_rx).await?;
    Ok(())
}
