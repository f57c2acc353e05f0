//! `strata`: the command line over the runtime library.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

use clap::{ArgAction, Args, Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use strata_runtime::config::{Config, RawArgs};
use strata_runtime::error::EXIT_USAGE;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "A minimal container runtime over a layer stack (kernel overlay or stratafs)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a command in a new container.
    #[command(after_help = "\
Exit status: the command's, or 128+N when a signal N killed it; 2 for bad input; 125 when the \
runtime itself failed; 126 when the command cannot be executed; 127 when it does not exist in \
the container.")]
    Run(Box<RunArgs>),
    /// Remove what containers whose runtime was killed left behind (state, temporary upper,
    /// cgroups, mounts, a stratafs daemon); `strata run` also does it at start. Prints the ids.
    Gc {
        /// Print each step to stderr (-vv for more)
        #[arg(short, long, action = ArgAction::Count)]
        verbose: u8,
    },
}

#[derive(Args)]
struct RunArgs {
    /// A layer directory; repeat for more, the first is the top (as overlay's lowerdir)
    #[arg(long = "layer", value_name = "DIR", required = true)]
    layers: Vec<PathBuf>,
    /// Where writes go (kept); without it a temporary upper is removed at exit
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    /// How to mount the stack: auto (kernel overlay when permitted, else stratafs), fuse, kernel
    #[arg(long, value_name = "DRIVER", default_value = "auto")]
    driver: String,
    /// Make the root filesystem read-only
    #[arg(long)]
    read_only: bool,
    /// Memory limit, e.g. 64M, 1G (memory.max)
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    memory: Option<String>,
    /// Memory plus swap limit, as Docker's (-1: unlimited swap)
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// CPUs worth of time, e.g. 0.5 (cpu.max)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    cpus: Option<String>,
    /// Relative CPU weight 1..10000 (cpu.weight)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    cpu_weight: Option<String>,
    /// Maximum number of processes (pids.max)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pids: Option<String>,
    /// An io.max line: 'MAJ:MIN rbps=1M wbps=1M riops=N wiops=N' (or /dev/DISK instead of MAJ:MIN)
    #[arg(long, value_name = "SPEC")]
    io_max: Vec<String>,
    /// Apply the limits through cgroup v1 controllers when cgroup v2 lacks them
    #[arg(long)]
    cgroup_v1_fallback: bool,
    /// Hostname in the container (default: the container's id)
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// Set an environment variable (repeatable); NAME alone copies it from here
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Working directory in the container (created if missing)
    #[arg(long, short = 'w', value_name = "DIR")]
    workdir: Option<String>,
    /// Run the command as UID[:GID] (numbers)
    #[arg(long, short = 'u', value_name = "UID[:GID]")]
    user: Option<String>,
    /// Network: none (a new namespace with lo up) or host
    #[arg(long, value_name = "MODE", default_value = "none")]
    net: String,
    /// Bind a host path into the container (repeatable)
    #[arg(long = "bind", value_name = "SRC:DST[:ro]")]
    binds: Vec<String>,
    /// Mount a tmpfs at DST (repeatable)
    #[arg(long, value_name = "DST")]
    tmpfs: Vec<String>,
    /// Add a capability to the container's set (Docker's names; ALL for every one)
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability from the container's set (ALL for every one)
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// Give the container a terminal of its own, relayed to this one (raw mode, window size)
    #[arg(short = 't', long)]
    tty: bool,
    /// Seccomp profile: an OCI/Docker JSON FILE, or unconfined (default: Docker's profile)
    #[arg(long, value_name = "FILE|unconfined")]
    seccomp: Option<String>,
    /// Set a resource limit of the command, as Docker's: NAME=SOFT[:HARD] (nofile, nproc...)
    #[arg(long, value_name = "NAME=SOFT[:HARD]")]
    ulimit: Vec<String>,
    /// Docker's security options; known: seccomp=FILE|unconfined, no-new-privileges[=false]
    #[arg(long = "security-opt", value_name = "KEY=VALUE")]
    security_opt: Vec<String>,
    /// Print each step to stderr (-vv for more)
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,
    /// The command and its arguments, after --
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("STRATA_LOG")
        .format(|buf, rec| writeln!(buf, "strata: {}", rec.args()))
        .init();
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                std::process::exit(
                    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        EXIT_USAGE
                    } else {
                        0
                    },
                );
            }
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or("bad command line");
            let line = line.strip_prefix("error: ").unwrap_or(line);
            eprintln!("strata: {line} (see strata run --help)");
            std::process::exit(EXIT_USAGE);
        }
    };
    let a = match cli.command {
        Cmd::Run(a) => *a,
        Cmd::Gc { verbose } => {
            init_logging(verbose);
            match strata_runtime::state::base() {
                Ok(base) => {
                    for id in strata_runtime::state::collect(&base) {
                        println!("{id}");
                    }
                    std::process::exit(0);
                }
                Err(e) => {
                    eprintln!("strata: {e}");
                    std::process::exit(e.exit_code());
                }
            }
        }
    };
    init_logging(a.verbose);
    let raw = RawArgs {
        layers: a.layers,
        upper: a.upper,
        driver: a.driver,
        read_only: a.read_only,
        memory: a.memory,
        memory_swap: a.memory_swap,
        cpus: a.cpus,
        cpu_weight: a.cpu_weight,
        pids: a.pids,
        io_max: a.io_max,
        cgroup_v1_fallback: a.cgroup_v1_fallback,
        hostname: a.hostname,
        env: a.env,
        workdir: a.workdir,
        user: a.user,
        net: a.net,
        binds: a.binds,
        tmpfs: a.tmpfs,
        cap_add: a.cap_add,
        cap_drop: a.cap_drop,
        tty: a.tty,
        seccomp: a.seccomp,
        security_opt: a.security_opt,
        ulimit: a.ulimit,
        command: a.command,
    };
    let code = match Config::from_args(raw)
        .map_err(strata_runtime::Error::from)
        .and_then(|cfg| strata_runtime::run(&cfg))
    {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
