#!/usr/bin/env python3
# Self (exclusive) instructions per request, by function, from a callgrind profile (what
# bench/callgrind.sh leaves in $OUT): each function's own cost lines, not those after a
# `calls=` line (callgrind_annotate 3.19 lists inclusive costs first, which hides them).
#   bench/cgself.py PROFILE N [-n TOP]               the top functions of one profile
#   bench/cgself.py BASE N_BASE NEW N_NEW [-n TOP]   the largest differences, BASE against NEW
# N: the requests the profile covers (callgrind.sh's second argument).
import sys, re, collections
def load(path, n):
    names = {}; cost = collections.Counter(); cur = None; after_calls = False
    for line in open(path):
        if line.startswith("fn="):
            m = re.match(r"fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
            if m.group(2): names[m.group(1)] = m.group(2)
            cur = names.get(m.group(1), m.group(1)); after_calls = False; continue
        if line.startswith("cfn="):
            m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
            if m.group(2): names[m.group(1)] = m.group(2)
            continue
        if line.startswith("calls="): after_calls = True; continue
        if line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) >= 2 and cur is not None:
                if after_calls: after_calls = False
                else: cost[cur] += int(parts[1])
    out = collections.Counter()
    for k, v in cost.items():
        k = re.sub(r"::h[0-9a-f]{16}", "", k); out[k] += v / n
    return out
args = sys.argv[1:]; top = 50
if "-n" in args: i = args.index("-n"); top = int(args[i+1]); del args[i:i+2]
a = load(args[0], int(args[1]))
if len(args) == 2:
    print(f"total {sum(a.values()):.0f}")
    for k, v in a.most_common(top): print(f"{v:8.0f}  {k[:160]}")
else:
    b = load(args[2], int(args[3]))
    print(f"total A {sum(a.values()):.0f}  B {sum(b.values()):.0f}")
    for k in sorted(set(a)|set(b), key=lambda k: -abs(b[k]-a[k]))[:top]:
        print(f"{a[k]:8.0f} {b[k]:8.0f} {b[k]-a[k]:+7.0f}  {k[:150]}")
