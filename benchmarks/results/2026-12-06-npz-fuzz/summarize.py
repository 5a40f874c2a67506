"""One line per case and side of before.json or after.json: python summarize.py after.json"""

import json
import sys


def outcome(side: str, s: dict) -> str:
    if s["rc"] == 0 and side == "sim":
        data = s.get("data", {})
        return (f"RUN acc={s.get('final_global_accuracy')} classes={data.get('num_classes')} "
                f"shape={data.get('input_shape')} findings={len(data.get('findings') or [])}")
    if s["rc"] == 0:
        return f"RUN labels_match_oracle={s.get('labels_match_oracle')} x={s.get('x_train')}"
    if s["one_line_error"]:
        return "ERR " + s["last_stderr"].split(": ", 2)[-1][-140:]
    return f"CRASH rc={s['rc']} traceback={s['traceback']} timed_out={s['timed_out']} {s['last_stderr'][-200:]}"


for row in json.load(open(sys.argv[1]))["rows"]:
    for side in ("sim", "device"):
        if row.get(side):
            s = row[side]
            print(f"{row['case']:22s} {row['expected']:6s} {side:6s} {s['wall_s']:6} {s['max_rss_mb']}MB "
                  f"{outcome(side, s)}")
