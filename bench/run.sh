#!/usr/bin/env bash
# Switchyard benchmark: direct to the mock vs nginx vs the Switchyard worker, side by side.
# Usage: bench/run.sh            (full run, ~5 min)
#        QUICK=1 bench/run.sh    (short smoke run, ~1 min)
# See bench/README.md for what is measured and every knob.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
LIB="$BENCH/benchlib.py"

# --- knobs (env) ---------------------------------------------------------------------------
QUICK="${QUICK:-0}"
if [[ "$QUICK" == 1 ]]; then
  REPS="${REPS:-1}"; SAT_DURATION="${SAT_DURATION:-3s}"; FIXED_DURATION="${FIXED_DURATION:-4s}"
  STREAM_N="${STREAM_N:-100}"; PACED_N="${PACED_N:-20}"; SLOW_STREAMS="${SLOW_STREAMS:-1000}"
else
  REPS="${REPS:-3}"; SAT_DURATION="${SAT_DURATION:-8s}"; FIXED_DURATION="${FIXED_DURATION:-10s}"
  STREAM_N="${STREAM_N:-300}"; PACED_N="${PACED_N:-60}"; SLOW_STREAMS="${SLOW_STREAMS:-10000}"
fi
SAT_CONNECTIONS="${SAT_CONNECTIONS:-50}"
EQUAL_RATE="${EQUAL_RATE:-10000}"   # (a2): one rate for every row, below what all sustain
FIXED_RATE="${FIXED_RATE:-200}"
ROWS="${ROWS:-direct nginx nginx-nolog switchyard switchyard-limits switchyard-translated}"  # which rows to run
# switchyard-limits: the same worker setup with three enforced limits on the key (issue 18's condition);
# switchyard-translated: the same OpenAI requests to Anthropic-kind backends, translated there and
# back (issue 17's translated row). Each runs its own control and worker, idle while other rows run,
# and only (a), (b) and (c): (a2) and (d) are the plain switchyard row's.
# switchyard-traced: the switchyard row's setup with OpenTelemetry traces sampled at 1%
# (OTEL_TRACES_SAMPLER_ARG), exported over OTLP/HTTP to tests/otlp_receiver.py (when the
# repo's .venv has it, else to a closed port: every span dropped and counted). Opt-in:
# add it to ROWS (issue 20's "sampled at 1%" condition).
# BASE_WORKER=PATH adds a switchyard-base row: the switchyard row's setup with another worker
# binary (an older build, with this build's control and CLI), to compare two builds in one run.
BASE_WORKER="${BASE_WORKER:-}"
[[ -n "$BASE_WORKER" && " $ROWS " != *" switchyard-base "* ]] && ROWS="$ROWS switchyard-base"
SCENARIOS="${SCENARIOS:-saturation equalrate fixed200 stream slow micro}"
SUT_CPU="${SUT_CPU:-1}"                          # system under test
LOAD_CPU="${LOAD_CPU:-0}"                        # load generator + mock
CONTROL_CPU="${CONTROL_CPU:-$LOAD_CPU}"          # the control plane: not the system under test
TOOLS_DIR="${TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard-bench}"
RESULTS_DIR="${RESULTS_DIR:-$BENCH/results}"
NO_BUILD="${NO_BUILD:-0}"                        # 1: use binaries already in the target dir
KEEP_AWAKE="${KEEP_AWAKE:-0}"   # 1: SCHED_IDLE spinners keep both CPUs out of idle during (b) and (c)
LIMITS="${LIMITS:-0}"           # 1: the switchyard row's key also gets the three limits (as switchyard-limits)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="${BIN_DIR:-$CARGO_TARGET_DIR/release}"   # BIN_DIR: use binaries built elsewhere

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

