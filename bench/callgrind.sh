#!/usr/bin/env bash
# Instructions per proxied request in the worker (user space), counted by callgrind: unlike
# CPU time, the count repeats whatever else the machine is doing, so it shows what a change
# to the request path costs. Usage: bench/callgrind.sh [BIN_DIR] [N]
#   BIN_DIR defaults to $CARGO_TARGET_DIR/release (or target/release); build it first with
#   cargo build --release -p switchyard-worker -p switchyard-control -p switchyard-ctl -p switchyard-mock.
#   The annotated profile is left in $OUT (default /tmp/switchyard-worker.callgrind).
#   THREADS (default 1): the worker's runtime threads; 1 is the single-threaded runtime the
#   benchmark's pinned worker runs (valgrind itself would report 2 CPUs).
#   STREAM=1: streamed requests (the mock answers 20 SSE chunks at once, as in (c) burst;
#   STREAM_DELAY_MS=5 paces them as in (c) paced).
#   LIMITS=1: three enforced limits on the bench key (requests and tokens per minute, and
#   concurrency), with amounts too large to refuse: the cost of the limits phase (issue 18).
#   TRANSLATE=1: the backends are Anthropic-kind (the same mock's /v1/messages), so every
#   OpenAI Chat request is translated there and back (issue 17's translated row).
#   WORKER_EXTRA_FLAGS (default "--ops-listen 127.0.0.1:0"): the worker's flags beyond the
#   listen, control, state and thread ones; set it empty for a worker older than the ops
#   listener (base 8c2930e's), which has no --ops-listen.
#   SUT=nginx: count nginx instead (one process, the bench's nginx row configuration: keep-alive
#   upstream, proxy_buffering off, buffered access log), through the same mock and requests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN=${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release}; N=${2:-2000}; OUT=${OUT:-/tmp/switchyard-worker.callgrind}
command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)" >&2; exit 1; }
W=$(mktemp -d /tmp/cg.XXXX); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null||true; done; wait 2>/dev/null; rm -rf $W' EXIT
start(){ local n=$1; shift; "$@" >$W/$n.out 2>$W/$n.err & PIDS+=($!); eval "PID_$n=$!"; }
wl(){ for i in $(seq 600); do l=$(grep -m1 '^listening' $W/$1.out 2>/dev/null||true); [[ -n $l ]] && { echo "$l" | grep -o "$2=[^ ]*" | cut -d= -f2; return; }; sleep 0.1; done; cat $W/$1.err; exit 1; }
start mock $BIN/switchyard-mock --threads 1 --no-request-log --name bench
M=$(wl mock http)
if [[ ${STREAM:-0} == 1 ]]; then  # the stream rows' answer: 20 SSE chunks, no delay
  python3 -c "import urllib.request as u; u.urlopen(u.Request('http://$M/_mock/default', data=b'{\"stream_chunks\":20,\"chunk_delay_ms\":${STREAM_DELAY_MS:-0}}', method='POST')).read()"
fi
SUT=${SUT:-switchyard}
if [[ $SUT == nginx ]]; then
  NGINX=$(command -v nginx || echo /usr/sbin/nginx); [[ -x $NGINX ]] || { echo "nginx is not installed" >&2; exit 1; }
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p $W/ng/logs
  user_line=""; [[ $(id -u) == 0 ]] && user_line="user root;"
  cat > $W/ng/nginx.conf <<T
$user_line
worker_processes 1;
master_process off;
daemon off;
pid $W/ng/nginx.pid;
error_log $W/ng/logs/error.log warn;
events { worker_connections 1000; }
http {
  access_log $W/ng/logs/access.log combined buffer=64k flush=100ms;
  client_body_temp_path $W/ng/body; proxy_temp_path $W/ng/proxy; fastcgi_temp_path $W/ng/fastcgi;
  uwsgi_temp_path $W/ng/uwsgi; scgi_temp_path $W/ng/scgi;
  keepalive_requests 1000000; keepalive_timeout 75s; tcp_nodelay on;
  upstream mock { server $M; keepalive 256; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$PORT;
    location / { proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_buffering off; proxy_request_buffering off; }
  }
}
T
  start worker valgrind --tool=callgrind --callgrind-out-file=$W/cg.out --dump-instr=no $NGINX -p $W/ng -c $W/ng/nginx.conf
  H=127.0.0.1:$PORT; KEY=unused
  for i in $(seq 600); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break; sleep 0.1; done
