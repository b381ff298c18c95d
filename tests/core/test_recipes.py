import pytest

from visq import PRESETS, Recipe, Rule, Uniform
from visq.recipes import parse, resolve, with_activation_range


@pytest.mark.parametrize("text", PRESETS)
def test_presets_parse(text):
    recipe = parse(text)
    assert recipe.name == text
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_grammar_defaults():
    recipe = parse("w4a8-g32")
    weight = recipe.spec_for("blocks.0.mlp.fc1.weight_quantizer")[1]
    act = recipe.spec_for("blocks.0.mlp.fc1.input_quantizer")[1]
    assert weight == Uniform(bits=4, symmetric=False, granularity="group", group_size=32)
    assert act == Uniform(bits=8)
    assert recipe.spec_for("blocks.0.attn.probs_quantizer")[1] == Uniform(bits=8)


def test_dyn_form_gives_dynamic_per_token_activations():
    recipe = parse("w8a8-dyn")
    act = recipe.spec_for("blocks.0.mlp.fc1.input_quantizer")[1]
    assert act == Uniform(bits=8, dynamic=True, granularity="token")
    assert recipe.spec_for("blocks.0.attn.probs_quantizer")[1] == act
    weight = recipe.spec_for("blocks.0.mlp.fc1.weight_quantizer")[1]
    assert weight == Uniform(bits=8, symmetric=True, granularity="channel")
    with pytest.raises(ValueError, match="-dyn needs quantized activations"):
        parse("w8a16-dyn")


def test_asym_form_gives_unsigned_weights_with_a_zero_point():
    recipe = parse("w4a8-g32-asym-dyn")
    weight = recipe.spec_for("blocks.0.mlp.fc1.weight_quantizer")[1]
    assert weight == Uniform(bits=4, symmetric=False, granularity="group", group_size=32)
    assert weight.qrange == (0, 15)
    assert recipe.spec_for("blocks.0.mlp.fc1.input_quantizer")[1].dynamic
    assert parse("w4a16-asym").spec_for("x.weight_quantizer")[1].granularity == "channel"


@pytest.mark.parametrize(("text", "symmetric"), [("w2a8", False), ("w3a3", False), ("w4a8", False),
                                                 ("w4a16-g32", False), ("w5a8", True), ("w6a6", True), ("w8a8", True),
                                                 ("w4a8-sym", True), ("w4a8-g32-sym-dyn", True), ("w8a8-asym", False)])
def test_weights_default_to_asymmetric_at_four_bits_or_fewer(text, symmetric):
    weight = parse(text).spec_for("x.weight_quantizer")[1]
    assert weight.symmetric is symmetric
    assert weight.qrange == ((-(2 ** (weight.bits - 1)), 2 ** (weight.bits - 1) - 1) if symmetric
                             else (0, 2 ** weight.bits - 1))


def test_a16_keeps_activations_float():
    recipe = parse("w8a16")
    assert recipe.spec_for("x.input_quantizer")[1] is None
    assert recipe.spec_for("x.weight_quantizer")[1].bits == 8


@pytest.mark.parametrize("text", ["w4a9", "w0a8", "w4a8-g0", "", "int8", "w9a8", "w4a1", "w4a8-g", "w8a8-dyn-g32",
                                  "w4a8-asym-g32", "w4a8-dyn-asym", "w4a8-sym-asym",
                                  "w4a8-symm"])
def test_bad_strings_raise_listing_forms(text):
    with pytest.raises(ValueError, match="Valid forms: w<W>a<A>") as err:
        parse(text)
    assert "w8a8" in str(err.value)


def test_resolve_method_and_type_errors():
    assert resolve("w8a8", method="percentile").method == "percentile"
    with pytest.raises(TypeError):
        resolve(8)


def test_first_match_wins_and_none_keeps_float():
    recipe = Recipe((Rule("head.*", None), Rule("*.weight_quantizer", Uniform(bits=4, symmetric=True))))
    assert recipe.spec_for("head.weight_quantizer") == (0, None)
    assert recipe.spec_for("blocks.0.weight_quantizer")[1].bits == 4
    assert recipe.spec_for("blocks.0.input_quantizer") is None


def test_with_activation_range_leaves_weights():
    rules = with_activation_range(parse("w8a8").rules, "percentile")
    assert rules[0].spec.range == "minmax"
    assert all(r.spec.range == "percentile" for r in rules[1:])
