"""eval.bench_vit_qat: run order, the table from a cell cache, and the README block it rewrites."""

from eval.bench_vit import cell_digest
from eval.bench_vit_qat import README_END, README_START, Config, cell_key, priority, report_view, table, write_readme


def _cell(top1: float) -> dict:
    return {"top1": top1, "float_top1": 90.9, "osc_frac": 0.01, "osc_ema": 0.001, "train_s": 100.0}


def _ptq(top1: float, method: str, bits: str) -> dict:
    return {"top1": top1, "recipe": cell_digest(method, bits)}


def test_priority_runs_the_main_comparison_first_and_every_cell_once():
    cfg = Config(seeds=(0, 1), ptq_methods=("minmax", "ias"))
    order = priority(cfg)
    assert order[:4] == [("ofq", "w3a3", 0), ("lsq", "w3a3", 0), ("ofq", "w2a2", 0), ("lsq", "w2a2", 0)]
    assert order[4] == ("ptq:minmax", "w2a2", 0)
    assert order.index(("ofq-no_cga", "w2a2", 0)) < order.index(("ptq:ias", "w2a2", 0))
    assert len(order) == len(set(order)) == 2 * (5 * 3 + 2)


def test_table_shows_means_spreads_missing_seeds_and_ptq_cells(tmp_path):
    cfg = Config(seeds=(0, 1), variants=("lsq", "ofq"), ptq_methods=("minmax",))
    cache = {cell_key("ofq", "w2a2", 0): _cell(80.0), cell_key("ofq", "w2a2", 1): _cell(82.0),
             cell_key("lsq", "w2a2", 0): _cell(70.0), cell_key("ptq:minmax", "w2a2", 0): _ptq(20.0, "minmax", "w2a2"),
             cell_key("ptq:minmax", "w2a2", 1): _ptq(25.0, "minmax", "w2a2-sym")}  # other rules: not shown
    ptq = {f"minmax|w3a3|{s}": _ptq(70.0 + s, "minmax", "w3a3") for s in range(3)}
    ptq["minmax|w4a4|0"] = {"top1": 80.0}  # no digest: measured under rules unknown, not shown
    lines = table(cfg, cache, ptq)
    assert lines[2].startswith("| LSQ-QAT | 70.00 ± 0.00 (1/2 seeds) | – | – | 1.00% | 100 |")
    assert lines[3].startswith("| OFQ (StatsQ + QKR + CGA) | 81.00 ± 1.00 |")
    assert lines[4] == "| PTQ: minmax | 20.00 ± 0.00 (1/2 seeds) | 71.00 ± 1.00 ᵖ | – | – | – |"
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold\n{README_END}\nrest\n")
    write_readme(lines, readme)
    assert readme.read_text() == f"intro\n{README_START}\n" + "\n".join(lines) + f"\n{README_END}\nrest\n"


def test_a_partial_run_reports_the_whole_benchmark_under_the_setup_command():
    view, command = report_view(Config(seeds=(1,), variants=("lsq",), bits=("w2a2",), ptq_methods=()))
    assert view.seeds == (0, 1, 2) and view.variants == Config().variants and view.bits == Config().bits
    assert view.ptq_methods == Config().ptq_methods
    assert command == "python -m eval.bench_vit_qat"
    _, command = report_view(Config(steps=50, seeds=(0, 5), out="runs/x.md"))
    assert command == "python -m eval.bench_vit_qat --steps 50 --out runs/x.md"
    assert report_view(Config(seeds=(0, 5)))[0].seeds == (0, 1, 2, 5)