else  # the switchyard row: control, the bench config through the CLI, the worker
start control $BIN/switchyard-control --data-dir $W --grpc-listen 127.0.0.1:0 --http-listen 127.0.0.1:0
G=$(wl control grpc)
export SWITCHYARD_CONTROL_URL=http://$G BA=a BB=b
KIND=openai; BASE=http://$M/v1
if [[ ${TRANSLATE:-0} == 1 ]]; then KIND=anthropic; BASE=http://$M; fi  # OpenAI clients, Anthropic backends
cat > $W/c.toml <<T
[[providers]]
name = "mock-a"
kind = "$KIND"
base_url = "$BASE"
[[providers.credentials]]
name = "a1"
secret_env = "BA"
[[providers]]
name = "mock-b"
kind = "$KIND"
base_url = "$BASE"
[[providers.credentials]]
name = "b1"
secret_env = "BB"
[[models]]
name = "bench-model"
strategy = "round_robin"
[[models.backends]]
provider = "mock-a"
upstream_model = "mock-model"
[[models.backends]]
provider = "mock-b"
upstream_model = "mock-model"
T
$BIN/switchyard apply -f $W/c.toml >/dev/null
KEY=$($BIN/switchyard -o json keys create bench 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext"])')
if [[ ${LIMITS:-0} == 1 ]]; then
  $BIN/switchyard limits create bench-rpm --scope key:bench --kind requests --window minute --amount 1000000000 >/dev/null
  $BIN/switchyard limits create bench-tpm --scope key:bench --kind tokens --window minute --amount 1000000000000 >/dev/null
  $BIN/switchyard limits create bench-conc --scope key:bench --kind concurrency --amount 100000 >/dev/null
fi
start worker valgrind --tool=callgrind --callgrind-out-file=$W/cg.out --dump-instr=no $BIN/switchyard-worker --listen 127.0.0.1:0 ${WORKER_EXTRA_FLAGS---ops-listen 127.0.0.1:0} --control http://$G --state-dir $W/wk --worker-id bench --threads ${THREADS:-1}
H=$(wl worker http)
fi
run(){ python3 - "$H" "$KEY" "$1" "${STREAM:-0}" <<'P'
import http.client, sys, time
h, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
stream = b',"stream":true' if sys.argv[4] == "1" else b""
body = b'{"model":"bench-model","messages":[{"role":"user","content":"Say something short."}]' + stream + b'}'
deadline = time.time() + 60
conns = [http.client.HTTPConnection(h, timeout=30) for _ in range(4)]
ok = 0
while ok < n:
    for c in conns:
        c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json", "authorization": "Bearer " + key})
        r = c.getresponse(); r.read()
        if r.status == 200: ok += 1
        elif time.time() > deadline: sys.exit("never 200: %d" % r.status)
        else: time.sleep(0.05)
P
}
run 400
sleep 1.5   # let the reporter flush its batch, so the count below is the requests alone
callgrind_control -z $PID_worker >/dev/null
run $N
sleep 1.5
callgrind_control -d $PID_worker >/dev/null
f=$(ls $W/cg.out* | grep -v '^$W/cg.out$' | tail -1)
tot=$(grep -m1 "^summary:\|^totals:" $f | awk '{print $2}')
echo "instructions/request: $((tot / N))  (N=$N, $f)"
cp $f "$OUT"; echo "profile: callgrind_annotate --inclusive=yes $OUT | less"
