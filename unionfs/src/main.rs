//! `stratafs`: mount a union filesystem (see `stratafs --help`), or run `stratafs demo`.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::io::Write;
use unionfs::error::Error;
use unionfs::kernel_overlay::{self, KernelMount};
use unionfs::{cli, mount};

/// Writes a line to stdout, ignoring errors (a closed pipe must not turn into a panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

fn main() {
    let code = match real_main() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("stratafs: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn real_main() -> Result<(), Error> {
    match cli::parse(std::env::args_os().skip(1))? {
        cli::Command::Help => {
            let _ = write!(std::io::stdout().lock(), "{}", cli::help_text());
            Ok(())
        }
        cli::Command::Version => {
            say!("{}", cli::version_text());
            Ok(())
        }
        cli::Command::Demo { verbose } => {
            init_logging(verbose, false);
            demo::run(verbose).map_err(Error::Demo)
        }
        cli::Command::Mount(opts) => {
            init_logging(opts.verbose, opts.debug);
            let opts = cli::validate(&opts)?;
            match kernel_overlay::try_kernel(&opts)? {
                KernelMount::Mounted => Ok(()),
                KernelMount::UseFuse { .. } => Ok(mount::run(&opts)?),
            }
        }
    }
}

/// Quiet (warnings) by default, `-v` info, `-vv`/`-d` debug, `-vvv` trace; RUST_LOG wins.
fn init_logging(verbose: u8, debug: bool) {
    let level = match (verbose, debug) {
        (0, false) => log::LevelFilter::Warn,
        (1, false) => log::LevelFilter::Info,
        (0..=2, _) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .try_init();
}

/// `stratafs demo`: a guided tour on a throwaway layer stack.
mod demo {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
    use unionfs::cli::escape_path;
    use unionfs::sys::mount as sys;

    /// Removes the temp dir, unmounting first if the demo stopped half way.
    struct Scratch {
        root: PathBuf,
        merged: PathBuf,
        mounted: bool,
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            if self.mounted {
                let _ = sys::detach(&self.merged);
            }
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn ctx<T>(what: &str, r: std::io::Result<T>) -> Result<T, String> {
        r.map_err(|e| format!("demo: {what}: {}", unionfs::cli::io_error_text(&e)))
    }

    fn write(path: &Path, text: &str) -> Result<(), String> {
        ctx(&path.display().to_string(), fs::write(path, text))
    }

    fn describe(path: &Path) -> String {
        match fs::symlink_metadata(path) {
            Err(e) => format!("<{}>", unionfs::cli::io_error_text(&e)),
            Ok(m) if m.is_dir() => "directory".to_string(),
            Ok(m) if m.file_type().is_char_device() => {
                let rdev = m.rdev();
                let (major, minor) = (libc::major(rdev), libc::minor(rdev));
                if rdev == 0 {
                    format!("char device {major}/{minor} = whiteout")
                } else {
                    format!("char device {major}/{minor}")
                }
            }
            Ok(m) if m.is_file() => match fs::read_to_string(path) {
                Ok(text) => format!("{:?}", text.trim_end()),
                Err(e) => format!("<{}>", unionfs::cli::io_error_text(&e)),
            },
            Ok(_) => "other".to_string(),
        }
    }

    /// Prints every entry under `dir`, sorted, with file contents.
    fn list(dir: &Path, prefix: &str) {
        let mut names: Vec<_> = match fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(e) => {
                say!(
                    "    {prefix}<cannot list: {}>",
                    unionfs::cli::io_error_text(&e)
                );
                return;
            }
        };
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let rel = format!("{prefix}{}", name.to_string_lossy());
            say!("    {rel:<20} {}", describe(&path));
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                list(&path, &format!("{rel}/"));
            }
        }
    }

    /// Prints `rel` as each of `views` (label, directory) sees it, labels padded to `width`.
    fn show_in(views: &[(&str, &PathBuf)], rel: &str, width: usize) {
        for (label, dir) in views {
            let name = format!("{label}/{rel}");
            say!("    {name:<width$}{}", describe(&dir.join(rel)));
        }
    }

    pub fn run(verbose: u8) -> Result<(), String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let root =
            std::env::temp_dir().join(format!("stratafs-demo-{}-{nanos}", std::process::id()));
        let mut scratch = Scratch {
            merged: root.join("merged"),
            root: root.clone(),
            mounted: false,
        };
        let dir = |name: &str| root.join(name);
        let (base, top, upper, work, merged) = (
            dir("lower-base"),
            dir("lower-top"),
            dir("upper"),
            dir("work"),
            dir("merged"),
        );
        for d in [&base, &top, &upper, &work, &merged] {
            ctx(&d.display().to_string(), fs::create_dir_all(d))?;
        }
        ctx("mkdir", fs::create_dir(base.join("docs")))?;
        ctx("mkdir", fs::create_dir(top.join("docs")))?;

        // The three places a file of the demo is shown from.
        let views = [
            ("merged", &merged),
            ("upper", &upper),
            ("lower-base", &base),
        ];

        say!("stratafs demo: a union mount in {}", root.display());
        say!("");
        say!("1. Two read-only lower layers. The top one shadows a file of the base and hides");
        say!("   another with a whiteout: a character device 0/0, the overlayfs marker for");
        say!("   \"deleted in this layer\".");
        write(&base.join("hello.txt"), "hello from the base layer\n")?;
        write(
            &base.join("notes.txt"),
            "first line, written in the base layer\n",
        )?;
        write(&base.join("gone.txt"), "you should not see this\n")?;
        write(&base.join("docs/readme.txt"), "base readme\n")?;
        write(&top.join("hello.txt"), "hello from the top layer\n")?;
        write(&top.join("docs/extra.txt"), "only in the top layer\n")?;
        ctx(
            "creating the whiteout lower-top/gone.txt",
            sys::make_whiteout(&top.join("gone.txt")),
        )?;
        say!("   lower-base/:");
        list(&base, "");
        say!("   lower-top/:");
        list(&top, "");
        say!("");

        // The FUSE driver: the demo is about stratafs itself, not the kernel's overlay.
        let mut opts = std::ffi::OsString::from("driver=fuse,lowerdir=");
        opts.push(escape_path(top.as_os_str()));
        opts.push(":");
        opts.push(escape_path(base.as_os_str()));
        opts.push(",upperdir=");
        opts.push(escape_path(upper.as_os_str()));
        opts.push(",workdir=");
        opts.push(escape_path(work.as_os_str()));
        say!("2. Mount: stratafs -o lowerdir=lower-top:lower-base,upperdir=upper,workdir=work merged");
        say!("   (leftmost lowerdir is on top; writes go to upper; work is scratch space)");
        let mut cmd = Command::new("/proc/self/exe");
        for _ in 0..verbose {
            cmd.arg("-v");
        }
        let status = ctx(
            "running stratafs",
            cmd.arg("-o").arg(&opts).arg(&merged).status(),
        )?;
        if !status.success() {
            return Err(format!("demo: mounting the stack failed ({status})"));
        }
        scratch.mounted = true;
        say!("   mounted; the daemon runs in the background.");
        say!("");

        say!("3. The merged view: hello.txt comes from the top layer, gone.txt is hidden by");
        say!("   the whiteout, docs/ merges both layers.");
        list(&merged, "");
        say!("");

        say!("4. Copy-up: appending to notes.txt (a base file) through the mount first copies");
        say!("   it to the upper layer; the lower layer never changes.");
        let appended = fs::OpenOptions::new()
            .append(true)
            .open(merged.join("notes.txt"))
            .and_then(|mut f| f.write_all(b"second line, appended through the mount\n"));
        ctx("appending to merged/notes.txt", appended)?;
        show_in(&views, "notes.txt", 21);
        say!("");

        say!("5. Whiteout: removing docs/readme.txt (a base file) cannot touch the lower layer,");
        say!("   so a whiteout goes into the upper layer instead (its parent docs/ is copied up).");
        ctx(
            "rm merged/docs/readme.txt",
            fs::remove_file(merged.join("docs/readme.txt")),
        )?;
        show_in(&views, "docs/readme.txt", 28);
        say!("   upper/ now holds only the changes:");
        list(&upper, "");
        say!("");

        say!("6. Unmount (the daemon sees the unmount and exits) and remove the temp dir.");
        // Retry briefly: a just-closed file may keep the mount busy for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match sys::unmount(&merged) {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return ctx("umount merged", Err(e)),
            }
        }
        scratch.mounted = false;
        drop(scratch);
        say!("   done.");
        Ok(())
    }
}
