import visalign


def test_version_is_set():
    assert visalign.__version__.count(".") >= 2
