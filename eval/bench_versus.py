"""Head-to-head speed of a few ``eval.bench_speed`` rows in ONE process, called in turn round after round.

    python -m eval.bench_versus --model deit-s --rows "visq export W8A8 full" bf16 "torchao int8 dynamic compiled"

``eval.bench_speed`` times each row in its own process against an fp32 copy, which gives clean memory numbers,
but on a shared CPU two processes can see different speeds, so the ratio of two rows taken from two cells carries
that difference. Here every row is built in the same process and the rows are interleaved; the ratio of the first
row to each other one is taken per round (each pair saw the same load) and reported as the median with its spread.
Writes a markdown table (``--out``), one line per compared row.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from eval.bench_speed import BATCH, MODELS, build, cpu
from eval.speed_rows import ROWS, apply
from eval.timing import interleaved, medians, paired_ratio


def versus(model: str, rows: list[str], repeats: int = 15, warmup: int = 2, threads: int = 1,
           seed: int = 0) -> dict[str, dict[str, float]]:
    """ms per call of each row, and the first row's per-round speed-up over each other row (median, min, max)."""
    if len(rows) < 2:
        raise ValueError(f"compare at least two rows, got {rows}")
    torch.set_num_threads(threads)
    calls = {}
    for name in rows:
        row = ROWS[name]
        subject = build(model, BATCH[model], seed)
        obj = apply(row, subject.obj, subject.calib, subject.calib_options, lambda s=subject: s.calib_forward(s.obj))
        calls[name] = (lambda s=subject, o=obj, dt=row.dtype: s.call(o, dt))
    with torch.no_grad():
        times = interleaved(calls, repeats, warmup)
    ms, first = medians(times), rows[0]
    return {name: {"ms": ms[name], **({} if name == first else paired_ratio(times[name], times[first]))}
            for name in rows}


def render(model: str, rows: list[str], result: dict[str, dict[str, float]], command: str, repeats: int,
           warmup: int, threads: int) -> str:
    """The markdown report: the command, the machine, and one line per row."""
    first = rows[0]
    lines = [f"# {model}: {first} head to head", "", f"Command: `{command}` (one process, {repeats} interleaved "
             f"rounds after {warmup} untimed ones, {threads} torch thread(s), seed 0; speed-up = the other row's "
             f"time / this row's, per round: median (min-max)).", "",
             f"Machine: {cpu()}; written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             f"| row | ms / call | {first} speed-up over it |", "|---|---|---|"]
    for name in rows:
        r = result[name]
        ratio = "-" if name == first else f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"
        lines.append(f"| {name} | {r['ms']:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description="Interleaved head-to-head speed of bench_speed rows in one process.")
    p.add_argument("--model", default="deit-s", choices=MODELS)
    p.add_argument("--rows", nargs="+", required=True, choices=list(ROWS), help="first: the row compared to the rest")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="markdown file to write (printed either way)")
    a = p.parse_args(argv)
    command = "python -m eval.bench_versus --model {} --rows {}".format(a.model, " ".join(f'"{r}"' for r in a.rows))
    result = versus(a.model, a.rows, a.repeats, a.warmup, a.threads)
    text = render(a.model, a.rows, result, command, a.repeats, a.warmup, a.threads)
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