LOADAVG_START="$(cut -d" " -f1-3 /proc/loadavg)"   # stated in the report
WORK="$(mktemp -d "${TMPDIR:-/tmp}/switchyard-bench.XXXXXX")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ "${KEEP_WORK:-0}" == 1 ]] && log "work dir kept: $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
RAW="$WORK/raw.jsonl"; : > "$RAW"
SKIPPED=""

# --- tools -------------------------------------------------------------------------------------
[[ "$(nproc)" -ge 2 ]] || log "warning: fewer than 2 CPUs; pinning SUT and load generator together"
command -v taskset >/dev/null || die "taskset (util-linux) is required"
command -v python3 >/dev/null || die "python3 is required"
export PATH="$TOOLS_DIR/bin:$PATH"
if ! command -v oha >/dev/null; then
  log "installing oha into $TOOLS_DIR (cargo install oha --locked)"
  CARGO_TARGET_DIR="$TOOLS_DIR/target" cargo install oha --locked --root "$TOOLS_DIR" >&2
fi
NGINX="$(command -v nginx || true)"; [[ -z "$NGINX" && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
if [[ -z "$NGINX" && " $ROWS " == *" nginx"* ]]; then
  log "installing nginx from Debian"
  SUDO=""; [[ "$(id -u)" != 0 ]] && SUDO="sudo"
  $SUDO apt-get install -y nginx-light >&2 || { $SUDO apt-get update >&2 && $SUDO apt-get install -y nginx-light >&2; }
  NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
fi

# 10k slow streams need ~2 fds per stream in a proxy (client + upstream side).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT="$(ulimit -n)"
MAX_STREAMS=$(( (FD_LIMIT - 1000) / 2 ))
NOTES=""
if (( SLOW_STREAMS > MAX_STREAMS )); then
  NOTES="open-files limit is $FD_LIMIT, so the slow-stream scenario holds $MAX_STREAMS streams, not $SLOW_STREAMS"
  log "$NOTES"; SLOW_STREAMS=$MAX_STREAMS
fi

# --- build -------------------------------------------------------------------------------------
SY_BUILD_OK=1
if [[ "$NO_BUILD" != 1 ]]; then
  log "building release binaries in $CARGO_TARGET_DIR"
  # One cargo invocation for all of them: built apart, each set of packages gets its own
  # feature resolution and the shared dependencies (tokio, hyper, ...) are compiled twice.
  if [[ " $ROWS " == *" switchyard"* ]] && (cd "$ROOT" && cargo build --release -p switchyard-mock \
       -p switchyard-worker -p switchyard-control -p switchyard-ctl >&2); then
    :
  else
    [[ " $ROWS " == *" switchyard"* ]] && { SY_BUILD_OK=0; log "Switchyard binaries do not build; the switchyard row will be skipped"; }
    (cd "$ROOT" && cargo build --release -p switchyard-mock >&2) || die "the mock does not build"
  fi
fi
[[ -x "$BIN/switchyard-mock" ]] || die "$BIN/switchyard-mock missing"

# --- process helpers ----------------------------------------------------------------------------
# start NAME CPU CMD... : run pinned, stdout/stderr to files, remember the pid
start() {
  local name=$1 cpu=$2; shift 2
  taskset -c "$cpu" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  local pid=$!
  PIDS+=("$pid"); eval "PID_${name//-/_}=$pid"
}
# wait_listening NAME KEY [SECONDS] : print KEY's address from the `listening k=addr` line
wait_listening() {
  local name=$1 key=$2 secs=${3:-30} i pid_var="PID_${1//-/_}"
  for ((i = 0; i < secs * 10; i++)); do
    local line; line="$(grep -m1 '^listening ' "$WORK/$name.out" 2>/dev/null || true)"
    if [[ -n "$line" ]]; then
      tr ' ' '\n' <<<"$line" | sed -n "s/^$key=//p"; return 0
    fi
    kill -0 "${!pid_var}" 2>/dev/null || { log "$name exited: $(tail -5 "$WORK/$name.err")"; return 1; }
    sleep 0.1
  done
  log "$name did not print its listening line: $(tail -5 "$WORK/$name.err")"; return 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {  # wait_http URL [SECONDS] [HEADER]: until it answers 200
  local url=$1 secs=${2:-30} hdr=${3:-x-bench: 1} i
  for ((i = 0; i < secs * 10; i++)); do
    python3 - "$url" "$hdr" <<'EOF' && return 0
import sys, urllib.request
k, v = sys.argv[2].split(": ", 1)
req = urllib.request.Request(sys.argv[1], headers={k: v, "content-type": "application/json"},
                             data=b'{"model":"bench-model","messages":[{"role":"user","content":"hi"}]}')
try:
    sys.exit(0 if urllib.request.urlopen(req, timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
    sleep 0.1
  done
  return 1
}
mock_ctl() {  # mock_ctl PATH [JSON]
  python3 - "$MOCK_URL$1" "${2:-}" <<'EOF'
import sys, urllib.request
data = sys.argv[2].encode() if len(sys.argv) > 2 and sys.argv[2] else b""
urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=data, method="POST"), timeout=5).read()
EOF
}

# --- the mock (CPU LOAD_CPU, one thread, no request log) -----------------------------------------
start mock "$LOAD_CPU" "$BIN/switchyard-mock" --threads 1 --no-request-log --name bench
MOCK_ADDR="$(wait_listening mock http)" || die "mock did not start"
MOCK_URL="http://$MOCK_ADDR"
log "mock on $MOCK_URL"

# --- rows ---------------------------------------------------------------------------------------
declare -A URL PID KEY EXTRA OPS_URL
URL[direct]="$MOCK_URL"; PID[direct]=$PID_mock; KEY[direct]=""

start_nginx() {  # start_nginx ROW: nginx (buffered access log, like the worker's) or nginx-nolog
  local row=$1
  command -v "$NGINX" >/dev/null 2>&1 || [[ -x "$NGINX" ]] || { SKIPPED+="$row (not installed); "; return 1; }
  local port; port="$(free_port)"; mkdir -p "$WORK/$row/logs"
  # As root, nginx would hand its worker to `nobody`, which cannot use our private temp dir.
  local user_line=""; [[ "$(id -u)" == 0 ]] && user_line="user root;"
  # The worker writes an access line per request, batched in memory and written every 100 ms;
  # nginx gets the same (its buffered access log). nginx-nolog shows what that costs nginx.
  local access="access_log $WORK/$row/logs/access.log combined buffer=64k flush=100ms;"
  [[ "$row" == nginx-nolog ]] && access="access_log off;"
  cat >"$WORK/$row/nginx.conf" <<EOF
$user_line
worker_processes 1;
daemon off;
pid $WORK/$row/nginx.pid;
error_log $WORK/$row/logs/error.log warn;
worker_rlimit_nofile $FD_LIMIT;
events { worker_connections $((FD_LIMIT - 100)); }
http {
  $access
  client_body_temp_path $WORK/$row/body;
  proxy_temp_path $WORK/$row/proxy;
  fastcgi_temp_path $WORK/$row/fastcgi;
  uwsgi_temp_path $WORK/$row/uwsgi;
  scgi_temp_path $WORK/$row/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  tcp_nodelay on;
  upstream mock { server $MOCK_ADDR; keepalive 256; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 1h;
    }
  }
}
EOF
  start "$row" "$SUT_CPU" "$NGINX" -p "$WORK/$row" -c "$WORK/$row/nginx.conf" -e "$WORK/$row/logs/error.log"
  local pid_var="PID_${row//-/_}"
  URL[$row]="http://127.0.0.1:$port"; PID[$row]=${!pid_var}; KEY[$row]=""
  wait_http "${URL[$row]}/v1/chat/completions" 10 || { SKIPPED+="$row (did not start: $(tail -2 "$WORK/$row/logs/error.log")); "; return 1; }
}

# Control (SQLite in the work dir) + worker, configured through the `switchyard` CLI.
# start_switchyard ROW: switchyard, switchyard-limits (three enforced limits on the key) or
# switchyard-translated (Anthropic-kind backends: every OpenAI request translated there and back).
start_switchyard() {
  local row=$1 sfx="" kind=openai base="$MOCK_URL/v1" limits=$LIMITS worker="$BIN/switchyard-worker"
  case $row in
    switchyard-base) sfx=_base; worker="$BASE_WORKER" ;;
    switchyard-traced) sfx=_traced ;;
    switchyard-limits) sfx=_limits; limits=1 ;;
    switchyard-translated) sfx=_translated; kind=anthropic; base="$MOCK_URL" ;;
  esac
  [[ "$SY_BUILD_OK" == 1 ]] || { SKIPPED+="$row (build failed); "; return 1; }
  for b in switchyard-control switchyard; do
    [[ -x "$BIN/$b" ]] || { SKIPPED+="$row ($b not built); "; return 1; }
  done
  [[ -x "$worker" ]] || { SKIPPED+="$row ($worker not built); "; return 1; }
  local dir="$WORK/sy$sfx"
  mkdir -p "$dir/control" "$dir/worker"
  start "control$sfx" "$CONTROL_CPU" "$BIN/switchyard-control" --data-dir "$dir/control" \
    --grpc-listen 127.0.0.1:0 --http-listen 127.0.0.1:0
  local grpc; grpc="$(wait_listening "control$sfx" grpc)" || { SKIPPED+="$row (control did not start); "; return 1; }
  export SWITCHYARD_CONTROL_URL="http://$grpc"
  export BENCH_UPSTREAM_KEY_A="sk-upstream-a" BENCH_UPSTREAM_KEY_B="sk-upstream-b"
  cat >"$dir/switchyard.toml" <<EOF
