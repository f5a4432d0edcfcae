"""Big files: a 1,000,000-row dry run against the time of a plain `csv.reader` pass (issue 14).

    .venv/bin/python bench/bench_bigfile.py              # ~2 min: generates, measures, prints
    .venv/bin/python bench/bench_bigfile.py --rows 200000 --keep /tmp/big

Generates one CSV in a temporary directory (valid rows whose targets are sample_data/'s inboxes
and agents, some invalid rows, some duplicates, identical and conflicting) and its Parquet twin
(the same rows, written by pyarrow with its default row groups, as pandas' `to_parquet` does),
then prints, in one run:

- the floor: a plain `csv.reader` pass over the CSV (median of 3, in this process, file cached);
- `mateo-bulk run FILE --dry-run --quiet --run-dir DIR` on the CSV and on the Parquet twin, each
  a subprocess: wall time, peak RSS (`wait4`'s ru_maxrss of that child alone), and the ratio of
  the wall time to the floor;
- `mateo-bulk status DIR` and `mateo-bulk report DIR --report x.parquet`, `--report x.csv` and
  `--report x.html` (`report` picks the format by the suffix; .html writes the HTML run report,
  the page a run leaves as DIR/report.html, again) on the CSV dry run's run directory, each a
  subprocess (interpreter start-up included, as a user waits for it); each export's rows are
  read back (the Parquet file's metadata, the CSV's records; for the page, the count `report`
  prints, and its size).

Targets (issue 14): each dry run ≤ 10× the floor and ≤ 200 MB peak; status, the report's
Parquet and CSV exports and the HTML report ≤ 3 s each.
Figures go to bench/results/bigfile-<UTC time>.json as well. bench/README.md, section 6, says
more.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import INPUT_COLUMNS, PYTHON, REPO, print_table, write_result  # noqa: E402

SAMPLE = REPO / "sample_data"
STATUSES = ("open", "closed", "archived")
#: Targets a valid row sets, with how often: (inbox, assignee, status) present or not.
PATTERNS: tuple[tuple[tuple[bool, bool, bool], float], ...] = (
    ((True, False, False), 0.20),
    ((False, True, False), 0.15),
    ((False, False, True), 0.20),
    ((True, False, True), 0.20),
    ((False, True, True), 0.15),
    ((True, True, True), 0.10),
)
#: Rows that break a rule, as a user's file has them: each makes its row invalid.
INVALID_KINDS = (
    "bad_id",
    "empty_id",
    "braced_id",
    "bad_status",
    "null_inbox",
    "bad_assignee",
    "nothing",
)
MB = 1_000_000
MIB = 1024 * 1024


def _sample_ids(name: str) -> list[str]:
    with (SAMPLE / name).open(newline="", encoding="utf-8") as file:
        return [record["id"] for record in csv.DictReader(file)]


def generate(path: Path, rows: int, seed: int) -> dict[str, int]:
    """Write the input CSV; return how many rows of each kind it holds."""
    rng = random.Random(seed)
    inboxes = _sample_ids("inboxes.csv")
    agents = _sample_ids("agents.csv")
    patterns = [pattern for pattern, _ in PATTERNS]
    weights = [weight for _, weight in PATTERNS]
    kinds = dict.fromkeys(("valid", "invalid", "duplicate_same", "duplicate_conflict"), 0)
    #: Earlier valid rows that a duplicate may repeat: near ones and, by reservoir, far ones.
    earlier: list[list[str]] = []

    def new_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def valid_row() -> list[str]:
        conversation_id = new_id()
        roll = rng.random()
        if roll < 0.02:
            conversation_id = conversation_id.upper()  # spreadsheets upper-case them
        elif roll < 0.03:
            conversation_id = f" {conversation_id} "
        inbox, assignee, status = rng.choices(patterns, weights)[0]
        return [
            conversation_id,
            rng.choice(inboxes) if inbox else "",
            ("null" if rng.random() < 0.05 else rng.choice(agents)) if assignee else "",
            (rng.choice(STATUSES).capitalize() if rng.random() < 0.05 else rng.choice(STATUSES))
            if status
            else "",
        ]

    def invalid_row() -> list[str]:
        kind = rng.choice(INVALID_KINDS)
        record = valid_row()
        if kind == "bad_id":
            record[0] = record[0].strip()[:-3]
        elif kind == "empty_id":
            record[0] = ""
            record[3] = record[3] or "closed"
        elif kind == "braced_id":
            record[0] = "{" + record[0].strip() + "}"
        elif kind == "bad_status":
            record[3] = rng.choice(("done", "Solved", "pending"))
        elif kind == "null_inbox":
            record[1] = "NULL"
        elif kind == "bad_assignee":
            record[2] = rng.choice(("Lena Hoffmann", "n/a", "0"))
        else:
            record[1:] = ["", "", ""]
        return record

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(INPUT_COLUMNS)
        for index in range(rows):
            roll = rng.random()
            if roll < 0.005:
                record = invalid_row()
                kinds["invalid"] += 1
            elif roll < 0.015 and earlier:
                record = list(rng.choice(earlier))
                if roll < 0.0125:
                    kinds["duplicate_same"] += 1
                else:
                    # The same conversation with another status: both rows become invalid.
                    others = [status for status in STATUSES if status != record[3].lower()]
                    record[3] = rng.choice(others)
                    kinds["duplicate_conflict"] += 1
            else:
                record = valid_row()
                kinds["valid"] += 1
                if len(earlier) < 10_000:
                    earlier.append(record)
                elif rng.random() < 0.01:
                    earlier[rng.randrange(len(earlier))] = record
            writer.writerow(record)
            if index and index % 250_000 == 0:
                print(f"  {index:,} rows written", file=sys.stderr, flush=True)
    return kinds


def parquet_twin(csv_path: Path, path: Path, row_group_rows: int | None) -> None:
    """The same rows as Parquet, every column a string, empty cells as nulls."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    table = pa_csv.read_csv(
        csv_path,
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in INPUT_COLUMNS},
            strings_can_be_null=True,
            null_values=[""],
        ),
    )
    if row_group_rows:
        pq.write_table(table, path, row_group_size=row_group_rows)
    else:
        pq.write_table(table, path)


