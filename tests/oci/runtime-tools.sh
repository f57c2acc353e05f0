#!/usr/bin/env bash
# runtime-tools.sh RUNTIME [OUTDIR]: builds the OCI runtime-tools validation suite from a local
# git directory (no network: $RUNTIME_TOOLS_GIT, a bare clone or mirror of
# opencontainers/runtime-tools) and runs each validation/*/*.t binary against RUNTIME, collecting
# the TAP counts of each into OUTDIR/summary.txt (test, ok, not ok, skip, orphan diagnostics,
# a pass/FAIL/skip verdict, exit status) with totals.
# Each test's TAP output is kept in OUTDIR/NAME.tap. Must run as root. Exits 0 when the suite
# ran (a baseline of not-ok lines is expected, see tests/oci/README.md), 2 when it could not.
#
# Environment: RUNTIME_TOOLS_GIT (git dir), RUNTIME_TOOLS_REF (commit to build; default: the
# newest first-parent commit of HEAD whose go.mod the installed Go can build),
# RUNTIME_TOOLS_BUILD (build dir, reused when it holds a build of the same commit; default
# OUTDIR/build), RT_TIMEOUT (seconds per test, default 120), RT_TESTS (space-separated test
# names to run instead of all).
set -euo pipefail

die() { echo "runtime-tools.sh: $*" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || die "usage: runtime-tools.sh RUNTIME [OUTDIR]"
[[ $(id -u) == 0 ]] || die "must run as root"
runtime=$(command -v "$1") || die "no runtime $1"
runtime=$(realpath "$runtime")
outdir=${2:-$(mktemp -d /tmp/runtime-tools-out.XXXXXX)}
mkdir -p "$outdir"
outdir=$(realpath "$outdir")
git_dir=${RUNTIME_TOOLS_GIT:-/work/.mirror/opencontainers+runtime-tools/repo}
[[ -d $git_dir ]] || die "no runtime-tools git dir at $git_dir (set RUNTIME_TOOLS_GIT)"
command -v go >/dev/null || die "go is missing: apt-get install golang-go"
timeout_s=${RT_TIMEOUT:-120}
git=(git --git-dir="$git_dir")

# Go version as a sortable number: go1.19.8 -> 1019, "go 1.21" -> 1021.
go_num() { awk -F. '{ printf "%d%03d\n", $1, $2 }' <<<"${1#go}"; }
have_go=$(go_num "$(go env GOVERSION)")
buildable() { # commit: its go.mod asks for no newer Go than the installed one
  local want
  want=$("${git[@]}" show "$1:go.mod" 2>/dev/null | awk '$1 == "go" { print $2; exit }') || return 1
  [[ -n $want && $(go_num "$want") -le $have_go ]]
}
if [[ -n ${RUNTIME_TOOLS_REF:-} ]]; then
  ref=$("${git[@]}" rev-parse --verify "$RUNTIME_TOOLS_REF^{commit}")
else
  # HEAD needs Go 1.21 (stdlib slices) since late 2024; Debian 12 has 1.19, so fall back to
  # the last merge that still builds with it rather than patching the vendored code.
  ref=
  for c in $("${git[@]}" rev-list --first-parent --max-count=200 HEAD); do
    if buildable "$c"; then ref=$c; break; fi
  done
  [[ -n $ref ]] || die "no commit of $git_dir builds with $(go env GOVERSION)"
fi
echo "runtime-tools.sh: runtime-tools $("${git[@]}" log -1 --format='%h %cs %s' "$ref")"

build=${RUNTIME_TOOLS_BUILD:-$outdir/build}
if [[ $(cat "$build/.strata-built" 2>/dev/null) != "$ref" ]]; then
  rm -rf "$build"
  mkdir -p "$build"
  "${git[@]}" archive "$ref" | tar -x -C "$build"
  export GOFLAGS=-mod=vendor GO111MODULE=on GOTOOLCHAIN=local
  export GOCACHE=${GOCACHE:-$build/.gocache} GOPATH=${GOPATH:-$build/.gopath}
  make -C "$build" runtimetest validation-executables COMMIT="$ref" >"$outdir/build.log" 2>&1 \
    || { tail -n 20 "$outdir/build.log" >&2; die "build failed, see $outdir/build.log"; }
  echo "$ref" >"$build/.strata-built"
fi

# The tests make their bundles under TMPDIR; give them one that is removed at exit, after
# unmounting anything a failed test left mounted there.
scratch=$(mktemp -d /tmp/runtime-tools-scratch.XXXXXX)
cleanup() {
  local m
  for m in $(awk -v d="$scratch/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$scratch"
}
trap cleanup EXIT

if [[ -n ${RT_TESTS:-} ]]; then
  tests=()
  for t in $RT_TESTS; do tests+=("validation/$t/$t.t"); done
else
  # No process substitution here or below: the VM of tests/vm/run-in-vm.sh has no /dev/fd.
  tests=($(cd "$build" && ls validation/*/*.t))
fi

summary=$outdir/summary.txt
printf '%-36s %5s %7s %5s %5s  %-5s %s\n' test ok "not ok" skip diag result exit >"$summary"
tot_ok=0 tot_nok=0 tot_skip=0 tot_diag=0 tot_pass=0 tot_fail=0 tot_sk=0
for t in "${tests[@]}"; do
  name=$(basename "$t" .t)
  tap=$outdir/$name.tap
  set +e
  (cd "$build" && TMPDIR=$scratch RUNTIME=$runtime timeout -k 10 "$timeout_s" "./$t") >"$tap" 2>&1
  rc=$?
  set -e
  # TAP: "ok N # SKIP ..." is a skip, "not ok N" a failure (TODO included), other "ok N" a
  # pass. Some tests (hooks, poststart...) report a failure only as a YAML diagnostic with an
  # "error" that belongs to no result line (before the first one or after another diagnostic),
  # under a "1..0" plan: those count as "diag".
  read -r ok nok skip diag <<<"$(awk '
    /^  ---/ { in_yaml = 1; orphan = !seen_result || prev_yaml; err = 0; next }
    in_yaml && /^  \.\.\./ { in_yaml = 0; if (orphan && err) d++; prev_yaml = 1; next }
    in_yaml { if ($0 ~ /^    "error":/) err = 1; next }
    /^ok [0-9]+.*# *[Ss][Kk][Ii][Pp]/ { s++; seen_result = 1; prev_yaml = 0; next }
    /^ok [0-9]+/ { o++; seen_result = 1; prev_yaml = 0; next }
    /^not ok [0-9]+/ { n++; seen_result = 1; prev_yaml = 0; next }
    END { printf "%d %d %d %d\n", o, n, s, d }' "$tap")"
  status=$rc
  [[ $rc == 124 || $rc == 137 ]] && status="timeout($rc)"
  grep -qE '^1\.\.[0-9]+' "$tap" || status="$status,no-plan"
  # The _fail tests pass by a runtime error: exit 0 with no TAP at all.
  if [[ $rc != 0 || $nok -gt 0 || $diag -gt 0 ]]; then
    result=FAIL
  elif [[ $ok == 0 && $skip -gt 0 ]]; then
    result=skip
  else
    result=pass
  fi
  case $result in FAIL) tot_fail=$((tot_fail + 1)) ;; skip) tot_sk=$((tot_sk + 1)) ;; *) tot_pass=$((tot_pass + 1)) ;; esac
  printf '%-36s %5d %7d %5d %5d  %-5s %s\n' "$name" "$ok" "$nok" "$skip" "$diag" "$result" "$status" >>"$summary"
  tot_ok=$((tot_ok + ok)) tot_nok=$((tot_nok + nok)) tot_skip=$((tot_skip + skip)) tot_diag=$((tot_diag + diag))
done
printf '%-36s %5d %7d %5d %5d  %s\n' "TOTAL (${#tests[@]} tests)" "$tot_ok" "$tot_nok" "$tot_skip" \
  "$tot_diag" "$tot_pass pass, $tot_fail FAIL, $tot_sk skip" >>"$summary"
cat "$summary"
echo "runtime-tools.sh: RUNTIME=$runtime, TAP output in $outdir"
