"""``sqlite3`` backed by a current SQLite (the ``pysqlite3-binary`` wheel bundles one).

CI puts ``.ci/sqlite-current`` first on ``PYTHONPATH`` for a second run of the catalog
and reliability tests, so that this package shadows the standard library's
``sqlite3`` in the test process and in every child process it starts: the catalog
is then tested against the SQLite most users have (3.45+), not only the one Python
was built with.
"""

from pysqlite3 import *  # noqa: F403
from pysqlite3 import dbapi2  # noqa: F401
from pysqlite3.dbapi2 import sqlite_version, sqlite_version_info  # noqa: F401
