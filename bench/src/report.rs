//! The report: medians, ratios to the kernel overlay, daemon cost; as text on stdout, as
//! `bench/RESULTS.md` and as an SVG chart of the ratios.

use crate::stack::{Scale, StackStats};
use crate::sys::{self, ctx, DaemonCost, Result};
use crate::targets::{Kind, Target};
use crate::workloads::{Unit, Workload};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::Duration;

pub struct Report {
    pub scale: Scale,
    pub targets: Vec<Target>,
    pub workloads: Vec<Workload>,
    pub reps: usize,
    /// (metric, target label) -> one value per run.
    pub samples: BTreeMap<(String, String), Vec<f64>>,
    /// (target label, phase) -> the cost with the highest peak RSS over the runs.
    pub costs: BTreeMap<(String, String), DaemonCost>,
    pub notes: Vec<String>,
    pub entries: usize,
    pub dirs: usize,
    pub stats: StackStats,
    pub command_line: String,
    pub elapsed: Duration,
    pub device: String,
    /// The runtime start-up section (see `startup`).
    pub startup: String,
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// A row of the tables: one metric of one workload.
struct Row {
    metric: String,
    unit: Unit,
}

impl Report {
    fn rows(&self) -> Vec<Row> {
        self.workloads
            .iter()
            .flat_map(|w| w.metrics())
            .map(|(metric, unit)| Row { metric, unit })
            .collect()
    }

    fn reference(&self) -> Option<&Target> {
        self.targets
            .iter()
            .find(|t| t.kind == Kind::Overlay && t.extra.is_empty())
            .or_else(|| self.targets.iter().find(|t| t.kind == Kind::Overlay))
    }

    fn median_of(&self, metric: &str, target: &str) -> Option<f64> {
        self.samples
            .get(&(metric.to_string(), target.to_string()))
            .and_then(|v| median(v))
    }

    /// Target / kernel overlay, as measured (times: lower is better; throughput: higher).
    fn ratio(&self, metric: &str, target: &str) -> Option<f64> {
        let r = self.reference()?;
        let base = self.median_of(metric, &r.label)?;
        let v = self.median_of(metric, target)?;
        (base > 0.0).then(|| v / base)
    }

    /// How many times slower than the kernel overlay (>1 slower) whatever the unit.
    fn slowdown(&self, row: &Row, target: &str) -> Option<f64> {
        let r = self.ratio(&row.metric, target)?;
        if row.unit.lower_is_better() {
            Some(r)
        } else {
            (r > 0.0).then(|| 1.0 / r)
        }
    }

    fn table(&self, cell: impl Fn(&Row, &Target) -> String) -> String {
        let mut s = String::new();
        let _ = write!(s, "| workload | better |");
        for t in &self.targets {
            let _ = write!(s, " {} |", t.label);
        }
        let _ = write!(s, "\n|---|---|");
        for _ in &self.targets {
            let _ = write!(s, "---:|");
        }
        s.push('\n');
        for row in self.rows() {
            let better = if row.unit.lower_is_better() {
                "lower"
            } else {
                "higher"
            };
            let _ = write!(s, "| {} | {better} |", row.metric);
            for t in &self.targets {
                let _ = write!(s, " {} |", cell(&row, t));
            }
            s.push('\n');
        }
        s
    }

    fn ratio_table(&self) -> String {
        self.table(|row, t| match self.ratio(&row.metric, &t.label) {
            Some(r) => format!("{r:.2}x"),
            None => "–".into(),
        })
    }

    fn median_table(&self) -> String {
        self.table(|row, t| match self.median_of(&row.metric, &t.label) {
            Some(v) => row.unit.format(v),
            None => "–".into(),
        })
    }

    fn cost_table(&self) -> String {
        if self.costs.is_empty() {
            return "No FUSE daemon was measured.\n".into();
        }
        let mut s = String::from(
            "| daemon | when | peak RSS (VmHWM) | RSS | open fds | threads |\n|---|---|---:|---:|---:|---:|\n",
        );
        for ((target, phase), c) in &self.costs {
            let _ = writeln!(
                s,
                "| {target} | {phase} | {:.1} MiB | {:.1} MiB | {} | {} |",
                c.hwm_kib as f64 / 1024.0,
                c.rss_kib as f64 / 1024.0,
                c.fds,
                c.threads
            );
        }
        s
    }

