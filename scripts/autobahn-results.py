"""Reads the Autobahn|Testsuite's reports/servers/index.json: prints the count of
each result per case category and the reason of every NON-STRICT case, and
exits non-zero if any case is neither OK, NON-STRICT nor INFORMATIONAL."""
import collections
import json
import os
import sys

ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL"}
CATEGORIES = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 handling",
    "7": "Close handling",
    "9": "Limits/performance",
    "10": "Misc",
    "12": "Compression",
    "13": "Compression params",
}

reports = sys.argv[1]
with open(os.path.join(reports, "index.json")) as f:
    index = json.load(f)
failed = []
counts = collections.OrderedDict()
for agent, cases in index.items():
    for case in sorted(cases, key=lambda c: [int(part) for part in c.split(".")]):
        result = cases[case]
        category = case.split(".")[0]
        verdict = result["behavior"]
        if result["behaviorClose"] not in ACCEPTED:
            verdict = "FAILED"
        counts.setdefault(category, collections.Counter())[verdict] += 1
        if verdict not in ACCEPTED:
            failed.append((case, result["behavior"], result["behaviorClose"]))
        if result["behavior"] == "NON-STRICT":
            with open(os.path.join(reports, result["reportfile"])) as f:
                report = json.load(f)
            print("NON-STRICT %s: expected: %s Result: %s"
                  % (case, report.get("expectation", ""), report.get("result", "")))
print("Autobahn|Testsuite results per category:")
for category, counter in counts.items():
    line = ", ".join("%s %d" % (verdict, n) for verdict, n in sorted(counter.items()))
    print("  %-3s %-20s %s" % (category, CATEGORIES.get(category, ""), line))
if failed:
    for case, behavior, close in failed:
        print("FAILED %s: behavior %s, close behavior %s" % (case, behavior, close))
    sys.exit(1)
