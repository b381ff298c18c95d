"""eval.bench_diffusion's table: one row per method (options included), one column per bit width."""

from eval.bench_diffusion import Config, table


def test_rows_find_results_of_methods_with_options():
    cfg = Config(methods=("minmax", "dgq:log_probs=false"), bits=("w8a8", "w4a4"))
    results = {"float": {"fid": 0.1}, "w8a8-minmax": {"psnr": 40.0, "float_layers": {"blocks.0.conv_in": "first"}},
               "w4a4-minmax": {"psnr": 20.0}, "w8a8-dgq-log_probs-false": {"psnr": 39.5}}
    lines = table("tiny", results, cfg)
    assert "| minmax | 40.00 | 20.00 |" in lines
    assert "| dgq:log_probs=false | 39.50 | - |" in lines  # a missing result is a dash, never a number
    assert "- minmax: `blocks.*.conv_in`" in lines
