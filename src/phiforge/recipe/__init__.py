"""Typed recipe configuration: schema, loading, overrides and validation."""

from phiforge.recipe.load import load_recipe, parse_overrides
from phiforge.recipe.schema import Recipe

__all__ = ["Recipe", "load_recipe", "parse_overrides"]
