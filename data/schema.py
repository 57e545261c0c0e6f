"""The declared schema of an interaction log: which column holds what.

A schema names columns; it is given as flags of `python -m data.prepare` or as a small JSON file with the same
keys, e.g.

    {"user_column": "user", "item_column": "item", "timestamp_column": "time",
     "item_feature_columns": ["genres", "year"], "multi_valued_columns": ["genres"], "value_separator": "|"}

CSV files must have a header line naming their columns; TFRecord files hold one tf.train.Example per
interaction with one feature per declared column (keys and feature values as bytes_list or int64_list,
timestamp as int64_list, weight as float_list or int64_list; multi-valued columns as lists).

context_columns (optional) are categorical per-interaction context (e.g. device), one value per row, or several
when also listed in multi_valued_columns; numeric_context_columns are floats (e.g. price). See data.context.

negative_column (optional) holds, per interaction, the item keys shown with it and not chosen (logged
negatives): CSV joined by value_separator (an empty field: none), TFRecord a bytes_list or int64_list.
"""

import dataclasses
import json
from typing import Optional, Tuple

from data import context


class SchemaError(ValueError):
    """A schema that cannot describe a log: unknown keys, a column declared twice, a bad separator."""


@dataclasses.dataclass(frozen=True)
class Schema:
    user_column: str
    item_column: str
    timestamp_column: Optional[str] = None  # None: file order is the time order
    weight_column: Optional[str] = None  # a non-negative number per interaction; None: all 1
    item_feature_columns: Tuple[str, ...] = ()  # categorical; looked up by item id in the item tower
    user_feature_columns: Tuple[str, ...] = ()  # categorical; looked up by user id in the query tower
    multi_valued_columns: Tuple[str, ...] = ()  # feature or context columns, values joined by value_separator
    context_columns: Tuple[str, ...] = ()  # categorical per-interaction context, read by the query tower
    numeric_context_columns: Tuple[str, ...] = ()  # float per-interaction context, standardised (data.context)
    negative_column: Optional[str] = None  # item keys shown with the interaction and not chosen (joined likewise)
    value_separator: str = "|"
    delimiter: str = ","  # CSV field delimiter
    quoting: bool = True  # CSV: '"' quotes fields; False reads quotes as plain characters (TSV dumps)

    def __post_init__(self):
        object.__setattr__(self, "item_feature_columns", tuple(self.item_feature_columns))
        object.__setattr__(self, "user_feature_columns", tuple(self.user_feature_columns))
        object.__setattr__(self, "multi_valued_columns", tuple(self.multi_valued_columns))
        object.__setattr__(self, "context_columns", tuple(self.context_columns))
        object.__setattr__(self, "numeric_context_columns", tuple(self.numeric_context_columns))
        self.validate()

    def validate(self) -> None:
        for name in ("user_column", "item_column"):
            if not getattr(self, name):
                raise SchemaError(f"schema: {name} is required (the column holding the {name.split('_')[0]} key)")
        declared = self.interaction_columns() + self.item_feature_columns + self.user_feature_columns
        declared += (self.negative_column,) if self.negative_column else ()
        declared += self.context_columns + self.numeric_context_columns
        repeated = sorted({column for column in declared if declared.count(column) > 1})
        if repeated:
            raise SchemaError(f"schema: column(s) {repeated} declared for more than one role")
        multi_valued_roles = set(self.item_feature_columns + self.user_feature_columns + self.context_columns)
        stray = [column for column in self.multi_valued_columns if column not in multi_valued_roles]
        if stray:
            raise SchemaError(f"schema: multi_valued_columns {stray} are not declared as item or user feature columns "
                              "or (categorical) context columns")
        bad_name = context.check_names(self.context_columns, self.numeric_context_columns)
        if bad_name:
            raise SchemaError(f"schema: {bad_name}")
        if len(self.delimiter) != 1:
            raise SchemaError(f"schema: delimiter {self.delimiter!r} must be one character")
        if (self.multi_valued_columns or self.negative_column) and (not self.value_separator or self.value_separator == self.delimiter):
            raise SchemaError(
                f"schema: value_separator {self.value_separator!r} must be non-empty and differ from the delimiter"
            )

    def interaction_columns(self) -> Tuple[str, ...]:
        """User, item and the optional timestamp and weight columns, in that order."""
        optional = (self.timestamp_column, self.weight_column)
        return (self.user_column, self.item_column) + tuple(column for column in optional if column)

    @classmethod
    def from_json(cls, path: str, **overrides) -> "Schema":
        """Reads a JSON schema file; `overrides` (non-None values) replace its keys."""
        try:
            with open(path, encoding="utf-8") as file:
                values = json.load(file)
        except (OSError, json.JSONDecodeError) as error:
            raise SchemaError(f"{path}: cannot read the schema ({error})") from None
        if not isinstance(values, dict):
            raise SchemaError(f"{path}: expected a JSON object of schema keys")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SchemaError(f"{path}: unknown schema keys {unknown}; expected some of {sorted(known)}")
        values.update({key: value for key, value in overrides.items() if value is not None})
        try:
            return cls(**values)
        except TypeError as error:
            raise SchemaError(f"{path}: {error}") from None
