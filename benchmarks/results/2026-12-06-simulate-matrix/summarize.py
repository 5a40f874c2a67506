"""Counts of probe.py's outcomes, and the named errors grouped by their reason (the words after the class).

    python3 summarize.py before.json
"""

import json
import re
import sys
from collections import Counter

doc = json.load(open(sys.argv[1]))
print(f"{doc['runs']} of {doc['runs_planned']} runs, {doc['wall_s']} s: {doc['counts']}")
reasons = Counter()
for r in doc["results"]:
    if r["outcome"] == "named_error":
        line = r["stderr_last"].removeprefix("fedge: error: ")
        reasons[re.sub(r"[0-9]+", "N", line)[:90]] += 1
    elif r["outcome"] != "ok":
        print(r["outcome"], " ".join(r["argv"][:-2]))
for reason, n in reasons.most_common():
    print(f"{n:4d}  {reason}")
