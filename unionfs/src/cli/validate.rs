//! Validation of the layer and mountpoint paths (the one part of the command line that looks
//! at the filesystem).

use super::CliError;
use crate::options::Options;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Checks the layers and the mountpoint; returns the options with every path canonicalized
/// (the filesystem opens the layers later, possibly after chdir or from another process).
pub fn validate(opts: &Options) -> Result<Options, CliError> {
    let mut out = opts.clone();
    out.lowerdirs = opts
        .lowerdirs
        .iter()
        .map(|p| existing_dir("lowerdir", p))
        .collect::<Result<_, _>>()?;
    out.upperdir = opts
        .upperdir
        .as_deref()
        .map(|p| existing_dir("upperdir", p))
        .transpose()?;
    out.workdir = opts
        .workdir
        .as_deref()
        .map(|p| existing_dir("workdir", p))
        .transpose()?;
    out.mountpoint = existing_dir("mountpoint", &opts.mountpoint)?;

    let upper = out.upperdir.as_deref().map(|p| ("upperdir", p));
    let work = out.workdir.as_deref().map(|p| ("workdir", p));
    for writable in [upper, work].into_iter().flatten() {
        for lower in &out.lowerdirs {
            check_overlap(writable, ("lowerdir", lower))?;
        }
    }
    if let (Some(upper), Some(work)) = (upper, work) {
        check_overlap(upper, work)?;
        let dev = |what, path: &Path| {
            std::fs::metadata(path)
                .map(|m| m.dev())
                .map_err(|err| CliError::Path {
                    what,
                    path: path.to_path_buf(),
                    err,
                })
        };
        if dev("upperdir", upper.1)? != dev("workdir", work.1)? {
            return Err(CliError::CrossDevice {
                upper: upper.1.to_path_buf(),
                work: work.1.to_path_buf(),
            });
        }
        // Checked here so that both drivers refuse with the same message (the kernel's own
        // refusal is a bare EINVAL, its reason only in the kernel log).
        let feature = std::fs::File::open(work.1)
            .and_then(|w| crate::layers::incompat_feature(std::os::fd::AsFd::as_fd(&w)))
            .map_err(|err| CliError::Path {
                what: "workdir",
                path: work.1.to_path_buf(),
                err,
            })?;
        if let Some(feature) = feature {
            return Err(CliError::Incompat(crate::layers::Incompat {
                workdir: work.1.to_path_buf(),
                feature,
            }));
        }
    }
    Ok(out)
}

fn existing_dir(what: &'static str, path: &Path) -> Result<PathBuf, CliError> {
    let canonical = std::fs::canonicalize(path).map_err(|err| CliError::Path {
        what,
        path: path.to_path_buf(),
        err,
    })?;
    let meta = std::fs::metadata(&canonical).map_err(|err| CliError::Path {
        what,
        path: path.to_path_buf(),
        err,
    })?;
    if !meta.is_dir() {
        return Err(CliError::NotADirectory {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(canonical)
}

/// Errors when two canonical layer paths are equal or one contains the other.
fn check_overlap(a: (&'static str, &Path), b: (&'static str, &Path)) -> Result<(), CliError> {
    let overlap = |inner: (&'static str, &Path), outer: (&'static str, &Path)| CliError::Overlap {
        inner_what: inner.0,
        inner: inner.1.to_path_buf(),
        outer_what: outer.0,
        outer: outer.1.to_path_buf(),
    };
    if a.1.starts_with(b.1) {
        Err(overlap(a, b))
    } else if b.1.starts_with(a.1) {
        Err(overlap(b, a))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_checks_paths() {
        let base = std::env::temp_dir().join(format!("stratafs-cli-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        for d in ["l", "u", "w", "m", "l/inner"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        std::fs::write(base.join("file"), b"x").unwrap();
        let opts = |lower: &str, upper: Option<&str>, work: Option<&str>, mnt: &str| {
            let mut o = Options::new(vec![base.join(lower)], base.join(mnt));
            o.upperdir = upper.map(|u| base.join(u));
            o.workdir = work.map(|w| base.join(w));
            o
        };
        let ok = validate(&opts("l", Some("u"), Some("w"), "m")).unwrap();
        assert_eq!(
            ok.lowerdirs[0],
            std::fs::canonicalize(base.join("l")).unwrap()
        );
        assert!(matches!(
            validate(&opts("nope", None, None, "m")),
            Err(CliError::Path { .. })
        ));
        assert!(matches!(
            validate(&opts("file", None, None, "m")),
            Err(CliError::NotADirectory { .. })
        ));
        assert!(matches!(
            validate(&opts("l", None, None, "file")),
            Err(CliError::NotADirectory { .. })
        ));
        for (l, u, w) in [
            ("l", "l/inner", "w"),
            ("l", "u", "l/inner"),
            ("l/inner", "l", "w"),
            ("l", "u", "u"),
            ("l", "l", "w"),
            ("l", "u", "u/../u"),
        ] {
            assert!(
                matches!(
                    validate(&opts(l, Some(u), Some(w), "m")),
                    Err(CliError::Overlap { .. })
                ),
                "{l} {u} {w}"
            );
        }
        std::fs::create_dir_all(base.join("w/work/incompat/volatile")).unwrap();
        let e = validate(&opts("l", Some("u"), Some("w"), "m")).unwrap_err();
        assert!(matches!(e, CliError::Incompat(_)));
        let mark = std::fs::canonicalize(base.join("w/work/incompat/volatile")).unwrap();
        assert!(e.to_string().contains(&mark.display().to_string()), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
