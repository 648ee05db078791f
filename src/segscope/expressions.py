"""Expressions over a record's columns (an entity feature's ``of:``), compiled to Polars expressions by segscope's
own parser: columns, literals, arithmetic, comparisons, ``CASE``, ``CAST`` and a listed set of functions.

Nothing else exists in the grammar, so an expression cannot reach the filesystem or the network: there are no
subqueries, no table functions (``read_csv``...), no names other than columns and the functions below. This
matters because an expression arrives in a config or inside a bundle someone handed over, and the bundle is
loaded without ``--trust-bundle``. Polars never sees the text: the parser builds the ``pl.Expr`` itself.

The syntax is the SQL subset the packs use (``ln(amount + 1)``, ``"odd name" * 2``, ``x >= 3 AND y <> 'a'``);
keywords and function names are case-insensitive, column names are not. Each function computes what Polars
SQL's function of the same name computes, so configs written for ``pl.sql_expr`` keep their values.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from segscope.exceptions import ConfigError

__all__ = ["FUNCTIONS", "MAX_LENGTH", "compile_expression", "expression_columns", "rename_columns"]

#: Longer expressions are refused (a config line, not a program); nesting is capped by MAX_DEPTH.
MAX_LENGTH = 1_000
MAX_DEPTH = 40

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
    | (?P<string>'(?:[^']|'')*')
    | (?P<quoted>"(?:[^"]|"")+")
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op><=|>=|<>|!=|==|\|\||[-+*/%(),<>=])
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "is", "null", "true", "false", "case", "when", "then", "else", "end", "cast", "as"}
_CASTS: dict[str, pl.DataType] = {
    **dict.fromkeys(("int", "integer", "bigint", "int8", "int64", "long"), pl.Int64()),
    **dict.fromkeys(("smallint", "int4", "int32"), pl.Int32()),
    **dict.fromkeys(("double", "float", "float8", "real", "numeric", "decimal", "float64"), pl.Float64()),
    **dict.fromkeys(("varchar", "text", "string", "char"), pl.String()),
    **dict.fromkeys(("boolean", "bool"), pl.Boolean()),
    "date": pl.Date(),
    **dict.fromkeys(("timestamp", "datetime"), pl.Datetime("us")),
}


def _log(args: list[pl.Expr]) -> pl.Expr:
    # Polars SQL: LOG(x) is base 10, LOG(x, base) any base
    return args[0].log(10) if len(args) == 1 else args[0].log(args[1])


def _round(args: list[pl.Expr]) -> pl.Expr:
    if len(args) == 1:
        return args[0].round(0)
    return args[0].round(_literal_int(args[1], "round's second argument"))


def _literal_int(expr: pl.Expr, what: str) -> int:
    try:
        value = pl.select(expr).item()
    except Exception:
        value = None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 15:
        raise ConfigError(f"{what} must be a whole number from 0 to 15")
    return value


def _substr(args: list[pl.Expr]) -> pl.Expr:
    start = _literal_int(args[1], "substr's start") if len(args) > 1 else 1
    length = _literal_int(args[2], "substr's length") if len(args) > 2 else None
    return args[0].cast(pl.String).str.slice(max(start - 1, 0), length)


def _date_part(part: str) -> Callable[[list[pl.Expr]], pl.Expr]:
    def apply(args: list[pl.Expr]) -> pl.Expr:
        dt = args[0].dt
        parts: dict[str, Callable[[], pl.Expr]] = {
            "year": dt.year,
            "month": dt.month,
            "day": dt.day,
            "hour": dt.hour,
            "minute": dt.minute,
            "second": dt.second,
            "dow": lambda: dt.weekday() % 7,  # Sunday = 0, as SQL's dow
            "isodow": dt.weekday,
            "doy": dt.ordinal_day,
            "week": dt.week,
            "quarter": dt.quarter,
            "epoch": lambda: dt.epoch("us").cast(pl.Float64) / 1e6,
        }
        return parts[part]().cast(pl.Float64 if part == "epoch" else pl.Int32)

    return apply


@dataclass(frozen=True)
class _Function:
    arity: tuple[int, int]
    build: Callable[[list[pl.Expr]], pl.Expr]


FUNCTIONS: dict[str, _Function] = {
    "abs": _Function((1, 1), lambda a: a[0].abs()),
    "ln": _Function((1, 1), lambda a: a[0].log()),
    "log": _Function((1, 2), _log),
    "log10": _Function((1, 1), lambda a: a[0].log(10)),
    "log2": _Function((1, 1), lambda a: a[0].log(2)),
    "log1p": _Function((1, 1), lambda a: a[0].log1p()),
    "exp": _Function((1, 1), lambda a: a[0].exp()),
    "sqrt": _Function((1, 1), lambda a: a[0].sqrt()),
    "cbrt": _Function((1, 1), lambda a: a[0].cbrt()),
    "pow": _Function((2, 2), lambda a: a[0].pow(a[1])),
    "power": _Function((2, 2), lambda a: a[0].pow(a[1])),
    "sign": _Function((1, 1), lambda a: a[0].sign()),
    "floor": _Function((1, 1), lambda a: a[0].floor()),
    "ceil": _Function((1, 1), lambda a: a[0].ceil()),
    "ceiling": _Function((1, 1), lambda a: a[0].ceil()),
    "round": _Function((1, 2), _round),
    "least": _Function((1, 16), lambda a: pl.min_horizontal(a)),
    "greatest": _Function((1, 16), lambda a: pl.max_horizontal(a)),
    "coalesce": _Function((1, 16), lambda a: pl.coalesce(a)),
    "nullif": _Function((2, 2), lambda a: pl.when(a[0] == a[1]).then(None).otherwise(a[0])),
    "lower": _Function((1, 1), lambda a: a[0].cast(pl.String).str.to_lowercase()),
    "upper": _Function((1, 1), lambda a: a[0].cast(pl.String).str.to_uppercase()),
    "trim": _Function((1, 1), lambda a: a[0].cast(pl.String).str.strip_chars()),
    "length": _Function((1, 1), lambda a: a[0].cast(pl.String).str.len_chars()),
    "char_length": _Function((1, 1), lambda a: a[0].cast(pl.String).str.len_chars()),
    "substr": _Function((2, 3), _substr),
    "substring": _Function((2, 3), _substr),
    "concat": _Function((1, 16), lambda a: pl.concat_str([e.cast(pl.String) for e in a], ignore_nulls=True)),
    **{
        part: _Function((1, 1), _date_part(part))
        for part in ("year", "month", "day", "hour", "minute", "second", "quarter", "week")
    },
    "dayofweek": _Function((1, 1), _date_part("dow")),
    "isodow": _Function((1, 1), _date_part("isodow")),
    "dayofyear": _Function((1, 1), _date_part("doy")),
    "epoch": _Function((1, 1), _date_part("epoch")),
}


@dataclass
class _Tok:
    kind: str  # number, string, quoted, name, op, end
    text: str
    at: int


def _tokens(text: str) -> list[_Tok]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.lastgroup is None:
            raise _error(text, f"unexpected {text[pos:].lstrip()[:1]!r} at character {pos + 1}")
        out.append(_Tok(match.lastgroup, match.group(match.lastgroup), match.start(match.lastgroup)))
        pos = match.end()
    out.append(_Tok("end", "", len(text)))
    return out


def _error(text: str, problem: str) -> ConfigError:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return ConfigError(
        f"expression {shown!r}: {problem}; an expression may use columns, numbers, 'text', + - * / %, "
        "comparisons, AND/OR/NOT, CASE, CAST and the functions " + ", ".join(sorted(FUNCTIONS))
    )


class _Parser:
    """Recursive descent over the tokens; each method returns the ``pl.Expr`` of what it read."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0
        self.columns: list[str] = []
        self.column_tokens: list[_Tok] = []  # where each column was named, for rename_columns

    # -- helpers
    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def fail(self, problem: str) -> ConfigError:
        return _error(self.text, problem)

    def word(self, *words: str) -> bool:
        return self.tok.kind == "name" and self.tok.text.lower() in words

    def take_word(self, *words: str) -> str | None:
        if self.word(*words):
            self.i += 1
            return self.toks[self.i - 1].text.lower()
        return None

    def take_op(self, *ops: str) -> str | None:
        if self.tok.kind == "op" and self.tok.text in ops:
            self.i += 1
            return self.toks[self.i - 1].text
        return None

    def expect_op(self, op: str) -> None:
        if self.take_op(op) is None:
            raise self.fail(f"expected '{op}' at character {self.tok.at + 1}")

    def expect_word(self, word: str) -> None:
        if self.take_word(word) is None:
            raise self.fail(f"expected {word.upper()} at character {self.tok.at + 1}")

    def nested(self, parse: Callable[[], pl.Expr]) -> pl.Expr:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"nested deeper than {MAX_DEPTH} levels")
        try:
            return parse()
        finally:
            self.depth -= 1

    # -- grammar
    def parse(self) -> pl.Expr:
        if self.tok.kind == "end":
            raise self.fail("it is empty")
        expr = self.disjunction()
        if self.tok.kind != "end":
            raise self.fail(f"unexpected {self.tok.text!r} at character {self.tok.at + 1}")
        return expr

    def disjunction(self) -> pl.Expr:
        expr = self.conjunction()
        while self.take_word("or"):
            expr = expr | self.conjunction()
        return expr

    def conjunction(self) -> pl.Expr:
        expr = self.negation()
        while self.take_word("and"):
            expr = expr & self.negation()
        return expr

    def negation(self) -> pl.Expr:
        if self.take_word("not"):
            return self.nested(self.negation).not_()
        return self.comparison()

    def comparison(self) -> pl.Expr:
        expr = self.concatenation()
        op = self.take_op("=", "==", "!=", "<>", "<", "<=", ">", ">=")
        if op is not None:
            right = self.concatenation()
            return {
                "=": expr.eq,
                "==": expr.eq,
                "!=": expr.ne,
                "<>": expr.ne,
                "<": expr.lt,
                "<=": expr.le,
                ">": expr.gt,
                ">=": expr.ge,
            }[op](right)
        if self.take_word("is"):
            negate = self.take_word("not") is not None
            self.expect_word("null")
            return expr.is_not_null() if negate else expr.is_null()
        return expr

    def concatenation(self) -> pl.Expr:
        expr = self.additive()
        while self.take_op("||"):
            expr = pl.concat_str([expr.cast(pl.String), self.additive().cast(pl.String)])
        return expr

    def additive(self) -> pl.Expr:
        expr = self.multiplicative()
        while (op := self.take_op("+", "-")) is not None:
            right = self.multiplicative()
            expr = expr + right if op == "+" else expr - right
        return expr

    def multiplicative(self) -> pl.Expr:
        expr = self.unary()
        while (op := self.take_op("*", "/", "%")) is not None:
            right = self.unary()
            expr = expr * right if op == "*" else expr / right if op == "/" else expr % right
        return expr

    def unary(self) -> pl.Expr:
        op = self.take_op("-", "+")
        if op is not None:
            inner = self.nested(self.unary)
            return -inner if op == "-" else inner
        return self.primary()

    def primary(self) -> pl.Expr:
        tok = self.tok
        if tok.kind == "number":
            self.i += 1
            value = float(tok.text)
            return pl.lit(int(tok.text) if tok.text.isdigit() and len(tok.text) < 19 else value)
        if tok.kind == "string":
            self.i += 1
            return pl.lit(tok.text[1:-1].replace("''", "'"), dtype=pl.String)
        if tok.kind == "quoted":
            self.i += 1
            self.column_tokens.append(tok)
            return self.column(tok.text[1:-1].replace('""', '"'))
        if self.take_op("("):
            expr = self.nested(self.disjunction)
            self.expect_op(")")
            return expr
        if tok.kind == "name":
            lower = tok.text.lower()
            if lower in ("true", "false"):
                self.i += 1
                return pl.lit(lower == "true")
            if lower == "null":
                self.i += 1
                return pl.lit(None)
            if lower == "case":
                return self.nested(self.case)
            if lower == "cast":
                return self.nested(self.cast)
            if self.toks[self.i + 1].kind == "op" and self.toks[self.i + 1].text == "(":
                return self.nested(self.call)
            if lower in _KEYWORDS:
                raise self.fail(f"unexpected {tok.text.upper()} at character {tok.at + 1}")
            self.i += 1
            self.column_tokens.append(tok)
            return self.column(tok.text)
        raise self.fail(f"unexpected {tok.text or 'end'!r} at character {tok.at + 1}")

    def column(self, name: str) -> pl.Expr:
        self.columns.append(name)
        return pl.col(name)

    def call(self) -> pl.Expr:
        name = self.tok.text
        function = FUNCTIONS.get(name.lower())
        if function is None:
            raise self.fail(f"{name}() is not an allowed function")
        self.i += 1
        self.expect_op("(")
        args: list[pl.Expr] = []
        if self.take_op(")") is None:
            args.append(self.disjunction())
            while self.take_op(","):
                args.append(self.disjunction())
            self.expect_op(")")
        low, high = function.arity
        if not low <= len(args) <= high:
            wanted = str(low) if low == high else f"{low} to {high}"
            raise self.fail(f"{name}() takes {wanted} argument(s), got {len(args)}")
        return function.build(args)

    def case(self) -> pl.Expr:
        self.expect_word("case")
        branches: list[tuple[pl.Expr, pl.Expr]] = []
        while self.take_word("when"):
            condition = self.disjunction()
            self.expect_word("then")
            branches.append((condition, self.disjunction()))
        if not branches:
            raise self.fail("CASE needs at least one WHEN ... THEN ...")
        otherwise = self.disjunction() if self.take_word("else") else pl.lit(None)
        self.expect_word("end")
        chain = pl.when(branches[0][0]).then(branches[0][1])
        for condition, value in branches[1:]:
            chain = chain.when(condition).then(value)  # type: ignore[assignment]
        return chain.otherwise(otherwise)

    def cast(self) -> pl.Expr:
        self.expect_word("cast")
        self.expect_op("(")
        expr = self.disjunction()
        self.expect_word("as")
        target = self.tok.text.lower() if self.tok.kind == "name" else ""
        if target not in _CASTS:
            raise self.fail(f"CAST to {self.tok.text!r} is not supported (use one of {', '.join(sorted(_CASTS))})")
        self.i += 1
        self.expect_op(")")
        return expr.cast(_CASTS[target], strict=False)