# Two providers on the same mock, one model over both backends.
[[providers]]
name = "mock-a"
kind = "$kind"
base_url = "$base"
[[providers.credentials]]
name = "a1"
secret_env = "BENCH_UPSTREAM_KEY_A"

[[providers]]
name = "mock-b"
kind = "$kind"
base_url = "$base"
[[providers.credentials]]
name = "b1"
secret_env = "BENCH_UPSTREAM_KEY_B"

[[models]]
name = "bench-model"
strategy = "round_robin"
[[models.backends]]
provider = "mock-a"
upstream_model = "mock-model"
[[models.backends]]
provider = "mock-b"
upstream_model = "mock-model"
EOF
  "$BIN/switchyard" apply -f "$dir/switchyard.toml" >"$dir/apply.out" 2>&1 \
    || { SKIPPED+="$row (apply failed: $(tail -1 "$dir/apply.out")); "; return 1; }
  local key
  key="$("$BIN/switchyard" -o json keys create bench 2>"$dir/keys.err" \
         | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext"])')" \
    || { SKIPPED+="$row (keys create failed: $(tail -1 "$dir/keys.err")); "; return 1; }
  if [[ "$limits" == 1 ]]; then  # issue 18's bench (a) condition: amounts too large to refuse
    { "$BIN/switchyard" limits create bench-rpm --scope key:bench --kind requests --window minute --amount 1000000000 \
      && "$BIN/switchyard" limits create bench-tpm --scope key:bench --kind tokens --window minute --amount 1000000000000 \
      && "$BIN/switchyard" limits create bench-conc --scope key:bench --kind concurrency --amount 100000; } \
      >"$dir/limits.out" 2>&1 || { SKIPPED+="$row (limits create failed: $(tail -1 "$dir/limits.out")); "; return 1; }
  fi
  # A worker from before the ops listener (an older build compared with BIN_DIR) serves
  # /metrics on its main port.
  local ops=(); "$worker" --help 2>/dev/null | grep -q -- --ops-listen && ops=(--ops-listen 127.0.0.1:0)
  local otel=()
  if [[ $row == switchyard-traced ]]; then
    local collector; collector="127.0.0.1:$(free_port)"
    if [[ -x "$ROOT/.venv/bin/python" ]]; then
      start otlp "$CONTROL_CPU" "$ROOT/.venv/bin/python" "$ROOT/tests/otlp_receiver.py" "$WORK/spans.jsonl"
      collector="$(wait_listening otlp http)" || { SKIPPED+="$row (the OTLP receiver did not start); "; return 1; }
    fi
    otel=(env OTEL_EXPORTER_OTLP_ENDPOINT="http://$collector" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
          OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG="${TRACE_RATIO:-0.01}")
  fi
  start "worker$sfx" "$SUT_CPU" "${otel[@]}" "$worker" --listen 127.0.0.1:0 "${ops[@]}" \
    --control "http://$grpc" --state-dir "$dir/worker" --worker-id "bench$sfx" --drain-timeout 2s
  local http; http="$(wait_listening "worker$sfx" http)" || { SKIPPED+="$row (worker did not start); "; return 1; }
  OPS_URL[$row]="http://$http"
  [[ ${#ops[@]} -gt 0 ]] && OPS_URL[$row]="http://$(wait_listening "worker$sfx" ops)"
  local wpid="PID_worker$sfx" cpid="PID_control$sfx"
  URL[$row]="http://$http"; PID[$row]=${!wpid}; KEY[$row]="$key"; EXTRA[$row]=${!cpid}
  wait_http "${URL[$row]}/v1/chat/completions" 30 "authorization: Bearer $key" \
    || { SKIPPED+="$row (worker never answered 200 on /v1/chat/completions); "; return 1; }
}

ACTIVE=()
for row in $ROWS; do
  case $row in
    direct) ACTIVE+=(direct) ;;
    nginx|nginx-nolog) if start_nginx "$row"; then ACTIVE+=("$row"); else log "skipping $row row: $SKIPPED"; fi ;;
    switchyard|switchyard-base|switchyard-limits|switchyard-translated|switchyard-traced)
      if start_switchyard "$row"; then ACTIVE+=("$row"); else log "skipping $row row: $SKIPPED"; fi ;;
    *) die "unknown row $row" ;;
  esac
