"""``parse_log`` and ``plot_training_log``: Caffe's training-log tools (``tools/extra``) as ``caffe`` commands.

``caffe parse_log LOGFILE OUTPUT_DIR [--delimiter ,] [--verbose]`` reads a training log (glog lines,
as Caffe and this package's solver print them) and writes two CSV tables, ``OUTPUT_DIR/<log
name>.train`` and ``OUTPUT_DIR/<log name>.test``, as Caffe's ``parse_log.py`` does:

- columns ``NumIters, Seconds, LearningRate``, then one per net output (``Train net output #i: name
  = value`` / ``Test net output #i: ...``) in the order the log first prints them; one row per
  displayed iteration (train) or per test pass (test);
- numbers written as Python writes floats (``NumIters`` too: ``500.0``), the csv module's default
  dialect (comma, ``\\r\\n`` line ends);
- ``Seconds`` counts from the first ``Solving`` line; glog stamps carry no year, so the year is
  the log file's ctime year, plus one each time the month goes backwards (a log that runs over
  New Year); the day changes by itself at midnight;
- ``LearningRate`` is the last ``lr = `` value printed before the row's first output line (Caffe's
  solver prints an iteration's rate after its outputs, so a train row holds the rate of the
  previous display); the first row's rate, printed after it, is copied from the second row;
- a table with no rows is not written (``--verbose`` says so).

:func:`parse_log` returns the same rows (lists of dicts) for other code; :func:`read_training_log`
returns them with the smoothed-loss and learning-rate series (``Iteration N ..., loss = x`` and
``Iteration N, lr = x`` lines) that the charts use.

``caffe plot_training_log CHART_TYPE OUTPUT.png LOG [LOG ...]`` draws one of Caffe's eight charts
(:data:`CHART_TYPES`: test accuracy, test loss, train learning rate, train loss, each against
iterations or seconds) for one or more logs, one line and legend entry per log (named by the file
name without ``.log``), to a PNG with matplotlib's Agg renderer (no display needed). As Caffe's
script requires, log names end in ``.log`` and the output in ``.png``.

Differences from Caffe's scripts (each where theirs failed or lost data):

- lines that are not glog lines (prototxt dumps, shell prompts, blank lines) are skipped wherever
  they are (``parse_log.py`` stopped with an IndexError on a blank line once training began);
  output and rate values may also be ``nan``/``inf`` (their pattern skipped such lines);
- a log with no ``Solving`` line counts seconds from its first glog line (Caffe's found no rows);
  a ``Solving`` line on 29 February of a year that had none moves the year back to a leap year;
- a table with a single row keeps it (Caffe dropped it: a row was only stored once a second began);
- the CSV header has every output name seen, not only those of the first row (Caffe stopped with
  a ValueError on a later, new name); ``--delimiter '\\t'`` means a tab; ``OUTPUT_DIR`` is created;
- the charts read the log directly (Caffe's ran ``parse_log.sh``, which left ``<log>.train`` and
  ``<log>.test`` in the working folder): train loss is the smoothed loss of the ``Iteration N,
  loss = x`` lines and the learning rate that of ``Iteration N, lr = x`` at its own iteration, as
  ``parse_log.sh`` had them; test accuracy and test loss are the test outputs named ``accuracy``
  and ``loss`` (else the first name containing it, else output #0 and #1, Caffe's positions);
- lines have fixed colours and markers (Caffe picked them at random); bad arguments print the
  usage with the chart list to stderr and exit 1 (Caffe's script exited 0).
"""

from __future__ import annotations

import calendar
import csv
import io
import logging
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from caffe.errors import CaffeError
from caffe.tools.flags import ToolParser, parse_flags, usage_error
from caffe.tools.registry import command

log = logging.getLogger("caffe")

Row = dict[str, float]
Point = tuple[float, float, float]  # (iteration, seconds, value)

FIXED_COLUMNS = ("NumIters", "Seconds", "LearningRate")

# A number as Caffe's log prints it (C++ stream output or Python's): digits, sign, exponent, or nan/inf.
_NUM = r"([-+]?(?i:nan|inf(?:inity)?)|[.\deE+-]+)"
_ITERATION = re.compile(r"Iteration (\d+)")
_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = " + _NUM)
_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = " + _NUM)
_RATE = re.compile(r"lr = " + _NUM)
_LOSS_LINE = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = " + _NUM)
_RATE_LINE = re.compile(r"Iteration (\d+), lr = " + _NUM)
# glog's line head: severity letter, MMDD, HH:MM:SS.micros (the year is not written).
_STAMP = re.compile(r"\s*[A-Z](\d\d)(\d\d)\s+(\d\d?):(\d\d):(\d\d)(?:\.(\d+))?(?:\s|$)")


