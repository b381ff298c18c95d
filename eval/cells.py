"""Fingerprints of what a cached benchmark cell measured, so a rerun never reuses a cell of another quantization."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from visq import methods, recipes


def quantization_digest(recipe: str | recipes.Recipe, method: str | None = None, **method_kwargs: Any) -> str:
    """A short fingerprint of the rules ``visq.quantize(model, recipe, method=method, **method_kwargs)`` applies.

    It hashes the rules after the method rewrites them (``Method.rules``), plus the method and its options: a method
    that brings its own weight quantizers (RepQ-ViT, I&S-ViT) keeps its fingerprint when a grammar default it
    overrides changes, while one that uses the recipe's weights gets a new one.
    """
    resolved = recipes.resolve(recipe, method, **method_kwargs)
    rules = methods.get(resolved.method, **resolved.method_kwargs).rules(resolved.rules)
    effective = {"method": resolved.method, "method_kwargs": resolved.method_kwargs,
                 "keep_host_defaults": resolved.keep_host_defaults,
                 "rules": [{"pattern": r.pattern, "spec": r.spec.to_dict() if r.spec else None} for r in rules]}
    return hashlib.sha256(json.dumps(effective, sort_keys=True, default=str).encode()).hexdigest()[:16]