done
log "rows: ${ACTIVE[*]}"

# --- scenarios -------------------------------------------------------------------------------------
BODY='{"model":"bench-model","messages":[{"role":"user","content":"Say something short."}]}'
oha_run() {  # oha_run ROW SCENARIO REP OHA-ARGS...
  local row=$1 scen=$2 rep=$3; shift 3
  local auth=(); [[ -n "${KEY[$row]}" ]] && auth=(-H "authorization: Bearer ${KEY[$row]}")
  local extra=(); [[ -n "${EXTRA[$row]:-}" ]] && extra=(--extra-pid "${EXTRA[$row]}")
  python3 "$LIB" oha --out "$RAW" --row "$row" --rep "$rep" --scenario "$scen" --pid "${PID[$row]}" "${extra[@]}" -- \
    taskset -c "$LOAD_CPU" oha --no-tui --output-format json -m POST -H 'content-type: application/json' \
    "${auth[@]}" -d "$BODY" "$@" "${URL[$row]}/v1/chat/completions"
}
has() { [[ " $SCENARIOS " == *" $1 "* ]]; }
variant() { [[ $1 == switchyard-* ]]; }  # switchyard-limits, switchyard-translated: (a), (b), (c) only
# KEEP_AWAKE=1: one SCHED_IDLE busy loop per CPU while the latency scenarios run. It only runs
# when nothing else wants the CPU, and any wake-up preempts it at once, so a CPU never halts
# and a wake-up is a context switch, not the hypervisor rescheduling a halted vCPU. Same for
# every row (the spinners are outside every row's process tree, so no CPU figure counts them).
SPIN=()
awake() {
  [[ "$KEEP_AWAKE" == 1 ]] || return 0
  local c
  for c in $(printf '%s\n' "$SUT_CPU" "$LOAD_CPU" | sort -u); do
    taskset -c "$c" chrt -i 0 sh -c 'while :; do :; done' &
    SPIN+=("$!"); PIDS+=("$!")
  done
}
asleep() {
  [[ ${#SPIN[@]} -gt 0 ]] || return 0
  kill "${SPIN[@]}" 2>/dev/null || true
  wait "${SPIN[@]}" 2>/dev/null || true
  SPIN=()
}
settle() {  # settle ROW: wait until the row's processes are idle (deadline 60 s); for the
  # worker also until control has acknowledged every usage record (switchyard_reports_pending 0)
  local m=(); [[ -n "${OPS_URL[$1]:-}" ]] && m=(--metrics-url "${OPS_URL[$1]}/metrics" --zero-metric switchyard_reports_pending)
  python3 "$LIB" settle --pid "${PID[$1]}" ${EXTRA[$1]:+--pid "${EXTRA[$1]}"} "${m[@]}"
}

for row in "${ACTIVE[@]}"; do
  # Warm up connection pools and caches once per row (a bounded count: the idle RSS of (d) is
  # measured next, and should not include the usage records of a long burst).
  taskset -c "$LOAD_CPU" oha --no-tui --output-format quiet -n $((SAT_CONNECTIONS * 100)) -c "$SAT_CONNECTIONS" -m POST \
    -H 'content-type: application/json' ${KEY[$row]:+-H "authorization: Bearer ${KEY[$row]}"} \
    -d "$BODY" "${URL[$row]}/v1/chat/completions" >/dev/null 2>&1 || true
done

# (d) once per row, first: many concurrent slow streams (a chunk per second for 10 minutes).
# First, so that "idle RSS" is a fresh process's (after the warm-up), not what an allocator kept
# from the saturation runs.
if has slow; then
  for row in "${ACTIVE[@]}"; do
    variant "$row" && continue
    settle "$row"
    log "$row: $SLOW_STREAMS concurrent slow streams"
    mock_ctl /_mock/default '{"stream_chunks":600,"chunk_delay_ms":1000}'
    taskset -c "$LOAD_CPU" python3 "$LIB" slow --out "$RAW" --row "$row" --pid "${PID[$row]}" \
      --url "${URL[$row]}/v1/chat/completions" ${KEY[$row]:+--key "${KEY[$row]}"} -n "$SLOW_STREAMS" \
      || log "slow streams failed for $row"
    mock_ctl /_mock/reset
    settle "$row"; settle direct  # the closed streams drain (the mock notices at its next chunk)
  done
fi


for rep in $(seq 1 "$REPS"); do
  for row in "${ACTIVE[@]}"; do
    if has saturation; then
      settle "$row"
      log "rep $rep: $row saturation ($SAT_DURATION, $SAT_CONNECTIONS connections)"
      oha_run "$row" saturation "$rep" -z "$SAT_DURATION" -c "$SAT_CONNECTIONS"
    fi
    if has equalrate && ! variant "$row"; then
      settle "$row"
      log "rep $rep: $row equal rate $EQUAL_RATE req/s ($SAT_DURATION, $SAT_CONNECTIONS connections)"
      oha_run "$row" equalrate "$rep" -z "$SAT_DURATION" -c "$SAT_CONNECTIONS" -q "$EQUAL_RATE" --latency-correction
    fi
    if has fixed200; then
      settle "$row"
      log "rep $rep: $row fixed $FIXED_RATE req/s ($FIXED_DURATION)"
      awake
      oha_run "$row" fixed200 "$rep" -z "$FIXED_DURATION" -c 20 -q "$FIXED_RATE" --latency-correction
      asleep
    fi
    if has stream; then
      settle "$row"
      awake
      log "rep $rep: $row streams (20 chunks burst x$STREAM_N, paced 5 ms x$PACED_N)"
      mock_ctl /_mock/default '{"stream_chunks":20,"chunk_delay_ms":0}'
      taskset -c "$LOAD_CPU" python3 "$LIB" stream --out "$RAW" --row "$row" --rep "$rep" \
        --scenario stream_burst --url "${URL[$row]}/v1/chat/completions" ${KEY[$row]:+--key "${KEY[$row]}"} -n "$STREAM_N"
      mock_ctl /_mock/default '{"stream_chunks":20,"chunk_delay_ms":5}'
      taskset -c "$LOAD_CPU" python3 "$LIB" stream --out "$RAW" --row "$row" --rep "$rep" \
        --scenario stream_paced --url "${URL[$row]}/v1/chat/completions" ${KEY[$row]:+--key "${KEY[$row]}"} \
        -n "$PACED_N" --warmup 3
      asleep
      mock_ctl /_mock/reset
    fi
  done
done

# (e) criterion micro-benches of the worker's code, pinned like the worker, once.
if has micro && [[ "$SY_BUILD_OK" == 1 ]]; then
  MICRO_TIME="${MICRO_TIME:-3}"; [[ "$QUICK" == 1 ]] && MICRO_TIME="${MICRO_TIME_QUICK:-1}"
  log "micro-benches (criterion, ${MICRO_TIME}s each, on CPU $SUT_CPU)"
  rm -rf "$CARGO_TARGET_DIR/criterion"   # only this run's figures
  if (cd "$ROOT" && taskset -c "$SUT_CPU" cargo bench -p switchyard-worker --bench balance --bench hotpath --bench copies -- \
        --warm-up-time 1 --measurement-time "$MICRO_TIME" >"$WORK/criterion.out" 2>&1); then
    python3 "$LIB" criterion --dir "$CARGO_TARGET_DIR/criterion" --copies "$WORK/criterion.out" --out "$RAW" 2>/dev/null
  else
    log "micro-benches failed: $(tail -3 "$WORK/criterion.out")"; SKIPPED+="micro (cargo bench failed); "
  fi
fi

# --- report -----------------------------------------------------------------------------------------
mkdir -p "$RESULTS_DIR"
DATE="$(date -u +%Y-%m-%d)"
OUT="$RESULTS_DIR/$DATE.md"
[[ "$KEEP_AWAKE" == 1 ]] && OUT="${OUT%.md}-awake.md"
[[ "$QUICK" == 1 ]] && OUT="${OUT%.md}-quick.md"
[[ "$KEEP_AWAKE" == 1 ]] && NOTES="${NOTES:+$NOTES; }KEEP_AWAKE=1: during (b) and (c) a SCHED_IDLE busy loop on each CPU kept it out of idle (no halted-vCPU wake-ups)"
python3 - "$WORK/machine.json" <<EOF
import json, os, platform, subprocess, sys
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
def ver(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except Exception:
        return "n/a"
json.dump({"date": "$DATE", "cpu": cpu, "nproc": os.cpu_count(), "kernel": platform.release(),
           "sut_cpu": "$SUT_CPU", "load_cpu": "$LOAD_CPU", "control_cpu": "$CONTROL_CPU", "oha": ver(["oha", "--version"]),
           "nginx": ver(["$NGINX", "-v"]) if "$NGINX" else "nginx n/a",
           "mode": "QUICK" if "$QUICK" == "1" else "full", "reps": $REPS,
           "notes": "$NOTES", "skipped": "$SKIPPED",
           "loadavg_start": "$LOADAVG_START", "loadavg_end": " ".join(open("/proc/loadavg").read().split()[:3])}, open(sys.argv[1], "w"))
EOF
python3 "$LIB" table --raw "$RAW" --machine "$WORK/machine.json" --md "$OUT" >/dev/null
cp "$RAW" "${OUT%.md}.jsonl"
log "wrote $OUT (raw measurements: ${OUT%.md}.jsonl)"
cat "$OUT"
