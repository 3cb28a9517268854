"""repro.jsonout writes exactly what json.dumps(indent=2, sort_keys=True, ensure_ascii=False) does."""

from __future__ import annotations

import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from repro import jsonout

SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                                             max_size=4), max_leaves=20)


def dumps(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


@given(VALUES)
@settings(max_examples=300, deadline=None)
def test_text_is_json_dumps(value):
    assert jsonout.text(value) == dumps(value)


@given(st.dictionaries(st.text(), VALUES, max_size=4), st.text(), st.lists(VALUES, max_size=600))
@settings(max_examples=50, deadline=None)
def test_iterators_are_written_as_lists(document, key, items):
    out = io.StringIO()
    jsonout.write({**document, key: iter(items)}, out)
    assert out.getvalue() == dumps({**document, key: items})
