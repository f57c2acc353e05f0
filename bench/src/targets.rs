//! The filesystems compared. A target is named on the command line as `KIND` or `KIND+OPTS`,
//! where OPTS are extra mount options for that kind, so variants need no code:
//! `stratafs+threads=8`, `overlay+volatile`, `stratafs+nopassthrough`.

use crate::guard::Mount;
use crate::sys::{self, ctx, Result};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A plain directory holding the merged tree: the floor no union filesystem can beat.
    Dir,
    /// The kernel's overlayfs: the reference every ratio is taken to.
    Overlay,
    Stratafs,
    FuseOverlayfs,
    UnionfsFuse,
}

pub const DEFAULT_TARGETS: &[&str] = &[
    "dir",
    "overlay",
    "stratafs",
    "stratafs-uring",
    "stratafs-pt-all",
    "stratafs-nopassthrough",
    "fuse-overlayfs",
    "unionfs-fuse",
];

/// Named variants: a short name for a kind with extra options (extend here).
const ALIASES: &[(&str, &str)] = &[
    ("stratafs-nopassthrough", "stratafs+nopassthrough"),
    ("stratafs-pt-all", "stratafs+passthrough=all"),
    ("stratafs-uring", "stratafs+uring"),
    ("stratafs-volatile", "stratafs+volatile"),
    ("overlay-volatile", "overlay+volatile"),
];

#[derive(Debug, Clone)]
pub struct Target {
    /// As named on the command line; the column header.
    pub label: String,
    pub kind: Kind,
    /// Extra mount options (comma separated pieces).
    pub extra: Vec<String>,
    /// The program to run (FUSE kinds).
    pub program: Option<PathBuf>,
}

impl Target {
    pub fn parse(spec: &str) -> Result<Target> {
        let expanded = ALIASES
            .iter()
            .find(|(alias, _)| *alias == spec)
            .map(|(_, full)| *full)
            .unwrap_or(spec);
        let (kind_name, extra) = match expanded.split_once('+') {
            Some((k, opts)) => (k, opts.split(',').map(str::to_string).collect()),
            None => (expanded, Vec::new()),
        };
        let kind = match kind_name {
            "dir" => Kind::Dir,
            "overlay" => Kind::Overlay,
            "stratafs" => Kind::Stratafs,
            "fuse-overlayfs" => Kind::FuseOverlayfs,
            "unionfs-fuse" => Kind::UnionfsFuse,
            other => {
                return Err(format!(
                    "unknown target kind '{other}' (dir, overlay, stratafs, fuse-overlayfs, unionfs-fuse; KIND+OPTS adds mount options)"
                ))
            }
        };
        Ok(Target {
            label: spec.to_string(),
            kind,
            extra,
            program: None,
        })
    }

    /// Finds the program this target needs; `Err` is the note explaining why it is skipped.
    pub fn locate(&mut self) -> Result<()> {
        let program = match self.kind {
            Kind::Dir | Kind::Overlay => return Ok(()),
            Kind::Stratafs => stratafs_bin().ok_or_else(|| {
                "stratafs binary not found: build it with `cargo build --release -p unionfs` (same target dir), or set STRATAFS_BIN".to_string()
            })?,
            Kind::FuseOverlayfs => sys::which("fuse-overlayfs").ok_or_else(|| {
                "fuse-overlayfs is not installed (apt-get install fuse-overlayfs)".to_string()
            })?,
            Kind::UnionfsFuse => sys::which("unionfs")
                .or_else(|| sys::which("unionfs-fuse"))
                .ok_or_else(|| {
                    "unionfs-fuse is not installed (apt-get install unionfs-fuse)".to_string()
                })?,
        };
        self.program = Some(program);
        Ok(())
    }

    pub fn is_fuse(&self) -> bool {
        matches!(
            self.kind,
            Kind::Stratafs | Kind::FuseOverlayfs | Kind::UnionfsFuse
        )
    }

    /// Version text for the report.
    pub fn version(&self) -> String {
        match self.kind {
            Kind::Dir => "ext4 on a loop device".to_string(),
            Kind::Overlay => format!(
                "kernel {}",
                sys::first_line("uname", &["-r"]).unwrap_or_default()
            ),
            Kind::Stratafs => {
                let bin = self.program.clone().unwrap_or_default();
                let v = sys::first_line(&bin.to_string_lossy(), &["--version"]).unwrap_or_default();
                format!("{v} ({})", bin.display())
            }
            Kind::FuseOverlayfs => deb_version("fuse-overlayfs"),
            Kind::UnionfsFuse => deb_version("unionfs-fuse"),
        }
    }

