"""The test suite; shared helpers live in `tests.support`.

Some of those helpers assert (they came from conftest.py files, whose asserts pytest
rewrites): registering the package before its first import keeps their failure messages.
"""

import pytest

pytest.register_assert_rewrite("tests.support")