@dataclass
class TrainingLog:
    """What a training log holds: Caffe's two tables and the series the charts draw."""

    train: list[Row] = field(default_factory=list)
    test: list[Row] = field(default_factory=list)
    loss: list[Point] = field(default_factory=list)  # smoothed training loss, "Iteration N ..., loss = x"
    lr: list[Point] = field(default_factory=list)  # learning rate, "Iteration N, lr = x"


def _write(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary file in the same folder and a rename (readers never see half a file),
    with the usual permissions (the umask's, where ``protoio.atomic_write`` gives 0600)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _stamp(match: re.Match[str], year: int) -> datetime | None:
    month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 6))
    micros = int((match.group(6) or "0")[:6].ljust(6, "0"))
    try:
        return datetime(year, month, day, hour, minute, second, micros)
    except ValueError:  # not a date (or 29 February in a year without one)
        return None


def _find_start(lines: Sequence[str], year: int) -> tuple[int, datetime, int] | None:
    """(index of the first line to parse, start time, year): after the first dated ``Solving`` line,
    else from the first glog line."""
    for want_solving in (True, False):
        for i, line in enumerate(lines):
            if want_solving and "Solving" not in line:
                continue
            m = _STAMP.match(line)
            if m is None:
                continue
            start = _stamp(m, year)
            if start is None and (m.group(1), m.group(2)) == ("02", "29"):
                leap = year
                while not calendar.isleap(leap):
                    leap -= 1
                year, start = leap, _stamp(m, leap)
            if start is not None:
                return (i + 1 if want_solving else i), start, year
    return None


class _Table:
    """Rows of one table, assembled as Caffe's parse_log.py does: a row starts at an output line of a new
    iteration and is stored once it has as many columns as the first stored row."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.rows: list[Row] = []
        self.row: Row | None = None

    def feed(self, line: str, iteration: float, seconds: float, rate: float) -> None:
        m = self.pattern.search(line)
        value = _number(m.group(3)) if m else None
        if m and value is not None:
            if self.row is None or self.row["NumIters"] != iteration:
                if self.row is not None:
                    self.rows.append(self.row)
                self.row = {"NumIters": iteration, "Seconds": seconds, "LearningRate": rate}
            self.row[m.group(2)] = value
        if self.row is not None and self.rows and len(self.row) == len(self.rows[0]):
            self.rows.append(self.row)
            self.row = None

    def finish(self) -> list[Row]:
        if self.row is not None and not self.rows:  # a lone row (Caffe lost it)
            self.rows.append(self.row)
        self.row = None
        if len(self.rows) > 1:  # the first rows precede the first "lr = " line
            self.rows[0]["LearningRate"] = self.rows[1]["LearningRate"]
        return self.rows


def read_training_log(lines: Iterable[str], year: int | None = None) -> TrainingLog:
    """Parse the lines of a training log; ``year`` is the year of its first line (default: this year)."""
    lines = list(lines)
    found = _find_start(lines, datetime.now().year if year is None else year)
    if found is None:
        return TrainingLog()
    begin, start, year = found
    train, test = _Table(_TRAIN_OUTPUT), _Table(_TEST_OUTPUT)
    result = TrainingLog()
    iteration, rate, last = -1.0, math.nan, start
    for line in lines[begin:]:
        m = _ITERATION.search(line)
        if m:
            iteration = float(m.group(1))
        if iteration == -1:  # nothing counts before the first iteration
            continue
        m = _STAMP.match(line)
        when = _stamp(m, year) if m else None
        if when is None:
            continue
        if when.month < last.month:  # the log went on into the next year
            year += 1
            when = _stamp(m, year)  # type: ignore[arg-type]
            if when is None:
                continue
        last = when
        seconds = (when - start).total_seconds()
        m = _RATE.search(line)
        if m and (value := _number(m.group(1))) is not None:
            rate = value
        train.feed(line, iteration, seconds, rate)
        test.feed(line, iteration, seconds, rate)
        for pattern, series in ((_LOSS_LINE, result.loss), (_RATE_LINE, result.lr)):
            m = pattern.search(line)
            if m and (value := _number(m.group(2))) is not None:
                series.append((float(m.group(1)), seconds, value))
    result.train, result.test = train.finish(), test.finish()
    return result


def _read_lines(path: str | os.PathLike) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except OSError as e:
        raise CaffeError(f"cannot read log file {os.fspath(path)}: {e.strerror or e}") from None


def log_year(path: str | os.PathLike) -> int:
    """The year a log's stamps are read in: that of the file's ctime, as Caffe's ``extract_seconds.py``."""
    return datetime.fromtimestamp(os.path.getctime(path)).year


def read_training_log_file(path: str | os.PathLike, year: int | None = None) -> TrainingLog:
    """:func:`read_training_log` of a file; ``year`` defaults to the file's ctime year (as Caffe)."""
    lines = _read_lines(path)
    return read_training_log(lines, log_year(path) if year is None else year)


