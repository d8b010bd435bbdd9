//! `lookit-local`: the headless face of Lookit Local. Every command loads and validates the
//! configuration first, so a bad config stops all of them with the key, file and line.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use lookit_config::{Backend, Config, Home};

#[derive(Parser)]
#[command(
    name = "lookit-local",
    version,
    about = "Run the Lookit research platform stack on this computer",
    after_help = "Configuration: $LOOKIT_LOCAL_HOME/config.toml (or the XDG config folder); \
                  LOOKIT_LOCAL__<SECTION>__<KEY>=value overrides a key."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start Postgres, RabbitMQ, the API, the worker and the control panel; stays in the
    /// foreground until Ctrl-C or SIGTERM, then stops everything cleanly.
    Up {
        /// Do not open the desktop window; print the dashboard URL instead.
        #[arg(long)]
        headless: bool,
        /// Which servers run Postgres and RabbitMQ (overrides `stack.backend`).
        #[arg(long, value_enum)]
        backend: Option<BackendArg>,
    },
    /// Stop the running instance and the services it manages (data is kept).
    Down {
        /// Also delete all service data of this home (asks for confirmation).
        #[arg(long)]
        purge: bool,
        /// Do not ask before purging.
        #[arg(long, requires = "purge")]
        yes: bool,
    },
    /// The state of everything, whether or not an instance is running.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check every prerequisite and print the exact command that fixes each problem.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Connection settings of this stack in the variable names of Lookit's own `.env`.
    Env,
    /// Show a service's log (postgres, rabbitmq, api, worker, tunnel, app).
    Logs {
        service: String,
        /// Keep printing new lines as they are written.
        #[arg(long, short)]
        follow: bool,
        /// How many of the last lines to print first.
        #[arg(long, short = 'n', default_value_t = 50)]
        lines: usize,
    },
    /// Show, locate or check the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Share the API on a public URL (ngrok or a self-hosted tunnel server).
    Tunnel {
        #[command(subcommand)]
        action: TunnelAction,
    },
    /// Manage researcher accounts.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Demo data to click on.
    Demo {
        #[command(subcommand)]
        action: DemoAction,
    },
    /// Run a standalone worker against the configured broker and database.
    Worker,
    /// Ask for a build of a study's frameplayer runner.
    Build {
        study: String,
        /// A local folder or repository URL, optionally `@sha`.
        #[arg(long)]
        player: Option<String>,
        /// Follow the log; exit 0 only when the build succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// The study builder image (`builds.builder_image`), built from the Dockerfile shipped in
    /// the app.
    Builder {
        #[command(subcommand)]
        action: BuilderAction,
    },
    /// Link local folders to a study: the running app rebuilds it when its player folder
    /// changes and updates its structure from its protocol folder.
    Study {
        #[command(subcommand)]
        action: StudyAction,
    },
    /// Local HTTPS certificates.
    Certs {
        #[command(subcommand)]
        action: CertsAction,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Docker,
    Native,
    External,
}

impl From<BackendArg> for Backend {
    fn from(arg: BackendArg) -> Backend {
        match arg {
            BackendArg::Docker => Backend::Docker,
            BackendArg::Native => Backend::Native,
            BackendArg::External => Backend::External,
        }
    }
}

#[derive(Subcommand)]
enum ConfigAction {
    /// The effective configuration (file, defaults and environment), as TOML. Holds no secrets.
    Show,
    /// Where the config file is (or would be).
    Path,
    /// Validate the configuration; exit non-zero with the problem when it is invalid.
    Check,
}

#[derive(Subcommand)]
enum TunnelAction {
    Start {
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        server: Option<String>,
    },
    Stop,
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Create a researcher; the password is read from stdin or generated.
    CreateResearcher { email: String },
}

#[derive(Subcommand)]
enum DemoAction {
    /// Create a demo lab, researcher, study, child and response and print their ids.
    Seed {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BuilderAction {
    /// Build the builder image on `builds.builder_base_image` when it is missing, showing the
    /// progress (a build also does this before it needs the image).
    Build {
        /// Rebuild it even when it exists, without the layer cache (fresh base and packages).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum StudyAction {
    /// Watch a local frameplayer folder (and/or a folder of protocol JSON files) for a study;
    /// the link is kept, and the running app follows it at once.
    #[command(group(clap::ArgGroup::new("folders").required(true).multiple(true)))]
    Watch {
        study: String,
        /// The frameplayer checkout: each burst of changes rebuilds the study from it.
        #[arg(long, group = "folders")]
        player: Option<std::path::PathBuf>,
        /// A folder of protocol files (`*.json` with `frames` and `sequence`): valid changes
        /// become the study's structure.
        #[arg(long, group = "folders")]
        protocol: Option<std::path::PathBuf>,
    },
    /// Stop watching a study's folders.
    Unwatch { study: String },
}

#[derive(Subcommand)]
enum CertsAction {
    /// Install the local certificate authority where the system and browsers look.
    Trust,
}

/// How a command ended, mapped to the process exit code.
pub enum Outcome {
    Done,
    /// The command ran and found something wrong (e.g. `doctor` found a problem).
    Problems,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for every rustls user in the process (reqwest, sqlx, lapin, axum);
    // with two linked in, rustls would panic at the first TLS connection.
    lookit_control::install_crypto_provider();
    let home = match Home::from_env() {
        Ok(home) => home,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(&home) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli.command, home, config)) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Problems) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
