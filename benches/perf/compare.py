"""Side-by-side whole-process benchmark: `balans correct` vs harmonypy.

Called by benches/perf/run.sh (which sets up the venv and builds balans).
For each size in PERF_SIZES (default 100000,300000,1000000): generate
`balans synth --rows N --batches 10 --features 50` once (cached under
out/perf/), then run balans and harmonypy back to back, each as its own
process under /usr/bin/time -v (wall time, peak RSS). Writes the table
between the markers of docs/performance.md and out/perf/results.json.

`compare.py width` (`bash benches/perf/run.sh width`): issue #14's width
target instead, balans only: PERF_WIDTH_ROWS rows (default 100000) at each
of PERF_WIDTH_FEATURES (default 50,1000) features, the widths back to back,
PERF_REPEAT times (default 2); wall and CPU time, peak RSS, the ratio of
each width's wall time to the narrowest's in the same repetition and the
peak RSS over the input as f32 (rows x features x 4 bytes). Writes the
table between the perf-width markers of docs/performance.md and
out/perf/width.json.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "out" / "perf"
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"
WBEGIN, WEND = "<!-- perf-width:begin -->", "<!-- perf-width:end -->"


def timed(cmd: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MB, user + system CPU seconds) of one process."""
    t = time.monotonic()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.monotonic() - t
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"failed: {' '.join(cmd)}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)", r.stderr))
    return wall, (int(m.group(1)) / 1024.0 if m else float("nan")), cpu


def human(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def write_between(begin: str, end: str, table: str) -> None:
    """Replace the text between two markers of docs/performance.md."""
    if DOC.exists() and os.environ.get("PERF_WRITE_DOC", "1") == "1":
        text = DOC.read_text()
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            DOC.write_text(f"{head}{begin}\n{table}\n{end}{tail}")


def width(balans: str) -> None:
    n = int(os.environ.get("PERF_WIDTH_ROWS", "100000"))
    widths = [int(s) for s in os.environ.get("PERF_WIDTH_FEATURES", "50,1000").split(",")]
    reps = int(os.environ.get("PERF_REPEAT", "2"))
    extra = os.environ.get("PERF_BALANS_ARGS", "").split()
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for rep in range(reps):
        first_wall = None
        for d in widths:
            src = OUT / f"synth_{n}x{d}.parquet"
            if not src.exists():
                subprocess.run([balans, "synth", "--rows", str(n), "--batches", "10",
                                "--features", str(d), "--output", str(src)], check=True,
                               capture_output=True)
            w, r, c = timed([balans, "correct", "--input", str(src),
                             "--output", str(OUT / f"balans_{n}x{d}.parquet"),
                             "--batch-col", "Metadata_Batch", "--control", "Metadata_Label=DMSO",
                             "-q", *extra])
            first_wall = first_wall or w
            f32_mb = n * d * 4 / 2**20
            row = {"rows": n, "features": d, "run": rep + 1, "wall_s": w, "cpu_s": c,
                   "rss_mb": r, "input_f32_mb": f32_mb, "wall_vs_narrowest": w / first_wall,
                   "rss_vs_input_f32": r / f32_mb, "load": os.getloadavg()[0]}
            print(json.dumps(row), flush=True)
            results.append(row)
    (OUT / "width.json").write_text(json.dumps(results, indent=1))
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores (`PERF_WIDTH_ROWS={n} PERF_WIDTH_FEATURES={','.join(map(str, widths))} "
        f"bash benches/perf/run.sh width`). Targets (issue #14): the widest at most 2x the "
        f"narrowest's wall time, peak RSS at most 3x the input as f32.",
        "",
        "| rows x features | run | wall (CPU) | peak RSS | input as f32 | RSS / input as f32 | wall / narrowest (same run) | 1-min load after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {human(r['rows'])} x {r['features']} | {r['run']} | {r['wall_s']:.2f} s ({r['cpu_s']:.1f} s) | "
                     f"{r['rss_mb']:.0f} MB | {r['input_f32_mb']:.0f} MB | {r['rss_vs_input_f32']:.2f}x | "
                     f"{r['wall_vs_narrowest']:.1f}x | {r['load']:.1f} |")
    table = "\n".join(lines)
    write_between(WBEGIN, WEND, table)
    print(table)


def main() -> None:
    balans = os.environ["BALANS_BIN"]
    if sys.argv[1:] == ["width"]:
        width(balans)
        return
    sizes = [int(s) for s in os.environ.get("PERF_SIZES", "100000,300000,1000000").split(",")]
    skip_harmony = os.environ.get("PERF_SKIP_HARMONY", "0") == "1"
    extra = os.environ.get("PERF_BALANS_ARGS", "").split()
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for n in sizes:
        src = OUT / f"synth_{n}.parquet"
        if not src.exists():
            subprocess.run([balans, "synth", "--rows", str(n), "--batches", "10",
                            "--features", "50", "--output", str(src),
                            "--truth", str(OUT / f"truth_{n}.parquet")], check=True,
                           capture_output=True)
        bw, br, bc = timed([balans, "correct", "--input", str(src),
                        "--output", str(OUT / f"balans_{n}.parquet"),
                        "--batch-col", "Metadata_Batch", "--control", "Metadata_Label=DMSO",
                        "--summary-json", str(OUT / f"balans_{n}.json"), "-q", *extra])
        hw, hr, hc = (float("nan"), float("nan"), float("nan"))
        if not skip_harmony:
            hw, hr, hc = timed([sys.executable, str(Path(__file__).with_name("harmony_one.py")),
                            str(src), str(OUT / f"harmony_{n}.parquet")])
        row = {"rows": n, "balans_s": bw, "balans_mb": br, "harmony_s": hw, "harmony_mb": hr,
               "balans_cpu_s": bc, "harmony_cpu_s": hc,
               "load": os.getloadavg()[0]}
        print(json.dumps(row), flush=True)
        results.append(row)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores (`PERF_SIZES={','.join(map(str, sizes))} bash benches/perf/run.sh`).",
        "",
        "| rows | balans correct (CPU) | balans peak RSS | harmonypy (CPU) | harmonypy peak RSS | harmonypy / balans wall | harmonypy / balans CPU | 1-min load after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = r["harmony_s"] / r["balans_s"]
        cratio = r["harmony_cpu_s"] / r["balans_cpu_s"]
        lines.append(f"| {human(r['rows'])} | {r['balans_s']:.1f} s ({r['balans_cpu_s']:.1f} s) | {r['balans_mb']:.0f} MB | "
                     f"{r['harmony_s']:.1f} s ({r['harmony_cpu_s']:.1f} s) | {r['harmony_mb']:.0f} MB | {ratio:.2f}x | {cratio:.2f}x | {r['load']:.1f} |")
    table = "\n".join(lines)
    write_between(BEGIN, END, table)
    print(table)


if __name__ == "__main__":
    main()
