"""``sqlite3.dbapi2`` from ``pysqlite3`` (see the package docstring)."""

from pysqlite3.dbapi2 import *  # noqa: F403
from pysqlite3.dbapi2 import sqlite_version, sqlite_version_info  # noqa: F401
