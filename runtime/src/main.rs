//! `strata`: the command line over the runtime library.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

use clap::{ArgAction, Args, Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use strata_runtime::config::{Config, RawArgs};
use strata_runtime::error::EXIT_USAGE;
use strata_runtime::oci::cli as oci_cli;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "A minimal container runtime over a layer stack (kernel overlay or stratafs)",
    after_help = "\
The OCI runtime commands (create, start, state, kill, delete, run ID, exec, ps, list, spec, \
features) take the same options as runc's and crun's, so engines such as podman (--runtime) \
and containerd's runc shim can use strata."
)]
struct Cli {
    /// OCI: the directory of the containers' state (default /run/strata/oci as root)
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// OCI: write the runtime's log (and its errors) to FILE
    #[arg(long, global = true, value_name = "FILE")]
    log: Option<PathBuf>,
    /// OCI: the log's format, text or json
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text")]
    log_format: String,
    /// OCI: log debug messages
    #[arg(long, global = true)]
    debug: bool,
    /// OCI (runc's): use systemd for cgroups; accepted, strata manages cgroupfs itself
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// OCI: `spec --rootless` writes a rootless spec; elsewhere ignored (strata detects it)
    #[arg(long, global = true, value_name = "true|false|auto", num_args = 0..=1, default_missing_value = "true")]
    rootless: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a command in a new container (--layer ... -- CMD); or, given a container ID, create
    /// and start the OCI bundle's container (as runc run).
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
    /// OCI: create a container from a bundle; its process waits for `start`
    Create(CreateCmd),
    /// OCI: start the process of a created container
    Start { id: String },
    /// OCI: print a container's state (JSON)
    State { id: String },
    /// OCI: send a signal (default TERM) to a container's process
    Kill {
        /// Send it to every process of the container
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// OCI: delete a container (--force: kill it first if it runs)
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// OCI: run a process in a running container
    Exec(ExecCmd),
    /// OCI: list the containers
    List {
        /// table or json
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Only the ids
        #[arg(short, long)]
        quiet: bool,
    },
    /// OCI: list a container's processes (ps's output, or a JSON array of pids)
    Ps {
        /// table or json
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        /// Arguments of ps(1) (default -ef)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// OCI: write a default config.json (as runc spec)
    /// (with the global --rootless: a spec for a rootless container)
    Spec {
        /// Where to write it
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
    /// OCI: print what this runtime supports (JSON)
    Features,
}

#[derive(Args)]
struct ExecCmd {
    /// The process as an OCI process object (JSON), instead of CMD
    #[arg(short, long, value_name = "FILE")]
    process: Option<PathBuf>,
    /// Return once the process runs
    #[arg(short, long)]
    detach: bool,
    /// Write the process's pid (on the host) to FILE
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// A unix socket to which the terminal's master is sent
    #[arg(long, value_name = "PATH")]
    console_socket: Option<PathBuf>,
    /// Give the process a terminal
    #[arg(short, long)]
    tty: bool,
    /// Working directory in the container
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Add an environment variable NAME=VALUE (repeatable)
    #[arg(short, long, value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// UID[:GID] to run as
    #[arg(short, long, value_name = "UID[:GID]")]
    user: Option<String>,
    /// Keep N more descriptors (3 to 3+N-1) open in the process
    #[arg(long, value_name = "N", default_value = "0")]
    preserve_fds: u32,
    /// Accepted (runc's): the container's setting applies
    #[arg(long)]
    no_new_privs: bool,
    /// Accepted (runc's): SELinux is not supported
    #[arg(long, value_name = "LABEL")]
    process_label: Option<String>,
    /// Accepted (runc's): AppArmor is not supported
    #[arg(long, value_name = "PROFILE")]
    apparmor: Option<String>,
    id: String,
    /// The command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct CreateCmd {
    /// The bundle directory (config.json)
    #[arg(short, long, default_value = ".", value_name = "DIR")]
    bundle: PathBuf,
    /// Write the container process's pid (on the host) to FILE
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// A unix socket to which the terminal's master is sent (process.terminal)
    #[arg(long, value_name = "PATH")]
    console_socket: Option<PathBuf>,
    /// Keep N more descriptors (3 to 3+N-1) open in the container
    #[arg(long, value_name = "N", default_value = "0")]
    preserve_fds: u32,
    /// Accepted (runc's): strata always pivot_roots
    #[arg(long)]
    no_pivot: bool,
    /// Accepted (runc's): no session keyring is made
    #[arg(long)]
    no_new_keyring: bool,
    id: String,
}

#[derive(Args)]
struct RunArgs {
    /// A layer directory; repeat for more, the first is the top (as overlay's lowerdir)
    #[arg(long = "layer", value_name = "DIR")]
    layers: Vec<PathBuf>,
    /// OCI: the bundle directory (with a container ID instead of --layer)
    #[arg(short, long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// OCI: write the container process's pid to FILE
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// OCI: a unix socket to which the terminal's master is sent
    #[arg(long, value_name = "PATH")]
    console_socket: Option<PathBuf>,
    /// OCI: return once the container has started
    #[arg(short, long)]
    detach: bool,
    /// OCI: keep N more descriptors open in the container
    #[arg(long, value_name = "N", default_value = "0")]
    preserve_fds: u32,
    /// OCI: the container's id (instead of --layer ... -- CMD)
    #[arg(value_name = "ID")]
    id: Option<String>,
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
    #[arg(last = true, value_name = "CMD")]
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

/// The OCI commands' log: stderr as `strata run`'s, or `--log FILE` (runc's JSON lines with
/// `--log-format json`, which conmon reads for the error it shows).
fn init_oci_logging(cli: &Cli) -> Option<std::fs::File> {
    let level = if cli.debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    let mut b = env_logger::Builder::new();
    b.filter_level(level).parse_env("STRATA_LOG");
    let file = cli.log.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let json = cli.log_format == "json";
    if let Some(f) = file.as_ref().and_then(|f| f.try_clone().ok()) {
        b.target(env_logger::Target::Pipe(Box::new(f)));
    }
    b.format(move |buf, rec| {
        if json {
            let line = serde_json::json!({
                "level": rec.level().as_str().to_ascii_lowercase(),
                "msg": rec.args().to_string(),
            });
            writeln!(buf, "{line}")
        } else {
            writeln!(buf, "strata: {}", rec.args())
        }
    });
    b.init();
    file
}

fn oci_root(cli: &Cli) -> PathBuf {
    cli.root
        .clone()
        .unwrap_or_else(strata_runtime::oci::container::default_root)
}

/// Ends an OCI command: its error is one line on stderr and in `--log` (if given).
fn finish_oci(r: Result<i32, strata_runtime::Error>, log: Option<std::fs::File>) -> ! {
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            if log.is_some() {
                log::error!("{e}");
            }
            eprintln!("strata: {e}");
            std::process::exit(e.exit_code())
        }
    }
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
    let a = match &cli.command {
        Cmd::Run(a) if a.layers.is_empty() && a.command.is_empty() && a.id.is_some() => {
            let log = init_oci_logging(&cli);
            let args = oci_cli::CreateArgs {
                root: oci_root(&cli),
                id: a.id.clone().unwrap_or_default(),
                bundle: a.bundle.clone().unwrap_or_else(|| PathBuf::from(".")),
                pid_file: a.pid_file.clone(),
                console_socket: a.console_socket.clone(),
                preserve_fds: a.preserve_fds,
            };
            finish_oci(oci_cli::run(&args, a.detach), log)
        }
        Cmd::Run(_) => {
            let Cmd::Run(a) = cli.command else {
                std::process::exit(EXIT_USAGE)
            };
            if let Some(id) = &a.id {
                eprintln!("strata: unexpected argument '{id}': strata run takes --layer DIR... -- CMD, or a container ID alone (OCI, with --bundle)");
                std::process::exit(EXIT_USAGE);
            }
            *a
        }
        Cmd::Gc { verbose } => {
            init_logging(*verbose);
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
        oci => {
            let log = init_oci_logging(&cli);
            let root = oci_root(&cli);
            let r = match oci {
                Cmd::Create(c) => {
                    let args = oci_cli::CreateArgs {
                        root,
                        id: c.id.clone(),
                        bundle: c.bundle.clone(),
                        pid_file: c.pid_file.clone(),
                        console_socket: c.console_socket.clone(),
                        preserve_fds: c.preserve_fds,
                    };
                    oci_cli::create(&args).map(|_| 0)
                }
                Cmd::Start { id } => oci_cli::start(&root, id),
                Cmd::Exec(e) => {
                    strata_runtime::oci::exec::exec(&strata_runtime::oci::exec::ExecArgs {
                        root,
                        id: e.id.clone(),
                        process: e.process.clone(),
                        args: e.command.clone(),
                        tty: e.tty,
                        cwd: e.cwd.clone(),
                        env: e.env.clone(),
                        user: e.user.clone(),
                        detach: e.detach,
                        pid_file: e.pid_file.clone(),
                        console_socket: e.console_socket.clone(),
                        preserve_fds: e.preserve_fds,
                    })
                }
                Cmd::State { id } => oci_cli::state(&root, id),
                Cmd::Kill { all, id, signal } => oci_cli::kill(&root, id, signal, *all),
                Cmd::Delete { force, id } => oci_cli::delete(&root, id, *force),
                Cmd::List { format, quiet } => oci_cli::list(&root, format, *quiet),
                Cmd::Ps {
                    format,
                    id,
                    ps_args,
                } => oci_cli::ps(&root, id, format, ps_args),
                Cmd::Spec { bundle } => oci_cli::spec(
                    bundle,
                    cli.rootless.as_deref().is_some_and(|r| r != "false"),
                ),
                Cmd::Features => oci_cli::features(),
                Cmd::Run(_) | Cmd::Gc { .. } => Ok(0),
            };
            finish_oci(r, log)
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
