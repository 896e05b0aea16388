#!/bin/bash
# scripts/rss.sh CMD...: runs CMD (its output goes to /tmp/rss_out.log), samples
# /proc/PID/status every 50 ms and prints the peaks of RssAnon, RssFile and VmHWM (KB)
# with the summary lines about snapshots and recovery. Used by docs/benchmarks.md.
"$@" > /tmp/rss_out.log 2>&1 &
pid=$!
ma=0; mf=0; hwm=0
while kill -0 $pid 2>/dev/null; do
  if [ -r /proc/$pid/status ]; then
    a=$(awk '/RssAnon/{print $2}' /proc/$pid/status 2>/dev/null); f=$(awk '/RssFile/{print $2}' /proc/$pid/status 2>/dev/null); h=$(awk '/VmHWM/{print $2}' /proc/$pid/status 2>/dev/null)
    [ -n "$a" ] && [ "$a" -gt "$ma" ] && ma=$a; [ -n "$f" ] && [ "$f" -gt "$mf" ] && mf=$f; [ -n "$h" ] && [ "$h" -gt "$hwm" ] && hwm=$h
  fi
  sleep 0.05
done
wait $pid
grep "restored\|recovery\|keys in state\|snapshot  wrote" /tmp/rss_out.log
echo "peak RssAnon ${ma} KB, peak RssFile ${mf} KB, VmHWM ${hwm} KB"
