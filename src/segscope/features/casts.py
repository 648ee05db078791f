"""Input columns cast to the types the fit saw, or refused in one line that names the column and a value: what
:meth:`segscope.features.prepare.FeaturePreparer.validate` (and ``fit``, for text that is almost numbers) applies
to each column."""

from __future__ import annotations

import polars as pl

from segscope.exceptions import DataError, SchemaError
from segscope.schema import ColumnSpec, infer_kind
from segscope.sources.frames import parse_datetimes

__all__ = ["cast_or_explain", "refuse_numbers_with_garbage", "target_dtype"]

#: A string column counts as "numbers with garbage" when at least this share of its values parse as numbers.
_LOOKS_NUMERIC = 0.95


def target_dtype(spec: ColumnSpec) -> pl.DataType:
    """The type a column of ``spec``'s kind is cast to before its features are computed."""
    if spec.kind == "numeric":
        return pl.Float64()
    if spec.kind == "boolean":
        return pl.Boolean()
    if spec.kind == "categorical":
        return pl.String()
    return pl.Date() if spec.dtype == "Date" else pl.Datetime("us")


def _refuse_other_kind(col: pl.Series, spec: ColumnSpec) -> None:
    """A column whose type means something else than at fit is refused, not cast: a Date where a Datetime was
    fitted would read as midnight, true/false where counts were fitted as 0/1, a struct not at all."""
    kind = infer_kind(col.dtype)
    if col.dtype in (pl.String, pl.Null) or kind == spec.kind:
        if spec.kind == "datetime" and spec.dtype != "Date" and col.dtype == pl.Date:
            raise SchemaError(
                f"column '{spec.name}' holds dates without a time of day (Date) but was fitted on date-times "
                f"({spec.dtype}): its hour would read as midnight; pass date-times, or refit on dates"
            )
        return
    if spec.kind == "categorical" and kind in ("numeric", "boolean"):
        return  # codes written as numbers are still categories
    raise SchemaError(
        f"column '{spec.name}' is {col.dtype} here but was {spec.kind} ({spec.dtype}) at fit; pass the column with "
        "the fitted type, or refit the bundle on data of this type"
    )


def cast_or_explain(col: pl.Series, spec: ColumnSpec, target: pl.DataType) -> pl.Series:
    """Cast a column to the fit-time type, or raise a SchemaError that shows an offending value."""
    _refuse_other_kind(col, spec)
    if spec.kind == "categorical":
        return col.cast(pl.String)
    if spec.kind == "datetime" and isinstance(col.dtype, pl.Datetime | pl.Date):
        return col.cast(target)
    if col.dtype == pl.String:
        text = col.str.strip_chars()
        if spec.kind == "numeric":
            converted = text.cast(pl.Float64, strict=False)
        elif spec.kind == "boolean":
            low = text.str.to_lowercase()
            converted = pl.select(
                pl.when(low.is_in(["true", "1", "yes"]))
                .then(True)
                .when(low.is_in(["false", "0", "no"]))
                .then(False)
                .otherwise(None)
                .alias(col.name)
            ).to_series()
        else:
            converted = parse_datetimes(text).cast(target)
    else:
        try:
            converted = col.cast(target, strict=False)
        except pl.exceptions.PolarsError:
            converted = pl.Series(col.name, [None] * col.len(), dtype=target)
    bad = col.is_not_null() & converted.is_null()
    if col.dtype == pl.String:
        bad = bad & (col.str.strip_chars() != "")
    if bad.any():
        row = int(bad.arg_true()[0])
        raise SchemaError(
            f"column '{spec.name}' must be {spec.kind} ({spec.dtype} at fit) but row {row} holds "
            f"{col[row]!r}; fix or null those values, or refit the bundle on data of this type"
        )
    return converted.alias(spec.name)


def refuse_numbers_with_garbage(col: pl.Series) -> None:
    """Refuse, at fit, a text column that is numbers but for a few values (a typo would make it categorical)."""
    if col.dtype != pl.String:
        return
    present = col.drop_nulls().str.strip_chars()
    present = present.filter(present != "")
    if present.len() == 0:
        return
    parsed = present.cast(pl.Float64, strict=False)
    share = 1.0 - parsed.null_count() / present.len()
    if _LOOKS_NUMERIC <= share < 1.0:
        bad = present.filter(parsed.is_null())
        raise DataError(
            f"column '{col.name}' looks numeric ({share:.1%} of values are numbers) but holds non-numeric "
            f"values such as {bad[0]!r}; clean those values, or --drop the column"
        )