def parse_log(path: str | os.PathLike, year: int | None = None) -> tuple[list[Row], list[Row]]:
    """Caffe's ``parse_log``: ``(train_rows, test_rows)``, each row a dict of ``NumIters``, ``Seconds``,
    ``LearningRate`` and the net outputs (floats), keys in table-column order."""
    parsed = read_training_log_file(path, year)
    return parsed.train, parsed.test


def csv_text(rows: Sequence[Row], delimiter: str = ",") -> str:
    """The rows as Caffe's CSV: a header of the column names, then the values as Python prints floats."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_csv(path: str | os.PathLike, rows: Sequence[Row], delimiter: str = ",", verbose: bool = False) -> bool:
    """Write ``rows`` to ``path`` (atomically); nothing is written for no rows. True if written."""
    if not rows:
        if verbose:
            print(f"Not writing {os.fspath(path)}; no lines to write")
        return False
    _write(path, csv_text(rows, delimiter).encode("utf-8"))
    if verbose:
        print(f"Wrote {os.fspath(path)}")
    return True


def save_csv_files(
    log_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    train_rows: Sequence[Row],
    test_rows: Sequence[Row],
    delimiter: str = ",",
    verbose: bool = False,
) -> tuple[Path, Path]:
    """Write ``<output_dir>/<log name>.train`` and ``.test``; their paths (a table without rows is not written)."""
    out = Path(output_dir)
    name = os.path.basename(os.fspath(log_path))
    paths = out / f"{name}.train", out / f"{name}.test"
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(paths[0], train_rows, delimiter, verbose)
        write_csv(paths[1], test_rows, delimiter, verbose)
    except OSError as e:
        raise CaffeError(f"cannot write the CSV files in {os.fspath(output_dir)}: {e.strerror or e}") from None
    return paths


# ---------------------------------------------------------------------------------------- charts
_X_FIELDS = ("Iters", "Seconds")
_Y_FIELDS = ("Test accuracy", "Test loss", "Train learning rate", "Train loss")
_SEPARATOR = "  vs. "  # Caffe's chart names: "Test accuracy  vs. Iters"
CHART_TYPES: tuple[str, ...] = tuple(f"{y}{_SEPARATOR}{x}" for y in _Y_FIELDS for x in _X_FIELDS)
LOG_SUFFIX = ".log"
_MARKERS = "os^vD<>ph*"
_MAX_MARKED_POINTS = 200


def _output_column(rows: Sequence[Row], words: Sequence[str], position: int) -> str | None:
    names = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in FIXED_COLUMNS]
    for word in words:
        if word in names:
            return word
    for word in words:
        for name in names:
            if word in name.lower():
                return name
    return names[position] if position < len(names) else None


def chart_series(parsed: TrainingLog, chart_type: int) -> tuple[list[float], list[float], str]:
    """The (x, y) values chart ``chart_type`` draws for one log, and what y is (a column name or series)."""
    y_field, x_field = CHART_TYPES[chart_type].split(_SEPARATOR)
    xi = 0 if x_field == "Iters" else 1
    if y_field in ("Train learning rate", "Train loss"):
        points = parsed.lr if y_field == "Train learning rate" else parsed.loss
        if points:
            return [p[xi] for p in points], [p[2] for p in points], y_field
        if y_field == "Train learning rate":
            rows, column = parsed.train, "LearningRate"
        else:
            rows, column = parsed.train, _output_column(parsed.train, ("loss",), 0)
    elif y_field == "Test accuracy":
        rows, column = parsed.test, _output_column(parsed.test, ("accuracy", "acc", "top-1"), 0)
    else:
        rows, column = parsed.test, _output_column(parsed.test, ("loss",), 1)
    if column is None:
        return [], [], y_field
    x_key = FIXED_COLUMNS[xi]
    pairs = [(row[x_key], row[column]) for row in rows if column in row]
    return [p[0] for p in pairs], [p[1] for p in pairs], column


def log_label(path: str | os.PathLike) -> str:
    """A log's legend entry: its file name without ``.log``."""
    name = os.path.basename(os.fspath(path))
    return name[: -len(LOG_SUFFIX)] if name.endswith(LOG_SUFFIX) else name


