"""Hostlist expansion and compression, with property tests for the round trip."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.inventory.hostlist import HostlistError, compress, expand


@pytest.mark.parametrize(
    "expr,names",
    [
        ("node01", ["node01"]),
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("node[8-10]", ["node8", "node9", "node10"]),
        ("node[08-10]", ["node08", "node09", "node10"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("a,b[1-2],a", ["a", "b1", "b2"]),
        ("gpu[1-2]-ib", ["gpu1-ib", "gpu2-ib"]),
    ],
)
def test_expand(expr, names):
    assert expand(expr) == names


@pytest.mark.parametrize("expr", ["node[3-1]", "node[01-04", "node]1[", "node[a-b]", "n[0-999999]"])
def test_expand_rejects(expr):
    with pytest.raises(HostlistError):
        expand(expr)


@pytest.mark.parametrize(
    "names,expr",
    [
        (["node01", "node02", "node03", "node04", "node07"], "node[01-04,07]"),
        (["node9", "node10", "node11"], "node[9-11]"),
        (["login", "node1"], "node1,login"),
        (["n01", "n1"], "n[01,1]"),
    ],
)
def test_compress(names, expr):
    assert compress(names) == expr


names_st = st.lists(
    st.builds(
        lambda p, n, w, s: f"{p}{str(n).zfill(w)}{s}",
        st.sampled_from(["node", "gpu", "r1n", "x"]),
        st.integers(0, 300),
        st.integers(1, 4),
        st.sampled_from(["", "-ib"]),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(names_st)
def test_compress_then_expand_gives_the_same_names(names):
    assert sorted(expand(compress(names))) == sorted(set(names))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["node", "c"]), st.integers(0, 500), st.integers(0, 80), st.integers(1, 4))
def test_expand_then_compress_is_stable(prefix, lo, span, width):
    expr = f"{prefix}[{str(lo).zfill(width)}-{str(lo + span).zfill(width)}]"
    names = expand(expr)
    assert len(names) == span + 1
    assert expand(compress(names)) == names
