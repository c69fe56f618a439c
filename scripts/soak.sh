#!/bin/bash
# Soak (issue 9): DUR seconds (600) of mixed traffic - stream, non-stream and embeddings load
# generators with exact-output checks, malformed requests and unfinished heads - with a SIGHUP
# reload every ~25 s; samples carpool's RSS and descriptors every ~12 s. Results in the printed dir.
DUR=${DUR:-600}
B="$(cd "$(dirname "$0")/.." && pwd)/bin"
D=$(mktemp -d /tmp/carpool-soak.XXXXXX)
$B/carpool-sim --listen 127.0.0.1:0 --step-ms 2 > $D/sim.out 2>$D/sim.err &
SIM=$!
sleep 0.5
SP=$(grep -o 'listening on 127.0.0.1:[0-9]*' $D/sim.out | grep -o '[0-9]*$')
cat > $D/c.yaml <<Y
workers: 2
listen:
  - address: 127.0.0.1:0
upstreams:
  - url: http://127.0.0.1:$SP
batching: { policy: adaptive }
timeouts: { client_header_ms: 2000, client_body_ms: 2000 }
log: { level: info }
Y
$B/carpool -c $D/c.yaml > $D/cp.log 2>&1 &
CP=$!
for i in $(seq 50); do grep -q 'ready' $D/cp.log 2>/dev/null && break; sleep 0.1; done
PORT=$(grep -o 'listening on 127.0.0.1:[0-9]*' $D/cp.log | head -1 | grep -o '[0-9]*$')
echo "carpool pid $CP port $PORT sim $SP" > $D/summary
$B/carpool-loadgen --url http://127.0.0.1:$PORT --concurrency 32 --requests 1000000 --rate 100 --duration-s $DUR --mode stream --quiet > $D/lg-stream.out 2>&1 &
L1=$!
$B/carpool-loadgen --url http://127.0.0.1:$PORT --concurrency 16 --requests 1000000 --rate 50 --duration-s $DUR --mode nonstream --quiet > $D/lg-nonstream.out 2>&1 &
L2=$!
$B/carpool-loadgen --url http://127.0.0.1:$PORT --concurrency 8 --requests 1000000 --rate 20 --duration-s $DUR --mode embeddings --quiet > $D/lg-embed.out 2>&1 &
L3=$!
bad() { # one malformed request on its own connection
  timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT; printf '$1' >&3; cat <&3 >/dev/null" 2>/dev/null
}
t0=$(date +%s); n=0
while [ $(( $(date +%s) - t0 )) -lt $DUR ]; do
  bad 'POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n'
  bad 'POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello'
  bad 'POST /v1/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX'
  bad 'GET /../admin HTTP/1.1\r\nHost: a\r\n\r\n'
  bad 'GET /v1/models HTTP/1.1\r\nHost: a\r\nX-Slow: ' &   # never finished: the head deadline ends it
  n=$((n+1))
  if [ $((n % 10)) -eq 0 ]; then kill -HUP $CP; fi
  if [ $((n % 5)) -eq 0 ]; then
    echo "t=$(( $(date +%s) - t0 )) rss_kb=$(awk '/VmRSS/{print $2}' /proc/$CP/status) fds=$(ls /proc/$CP/fd | wc -l)" >> $D/samples
  fi
  sleep 2
done
wait $L1 $L2 $L3
echo "t=end rss_kb=$(awk '/VmRSS/{print $2}' /proc/$CP/status) fds=$(ls /proc/$CP/fd | wc -l)" >> $D/samples
kill $CP; wait $CP; echo "carpool exit $?" >> $D/summary
kill $SIM
grep -h RESULT $D/lg-*.out >> $D/summary
grep -c "reloaded\|reload" $D/cp.log >> $D/summary
grep -E " crit | alert |Sanitizer|runtime error" $D/cp.log | head -3 >> $D/summary
echo done >> $D/summary
cat $D/summary $D/samples; echo "(files in $D)"
