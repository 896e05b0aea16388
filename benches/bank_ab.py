#!/usr/bin/env python3
"""A/B of onceflow binaries on the bank pipeline, runs interleaved (docs/benchmarks.md).

Run in a directory holding p.toml (examples/bank/pipeline.toml without `load`), the
input log in data/input and the binaries to compare:

    python3 bank_ab.py RUNS onceflow.base onceflow.new

Each run deletes data/state, then `nice -n 19 /usr/bin/time BIN run p.toml --until-end
--quiet`; prints wall and CPU (user+sys) per run, then the medians per binary.
"""
import re
import shutil
import statistics
import subprocess
import sys

n = int(sys.argv[1])
bins = sys.argv[2:]
res = {b: [] for b in bins}
for i in range(n):
    for b in bins:
        shutil.rmtree("data/state", ignore_errors=True)
        r = subprocess.run(
            ["/usr/bin/time", "-f", "TIME %e %U %S %M", "nice", "-n", "19", "./" + b,
             "run", "p.toml", "--until-end", "--quiet"],
            capture_output=True, text=True)
        t = re.search(r"TIME ([\d.]+) ([\d.]+) ([\d.]+) (\d+)", r.stderr)
        wall, cpu, rss = float(t[1]), float(t[2]) + float(t[3]), int(t[4])
        res[b].append((wall, cpu))
        print(f"{b} run{i + 1}: wall {wall:.2f}s cpu {cpu:.2f}s rss {rss // 1024}MB", flush=True)
for b in bins:
    w = [x[0] for x in res[b]]
    c = [x[1] for x in res[b]]
    print(f"{b}: wall median {statistics.median(w):.2f} ({' / '.join(f'{x:.2f}' for x in w)}); "
          f"cpu median {statistics.median(c):.2f} ({' / '.join(f'{x:.2f}' for x in c)})")
shutil.rmtree("data/state", ignore_errors=True)
