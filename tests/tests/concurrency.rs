//! Concurrency: many threads and processes on one stratafs mount at once.
//! * Simultaneous first writes to the same lower files: every writer opens O_WRONLY at the same
//!   moment (each open may trigger the copy-up) and writes its own region; appenders add fixed
//!   records. One consistent copy-up: the result is the lower content with every region and every
//!   record (each exactly once), the lower file is untouched, nothing is left in workdir/work.
//! * Random operations by threads and by processes, each in its own directory and, with
//!   per-worker names, in one shared directory; plus create/unlink and mkdir/rmdir races on
//!   names shared by all. The final state is consistent with a serial order: each worker's names
//!   hold what its own operations left (known content), and for a shared name the successful
//!   creations minus the successful removals give its final presence.
//! * readdir during create/unlink, in a merged and in an upper-only directory: a listing never
//!   has a name twice, always has every stable name, and fails with nothing.
//!
//! No deadlock: every test runs its work in threads and fails if they are not done by a
//! (generous) deadline. No crash: the daemon still serves at the end. Seeded by CONC_SEED.

#![deny(unsafe_code)]

use e2e::procfs::{alive, daemon_pid};
use e2e::random::Rng;
use e2e::{lstat, open, pwrite, read, run_stratafs_logged, sys, unmount, write_fd, Errno, Kind};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Generous: the work takes seconds; only a deadlock gets near this.
const DEADLINE: Duration = Duration::from_secs(240);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The runs' seed: $CONC_SEED, else a fixed one. The generator is `e2e::random::Rng`
/// (splitmix64) since this file's own xorshift64* was dropped: a seed gives other data and
/// operations than it did before that change.
fn seed() -> u64 {
    std::env::var("CONC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(77)
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A stratafs mount of two lower layers, an upper and a workdir under a temp root.
struct Mount {
    root: PathBuf,
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    pid: Option<i32>,
}

impl Mount {
    fn layers(name: &str) -> Mount {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("conc-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let m = Mount {
            lowers: vec![root.join("L0"), root.join("L1")],
            upper: root.join("u"),
            work: root.join("w"),
            mnt: root.join("m"),
            root,
            pid: None,
        };
        for d in m.lowers.iter().chain([&m.upper, &m.work, &m.mnt]) {
            fs::create_dir_all(d).unwrap();
        }
        m
    }

    fn mount(&mut self) {
        let opts = format!(
            "driver=fuse,lowerdir={}:{},upperdir={},workdir={}{}",
            self.lowers[0].display(),
            self.lowers[1].display(),
            self.upper.display(),
            self.work.display(),
            e2e::extra_strata_opts()
        );
        let st = run_stratafs_logged(&opts, &self.mnt, &self.root.join("log"));
        assert!(st.success(), "stratafs mount failed");
        self.pid = Some(daemon_pid(&self.mnt));
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The daemon is alive and serves requests.
    fn assert_serving(&self) {
        let pid = self.pid.unwrap();
        assert!(alive(pid), "the daemon died");
        let p = self.m("still-serving");
        fs::write(&p, "yes").expect("the daemon no longer serves");
        assert_eq!(fs::read(&p).unwrap(), b"yes");
        fs::remove_file(&p).unwrap();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if unmount(&self.mnt).is_err() {
            let _ = sys::umount2(&self.mnt, libc::MNT_DETACH);
        }
        if let Some(pid) = self.pid {
            let t = Instant::now();
            while alive(pid) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if alive(pid) {
                let _ = sys::kill(pid, libc::SIGKILL);
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Runs the jobs on threads; fails if they are not all done by the deadline (a deadlock).
fn run_all<T: Send + 'static>(what: &str, jobs: Vec<Box<dyn FnOnce() -> T + Send>>) -> Vec<T> {
    let hs: Vec<_> = jobs.into_iter().map(std::thread::spawn).collect();
    let deadline = Instant::now() + DEADLINE;
    while !hs.iter().all(|h| h.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "{what}: not finished after {DEADLINE:?}: deadlock?"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    hs.into_iter()
        .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        .collect()
}

/// Runs this test binary again as a child process doing one job (see `child_process_entry`).
fn spawn_child(role: &str, args: &[String]) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CONC_CHILD", role)
        .env("CONC_ARGS", args.join("\u{1}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Waits for a child (by the deadline) and returns the lines it printed between markers.
fn child_output(child: std::process::Child, deadline: Instant) -> Vec<String> {
    let mut child = child;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child process not finished by the deadline: deadlock?");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "child process failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let body = text
        .split("<<CHILD>>\n")
        .nth(1)
        .and_then(|s| s.split("<<END>>").next())
        .unwrap_or_else(|| panic!("child printed no result: {text}"));
    body.lines().map(str::to_string).collect()
}

/// The entry point of child processes (a no-op in a normal test run).
#[test]
fn child_process_entry() {
    let Ok(role) = std::env::var("CONC_CHILD") else {
        return;
    };
    let args_s = std::env::var("CONC_ARGS").unwrap();
    let args: Vec<&str> = args_s.split('\u{1}').collect();
    let out = match role.as_str() {
        "region" => {
            // path, offset, len, seed: open O_WRONLY at the given instant, pwrite the region.
            let (p, off, len, s) = (args[0], args[1], args[2], args[3]);
            let start: u128 = args[4].parse().unwrap();
            wait_until_epoch_ms(start);
            let data = region_data(s.parse().unwrap(), len.parse().unwrap());
            let fd = open(p, libc::O_WRONLY, 0).expect("open O_WRONLY");
            let n = pwrite(&fd, off.parse().unwrap(), &data).expect("pwrite");
            assert_eq!(n, data.len());
            vec!["ok".to_string()]
        }
        "worker" => {
            let (dir, prefix, s, ops) = (args[0], args[1], args[2], args[3]);
            let model = random_worker(
                Path::new(dir),
                prefix,
                Rng::new(s.parse().unwrap()),
                ops.parse().unwrap(),
            );
            model
                .iter()
                .map(|(k, v)| format!("{k}\t{}", hex(v)))
                .collect()
        }
        other => panic!("unknown role {other}"),
    };
    println!("<<CHILD>>\n{}\n<<END>>", out.join("\n"));
}

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn epoch_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn wait_until_epoch_ms(t: u128) {
    while epoch_ms() < t {
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn region_data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

fn hash_file(p: &Path) -> (u64, u64) {
    use std::hash::Hasher;
    let d = fs::read(p).unwrap();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(&d);
    (d.len() as u64, h.finish())
}

// ---------------------------------------------------------------------------------------------
// 1. Simultaneous first writes to the same lower files
// ---------------------------------------------------------------------------------------------

#[test]
fn simultaneous_first_writes_to_one_lower_file() {
    let seed = seed();
    let mut m = Mount::layers("firstwrite");
    let mut rng = Rng::new(seed);
    // Files of several sizes in both layers; a region per writer.
    let files: Vec<(&str, usize, usize)> = vec![
        ("big", 16 << 20, 1),
        ("mid", 1 << 20, 1),
        ("top", 256 << 10, 0),
    ];
    let mut lower_data = BTreeMap::new();
    for &(name, len, layer) in &files {
        let mut d = vec![0u8; len];
        rng.fill(&mut d);
        fs::write(m.lowers[layer].join(name), &d).unwrap();
        lower_data.insert(name, d);
    }
    // Appenders' target: records of fixed size are added by everyone.
    fs::write(m.lowers[1].join("log"), "lower header\n").unwrap();
    let lower_hashes: Vec<_> = files
        .iter()
        .map(|&(n, _, l)| hash_file(&m.lowers[l].join(n)))
        .collect();
    m.mount();

    let threads = 16;
    let procs = 4;
    let writers = threads + procs;
    let region = move |len: usize, i: usize| -> (usize, usize) {
        let r = len / writers;
        (i * r, r.min(64 << 10))
    };
    // Threads: all open at once (after a barrier), then write their region; processes start
    // at the same wall-clock instant.
    let start_at = epoch_ms() + 400;
    let mut children = Vec::new();
    for &(name, len, _) in &files {
        for p in 0..procs {
            let i = threads + p;
            let (off, rlen) = region(len, i);
            let s = seed * 1000 + i as u64 + name.len() as u64 * 100;
            children.push(spawn_child(
                "region",
                &[
                    m.m(name).display().to_string(),
                    off.to_string(),
                    rlen.to_string(),
                    s.to_string(),
                    start_at.to_string(),
                ],
            ));
        }
    }
    let barrier = Arc::new(Barrier::new(threads));
    let mut jobs: Vec<Box<dyn FnOnce() -> usize + Send>> = Vec::new();
    for i in 0..threads {
        let barrier = barrier.clone();
        let mnt = m.mnt.clone();
        let files = files.clone();
        jobs.push(Box::new(move || {
            wait_until_epoch_ms(start_at);
            let mut records = 0;
            for &(name, len, _) in &files {
                barrier.wait();
                let fd = open(mnt.join(name), libc::O_WRONLY, 0).expect("open O_WRONLY");
                let (off, rlen) = region(len, i);
                let s = seed * 1000 + i as u64 + name.len() as u64 * 100;
                let data = region_data(s, rlen);
                assert_eq!(pwrite(&fd, off as u64, &data), Ok(rlen));
                // And append a few records to the shared log.
                let lfd = open(mnt.join("log"), libc::O_WRONLY | libc::O_APPEND, 0)
                    .expect("open O_APPEND");
                for k in 0..5 {
                    let rec = format!("rec {i:03} {name:>4} {k}\n");
                    let r = write_fd(&lfd, rec.as_bytes());
                    assert_eq!(r, Ok(rec.len()), "append");
                    records += 1;
                }
            }
            records
        }));
    }
    let deadline = Instant::now() + DEADLINE;
    let records: usize = run_all("first writers", jobs).into_iter().sum();
    for c in children {
        assert_eq!(child_output(c, deadline), vec!["ok"]);
    }
    // The result: lower content + every region.
    for &(name, len, _) in &files {
        let mut want = lower_data[name].clone();
        for i in 0..writers {
            let (off, rlen) = region(len, i);
            let s = seed * 1000 + i as u64 + name.len() as u64 * 100;
            want[off..off + rlen].copy_from_slice(&region_data(s, rlen));
        }
        let got = fs::read(m.m(name)).unwrap();
        assert_eq!(got.len(), want.len(), "{name}: size");
        if got != want {
            let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            panic!(
                "{name}: differs at {at} (region of writer {})",
                at / (len / writers)
            );
        }
        // One copy in the upper, the same.
        assert_eq!(
            fs::read(m.upper.join(name)).unwrap(),
            want,
            "{name}: upper copy"
        );
    }
    // The log: the lower header, then every record exactly once, none torn.
    let log = fs::read_to_string(m.m("log")).unwrap();
    let mut lines = log.lines();
    assert_eq!(lines.next(), Some("lower header"));
    let recs: Vec<&str> = lines.collect();
    assert_eq!(recs.len(), records, "every appended record, once");
    let set: BTreeSet<&str> = recs.iter().copied().collect();
    assert_eq!(set.len(), recs.len(), "a record appears twice");
    for i in 0..threads {
        for &(name, _, _) in &files {
            for k in 0..5 {
                let rec = format!("rec {i:03} {name:>4} {k}");
                assert!(set.contains(rec.as_str()), "missing {rec:?}");
            }
        }
    }
    // Nothing left in the work dir; the lowers untouched; the daemon serves.
    assert_eq!(fs::read_dir(m.work.join("work")).unwrap().count(), 0);
    for (i, &(n, _, l)) in files.iter().enumerate() {
        assert_eq!(
            hash_file(&m.lowers[l].join(n)),
            lower_hashes[i],
            "lower {n} modified"
        );
    }
    assert_eq!(
        fs::read(m.lowers[1].join("log")).unwrap(),
        b"lower header\n"
    );
    m.assert_serving();
    eprintln!(
        "first writes: {threads} threads + {procs} processes x {} files, {records} appends",
        files.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Random operations, disjoint and shared directories
// ---------------------------------------------------------------------------------------------

/// Random operations on the names `{prefix}N` of `dir` (nobody else uses them), with a model of
/// their content; returns the model (the final state the worker must observe).
fn random_worker(dir: &Path, prefix: &str, mut rng: Rng, ops: usize) -> BTreeMap<String, Vec<u8>> {
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // Lower files of this worker, if any (named "{prefix}lN").
    for e in fs::read_dir(dir).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(prefix) && e.file_type().unwrap().is_file() {
            model.insert(n.clone(), fs::read(e.path()).unwrap());
        }
    }
    let names: Vec<String> = (0..6)
        .map(|i| format!("{prefix}{i}"))
        .chain((0..2).map(|i| format!("{prefix}l{i}")))
        .collect();
    for i in 0..ops {
        let n = &names[rng.below(names.len() as u64) as usize];
        let p = dir.join(n);
        let data = format!("{prefix} op{i}\n").into_bytes();
        match (model.contains_key(n), rng.below(6)) {
            (false, _) => {
                fs::write(&p, &data).unwrap_or_else(|e| panic!("create {n}: {e}"));
                model.insert(n.clone(), data);
            }
            (true, 0) => {
                fs::remove_file(&p).unwrap_or_else(|e| panic!("unlink {n}: {e}"));
                model.remove(n);
            }
            (true, 1) => {
                let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
                std::io::Write::write_all(&mut f, &data).unwrap();
                model.get_mut(n).unwrap().extend_from_slice(&data);
            }
            (true, 2) => {
                let to = &names[rng.below(names.len() as u64) as usize];
                fs::rename(&p, dir.join(to)).unwrap_or_else(|e| panic!("rename {n} {to}: {e}"));
                let v = model.remove(n).unwrap();
                model.insert(to.clone(), v);
            }
            (true, 3) => {
                let got = fs::read(&p).unwrap_or_else(|e| panic!("read {n}: {e}"));
                assert_eq!(&got, &model[n], "{n}: read back");
            }
            (true, _) => {
                fs::write(&p, &data).unwrap_or_else(|e| panic!("overwrite {n}: {e}"));
                model.insert(n.clone(), data);
            }
        }
    }
    model
}

/// Shared names raced by everyone: returns (name -> successful creates - successful removals).
fn shared_racer(dir: &Path, mut rng: Rng, ops: usize) -> BTreeMap<String, i64> {
    let mut net: BTreeMap<String, i64> = BTreeMap::new();
    for _ in 0..ops {
        let k = rng.below(4);
        if rng.below(2) == 0 {
            let n = format!("c{k}");
            let p = dir.join(&n);
            let r = if rng.below(2) == 0 {
                open(&p, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644).map(|_| 1)
            } else {
                e2e::unlink(&p).map(|_| -1)
            };
            match r {
                Ok(d) => *net.entry(n).or_default() += d,
                Err(Errno::EEXIST) | Err(Errno::ENOENT) => {}
                Err(e) => panic!("shared file {n}: {e}"),
            }
        } else {
            let n = format!("cd{k}");
            let p = dir.join(&n);
            let r = if rng.below(2) == 0 {
                e2e::mkdir(&p, 0o755).map(|_| 1)
            } else {
                e2e::rmdir(&p).map(|_| -1)
            };
            match r {
                Ok(d) => *net.entry(n).or_default() += d,
                Err(Errno::EEXIST) | Err(Errno::ENOENT) => {}
                Err(e) => panic!("shared dir {n}: {e}"),
            }
        }
    }
    net
}

/// Lists `dir` with small getdents buffers (several calls, offsets in between); checks no name
/// comes twice and every stable name comes; returns the number of listings.
fn lister(dir: PathBuf, stable: BTreeSet<String>, stop: Arc<AtomicBool>) -> usize {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) || n < 3 {
        let fd = open(&dir, libc::O_RDONLY | libc::O_DIRECTORY, 0).expect("open dir");
        let mut seen = BTreeSet::new();
        loop {
            let batch = e2e::getdents(fd.as_raw_fd(), 512).expect("getdents");
            if batch.is_empty() {
                break;
            }
            for (name, _, _) in batch {
                assert!(
                    seen.insert(name.clone()),
                    "{}: {name:?} listed twice",
                    dir.display()
                );
            }
        }
        for s in &stable {
            assert!(seen.contains(s), "{}: stable {s:?} missing", dir.display());
        }
        // Listed names: lstat succeeds or ENOENT (removed since).
        for name in seen.iter().filter(|n| *n != "." && *n != "..").take(20) {
            match lstat(dir.join(name)) {
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(e) => panic!("lstat {name}: {e}"),
            }
        }
        n += 1;
    }
    n
}

#[test]
fn random_operations_by_threads_and_processes() {
    let seed = seed();
    let mut m = Mount::layers("randomops");
    let threads = 8;
    let procs = 4;
    let ops = 300;
    // Lower content: per-worker dirs with lower files, a shared dir with per-worker lower files,
    // stable names nobody touches, and shared names present from the start.
    let shared_l = m.lowers[1].join("shared");
    fs::create_dir_all(&shared_l).unwrap();
    fs::create_dir_all(m.lowers[0].join("shared")).unwrap();
    let mut stable = BTreeSet::new();
    for i in 0..50 {
        let layer = i % 2;
        let n = format!("stable{i}");
        fs::write(m.lowers[layer].join("shared").join(&n), "stable").unwrap();
        stable.insert(n);
    }
    fs::write(shared_l.join("c0"), "").unwrap();
    fs::create_dir(shared_l.join("cd0")).unwrap();
    for w in 0..threads + procs {
        let d = m.lowers[1].join(format!("own{w}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("w{w}_l0")), format!("lower own {w}\n")).unwrap();
        fs::write(
            shared_l.join(format!("w{w}_l1")),
            format!("lower shared {w}\n"),
        )
        .unwrap();
    }
    m.mount();
    let deadline = Instant::now() + DEADLINE;
    // Processes: one in its own dir and then in the shared dir (two jobs each).
    let mut children = Vec::new();
    for p in 0..procs {
        let w = threads + p;
        for (dir, s) in [
            (m.m(&format!("own{w}")), seed * 31 + w as u64),
            (m.m("shared"), seed * 37 + w as u64),
        ] {
            children.push((
                w,
                dir.clone(),
                spawn_child(
                    "worker",
                    &[
                        dir.display().to_string(),
                        format!("w{w}_"),
                        s.to_string(),
                        ops.to_string(),
                    ],
                ),
            ));
        }
    }
    type Out = (
        usize,
        Vec<(PathBuf, BTreeMap<String, Vec<u8>>)>,
        BTreeMap<String, i64>,
    );
    let mut jobs: Vec<Box<dyn FnOnce() -> Out + Send>> = Vec::new();
    for w in 0..threads {
        let own = m.m(&format!("own{w}"));
        let shared = m.m("shared");
        jobs.push(Box::new(move || {
            let prefix = format!("w{w}_");
            let a = random_worker(&own, &prefix, Rng::new(seed * 31 + w as u64), ops);
            let b = random_worker(&shared, &prefix, Rng::new(seed * 37 + w as u64), ops);
            let net = shared_racer(&shared, Rng::new(seed * 41 + w as u64), ops);
            (w, vec![(own, a), (shared, b)], net)
        }));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let listers: Vec<_> = (0..2)
        .map(|_| {
            let (d, s, st) = (m.m("shared"), stable.clone(), stop.clone());
            std::thread::spawn(move || lister(d, s, st))
        })
        .collect();
    let results = run_all("random workers", jobs);
    let mut models: Vec<(usize, PathBuf, BTreeMap<String, Vec<u8>>)> = Vec::new();
    let mut net: BTreeMap<String, i64> = BTreeMap::new();
    for (w, ms, n) in results {
        for (d, mm) in ms {
            models.push((w, d, mm));
        }
        for (k, v) in n {
            *net.entry(k).or_default() += v;
        }
    }
    for (w, dir, c) in children {
        let lines = child_output(c, deadline);
        let mut mm = BTreeMap::new();
        for l in lines.iter().filter(|l| !l.is_empty()) {
            let (k, v) = l.split_once('\t').unwrap();
            mm.insert(k.to_string(), unhex(v));
        }
        models.push((w, dir, mm));
    }
    stop.store(true, Ordering::Relaxed);
    let deadline2 = Instant::now() + DEADLINE;
    let mut listings = 0;
    for h in listers {
        while !h.is_finished() {
            assert!(Instant::now() < deadline2, "lister: deadlock?");
            std::thread::sleep(Duration::from_millis(10));
        }
        listings += h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    }
    // Each worker's names hold exactly what its own operations left.
    for (w, dir, model) in &models {
        let prefix = format!("w{w}_");
        let mut actual = BTreeMap::new();
        for e in fs::read_dir(dir).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                actual.insert(n, fs::read(e.path()).unwrap());
            }
        }
        let text = |m: &BTreeMap<String, Vec<u8>>| -> BTreeMap<String, String> {
            m.iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect()
        };
        assert_eq!(
            text(&actual),
            text(model),
            "worker {w} in {}: final state is not what its operations left",
            dir.display()
        );
    }
    // Shared names: initial presence + creates - removals = final presence (0 or 1).
    for k in 0..4 {
        for (n, kind) in [(format!("c{k}"), Kind::File), (format!("cd{k}"), Kind::Dir)] {
            let initial = i64::from(k == 0);
            let expect = initial + net.get(&n).copied().unwrap_or(0);
            let st = lstat(m.m("shared").join(&n));
            let present = i64::from(st.is_ok());
            assert!(
                (0..=1).contains(&expect) && expect == present,
                "shared {n}: initial {initial} + net {} but present = {present} ({st:?})",
                net.get(&n).copied().unwrap_or(0)
            );
            if let Ok(s) = st {
                assert_eq!(s.kind, kind);
            }
        }
    }
    // Stable names unchanged; lower untouched; nothing in the work dir; the daemon serves.
    for s in &stable {
        assert_eq!(read(m.m("shared").join(s)).unwrap().0, b"stable");
    }
    assert_eq!(fs::read_dir(m.work.join("work")).unwrap().count(), 0);
    for w in 0..threads + procs {
        assert_eq!(
            fs::read_to_string(m.lowers[1].join(format!("own{w}/w{w}_l0"))).unwrap(),
            format!("lower own {w}\n")
        );
    }
    m.assert_serving();
    eprintln!(
        "random ops: {threads} threads + {procs} processes, {} operations, {listings} \
         concurrent listings",
        (threads * 3 + procs * 2) * ops
    );
}

// ---------------------------------------------------------------------------------------------
// 3. readdir during create/unlink
// ---------------------------------------------------------------------------------------------

#[test]
fn readdir_during_create_and_unlink() {
    let mut m = Mount::layers("readdir");
    // "merged": in both lowers (and, once written to, the upper); "up": created through the
    // mount (upper only, listed straight from the layer with its own offsets).
    let mut stable = BTreeSet::new();
    for i in 0..300 {
        let n = format!("s{i:03}");
        fs::create_dir_all(m.lowers[i % 2].join("merged")).unwrap();
        fs::write(m.lowers[i % 2].join("merged").join(&n), "s").unwrap();
        stable.insert(n);
    }
    m.mount();
    fs::create_dir(m.m("up")).unwrap();
    for n in &stable {
        fs::write(m.m("up").join(n), "s").unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut jobs: Vec<Box<dyn FnOnce() -> usize + Send>> = Vec::new();
    for dir in ["merged", "up"] {
        for t in 0..3 {
            let d = m.m(dir);
            jobs.push(Box::new(move || {
                let mut ops = 0;
                for i in 0..400 {
                    let p = d.join(format!("tmp{t}_{}", i % 25));
                    match (i / 25) % 2 {
                        0 => fs::write(&p, "x").unwrap_or_else(|e| panic!("create: {e}")),
                        _ => fs::remove_file(&p).unwrap_or_else(|e| panic!("unlink: {e}")),
                    }
                    ops += 1;
                }
                ops
            }));
        }
        for _ in 0..2 {
            let (d, s, st) = (m.m(dir), stable.clone(), stop.clone());
            jobs.push(Box::new(move || {
                // Each lister runs until the churners are done (stop), at least 3 times.
                lister(d, s, st)
            }));
        }
    }
    // Stop the listers when the churners are done: run churners and listers together, the
    // churners first in the job list; a watcher sets stop once 12 jobs are done.
    let done = Arc::new(AtomicUsize::new(0));
    let jobs: Vec<Box<dyn FnOnce() -> usize + Send>> = jobs
        .into_iter()
        .enumerate()
        .map(|(i, j)| {
            let (done, stop) = (done.clone(), stop.clone());
            let is_churner = i % 5 < 3;
            Box::new(move || {
                let r = j();
                if is_churner && done.fetch_add(1, Ordering::SeqCst) + 1 == 6 {
                    stop.store(true, Ordering::Relaxed);
                }
                r
            }) as Box<dyn FnOnce() -> usize + Send>
        })
        .collect();
    let r = run_all("readdir during create/unlink", jobs);
    let listings: usize = r
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 >= 3)
        .map(|(_, n)| n)
        .sum();
    for dir in ["merged", "up"] {
        let names: BTreeSet<String> = fs::read_dir(m.m(dir))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, stable, "{dir}: only the stable names are left");
    }
    m.assert_serving();
    eprintln!("readdir: 6 churning threads x 400 ops, {listings} listings during them");
}