    /// Mounts `lowers` (topmost first) with a fresh `upper`/`work` at `mountpoint` (created
    /// here). `floor` is the plain-directory equivalent, used by the `dir` target.
    pub fn mount(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        mountpoint: &Path,
        floor: &Path,
    ) -> Result<Mount> {
        if self.kind == Kind::Dir {
            return Ok(Mount::none(floor));
        }
        ctx(mountpoint.display(), fs::create_dir_all(mountpoint))?;
        ctx(upper.display(), fs::create_dir_all(upper))?;
        ctx(work.display(), fs::create_dir_all(work))?;
        let lowerdir = lowers
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let mut opts = vec![
            format!("lowerdir={lowerdir}"),
            format!("upperdir={}", upper.display()),
            format!("workdir={}", work.display()),
        ];
        // stratafs as root would hand the stack to the kernel's overlay (driver=auto): measure
        // its FUSE driver unless the target says otherwise (e.g. `stratafs+driver=kernel`).
        if self.kind == Kind::Stratafs && !self.extra.iter().any(|o| o.starts_with("driver=")) {
            opts.insert(0, "driver=fuse".to_string());
        }
        opts.extend(self.extra.iter().cloned());
        if self.kind == Kind::Stratafs && self.extra.iter().any(|o| o == "uring") {
            enable_fuse_uring()?;
        }
        let program = self.program.clone().unwrap_or_default();
        match self.kind {
            Kind::Dir => unreachable!(),
            Kind::Overlay => {
                nix::mount::mount(
                    Some("overlay"),
                    mountpoint,
                    Some("overlay"),
                    nix::mount::MsFlags::empty(),
                    Some(opts.join(",").as_str()),
                )
                .map_err(|e| format!("mount -t overlay -o {}: {e}", opts.join(",")))?;
                Ok(Mount::adopt(mountpoint, None))
            }
            Kind::Stratafs | Kind::FuseOverlayfs => {
                let result = sys::run(
                    sys::command(&program)
                        .arg("-o")
                        .arg(opts.join(","))
                        .arg(mountpoint),
                );
                self.adopt_fuse(mountpoint, result)
            }
            Kind::UnionfsFuse => {
                // unionfs-fuse names branches itself: the upper read-write on top, then the
                // lowers read-only. It keeps its own whiteout format (and shows the overlay
                // whiteouts of the stack as character devices).
                let mut branches = vec![format!("{}=RW", upper.display())];
                branches.extend(lowers.iter().map(|l| format!("{}=RO", l.display())));
                let mut uopts = vec![
                    "cow".to_string(),
                    "use_ino".to_string(),
                    "suid".to_string(),
                    "dev".to_string(),
                ];
                uopts.extend(self.extra.iter().cloned());
                let result = sys::run(
                    sys::command(&program)
                        .arg("-o")
                        .arg(uopts.join(","))
                        .arg(branches.join(":"))
                        .arg(mountpoint),
                );
                self.adopt_fuse(mountpoint, result)
            }
        }
    }

    fn adopt_fuse(&self, mountpoint: &Path, started: Result<String>) -> Result<Mount> {
        // Whatever happened, a mount that exists is owned by the guard from here on.
        let mounted = sys::is_mounted(mountpoint);
        let guard = Mount::adopt(mountpoint, sys::daemon_pid(mountpoint));
        if !mounted {
            drop(guard);
            let _ = fs::remove_dir(mountpoint);
            return Err(match started {
                Err(e) => e,
                Ok(_) => format!("{}: not mounted after start", self.label),
            });
        }
        started?;
        if guard.daemon.is_none() {
            log::warn!(
                "{}: no daemon found for {}",
                self.label,
                mountpoint.display()
            );
        }
        Ok(guard)
    }
}

fn deb_version(package: &str) -> String {
    match sys::first_line("dpkg-query", &["-W", "-f", "${Version}", package]) {
        Some(v) if !v.contains("no packages") => format!("{package} {v} (Debian)"),
        _ => format!("{package} (version unknown)"),
    }
}

/// The stratafs binary: `STRATAFS_BIN`, else next to this executable (or one level up, for
/// criterion's `deps/` directory).
pub fn stratafs_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STRATAFS_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("stratafs"), dir.parent()?.join("stratafs")]
        .into_iter()
        .find(|p| p.is_file())
}

/// FUSE over io_uring is offered by the kernel only with the fuse module's `enable_uring` set
/// (Linux >= 6.14): a `uring` target sets it (root; it stays set, and changes nothing for
/// mounts that do not ask for io_uring).
fn enable_fuse_uring() -> Result<()> {
    let p = Path::new("/sys/module/fuse/parameters/enable_uring");
    match fs::read_to_string(p) {
        Ok(v) if v.trim() == "Y" => Ok(()),
        Ok(_) => ctx(p.display(), fs::write(p, "Y")),
        Err(_) => {
            Err("FUSE over io_uring needs Linux >= 6.14 (no fuse enable_uring parameter)".into())
        }
    }
}