def plot_chart(chart_type: int, png_path: str | os.PathLike, log_paths: Sequence[str | os.PathLike]) -> None:
    """Draw chart ``chart_type`` (an index into :data:`CHART_TYPES`) of the logs to ``png_path``."""
    if not 0 <= chart_type < len(CHART_TYPES):
        raise CaffeError(f"{chart_type} is not a valid chart type (0 to {len(CHART_TYPES) - 1})")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    title = CHART_TYPES[chart_type]
    y_field, x_field = title.split(_SEPARATOR)
    fig = Figure(figsize=(8, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = 0
    for i, path in enumerate(log_paths):
        xs, ys, what = chart_series(read_training_log_file(path), chart_type)
        if not xs:
            log.warning("%s: no %s values in this log", os.fspath(path), y_field.lower())
            continue
        if what not in (y_field, "accuracy", "loss", "LearningRate"):
            log.info("%s: %s is the output '%s'", os.fspath(path), y_field.lower(), what)
        marker = _MARKERS[i % len(_MARKERS)] if len(xs) <= _MAX_MARKED_POINTS else None
        ax.plot(xs, ys, label=log_label(path), color=f"C{i % 10}", marker=marker, markersize=4, linewidth=0.75)
        drawn += 1
    if not drawn:
        raise CaffeError(f"nothing to plot: no log has {y_field.lower()} values")
    loc = "lower right" if "accuracy" in y_field else "upper right"
    ax.legend(loc=loc, ncol=1)
    ax.set_title(title)
    ax.set_xlabel(x_field)
    ax.set_ylabel(y_field)
    ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    try:
        _write(png_path, buf.getvalue())
    except OSError as e:
        raise CaffeError(f"cannot write {os.fspath(png_path)}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------- commands
PARSE_USAGE = "parse_log LOGFILE OUTPUT_DIR [--delimiter ,] [--verbose]"
PARSE_DESCRIPTION = (
    "Parse a Caffe training log into two CSV files, OUTPUT_DIR/<log name>.train and .test, "
    "holding the training and the testing information."
)


def _delimiter(text: str) -> str | None:
    text = "\t" if text in ("\\t", "tab") else text
    return text if len(text) == 1 else None


@command("parse_log", "parse a training log into <log>.train and <log>.test CSV tables")
def parse_log_command(argv: list[str]) -> int:
    parser = ToolParser("parse_log", PARSE_USAGE, PARSE_DESCRIPTION)
    parser.add_argument("logfile_path", help="path to the log file")
    parser.add_argument("output_dir", help="folder for the CSV files (created if missing)")
    parser.add_argument("--delimiter", default=",", help="column delimiter, one character (default: ',')")
    parser.add_bool("verbose", "print the names of the files written")
    args = parse_flags(parser, argv)
    if isinstance(args, int):
        return args
    delimiter = _delimiter(args.delimiter)
    if delimiter is None:
        return usage_error(parser, f"--delimiter must be one character, got {args.delimiter!r}")
    parsed = read_training_log_file(args.logfile_path)
    if not parsed.train and not parsed.test:
        log.warning("%s: no 'Train net output' or 'Test net output' lines; nothing written", args.logfile_path)
    save_csv_files(args.logfile_path, args.output_dir, parsed.train, parsed.test, delimiter, args.verbose)
    return 0


def plot_help() -> str:
    last = len(CHART_TYPES) - 1
    lines = [
        f"usage: plot_training_log CHART_TYPE[0-{last}] /where/to/save.png /path/to/first.log [/path/to/more.log ...]",
        "",
        "Draw a chart of one or more Caffe training logs (one line per log) to a PNG file.",
        "Notes:",
        "    1. Several logs may be given; each gets a legend entry (its name without .log).",
        f'    2. Log file names must end with the lower-cased "{LOG_SUFFIX}" (Caffe\'s rule).',
        "Supported chart types:",
    ]
    lines += [f"    {i}: {name}" for i, name in enumerate(CHART_TYPES)]
    return "\n".join(lines)


def _plot_usage(message: str) -> int:
    print(f"plot_training_log: error: {message}\n\n{plot_help()}", file=sys.stderr)
    return 1


@command("plot_training_log", "chart training logs (test accuracy/loss, train loss/lr vs. iters/seconds) to a PNG")
def plot_training_log_command(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv):
        print(plot_help())
        return 0
    if len(argv) < 3:
        return _plot_usage("expected CHART_TYPE OUTPUT.png LOG [LOG ...]")
    chart, png, logs = argv[0], argv[1], argv[2:]
    try:
        chart_type = int(chart)
    except ValueError:
        chart_type = -1
    if not 0 <= chart_type < len(CHART_TYPES):
        return _plot_usage(f"{chart} is not a valid chart type (0 to {len(CHART_TYPES) - 1})")
    if not png.lower().endswith(".png"):
        return _plot_usage(f"the output path must end in .png: {png}")
    for path in logs:
        if not os.path.exists(path):
            return _plot_usage(f"log file not found: {path}")
        if not path.endswith(LOG_SUFFIX):
            return _plot_usage(
                f"log file names must end in '{LOG_SUFFIX}' (as Caffe's plot_training_log requires): {path}"
            )
    plot_chart(chart_type, png, logs)
    log.info("Wrote %s (%s) for %d log(s)", png, CHART_TYPES[chart_type], len(logs))
    return 0