    /// What goes to stdout at the end of a run.
    pub fn summary_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nRatios to the kernel overlay (median of {} runs):\n",
            self.reps
        );
        s += &self.ratio_table();
        let _ = writeln!(s, "\nMedians:\n");
        s += &self.median_table();
        let _ = writeln!(s, "\nDaemon cost:\n");
        s += &self.cost_table();
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }

    fn markdown(&self, svg_name: &str) -> String {
        let mut s = String::new();
        let date = sys::first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                })
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let mem = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map(|kib| format!("{:.1} GiB", kib as f64 / (1 << 20) as f64))
            .unwrap_or_default();
        let kernel = sys::first_line("uname", &["-r"]).unwrap_or_default();
        let git = git_state();

        let _ = writeln!(s, "# stratafs benchmark results\n");
        let _ = writeln!(
            s,
            "Written by `{}` on {date}, in {:.0} min. See [README.md](README.md) for how to run and read it. \
             Quote the ratios, not the absolute times: the machine is shared and its speed drifts; \
             every target ran interleaved with the others in the same run.\n",
            self.command_line,
            self.elapsed.as_secs_f64() / 60.0
        );
        let _ = writeln!(s, "## Machine and versions\n");
        let _ = writeln!(
            s,
            "- CPU: {cpu}, {cores} cores; memory {mem}; kernel {kernel}"
        );
        let _ = writeln!(
            s,
            "- storage: layers, uppers and the floor on a fresh ext4 image on {}",
            self.device
        );
        let _ = writeln!(s, "- workspace: {git}");
        for t in &self.targets {
            let extra = if t.extra.is_empty() {
                String::new()
            } else {
                format!(", options `{}`", t.extra.join(","))
            };
            let _ = writeln!(s, "- {}: {}{extra}", t.label, t.version());
        }
        let _ = writeln!(
            s,
            "- tools: {}, {}",
            sys::first_line("fio", &["--version"]).unwrap_or_default(),
            sys::first_line("tar", &["--version"]).unwrap_or_default()
        );
        let _ = writeln!(s, "\n## The stack ({} scale)\n", self.scale.name);
        let st = &self.stats;
        let _ = writeln!(
            s,
            "4 layers; visible in the merged view: {} entries (files and symlinks) in {} directories. \
             Written to the layers: {} files, {} symlinks, {} shadowed copies in lower layers, {} whiteouts, \
             {} opaque directories, {:.0} MiB in all; a {} MiB file, a {} MiB file to copy up, a {}-entry \
             directory merged from 3 layers, {} files to append to; a {}-file tarball; a deep stack of {} layers \
             with {} files in the bottom one.",
            self.entries,
            self.dirs,
            st.files,
            st.symlinks,
            st.shadowed,
            st.whiteouts,
            st.opaque_dirs,
            st.bytes as f64 / (1 << 20) as f64,
            self.scale.big_file_mib,
            self.scale.copyup_file_mib,
            self.scale.bigdir_entries,
            self.scale.append_files,
            self.scale.tar_files,
            self.scale.deep_layers,
            self.scale.deep_files
        );
        let _ = writeln!(
            s,
            "\n## Ratios to the kernel overlay\n\nMedian of {} runs of the target divided by the kernel overlay's median. \
             For times (better: lower) 2.00x means twice as slow; for throughput (better: higher) 0.50x means half \
             the throughput.\n",
            self.reps
        );
        s += &self.ratio_table();
        let _ = writeln!(
            s,
            "\n![Slowdown against the kernel overlay, log scale]({svg_name})\n\n\
             The chart shows every number as a slowdown (times: target/overlay; throughput: overlay/target), \
             so that right of 1 is always worse.\n"
        );
        let _ = writeln!(s, "## Medians\n");
        s += &self.median_table();
        let _ = writeln!(
            s,
            "\n## Daemon cost\n\nRead from /proc/PID/status and /proc/PID/fd of the FUSE daemon right after the \
             workload, before unmounting (the run with the highest peak is shown).\n"
        );
        s += &self.cost_table();
        s.push('\n');
        s += &self.startup;
        let _ = writeln!(s, "\n## Workloads\n");
        for w in &self.workloads {
            let _ = writeln!(s, "- `{}`: {}", w.name(), w.describe(&self.scale));
        }
        let _ = writeln!(s, "\n## Notes\n");
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        let _ = writeln!(
            s,
            "- unionfs-fuse keeps its own whiteout format: it does not hide the overlay whiteouts of the stack \
             (it shows them as character devices) nor honour opaque directories, so it serves a slightly \
             larger tree."
        );
        let _ = writeln!(
            s,
            "\n## All samples\n\n<details><summary>every run, in order</summary>\n"
        );
        let _ = writeln!(s, "| workload | target | samples |\n|---|---|---|");
        for row in self.rows() {
            for t in &self.targets {
                if let Some(v) = self.samples.get(&(row.metric.clone(), t.label.clone())) {
                    let vals: Vec<String> = v.iter().map(|x| row.unit.format(*x)).collect();
                    let _ = writeln!(s, "| {} | {} | {} |", row.metric, t.label, vals.join(", "));
                }
            }
        }
        let _ = writeln!(s, "\n</details>");
        s
    }

    /// Horizontal bars from the 1x line, log scale, one group per metric.
    fn svg(&self) -> String {
        let reference = self
            .reference()
            .map(|t| t.label.clone())
            .unwrap_or_default();
        let shown: Vec<&Target> = self
            .targets
            .iter()
            .filter(|t| t.label != reference)
            .collect();
        let rows = self.rows();
        let mut lo: f64 = 0.5;
        let mut hi: f64 = 2.0;
        for row in &rows {
            for t in &shown {
                if let Some(v) = self.slowdown(row, &t.label) {
                    if v > 0.0 {
                        lo = lo.min(v);
                        hi = hi.max(v);
                    }
                }
            }
        }
        // Below 1/16 (the floor's copy-up, say) bars are clipped; their label tells the value.
        let lo = 2f64.powf(lo.log2().floor()).max(1.0 / 16.0);
        let hi = 2f64.powf(hi.log2().ceil()).min(1024.0);
        let (left, plot_w, top, bar_h, gap) = (190.0, 560.0, 70.0, 9.0, 10.0);
        let group_h = bar_h * shown.len().max(1) as f64 + gap;
        let height = top + group_h * rows.len() as f64 + 40.0;
        let width = left + plot_w + 90.0;
        let x = |v: f64| {
            let v = v.clamp(lo, hi);
            left + (v.log2() - lo.log2()) / (hi.log2() - lo.log2()) * plot_w
        };
        let palette = [
            "#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
        ];
        let color = |i: usize, t: &Target| -> &str {
            if t.kind == Kind::Dir {
                palette[0]
            } else {
                palette[1 + i % (palette.len() - 1)]
            }
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="18" font-size="14" font-weight="bold">Slowdown against the kernel overlay (log scale; 1 = kernel, right is worse)</text>"#
        );
        // Legend.
        let mut lx = left;
        for (i, t) in shown.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<rect x="{lx}" y="30" width="10" height="10" fill="{}"/><text x="{}" y="39">{}</text>"#,
                color(i, t),
                lx + 14.0,
                xml(&t.label)
            );
            lx += 24.0 + 7.0 * t.label.len() as f64;
        }
        // Grid.
        let mut g = lo;
        while g <= hi * 1.0001 {
            let gx = x(g);
            let stroke = if (g - 1.0).abs() < 1e-9 {
                "#000"
            } else {
                "#ddd"
            };
            let _ = writeln!(
                s,
                r#"<line x1="{gx:.1}" y1="{}" x2="{gx:.1}" y2="{:.1}" stroke="{stroke}"/><text x="{gx:.1}" y="{}" text-anchor="middle">{}x</text>"#,
                top - 8.0,
                height - 30.0,
                height - 16.0,
                fmt_tick(g)
            );
            g *= 2.0;
        }
        for (ri, row) in rows.iter().enumerate() {
            let gy = top + ri as f64 * group_h;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 8.0,
                gy + group_h / 2.0,
                xml(&row.metric)
            );
            for (i, t) in shown.iter().enumerate() {
                let y = gy + i as f64 * bar_h;
                if let Some(v) = self.slowdown(row, &t.label) {
                    let (x0, x1) = (x(1.0), x(v));
                    let _ = writeln!(
                        s,
                        r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {v:.2}x</title></rect>"#,
                        x0.min(x1),
                        (x1 - x0).abs().max(1.0),
                        bar_h - 1.0,
                        color(i, t),
                        xml(&t.label)
                    );
                    let _ = writeln!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}" font-size="8">{v:.2}</text>"#,
                        x0.max(x1) + 3.0,
                        y + bar_h - 2.0
                    );
                }
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

fn fmt_tick(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("1/{:.0}", 1.0 / v)
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn git_state() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let head = sys::first_line("git", &["-C", dir, "rev-parse", "--short", "HEAD"])
        .unwrap_or_else(|| "unknown".into());
    let dirty = std::process::Command::new("git")
        .args([
            "-C",
            dir,
            "status",
            "--porcelain",
            "--",
            "../unionfs",
            "../vendor",
        ])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        format!("commit {head}, with uncommitted changes in unionfs/ or vendor/")
    } else {
        format!("commit {head}")
    }
}

pub fn write(report: &Report, md: &Path, svg: &Path) -> Result<()> {
    let svg_name = svg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(parent) = md.parent() {
        ctx(parent.display(), fs::create_dir_all(parent))?;
    }
    ctx(md.display(), fs::write(md, report.markdown(&svg_name)))?;
    ctx(svg.display(), fs::write(svg, report.svg()))
}