def csv_reader_pass(path: Path) -> tuple[float, float]:
    """Wall and CPU seconds of a plain csv.reader pass over the file."""
    started, cpu = time.perf_counter(), time.process_time()
    with path.open(newline="", encoding="utf-8") as file:
        for _ in csv.reader(file):
            pass
    return time.perf_counter() - started, time.process_time() - cpu


def run_measured(command: list[str], timeout: float = 1800) -> dict[str, Any]:
    """Run a command to its end: wall seconds, its own peak RSS (wait4), CPU, exit code, output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
            time.sleep(0.002)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {
            "command": command,
            "exit_code": process.returncode,
            "wall_seconds": wall,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            # ru_maxrss is in KiB on Linux.
            "peak_rss_mb": usage.ru_maxrss * 1024 / MB,
            "stdout": out.read().decode(errors="replace")[-2000:],
            "stderr": err.read().decode(errors="replace")[-2000:],
        }


def prepare(work: Path, rows: int, seed: int, row_group_rows: int | None) -> int:
    """The child's part: write both files, time the floor, print the facts as a JSON line."""
    import pyarrow.parquet as pq

    csv_path, parquet_path = work / "m1.csv", work / "m1.parquet"
    made = work / "made.json"  # what the files in a --keep directory were made with
    recipe = {"rows": rows, "seed": seed, "row_group_rows": row_group_rows}
    known = json.loads(made.read_text()) if made.exists() else {}
    if known.get("recipe") == recipe and csv_path.exists() and parquet_path.exists():
        kinds = known["kinds"]
        print(f"reusing the {rows:,}-row files in {work}", file=sys.stderr, flush=True)
    else:
        print(f"generating {rows:,} rows in {work} ...", file=sys.stderr, flush=True)
        kinds = generate(csv_path, rows, seed)
        parquet_twin(csv_path, parquet_path, row_group_rows)
        made.write_text(json.dumps({"recipe": recipe, "kinds": kinds}))
    floors = [csv_reader_pass(csv_path) for _ in range(3)]
    row_groups = pq.ParquetFile(parquet_path).metadata.num_row_groups
    print(json.dumps({"kinds": kinds, "floors": floors, "row_groups": row_groups}))
    return 0