def _parse(text: str) -> tuple[pl.Expr, list[str]]:
    if not isinstance(text, str):
        raise ConfigError(f"an expression must be text, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise _error(text, f"it is {len(text):,} characters long, more than {MAX_LENGTH:,}")
    parser = _Parser(text)
    return parser.parse(), parser.columns


def compile_expression(text: str) -> pl.Expr:
    """``text`` as a Polars expression, or a :class:`ConfigError` saying what is not allowed."""
    return _parse(text)[0]


def expression_columns(text: str) -> list[str]:
    """The columns ``text`` reads, in order of first use."""
    return list(dict.fromkeys(_parse(text)[1]))


def rename_columns(text: str, mapping: dict[str, str]) -> str:
    """``text`` with the columns named in ``mapping`` renamed (written quoted when the new name is not a plain
    word), everything else as written: ``ln(amount + 1)`` with ``{"amount": "amt EUR"}`` is
    ``ln("amt EUR" + 1)``."""
    parser = _Parser(text)
    parser.parse()
    out, last = [], 0
    for tok in parser.column_tokens:
        name = tok.text[1:-1].replace('""', '"') if tok.kind == "quoted" else tok.text
        if name in mapping:
            new = mapping[name]
            plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", new) and new.lower() not in (*_KEYWORDS, *FUNCTIONS)
            out += [text[last : tok.at], new if plain else '"' + new.replace('"', '""') + '"']
            last = tok.at + len(tok.text)
    return "".join(out) + text[last:]
