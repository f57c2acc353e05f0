//! `bench compare`: see bench/README.md.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

use bench::compare::{self, Config};
use bench::stack::Scale;
use bench::targets::DEFAULT_TARGETS;
use bench::workloads::{Workload, ALL};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Measure stratafs against the kernel overlay and its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the layer stack on a loop-mounted ext4 image, run every workload on every target
    /// (interleaved, repeated, fresh mount each time) and write RESULTS.md and an SVG chart.
    Compare {
        /// A smaller stack and one repetition: a smoke run of a few minutes.
        #[arg(long)]
        quick: bool,
        /// Targets, comma separated: dir, overlay, stratafs, fuse-overlayfs, unionfs-fuse, or
        /// KIND+OPTS for extra mount options (stratafs+threads=8, overlay+volatile).
        #[arg(long, value_delimiter = ',')]
        targets: Option<Vec<String>>,
        /// Workloads, comma separated (a name, or a prefix such as `find` or `seq-read`).
        #[arg(long, value_delimiter = ',')]
        workloads: Option<Vec<String>>,
        /// Runs of each workload on each target (default 3, 1 with --quick).
        #[arg(long)]
        reps: Option<usize>,
        /// Scratch directory for the ext4 image and mountpoints (removed afterwards).
        #[arg(long, default_value = "/var/tmp/strata-bench")]
        work_dir: PathBuf,
        /// Where the ext4 image lives: `ram` (a tmpfs: cold runs measure the filesystems, not
        /// this VM's shared disk) or `disk` (under --work-dir, loop device with direct I/O).
        #[arg(long, default_value = "ram", value_parser = ["ram", "disk"])]
        image_on: String,
        /// Where to write the report.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md"))]
        out: PathBuf,
        /// Where to write the chart (linked from the report by file name: keep it next to it).
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Only the runtime start-up comparison (strata run vs crun, runc, bwrap); replaces its
    /// section in the report.
    Startup {
        /// Runs of each runner.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        #[arg(long, default_value = "/var/tmp/strata-bench-startup")]
        work_dir: PathBuf,
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md"))]
        out: PathBuf,
    },
    /// List the workloads and what each does.
    Workloads,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Workloads => {
            for w in ALL {
                println!("{:<22} {}", w.name(), w.describe(&Scale::full()));
            }
            Ok(())
        }
        Cmd::Startup {
            runs,
            work_dir,
            out,
        } => (|| {
            if !bench::sys::is_root() {
                return Err("startup needs root".to_string());
            }
            bench::sys::install_signal_handlers();
            let scratch = bench::guard::Scratch::new(&work_dir)?;
            let r = bench::startup::run(scratch.path(), runs.max(1))?;
            let section = r.markdown();
            print!("{section}");
            bench::startup::splice_into(&out, &section)?;
            eprintln!("bench: updated {}", out.display());
            Ok(())
        })(),
        Cmd::Compare {
            quick,
            targets,
            workloads,
            reps,
            work_dir,
            image_on,
            out,
            svg,
        } => (|| {
            let scale = if quick { Scale::quick() } else { Scale::full() };
            let startup = workloads
                .as_ref()
                .map(|names| names.iter().any(|n| n == "startup"))
                .unwrap_or(true);
            let workloads = match workloads {
                None => ALL.to_vec(),
                Some(names) => {
                    let mut v: Vec<Workload> = Vec::new();
                    for n in names.into_iter().filter(|n| n != "startup") {
                        for w in Workload::parse(&n)? {
                            if !v.contains(&w) {
                                v.push(w);
                            }
                        }
                    }
                    v
                }
            };
            let svg = svg.unwrap_or_else(|| out.with_file_name("results.svg"));
            compare::run(Config {
                scale,
                targets: targets
                    .unwrap_or_else(|| DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()),
                workloads,
                reps: reps.unwrap_or(if quick { 1 } else { 3 }).max(1),
                work_dir,
                ram: image_on == "ram",
                startup,
                out,
                svg,
                command_line: format!(
                    "cargo run --release -p bench -- {}",
                    std::env::args().skip(1).collect::<Vec<_>>().join(" ")
                ),
            })
        })(),
    };
    if let Err(e) = result {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}