def mateo_bulk(*arguments: str) -> list[str]:
    return [PYTHON, "-m", "pipeline", *arguments]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument(
        "--row-group-rows",
        type=int,
        default=None,
        help="row group size of the Parquet twin (default: pyarrow's)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="work here and keep the files, reused by the next run with the same --keep "
        "(default: a temp dir)",
    )
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        return prepare(args.prepare, args.rows, args.seed, args.row_group_rows)

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-bigfile-"))
    work.mkdir(parents=True, exist_ok=True)
    csv_path = work / "m1.csv"
    parquet_path = work / "m1.parquet"
    try:
        # The files are made, and the floor measured, in a child process: a child's ru_maxrss
        # starts from this process's RSS when it forks, so this one stays small.
        prepared = subprocess.run(
            [PYTHON, __file__, "--prepare", str(work), "--rows", str(args.rows),
             "--seed", str(args.seed), *(["--row-group-rows", str(args.row_group_rows)]
                                          if args.row_group_rows else [])],
            check=True, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        facts = json.loads(prepared.stdout.splitlines()[-1])
        kinds, floors = facts["kinds"], facts["floors"]
        floor = statistics.median(wall for wall, _ in floors)
        floor_cpu = statistics.median(cpu for _, cpu in floors)
        csv_mb = csv_path.stat().st_size / MB
        parquet_mb = parquet_path.stat().st_size / MB
        print(
            f"  {csv_path.name}: {csv_mb:.1f} MB; {parquet_path.name}: {parquet_mb:.1f} MB "
            f"({facts['row_groups']} row groups); "
            + ", ".join(f"{kind} {count:,}" for kind, count in kinds.items()),
            flush=True,
        )
        print(
            f"floor: csv.reader pass {floor:.3f} s wall, {floor_cpu:.3f} s CPU (runs: "
            + ", ".join(f"{wall:.3f}/{cpu:.3f}" for wall, cpu in floors)
            + ")"
        )
        own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB
        load_before = os.getloadavg()[0]

        runs: dict[str, dict[str, Any]] = {}
        for kind, path in (("csv", csv_path), ("parquet", parquet_path)):
            run_dir = work / f"run-{kind}"
            shutil.rmtree(run_dir, ignore_errors=True)
            runs[kind] = run_measured(
                mateo_bulk("run", str(path), "--dry-run", "--quiet", "--run-dir", str(run_dir))
            )
            print(
                f"dry run {kind}: {runs[kind]['wall_seconds']:.2f} s, "
                f"{runs[kind]['peak_rss_mb']:.0f} MB, exit {runs[kind]['exit_code']}",
                flush=True,
            )
            if runs[kind]["exit_code"] not in (0, 1):
                print(runs[kind]["stderr"], file=sys.stderr)
        csv_run_dir = work / "run-csv"
        runs["status"] = run_measured(mateo_bulk("status", str(csv_run_dir)))
        # `report` picks the format by --report's suffix; .html is the run report's page. The
        # Parquet export keeps the key "report" it has in earlier result files.
        exports = {"report": work / "x.parquet"}
        exports |= {f"report_{kind}": work / f"x.{kind}" for kind in ("csv", "html")}
        for kind, exported in exports.items():
            exported.unlink(missing_ok=True)
            runs[kind] = run_measured(
                mateo_bulk("report", str(csv_run_dir), "--report", str(exported))
            )
        for kind in ("status", *exports):
            if runs[kind]["exit_code"] != 0:
                print(runs[kind]["stderr"], file=sys.stderr)
        # What each export holds, read back: the Parquet file's row count, the CSV's records
        # (header off), and for the page, which has no line per row, the rows `report` says it
        # covered and the page's size.
        for kind, count in (
            ("report", _parquet_rows),
            ("report_csv", _csv_records),
            ("report_html", lambda _: _printed_rows(runs["report_html"]["stdout"])),
        ):
            runs[kind]["rows"] = count(exports[kind]) if exports[kind].exists() else 0
        html = exports["report_html"]
        runs["report_html"]["bytes"] = html.stat().st_size if html.exists() else 0

        def verdict(ok: bool) -> str:
            return "met" if ok else "NOT met"

        table: list[list[Any]] = [["csv.reader pass (floor)", floor, floor_cpu, "", "", "", "", ""]]
        for kind, label in (
            ("csv", f"run --dry-run, CSV ({csv_mb:.0f} MB)"),
            ("parquet", f"run --dry-run, Parquet ({parquet_mb:.0f} MB)"),
        ):
            result = runs[kind]
            ratio = result["wall_seconds"] / floor
            table.append(
                [
                    label,
                    result["wall_seconds"],
                    result["cpu_seconds"],
                    f"{ratio:.1f}x",
                    f"{result['cpu_seconds'] / floor_cpu:.1f}x",
                    f"{result['peak_rss_mb']:.0f}",
                    result["exit_code"],
                    f"{verdict(ratio <= 10)} / {verdict(result['peak_rss_mb'] <= 200)}",
                ]
            )
        for kind, label in (
            ("status", "status RUN_DIR"),
            ("report", f"report RUN_DIR --report x.parquet ({runs['report']['rows']:,} rows)"),
            ("report_csv", f"report RUN_DIR --report x.csv ({runs['report_csv']['rows']:,} rows)"),
            (
                "report_html",
                f"report RUN_DIR --report x.html ({runs['report_html']['rows']:,} rows, "
                f"{runs['report_html']['bytes'] / 1000:.0f} kB)",
            ),
        ):
            result = runs[kind]
            table.append(
                [
                    label,
                    result["wall_seconds"],
                    result["cpu_seconds"],
                    "",
                    "",
                    f"{result['peak_rss_mb']:.0f}",
                    result["exit_code"],
                    verdict(result["wall_seconds"] <= 3 and result["exit_code"] == 0),
                ]
            )
        print_table(
            f"Big file: {args.rows:,} rows ({kinds['invalid']:,} invalid, "
            f"{kinds['duplicate_same'] + kinds['duplicate_conflict']:,} duplicates), "
            f"{os.cpu_count()} cores, load average {load_before:.2f} before, "
            f"{os.getloadavg()[0]:.2f} after",
            [
                "",
                "wall s",
                "CPU s",
                "x floor",
                "x floor CPU",
                "peak MB",
                "exit",
                "target (wall ≤10x / ≤200 MB; ≤3 s)",
            ],
            table,
        )
        print(
            f"(peak MB is each child's ru_maxrss from wait4; it cannot read below this process's "
            f"own peak, {own_peak:.0f} MB)"
        )
        write_result(
            "bigfile",
            {
                "rows": args.rows,
                "kinds": kinds,
                "csv_mb": csv_mb,
                "parquet_mb": parquet_mb,
                "floor_seconds": floor,
                "floor_cpu_seconds": floor_cpu,
                "floor_runs": floors,
                "bench_process_peak_mb": own_peak,
                "runs": runs,
            },
        )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def _csv_records(path: Path) -> int:
    """The CSV report's records, its header not counted (csv.reader: a cell may span lines)."""
    with path.open(newline="", encoding="utf-8") as file:
        return max(sum(1 for _ in csv.reader(file)) - 1, 0)


def _printed_rows(stdout: str) -> int:
    """The rows `report` says it covered: `report: PATH (1,000,000 rows)`."""
    match = re.search(r"\(([\d,]+) rows\)\s*$", stdout)
    return int(match[1].replace(",", "")) if match else 0


if __name__ == "__main__":
    sys.exit(main())
